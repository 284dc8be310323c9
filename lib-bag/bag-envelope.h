#ifndef BAG_ENVELOPE_H
#define BAG_ENVELOPE_H

#include "smtp-params.h"

/* A bagged message keeps its SMTP envelope as its first header lines, as
   the MAIL FROM and RCPT TO arguments the suite accepted (path and
   parameters, as lib-smtp writes and parses them):

     X-Bag-Mail-From: <sender@example.net> RET=HDRS ENVID=abc
     X-Bag-Rcpt-To: <alice@example.org> NOTIFY=FAILURE ORCPT=rfc822;...
     X-Bag-Rcpt-To: <bob@example.org>
     X-Bag-Envelope-End: ok

   They are the first lines of the stored message, and the end line closes
   them: a sender who puts X-Bag-Rcpt-To: in the message's own header
   can't add a recipient, because that header comes after the end line.
   Only these lines are left out when the message is sent on. An
   administrator reading the bag over IMAP sees the envelope. */

struct istream;
struct smtp_address;

#define BAG_HEADER_MAIL_FROM "X-Bag-Mail-From"
#define BAG_HEADER_RCPT_TO "X-Bag-Rcpt-To"
#define BAG_HEADER_END "X-Bag-Envelope-End"
/* the longest envelope line read back (a path is at most 256 octets,
   xtext-encoded parameters can triple) */
#define BAG_ENVELOPE_LINE_MAX 4096
#define BAG_ENVELOPE_RCPTS_MAX 10000
/* RFC 5321, 4.5.3.1 */
#define BAG_LOCALPART_MAX_LEN 64
#define BAG_PATH_MAX_LEN 256

struct bag_envelope_rcpt {
	const struct smtp_address *addr;
	struct smtp_params_rcpt params;
};
ARRAY_DEFINE_TYPE(bag_envelope_rcpt, struct bag_envelope_rcpt);

struct bag_envelope {
	/* the null path for <> */
	const struct smtp_address *mail_from;
	struct smtp_params_mail mail_params;
	ARRAY_TYPE(bag_envelope_rcpt) rcpts;
	/* bag_envelope_read(): bytes of the envelope lines, the end line
	   included */
	uoff_t header_size;
};

/* Append the envelope lines (CRLF) for mail_from and rcpts. */
void bag_envelope_write(string_t *dest, const struct smtp_address *mail_from,
			const struct smtp_params_mail *mail_params,
			const struct bag_envelope_rcpt *rcpts,
			unsigned int rcpt_count);

/* Whether a recipient (with the transaction's MAIL FROM) can be held:
   an address within RFC 5321's limits (local part 64, path 256 octets)
   and envelope lines that bag_envelope_read() reads back. */
bool bag_envelope_rcpt_fits(const struct smtp_address *mail_from,
			    const struct smtp_params_mail *mail_params,
			    const struct bag_envelope_rcpt *rcpt,
			    const char **error_r);

/* Read the envelope lines from input's current offset (strings and arrays
   from pool). Returns 0 with input just after the end line, or -1 with an
   error (no envelope, a malformed or unended one, or a read error). */
int bag_envelope_read(struct istream *input, pool_t pool,
		      struct bag_envelope *env_r, const char **error_r);

#endif
