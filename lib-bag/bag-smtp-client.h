#ifndef BAG_SMTP_CLIENT_H
#define BAG_SMTP_CLIENT_H

#include "net.h"
#include "smtp-common.h"
#include "smtp-params.h"
#include "smtp-reply.h"

/* The SMTP client that delivers a bag to the customer's MTA: over a new
   connection (ETRN, backup retries, doveadm bag flush) or over the
   connection the customer opened and then turned around (ATRN, RFC 2645).

   It is synchronous: every call blocks, waiting with poll() for at most
   timeout_msecs per reply (or per write that doesn't progress). The
   processes that use it serve one connection or one flush each, so
   nothing else waits meanwhile. Replies are read with lib-smtp's reply
   parser, lines and replies are bounded, and nothing the peer sends is
   logged unsanitized. */

struct istream;
struct ostream;
struct smtp_address;
struct bag_smtp_client;

struct bag_smtp_client_settings {
	/* the name given in EHLO/HELO */
	const char *my_hostname;
	/* how long to wait for each reply, and for a stalled write */
	unsigned int timeout_msecs;
	/* how long to wait for the greeting (0: timeout_msecs) */
	unsigned int greeting_timeout_msecs;
};

/* One transaction's outcome. */
struct bag_smtp_send_result {
	/* the reply to MAIL FROM */
	struct smtp_reply mail_reply;
	/* one reply per recipient, in the order given */
	struct smtp_reply *rcpt_replies;
	/* the reply to DATA (354 is not kept: this is the reply after the
	   message); status 0 if DATA wasn't sent because MAIL or every RCPT
	   failed */
	struct smtp_reply data_reply;
};

/* Connect to host:port (a name is resolved with net_gethostbyname(); each
   address is tried in turn) with a timeout. Returns the connected fd, or
   -1 with error_r set. */
int bag_smtp_client_connect(const char *host, in_port_t port,
			    unsigned int timeout_msecs, const char **error_r);

/* Create a client on a connected socket's streams (referenced, not taken
   over: the caller still unrefs its own references). fd is the socket,
   for poll(). */
struct bag_smtp_client *
bag_smtp_client_init(int fd, struct istream *input, struct ostream *output,
		     const struct bag_smtp_client_settings *set);
void bag_smtp_client_deinit(struct bag_smtp_client **client);

/* Read the server's greeting and introduce ourselves with EHLO (HELO when
   EHLO gets a 5xx reply). Returns 1 when the server is ready for mail, 0
   if it refused (a non-2xx greeting or EHLO/HELO reply, in reply_r), -1
   if the connection failed or timed out (error_r). */
int bag_smtp_client_start(struct bag_smtp_client *client,
			  struct smtp_reply *reply_r, const char **error_r);
/* The capabilities the server listed in its EHLO reply (none after
   HELO). */
enum smtp_capability
bag_smtp_client_get_capabilities(struct bag_smtp_client *client);

/* Send one message: MAIL FROM, one RCPT TO per recipient, DATA and the
   message (line endings made CRLF, dot-stuffed). The MAIL and RCPT
   commands and DATA are pipelined when the server offers PIPELINING.
   Parameters are sent only where the server offers the extension
   (SIZE, BODY=8BITMIME, and ENVID/RET/NOTIFY/ORCPT with DSN); others are
   left out. rcpt_params may be NULL.

   Returns 1 when the transaction completed, with every reply in result_r
   (allocated from pool): inspect each. Returns -1 when the connection
   failed or timed out midway (error_r): then nothing is known to have
   been delivered. After a failed transaction (a rejected MAIL, no
   accepted recipient, a failed DATA) the client has sent RSET, so the
   next call can follow on the same connection. */
int bag_smtp_client_send(struct bag_smtp_client *client, pool_t pool,
			 const struct smtp_address *mail_from,
			 const struct smtp_params_mail *mail_params,
			 const struct smtp_address *const *rcpts,
			 const struct smtp_params_rcpt *const *rcpt_params,
			 unsigned int rcpt_count, struct istream *message,
			 struct bag_smtp_send_result *result_r,
			 const char **error_r);

/* Send QUIT and wait (briefly, best effort) for its reply. */
void bag_smtp_client_quit(struct bag_smtp_client *client);

#endif
