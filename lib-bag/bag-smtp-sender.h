#ifndef BAG_SMTP_SENDER_H
#define BAG_SMTP_SENDER_H

#include "smtp-common.h"
#include "smtp-params.h"
#include "smtp-reply.h"

/* What a flush sends its messages with: an SMTP session to the customer's
   MTA that is ready for mail. Two implement it: lib-smtp's client on a
   connection of its own (bag-smtp-relay.h: ETRN, Backup Domains, doveadm
   bag flush) and the reversed session of ATRN on the customer's own
   connection (bag-smtp-client.h). Both are asynchronous: a send returns
   at once, and its callback is called from the ioloop. */

struct istream;
struct smtp_address;
struct bag_smtp_sender;

/* One transaction's outcome. A reply that didn't come from the server
   (the connection was lost, timed out) has a status smtp_reply_is_remote()
   says isn't remote, or is 0 when its command was never sent. */
struct bag_smtp_send_result {
	/* the reply to MAIL FROM */
	struct smtp_reply mail_reply;
	/* one reply per recipient, in the order given: the reply to its
	   RCPT TO when that failed, else the reply to the message */
	struct smtp_reply *rcpt_replies;
	/* the reply after the message (354 is not kept); status 0 if DATA
	   wasn't sent because MAIL or every RCPT failed */
	struct smtp_reply data_reply;
};

/* result is NULL when the transaction couldn't be started at all (the
   session was gone already). error is set when the session can't go on
   (the connection was lost, timed out, or the server is closing it):
   what result says is still true, but nothing more can be sent. */
typedef void
bag_smtp_sender_callback_t(const struct bag_smtp_send_result *result,
			   const char *error, void *context);

struct bag_smtp_sender_vfuncs {
	/* Send one message: MAIL FROM, a RCPT TO per recipient, DATA and
	   the message (line ends made CRLF, dot-stuffed). Parameters are
	   sent only where the server offers their extension. The result
	   and the strings in it are allocated from pool, which must live
	   until the callback. */
	void (*send)(struct bag_smtp_sender *sender, pool_t pool,
		     const struct smtp_address *mail_from,
		     const struct smtp_params_mail *mail_params,
		     const struct smtp_address *const *rcpts,
		     const struct smtp_params_rcpt *const *rcpt_params,
		     unsigned int rcpt_count, struct istream *message,
		     bag_smtp_sender_callback_t *callback, void *context);
	/* Forget the send in progress: its callback isn't called, and the
	   session can't be used any more. */
	void (*abort)(struct bag_smtp_sender *sender);
};

struct bag_smtp_sender {
	const struct bag_smtp_sender_vfuncs *v;
};

static inline void
bag_smtp_sender_send(struct bag_smtp_sender *sender, pool_t pool,
		     const struct smtp_address *mail_from,
		     const struct smtp_params_mail *mail_params,
		     const struct smtp_address *const *rcpts,
		     const struct smtp_params_rcpt *const *rcpt_params,
		     unsigned int rcpt_count, struct istream *message,
		     bag_smtp_sender_callback_t *callback, void *context)
{
	sender->v->send(sender, pool, mail_from, mail_params, rcpts,
			rcpt_params, rcpt_count, message, callback, context);
}

#define bag_smtp_sender_send(sender, pool, mail_from, mail_params, rcpts, \
			     rcpt_params, rcpt_count, message, callback, \
			     context) \
	bag_smtp_sender_send(sender, pool, mail_from, mail_params, rcpts, \
		rcpt_params, rcpt_count, message, \
		(bag_smtp_sender_callback_t *)callback, TRUE ? context : \
		CALLBACK_TYPECHECK(callback, void (*)( \
			const struct bag_smtp_send_result *, const char *, \
			typeof(context))))

static inline void bag_smtp_sender_abort(struct bag_smtp_sender *sender)
{
	sender->v->abort(sender);
}

/* Mail parameters as they may go to a server with caps: BODY only with
   its extension (8BITMIME; BINARYMIME never, as it needs BDAT for every
   message), SIZE, ENVID and RET as lib-smtp writes them (it leaves them
   out without their capability), AUTH= and unknown parameters never. */
void bag_smtp_params_mail_for(struct smtp_params_mail *dest,
			      const struct smtp_params_mail *src,
			      enum smtp_capability caps);
/* RCPT parameters as they may go: NOTIFY and ORCPT (lib-smtp leaves them
   out without DSN), unknown parameters never. */
void bag_smtp_params_rcpt_for(struct smtp_params_rcpt *dest,
			      const struct smtp_params_rcpt *src);

#endif
