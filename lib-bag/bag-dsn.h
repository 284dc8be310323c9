#ifndef BAG_DSN_H
#define BAG_DSN_H

#include "smtp-params.h"

/* Delivery status notifications (RFC 3464, in a multipart/report of RFC
   6522): for the senders of bagged mail that could not be delivered, and
   the success notifications that LMTP sends when a sender asks for them
   (RFC 3461's NOTIFY=SUCCESS). */

struct istream;
struct ostream;
struct smtp_address;

enum bag_dsn_action {
	BAG_DSN_ACTION_FAILED = 0,
	BAG_DSN_ACTION_DELAYED,
	/* delivered to the recipient's mailbox */
	BAG_DSN_ACTION_DELIVERED,
	/* passed on to where success may not be reported (a forward) */
	BAG_DSN_ACTION_RELAYED,
};

/* The Diagnostic-Code type of a local_diagnostic (RFC 3464 2.3.6: an
   unregistered type starts with X-) */
#define BAG_DSN_DIAGNOSTIC_TYPE_LOCAL "X-Dovecot-Bag"

struct bag_dsn_recipient {
	/* the recipient as given to RCPT TO (Final-Recipient) */
	const struct smtp_address *rcpt;
	/* its RCPT parameters (ORCPT gives Original-Recipient) */
	const struct smtp_params_rcpt *params;
	enum bag_dsn_action action;
	/* enhanced status code, e.g. "5.1.1" or "4.4.7" */
	const char *status;
	/* the host that gave the last reply (Remote-MTA), or NULL */
	const char *remote_mta;
	/* the last reply, one line, e.g. "550 5.1.1 No such user"
	   (Diagnostic-Code: smtp; ...), or NULL */
	const char *diagnostic;
	/* why there is no reply when the customer's MTA couldn't be
	   reached, e.g. "connect(...) failed: Connection refused": it is
	   not an SMTP reply, so its Diagnostic-Code has the type
	   X-Dovecot-Bag (as Postfix writes X-Postfix). Only without
	   diagnostic; or NULL. */
	const char *local_diagnostic;
	/* 0 if never attempted */
	time_t last_attempt;
	/* delayed only: when retrying stops (Will-Retry-Until) */
	time_t will_retry_until;
};

struct bag_dsn {
	/* this server's name (Reporting-MTA: dns; ...) */
	const char *reporting_mta;
	/* the From: of the notification, e.g. "MAILER-DAEMON@host" */
	const char *from_address;
	/* the original sender: the notification's To: and envelope
	   recipient; never null (see bag_dsn_wanted()) */
	const struct smtp_address *return_path;
	/* the original MAIL FROM parameters (ENVID, RET) */
	const struct smtp_params_mail *mail_params;
	/* when the message was received into the bag */
	time_t arrival_date;
	const struct bag_dsn_recipient *rcpts;
	unsigned int rcpt_count;
	/* the original message (without the bag's own envelope headers),
	   read from its current offset; seekable (the header of a message
	   returned without RET=FULL is measured first) */
	struct istream *message;
};

/* Whether a notification is due for a recipient with these parameters
   whose delivery had this outcome, sent by return_path: never for a null
   sender, never with NOTIFY=NEVER; with NOTIFY given, only when it lists
   FAILURE (DELAY for delays, SUCCESS for delivered and relayed); without
   NOTIFY, for failures only. */
bool bag_dsn_wanted(const struct smtp_address *return_path,
		    const struct smtp_params_rcpt *params,
		    enum bag_dsn_action action);

/* Write the whole notification (header and body, CRLF line endings) to
   output. The third part is the original message with RET=FULL when a
   recipient failed, else its header only (text/rfc822-headers). Returns 0, or -1 if the message
   can't be read (error_r). */
int bag_dsn_write(const struct bag_dsn *dsn, struct ostream *output,
		  const char **error_r);

#endif
