#ifndef BAG_SMTP_CLIENT_H
#define BAG_SMTP_CLIENT_H

#include "smtp-common.h"
#include "smtp-reply.h"

/* The SMTP client of the reversed ATRN session (RFC 2645): after ATRN's
   250 the customer's MTA, on the connection it opened to us, is the SMTP
   server, and this client delivers the bags to it.

   Dovecot's lib-smtp client can't do this: it makes its own connection
   (to a host, an IP or a unix socket) and has no way to take over the
   streams of one that exists, here the ODMR connection whose TLS (if the
   customer started it) lib-smtp's server runs. So this client is the
   suite's own, and small: greeting, EHLO (HELO after a 5xx), MAIL, RCPT
   and DATA pipelined when the server offers PIPELINING (RFC 2920), RSET
   after a failed transaction, QUIT; everything else the flush needs
   (the envelope, the journal, notifications) is the same code as for
   lib-smtp's sessions (bag-smtp-sender.h).

   It runs in the ioloop: every wait is an IO or a timeout, bounded by
   the settings' timeout for each reply and for a write that doesn't
   progress. Replies are read with lib-smtp's reply parser and bounded in
   text size (by the parser) and in bytes on the wire (here, because the
   parser doesn't count empty continuation lines). Nothing the peer sends
   reaches an error string unsanitized. */

struct istream;
struct ostream;
struct bag_smtp_client;
struct bag_smtp_sender;

struct bag_smtp_client_settings {
	/* the name given in EHLO/HELO */
	const char *my_hostname;
	/* how long to wait for each reply, and for a stalled write */
	unsigned int timeout_msecs;
	/* how long to wait for the greeting (0: timeout_msecs) */
	unsigned int greeting_timeout_msecs;
};

/* ret: 1 when the server is ready for mail, 0 if it refused (a non-2xx
   greeting or EHLO/HELO reply, in reply), -1 if the connection failed or
   timed out (error). */
typedef void
bag_smtp_client_start_callback_t(int ret, const struct smtp_reply *reply,
				 const char *error, void *context);

/* Create a client on a connection's streams (referenced, not taken over:
   the caller unrefs its own references). */
struct bag_smtp_client *
bag_smtp_client_init(struct istream *input, struct ostream *output,
		     const struct bag_smtp_client_settings *set);
/* Free the client (no callback is called after this). */
void bag_smtp_client_deinit(struct bag_smtp_client **client);

/* Read the server's greeting and introduce ourselves with EHLO (HELO when
   EHLO gets a 5xx reply); callback once it is known how that went. */
void bag_smtp_client_start(struct bag_smtp_client *client,
			   bag_smtp_client_start_callback_t *callback,
			   void *context);
#define bag_smtp_client_start(client, callback, context) \
	bag_smtp_client_start(client, \
		(bag_smtp_client_start_callback_t *)callback, \
		TRUE ? context : CALLBACK_TYPECHECK(callback, void (*)( \
			int, const struct smtp_reply *, const char *, \
			typeof(context))))
/* The capabilities the server listed in its EHLO reply (none after
   HELO). */
enum smtp_capability
bag_smtp_client_get_capabilities(struct bag_smtp_client *client);

/* The ready session's sender (bag-smtp-sender.h): a send's result holds
   every reply (MAIL, each RCPT, the end of the message). After a failed
   transaction (a refused MAIL, no accepted recipient, a failed DATA) the
   client sends RSET before the callback, so that the next transaction can
   follow. */
struct bag_smtp_sender *
bag_smtp_client_get_sender(struct bag_smtp_client *client);

/* Send QUIT and wait (briefly, best effort) for its reply; callback when
   that is done (at once if nothing can be sent). */
void bag_smtp_client_quit(struct bag_smtp_client *client,
			  void (*callback)(void *context), void *context);
#define bag_smtp_client_quit(client, callback, context) \
	bag_smtp_client_quit(client, (void (*)(void *))callback, \
		TRUE ? context : CALLBACK_TYPECHECK(callback, void (*)( \
			typeof(context))))

#endif
