#ifndef LMTP_DSN_H
#define LMTP_DSN_H

/* What the suite's LMTP plugins do to offer DSN (RFC 3461): the
   capability, so that the MTA passes NOTIFY, RET, ENVID and ORCPT (the
   original recipient, which Mail Mirror keys by), and the success
   notifications that a server offering DSN owes a sender who asks for
   them. Failures are the MTA's to report: LMTP answers them with its
   reply codes. */

#include "bag-dsn.h"

struct client;
struct lmtp_local_deliver_context;
struct smtp_server_recipient;
struct smtp_server_transaction;

/* Offer DSN on the client's connection, besides what LMTP offers. */
void lmtp_dsn_offer(struct client *client);

/* After rcpt's local delivery was answered 250: if it asked for success
   notifications (NOTIFY=SUCCESS), send one to the sender (action
   delivered, or relayed for a message only forwarded), through Dovecot's
   submission_host or sendmail_path. SUCCESS is then taken out of the
   recipient's parameters, so that it is sent once, whichever plugin comes
   first. Errors are logged to event. */
void lmtp_dsn_success(struct smtp_server_transaction *trans,
		      struct smtp_server_recipient *rcpt,
		      struct lmtp_local_deliver_context *lldctx,
		      enum bag_dsn_action action, struct event *event);

#endif
