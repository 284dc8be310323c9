/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* Delivery status notifications for bagged mail: a multipart/report (RFC
   6522) with a human-readable part, a message/delivery-status part (RFC
   3464) and the returned message or its header (RFC 3461's RET).

   Everything a peer or a sender chose (the last reply, addresses, the
   remote host's name) is written as one line of printable US-ASCII, cut
   at a bounded length: the notification goes back to the sender, and a
   CR, LF or 8-bit byte in a header field or in the delivery-status part
   would let that text rewrite the report's structure. */

#include "lib.h"
#include "str.h"
#include "hex-binary.h"
#include "randgen.h"
#include "istream.h"
#include "istream-crlf.h"
#include "ostream.h"
#include "message-date.h"
#include "message-size.h"
#include "smtp-address.h"
#include "smtp-syntax.h"
#include "bag-dsn.h"

#include <ctype.h>
#include <time.h>

/* Header field lines must stay below RFC 5322's 998 characters: an
   untrusted value is cut at this many. */
#define BAG_DSN_MAX_VALUE_LEN 900
/* ORCPT's address type shares its line with the address: "rfc822" and
   "utf-8" are the types in use */
#define BAG_DSN_MAX_ADDR_TYPE_LEN 64
/* The most of the original header returned without RET=FULL: a header
   that doesn't end within this is cut here. */
#define BAG_DSN_MAX_HEADER_SIZE (1024 * 1024)
/* random bytes in the boundary and in the Message-ID: 128 bits, so that
   neither can be guessed or occur by chance in the returned message */
#define BAG_DSN_RANDOM_BYTES 16

#define BAG_DSN_SUBJECT_FAILED "Undelivered Mail Returned to Sender"
#define BAG_DSN_SUBJECT_DELAYED "Delayed Mail (still being retried)"
#define BAG_DSN_SUBJECT_SUCCESS "Successful Mail Delivery Report"

static void
bag_dsn_append_printable(string_t *dest, const char *src, size_t max_len)
{
	size_t i;

	for (i = 0; src[i] != '\0'; i++) {
		unsigned char chr = src[i];

		if (i == max_len) {
			str_append(dest, "...");
			break;
		}
		if (chr == '\r' && src[i + 1] == '\n') {
			/* a CRLF becomes one space like a lone CR or LF */
			continue;
		}
		if (chr == '\r' || chr == '\n' || chr == '\t')
			str_append_c(dest, ' ');
		else if (chr < 0x20 || chr >= 0x7f)
			str_append_c(dest, '?');
		else
			str_append_c(dest, chr);
	}
}

static const char *bag_dsn_printable(const char *src)
{
	string_t *str = t_str_new(128);

	bag_dsn_append_printable(str, src, BAG_DSN_MAX_VALUE_LEN);
	return str_c(str);
}

/* The right side of the Message-ID: only host name characters, since
   reporting_mta comes from configuration and a '>' or space there would
   break the msg-id syntax. */
static void bag_dsn_append_msgid_host(string_t *dest, const char *host)
{
	size_t start = str_len(dest);

	for (; *host != '\0' && str_len(dest) - start < 255; host++) {
		if (((unsigned char)*host < 0x80 && i_isalnum(*host)) ||
		    *host == '-' || *host == '.')
			str_append_c(dest, *host);
	}
	if (str_len(dest) == start)
		str_append(dest, "localhost");
}

static const char *bag_dsn_random_hex(void)
{
	unsigned char rnd[BAG_DSN_RANDOM_BYTES];

	random_fill(rnd, sizeof(rnd));
	return binary_to_hex(rnd, sizeof(rnd));
}

/* RFC 3463 status-code: class "." subject "." detail, with the class
   fitting the action (a delay is transient by definition). */
static bool
bag_dsn_status_is_valid(const char *status, enum bag_dsn_action action)
{
	const char *p;
	unsigned int i, digits;

	if (status == NULL)
		return FALSE;
	switch (action) {
	case BAG_DSN_ACTION_FAILED:
		if (status[0] != '4' && status[0] != '5')
			return FALSE;
		break;
	case BAG_DSN_ACTION_DELAYED:
		if (status[0] != '4')
			return FALSE;
		break;
	case BAG_DSN_ACTION_DELIVERED:
	case BAG_DSN_ACTION_RELAYED:
		if (status[0] != '2')
			return FALSE;
		break;
	default:
		i_unreached();
	}
	if (status[1] != '.')
		return FALSE;
	p = status + 2;
	for (i = 0; i < 2; i++) {
		for (digits = 0; i_isdigit(*p); p++)
			digits++;
		if (digits == 0 || digits > 3)
			return FALSE;
		if (i == 0) {
			if (*p != '.')
				return FALSE;
			p++;
		}
	}
	return *p == '\0';
}

static const char *bag_dsn_rcpt_status(const struct bag_dsn_recipient *rcpt)
{
	if (bag_dsn_status_is_valid(rcpt->status, rcpt->action))
		return rcpt->status;
	/* the caller's code is unusable: say only what kind of outcome it
	   is, rather than send a report parsers reject */
	switch (rcpt->action) {
	case BAG_DSN_ACTION_FAILED:
		return "5.0.0";
	case BAG_DSN_ACTION_DELAYED:
		return "4.0.0";
	case BAG_DSN_ACTION_DELIVERED:
	case BAG_DSN_ACTION_RELAYED:
		return "2.0.0";
	}
	i_unreached();
}

static const char *bag_dsn_action_name(enum bag_dsn_action action)
{
	switch (action) {
	case BAG_DSN_ACTION_FAILED:
		return "failed";
	case BAG_DSN_ACTION_DELAYED:
		return "delayed";
	case BAG_DSN_ACTION_DELIVERED:
		return "delivered";
	case BAG_DSN_ACTION_RELAYED:
		return "relayed";
	}
	i_unreached();
}

/* What the report is about: a failure if any recipient failed, else a
   delay if any is delayed, else success. */
static enum bag_dsn_action bag_dsn_kind(const struct bag_dsn *dsn)
{
	enum bag_dsn_action kind = BAG_DSN_ACTION_DELIVERED;
	unsigned int i;

	for (i = 0; i < dsn->rcpt_count; i++) {
		if (dsn->rcpts[i].action == BAG_DSN_ACTION_FAILED)
			return BAG_DSN_ACTION_FAILED;
		if (dsn->rcpts[i].action == BAG_DSN_ACTION_DELAYED)
			kind = BAG_DSN_ACTION_DELAYED;
	}
	return kind;
}

static void
bag_dsn_append_header(string_t *str, const struct bag_dsn *dsn,
		      const char *boundary, enum bag_dsn_action kind)
{
	str_append(str, "From: Mail Delivery System <");
	bag_dsn_append_printable(str, dsn->from_address,
				 BAG_DSN_MAX_VALUE_LEN);
	str_append(str, ">\r\nTo: <");
	bag_dsn_append_printable(str, smtp_address_encode(dsn->return_path),
				 BAG_DSN_MAX_VALUE_LEN);
	str_printfa(str, ">\r\nSubject: %s\r\n",
		    kind == BAG_DSN_ACTION_FAILED ? BAG_DSN_SUBJECT_FAILED :
		    kind == BAG_DSN_ACTION_DELAYED ? BAG_DSN_SUBJECT_DELAYED :
		    BAG_DSN_SUBJECT_SUCCESS);
	str_printfa(str, "Date: %s\r\n", message_date_create(time(NULL)));
	str_printfa(str, "Message-ID: <%s@", bag_dsn_random_hex());
	bag_dsn_append_msgid_host(str, dsn->reporting_mta);
	str_append(str, ">\r\n");
	/* RFC 3834: an automatic answer, so that vacation responders and
	   other auto-repliers leave it alone */
	str_append(str, "Auto-Submitted: auto-replied\r\n");
	str_append(str, "MIME-Version: 1.0\r\n");
	str_printfa(str, "Content-Type: multipart/report; "
		    "report-type=delivery-status;\r\n"
		    "\tboundary=\"%s\"\r\n", boundary);
	str_append(str, "\r\nThis is a MIME-encapsulated message.\r\n\r\n");
}

static void
bag_dsn_append_text_rcpt(string_t *str, const struct bag_dsn_recipient *rcpt)
{
	str_append(str, "<");
	bag_dsn_append_printable(str, smtp_address_encode(rcpt->rcpt),
				 BAG_DSN_MAX_VALUE_LEN);
	str_printfa(str, ">: %s (%s)", bag_dsn_action_name(rcpt->action),
		    bag_dsn_rcpt_status(rcpt));
	if (rcpt->action == BAG_DSN_ACTION_DELAYED &&
	    rcpt->will_retry_until != 0) {
		str_printfa(str, ", retried until %s",
			    message_date_create(rcpt->will_retry_until));
	}
	str_append(str, "\r\n");
	if (rcpt->diagnostic == NULL) {
		if (rcpt->local_diagnostic != NULL) {
			str_append(str, "    ");
			bag_dsn_append_printable(str, rcpt->local_diagnostic,
						 BAG_DSN_MAX_VALUE_LEN);
			str_append(str, "\r\n");
		}
		return;
	}
	/* each on a line of its own, keeping lines below 998 characters */
	if (rcpt->remote_mta != NULL) {
		str_append(str, "    ");
		bag_dsn_append_printable(str, rcpt->remote_mta,
					 BAG_DSN_MAX_VALUE_LEN);
		str_append(str, " said:\r\n");
	}
	str_append(str, "    ");
	bag_dsn_append_printable(str, rcpt->diagnostic, BAG_DSN_MAX_VALUE_LEN);
	str_append(str, "\r\n");
}

static void
bag_dsn_append_text_part(string_t *str, const struct bag_dsn *dsn,
			 const char *boundary, enum bag_dsn_action kind,
			 bool full)
{
	unsigned int i;

	str_printfa(str, "--%s\r\n", boundary);
	str_append(str, "Content-Type: text/plain; charset=us-ascii\r\n"
		   "Content-Description: Notification\r\n\r\n");
	str_printfa(str, "This is the mail system at %s.\r\n\r\n",
		    bag_dsn_printable(dsn->reporting_mta));
	switch (kind) {
	case BAG_DSN_ACTION_FAILED:
		str_append(str,
			"Your message could not be delivered to one or more "
			"of its recipients.\r\n");
		str_append(str, full ?
			"It is attached below.\r\n" :
			"Its header is attached below.\r\n");
		break;
	case BAG_DSN_ACTION_DELAYED:
		str_append(str,
			"Your message has not yet been delivered to one or "
			"more of its\r\nrecipients. Delivery is still being "
			"retried; you don't need to send\r\nit again.\r\n");
		break;
	case BAG_DSN_ACTION_DELIVERED:
	case BAG_DSN_ACTION_RELAYED:
		str_append(str,
			"Your message was delivered to the recipients below, "
			"as you asked\r\nto be told (NOTIFY=SUCCESS). A "
			"relayed message went on to a system\r\nthat may not "
			"report its delivery.\r\n");
		break;
	}
	str_append(str, "\r\n");
	for (i = 0; i < dsn->rcpt_count; i++)
		bag_dsn_append_text_rcpt(str, &dsn->rcpts[i]);
	str_append(str, "\r\n");
}

static void
bag_dsn_append_status_rcpt(string_t *str, const struct bag_dsn_recipient *rcpt)
{
	const struct smtp_params_rcpt *params = rcpt->params;

	if (params != NULL && smtp_params_rcpt_has_orcpt(params)) {
		const char *orcpt = params->orcpt.addr_raw;

		if (orcpt == NULL) {
			i_assert(params->orcpt.addr != NULL);
			orcpt = smtp_address_encode(params->orcpt.addr);
		}
		/* decoded from xtext (Dovecot's parser did that), as Postfix
		   writes it and bounce parsers read it: the address the
		   sender gave, printable */
		str_append(str, "Original-Recipient: ");
		bag_dsn_append_printable(str, params->orcpt.addr_type,
					 BAG_DSN_MAX_ADDR_TYPE_LEN);
		str_append(str, "; ");
		bag_dsn_append_printable(str, orcpt, BAG_DSN_MAX_VALUE_LEN);
		str_append(str, "\r\n");
	}
	str_append(str, "Final-Recipient: rfc822; ");
	bag_dsn_append_printable(str, smtp_address_encode(rcpt->rcpt),
				 BAG_DSN_MAX_VALUE_LEN);
	str_printfa(str, "\r\nAction: %s\r\n",
		    bag_dsn_action_name(rcpt->action));
	str_printfa(str, "Status: %s\r\n", bag_dsn_rcpt_status(rcpt));
	if (rcpt->remote_mta != NULL) {
		str_append(str, "Remote-MTA: dns; ");
		bag_dsn_append_printable(str, rcpt->remote_mta,
					 BAG_DSN_MAX_VALUE_LEN);
		str_append(str, "\r\n");
	}
	if (rcpt->diagnostic != NULL) {
		str_append(str, "Diagnostic-Code: smtp; ");
		bag_dsn_append_printable(str, rcpt->diagnostic,
					 BAG_DSN_MAX_VALUE_LEN);
		str_append(str, "\r\n");
	} else if (rcpt->local_diagnostic != NULL) {
		str_append(str, "Diagnostic-Code: "
			   BAG_DSN_DIAGNOSTIC_TYPE_LOCAL"; ");
		bag_dsn_append_printable(str, rcpt->local_diagnostic,
					 BAG_DSN_MAX_VALUE_LEN);
		str_append(str, "\r\n");
	}
	if (rcpt->last_attempt != 0) {
		str_printfa(str, "Last-Attempt-Date: %s\r\n",
			    message_date_create(rcpt->last_attempt));
	}
	if (rcpt->action == BAG_DSN_ACTION_DELAYED &&
	    rcpt->will_retry_until != 0) {
		str_printfa(str, "Will-Retry-Until: %s\r\n",
			    message_date_create(rcpt->will_retry_until));
	}
}

static void
bag_dsn_append_status_part(string_t *str, const struct bag_dsn *dsn,
			   const char *boundary)
{
	const struct smtp_params_mail *mail_params = dsn->mail_params;
	unsigned int i;

	str_printfa(str, "--%s\r\n", boundary);
	str_append(str, "Content-Type: message/delivery-status\r\n"
		   "Content-Description: Delivery report\r\n\r\n");

	/* per-message fields, in RFC 3464's order */
	if (mail_params != NULL && mail_params->envid != NULL) {
		/* decoded from xtext, as for Original-Recipient */
		str_append(str, "Original-Envelope-Id: ");
		bag_dsn_append_printable(str, mail_params->envid,
					 BAG_DSN_MAX_VALUE_LEN);
		str_append(str, "\r\n");
	}
	str_printfa(str, "Reporting-MTA: dns; %s\r\n",
		    bag_dsn_printable(dsn->reporting_mta));
	if (dsn->arrival_date != 0) {
		str_printfa(str, "Arrival-Date: %s\r\n",
			    message_date_create(dsn->arrival_date));
	}

	/* one block per recipient, each after a blank line */
	for (i = 0; i < dsn->rcpt_count; i++) {
		str_append(str, "\r\n");
		bag_dsn_append_status_rcpt(str, &dsn->rcpts[i]);
	}
	str_append(str, "\r\n");
}

static const char *bag_dsn_read_error(struct istream *input)
{
	return t_strdup_printf("read(%s) failed: %s",
			       i_stream_get_name(input),
			       i_stream_get_error(input));
}

/* Copy the header of message (up to and including the blank line that
   ends it) to output with CRLF line endings: at most
   BAG_DSN_MAX_HEADER_SIZE bytes, and always ending with a line end. */
static int
bag_dsn_write_header_only(struct ostream *output, struct istream *message,
			  const char **error_r)
{
	struct message_size hdr_size;
	struct istream *crlf_input, *input;
	const unsigned char *data;
	size_t size;
	uoff_t start = message->v_offset;
	unsigned char last = '\n';
	bool has_nuls;
	int ret = 0;

	if (message_get_header_size(message, &hdr_size, &has_nuls) < 0) {
		*error_r = bag_dsn_read_error(message);
		return -1;
	}
	i_stream_seek(message, start);
	/* the virtual size counts the CRs that CRLF conversion adds */
	crlf_input = i_stream_create_crlf(message);
	input = i_stream_create_limit(crlf_input,
		I_MIN(hdr_size.virtual_size, BAG_DSN_MAX_HEADER_SIZE));
	i_stream_unref(&crlf_input);
	while (i_stream_read_more(input, &data, &size) > 0) {
		o_stream_nsend(output, data, size);
		last = data[size - 1];
		i_stream_skip(input, size);
	}
	if (input->stream_errno != 0) {
		*error_r = bag_dsn_read_error(input);
		ret = -1;
	}
	i_stream_unref(&input);
	/* a header cut at the limit, or a message ending without a line
	   end: finish the last line so the part stays well-formed */
	if (last == '\r')
		o_stream_nsend_str(output, "\n");
	else if (last != '\n')
		o_stream_nsend_str(output, "\r\n");
	return ret;
}

static int
bag_dsn_write_full(struct ostream *output, struct istream *input,
		   const char **error_r)
{
	/* an output error is left for the caller's o_stream_finish() */
	o_stream_nsend_istream(output, input);
	if (input->stream_errno != 0) {
		*error_r = bag_dsn_read_error(input);
		return -1;
	}
	return 0;
}

static int
bag_dsn_write_real(const struct bag_dsn *dsn, struct ostream *output,
		   const char **error_r)
{
	const struct smtp_params_mail *mail_params = dsn->mail_params;
	const char *boundary;
	struct istream *input;
	string_t *str;
	enum bag_dsn_action kind;
	bool full;
	int ret;

	/* RFC 3461 section 4.3: RET applies to failures; a report of delays
	   only returns the header */
	kind = bag_dsn_kind(dsn);
	full = kind == BAG_DSN_ACTION_FAILED && mail_params != NULL &&
		mail_params->ret == SMTP_PARAM_MAIL_RET_FULL;
	boundary = t_strconcat("=_bag-dsn_", bag_dsn_random_hex(), NULL);

	str = t_str_new(2048);
	bag_dsn_append_header(str, dsn, boundary, kind);
	bag_dsn_append_text_part(str, dsn, boundary, kind, full);
	bag_dsn_append_status_part(str, dsn, boundary);
	str_printfa(str, "--%s\r\n", boundary);
	if (full) {
		str_append(str, "Content-Type: message/rfc822\r\n"
			   "Content-Description: Undelivered Message\r\n");
	} else {
		str_append(str, "Content-Type: text/rfc822-headers\r\n"
			   "Content-Description: Undelivered Message "
			   "Headers\r\n");
	}
	str_append(str, "\r\n");
	o_stream_nsend(output, str_data(str), str_len(str));

	if (full) {
		input = i_stream_create_crlf(dsn->message);
		ret = bag_dsn_write_full(output, input, error_r);
		i_stream_unref(&input);
	} else {
		ret = bag_dsn_write_header_only(output, dsn->message,
						error_r);
	}
	if (ret < 0)
		return -1;

	/* the CRLF before the delimiter belongs to it, so a returned message
	   that doesn't end in a line end keeps its last line intact */
	o_stream_nsend_str(output, t_strdup_printf("\r\n--%s--\r\n",
						   boundary));
	return 0;
}

bool bag_dsn_wanted(const struct smtp_address *return_path,
		    const struct smtp_params_rcpt *params,
		    enum bag_dsn_action action)
{
	enum smtp_param_rcpt_notify notify = params == NULL ?
		SMTP_PARAM_RCPT_NOTIFY_UNSPECIFIED : params->notify;

	/* RFC 5321 section 6.1: never notify the null sender, or two
	   mail systems could bounce notifications at each other forever */
	if (smtp_address_isnull(return_path))
		return FALSE;
	if (HAS_ANY_BITS(notify, SMTP_PARAM_RCPT_NOTIFY_NEVER))
		return FALSE;
	switch (action) {
	case BAG_DSN_ACTION_FAILED:
		return notify == SMTP_PARAM_RCPT_NOTIFY_UNSPECIFIED ||
			HAS_ANY_BITS(notify, SMTP_PARAM_RCPT_NOTIFY_FAILURE);
	case BAG_DSN_ACTION_DELAYED:
		/* without NOTIFY, no delay notices: held mail waits for
		   its customer, and its senders shouldn't be flooded */
		return HAS_ANY_BITS(notify, SMTP_PARAM_RCPT_NOTIFY_DELAY);
	case BAG_DSN_ACTION_DELIVERED:
	case BAG_DSN_ACTION_RELAYED:
		return HAS_ANY_BITS(notify, SMTP_PARAM_RCPT_NOTIFY_SUCCESS);
	}
	i_unreached();
}

int bag_dsn_write(const struct bag_dsn *dsn, struct ostream *output,
		  const char **error_r)
{
	const char *error = NULL;
	unsigned int i;
	int ret;

	i_assert(dsn->rcpt_count > 0);
	i_assert(!smtp_address_isnull(dsn->return_path));
	i_assert(dsn->reporting_mta != NULL && dsn->from_address != NULL);
	/* this is synchronous: a non-blocking message can't be waited for */
	i_assert(dsn->message->blocking);
	for (i = 0; i < dsn->rcpt_count; i++)
		i_assert(dsn->rcpts[i].rcpt != NULL);

	T_BEGIN {
		ret = bag_dsn_write_real(dsn, output, &error);
	} T_END_PASS_STR_IF(ret < 0, &error);
	if (ret < 0)
		*error_r = error;
	return ret;
}
