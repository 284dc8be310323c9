/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* Fuzz target: the delivery status notifications, bag_dsn_write(), with
   everything a sender or a peer chose taken from the input: the return
   path, the recipients, ENVID, RET, NOTIFY and ORCPT (parsed as lib-smtp
   parses them from the stored envelope, so xtext can carry any byte), the
   status codes, the remote MTA's name, its reply and the message itself.

   Input: a header of FUZZ_HEADER_SIZE bytes
     [0] bits 0-1: recipients - 1; bit 2: MAIL parameters; bit 3: an
         arrival date
     [1..4] per recipient: bit 0 delayed (else failed), with bit 6
         relayed (else delivered); bit 1 a remote MTA; bit 2 a
         diagnostic; bit 3 a last attempt; bit 4 a retry date; bit 5
         RCPT parameters; bit 6 a success notification; bit 7 the
         diagnostic is a connection error (X-Dovecot-Bag), not a reply
     [5] the message is read in chunks of this many bytes (0: one)
   then NUL-separated fields: the reporting MTA, the From: address, the
   return path, the MAIL parameters, and per recipient its address, RCPT
   parameters, status, remote MTA and diagnostic; the rest is the message.
   Missing fields are empty; an address that doesn't parse is replaced.

   Asserts: the report's header, its notification and its delivery-status
   part are printable US-ASCII in CRLF lines of at most 998 octets; the
   multipart/report has its boundary, opened three times and closed once,
   at the end; the delivery-status part has one block per recipient, with
   its action and a status code of the right class; the third part is
   message/rfc822 with the whole message (line ends made CRLF) for RET=FULL
   and a failure, else text/rfc822-headers with the message's header only,
   ending in a line end. */

#include "lib.h"
#include "array.h"
#include "buffer.h"
#include "str.h"
#include "istream.h"
#include "istream-concat.h"
#include "ostream.h"
#include "smtp-address.h"
#include "smtp-params.h"
#include "fuzz-common.h"
#include "bag-dsn.h"

#define FUZZ_HEADER_SIZE 6
#define FUZZ_RCPTS_MAX 4
#define FUZZ_MAX_CHUNKS 512
/* RFC 5322, 2.1.1 */
#define FUZZ_LINE_MAX 998
#define FUZZ_TIME 1767225600
/* the most of a header that is returned (bag-dsn.c) */
#define FUZZ_DSN_MAX_HEADER_SIZE (1024 * 1024)

#define FUZZ_FLAG_RCPTS_MASK 0x03
#define FUZZ_FLAG_MAIL_PARAMS 0x04
#define FUZZ_FLAG_ARRIVAL_DATE 0x08

#define FUZZ_RCPT_DELAYED 0x01
#define FUZZ_RCPT_REMOTE_MTA 0x02
#define FUZZ_RCPT_DIAGNOSTIC 0x04
#define FUZZ_RCPT_LAST_ATTEMPT 0x08
#define FUZZ_RCPT_WILL_RETRY 0x10
#define FUZZ_RCPT_PARAMS 0x20
/* a success notification: delivered, or relayed with FUZZ_RCPT_DELAYED */
#define FUZZ_RCPT_SUCCESS 0x40
/* the diagnostic is a connection error (local_diagnostic) */
#define FUZZ_RCPT_LOCAL 0x80

/* what the envelope keeps and lib-smtp parses */
#define FUZZ_CAPS \
	(SMTP_CAPABILITY_DSN | SMTP_CAPABILITY_SIZE | \
	 SMTP_CAPABILITY_8BITMIME | SMTP_CAPABILITY_BINARYMIME)

struct fuzz_fields {
	const unsigned char *p, *end;
};

struct fuzz_dsn {
	pool_t pool;
	struct bag_dsn dsn;
	struct smtp_params_mail mail_params;
	struct smtp_params_rcpt rcpt_params[FUZZ_RCPTS_MAX];
	struct bag_dsn_recipient rcpts[FUZZ_RCPTS_MAX];
	const unsigned char *message;
	size_t message_size;
	bool full;
};

/* The next NUL-terminated field ("" when the input has ended). */
static const char *fuzz_field(struct fuzz_fields *fields)
{
	const unsigned char *start = fields->p, *nul;

	nul = memchr(start, '\0', fields->end - start);
	if (nul == NULL) {
		fields->p = fields->end;
		return t_strndup(start, fields->end - start);
	}
	fields->p = nul + 1;
	return t_strndup(start, nul - start);
}

static const struct smtp_address *
fuzz_address(pool_t pool, const char *str, const char *fallback)
{
	struct smtp_address *addr;
	const char *error;

	if (smtp_address_parse_path(pool, str,
			SMTP_ADDRESS_PARSE_FLAG_BRACKETS_OPTIONAL,
			&addr, &error) < 0 || smtp_address_isnull(addr)) {
		addr = smtp_address_create(pool, fallback, "example.org");
	}
	return addr;
}

static void
fuzz_dsn_init(struct fuzz_dsn *t, const unsigned char *data, size_t size)
{
	unsigned char header[FUZZ_HEADER_SIZE];
	struct fuzz_fields fields;
	struct bag_dsn_recipient *rcpt;
	enum smtp_param_parse_error code;
	const char *params, *error;
	unsigned int i, count;

	i_zero(&header);
	memcpy(header, data, I_MIN(size, sizeof(header)));
	fields.p = data + I_MIN(size, sizeof(header));
	fields.end = data + size;

	t->dsn.reporting_mta = fuzz_field(&fields);
	t->dsn.from_address = fuzz_field(&fields);
	t->dsn.return_path = fuzz_address(t->pool, fuzz_field(&fields),
					  "sender");
	params = fuzz_field(&fields);
	if ((header[0] & FUZZ_FLAG_MAIL_PARAMS) != 0) {
		if (smtp_params_mail_parse(t->pool, params, FUZZ_CAPS, NULL,
					   NULL, &t->mail_params, &code,
					   &error) < 0)
			i_zero(&t->mail_params);
		t->dsn.mail_params = &t->mail_params;
	}
	if ((header[0] & FUZZ_FLAG_ARRIVAL_DATE) != 0)
		t->dsn.arrival_date = FUZZ_TIME;

	count = (header[0] & FUZZ_FLAG_RCPTS_MASK) + 1;
	for (i = 0; i < count; i++) {
		unsigned char flags = header[1 + i];

		rcpt = &t->rcpts[i];
		rcpt->rcpt = fuzz_address(t->pool, fuzz_field(&fields),
					  t_strdup_printf("rcpt%u", i + 1));
		params = fuzz_field(&fields);
		if ((flags & FUZZ_RCPT_PARAMS) != 0) {
			if (smtp_params_rcpt_parse(t->pool, params, 0,
						   FUZZ_CAPS, NULL,
						   &t->rcpt_params[i], &code,
						   &error) < 0)
				i_zero(&t->rcpt_params[i]);
			rcpt->params = &t->rcpt_params[i];
		}
		if ((flags & FUZZ_RCPT_SUCCESS) != 0) {
			rcpt->action = (flags & FUZZ_RCPT_DELAYED) != 0 ?
				BAG_DSN_ACTION_RELAYED :
				BAG_DSN_ACTION_DELIVERED;
		} else {
			rcpt->action = (flags & FUZZ_RCPT_DELAYED) != 0 ?
				BAG_DSN_ACTION_DELAYED : BAG_DSN_ACTION_FAILED;
		}
		rcpt->status = fuzz_field(&fields);
		rcpt->remote_mta = fuzz_field(&fields);
		if ((flags & FUZZ_RCPT_REMOTE_MTA) == 0)
			rcpt->remote_mta = NULL;
		rcpt->diagnostic = fuzz_field(&fields);
		if ((flags & FUZZ_RCPT_DIAGNOSTIC) == 0)
			rcpt->diagnostic = NULL;
		else if ((flags & FUZZ_RCPT_LOCAL) != 0) {
			rcpt->local_diagnostic = rcpt->diagnostic;
			rcpt->diagnostic = NULL;
		}
		if ((flags & FUZZ_RCPT_LAST_ATTEMPT) != 0)
			rcpt->last_attempt = FUZZ_TIME + 60;
		if ((flags & FUZZ_RCPT_WILL_RETRY) != 0)
			rcpt->will_retry_until = FUZZ_TIME + 5*24*60*60;
		if (rcpt->action == BAG_DSN_ACTION_FAILED &&
		    t->dsn.mail_params != NULL &&
		    t->mail_params.ret == SMTP_PARAM_MAIL_RET_FULL)
			t->full = TRUE;
	}
	t->dsn.rcpts = t->rcpts;
	t->dsn.rcpt_count = count;
	t->message = fields.p;
	t->message_size = fields.end - fields.p;

	/* the message, in chunks: the header's end may cross reads */
	t->dsn.message = header[5] == 0 || t->message_size == 0 ?
		i_stream_create_from_data(t->message, t->message_size) :
		NULL;
	if (t->dsn.message == NULL) {
		struct istream *inputs[FUZZ_MAX_CHUNKS + 1];
		size_t pos, len;

		count = 0;
		for (pos = 0; pos < t->message_size; pos += len) {
			len = count + 1 == FUZZ_MAX_CHUNKS ?
				t->message_size - pos :
				I_MIN(header[5], t->message_size - pos);
			inputs[count++] = i_stream_create_from_data(
				t->message + pos, len);
		}
		inputs[count] = NULL;
		t->dsn.message = i_stream_create_concat(inputs);
		for (i = 0; i < count; i++)
			i_stream_unref(&inputs[i]);
	}
}

/* The message with each LF that has no CR before it made CRLF, as
   istream-crlf does. */
static string_t *fuzz_crlf(const unsigned char *data, size_t size)
{
	string_t *str = t_str_new(size + 64);
	size_t i;

	for (i = 0; i < size; i++) {
		if (data[i] == '\n' && (i == 0 || data[i - 1] != '\r'))
			str_append_c(str, '\r');
		str_append_c(str, data[i]);
	}
	return str;
}

/* Text the report generates itself: printable US-ASCII (a tab only where
   the header folds), CRLF line ends, lines of at most 998 octets. */
static void fuzz_assert_generated(const char *text, size_t len)
{
	size_t i, line_len = 0;

	for (i = 0; i < len; i++) {
		unsigned char chr = text[i];

		if (chr == '\r') {
			i_assert(i + 1 < len && text[i + 1] == '\n');
			if (line_len > FUZZ_LINE_MAX) {
				i_panic("a line of %zu octets: %s...", line_len,
					t_strndup(text + i - line_len, 60));
			}
			line_len = 0;
			i++;
			continue;
		}
		i_assert(chr != '\n');
		i_assert((chr >= 0x20 && chr < 0x7f) ||
			 (chr == '\t' && line_len == 0));
		line_len++;
	}
	i_assert(line_len == 0);
}

/* The part from start to end (the CRLF before the next delimiter not
   included): its header and body. */
static void
fuzz_part_split(const char *start, const char *end,
		const char **header_r, const char **body_r, size_t *body_len_r)
{
	const char *p;

	p = fuzz_memmem(start, end - start, "\r\n\r\n", 4);
	i_assert(p != NULL);
	*header_r = t_strdup_until(start, p + 2);
	*body_r = p + 4;
	*body_len_r = end - (p + 4);
}

static bool
fuzz_status_is_valid(const char *status, enum bag_dsn_action action)
{
	unsigned int i, digits;
	const char *p;

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
	}
	if (status[1] != '.')
		return FALSE;
	p = status + 2;
	for (i = 0; i < 2; i++) {
		for (digits = 0; *p >= '0' && *p <= '9'; p++)
			digits++;
		if (digits == 0 || digits > 3)
			return FALSE;
		if (i == 0 && *p++ != '.')
			return FALSE;
	}
	return *p == '\0';
}

static const char *fuzz_action_name(enum bag_dsn_action action)
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

static void
fuzz_assert_status_part(struct fuzz_dsn *t, const char *body, size_t len)
{
	const char *const *lines, *value;
	unsigned int i, rcpt = 0;
	bool in_rcpt = FALSE, have_action = FALSE, have_status = FALSE;

	lines = t_strsplit(t_strndup(body, len), "\n");
	i_assert(str_begins(lines[0], "Reporting-MTA: dns; ") ||
		 str_begins(lines[0], "Original-Envelope-Id: "));
	for (i = 0; lines[i] != NULL; i++) {
		const char *line = t_strcut(lines[i], '\r');

		if (*line == '\0') {
			/* a recipient block ends or starts */
			if (in_rcpt) {
				i_assert(have_action && have_status);
				rcpt++;
			}
			in_rcpt = lines[i + 1] != NULL &&
				*lines[i + 1] != '\0';
			have_action = have_status = FALSE;
			continue;
		}
		if (!in_rcpt)
			continue;
		i_assert(rcpt < t->dsn.rcpt_count);
		if (str_begins(line, "Action: ")) {
			value = line + strlen("Action: ");
			i_assert(strcmp(value, fuzz_action_name(
				t->rcpts[rcpt].action)) == 0);
			have_action = TRUE;
		} else if (str_begins(line, "Status: ")) {
			value = line + strlen("Status: ");
			i_assert(fuzz_status_is_valid(value,
						      t->rcpts[rcpt].action));
			have_status = TRUE;
		}
	}
	i_assert(rcpt == t->dsn.rcpt_count);
}

/* The header of a message with CRLF line ends as the report returns it:
   up to and including the first empty line, as Dovecot's
   message_get_header_size() finds it (a line of CRs is not empty), or all
   of it (at most FUZZ_DSN_MAX_HEADER_SIZE); a last line without its end
   gets one. */
static string_t *fuzz_header_only(const string_t *crlf)
{
	const unsigned char *data = str_data(crlf);
	size_t i, line = 0, len = str_len(crlf);
	string_t *str;

	for (i = 0; i < len; i++) {
		if (i == FUZZ_DSN_MAX_HEADER_SIZE) {
			len = i;
			break;
		}
		if (data[i] != '\n')
			continue;
		if (i == line || (i == line + 1 && data[line] == '\r')) {
			len = i + 1;
			break;
		}
		line = i + 1;
	}
	str = t_str_new(len + 2);
	str_append_data(str, data, len);
	if (len > 0 && data[len - 1] == '\r')
		str_append_c(str, '\n');
	else if (len > 0 && data[len - 1] != '\n')
		str_append(str, "\r\n");
	return str;
}

static void
fuzz_assert_returned(struct fuzz_dsn *t, const char *header,
		     const char *body, size_t len)
{
	string_t *expected = fuzz_crlf(t->message, t->message_size);

	if (t->full) {
		i_assert(str_begins(header,
				    "Content-Type: message/rfc822\r\n"));
	} else {
		i_assert(str_begins(header,
				    "Content-Type: text/rfc822-headers\r\n"));
		expected = fuzz_header_only(expected);
	}
	i_assert(len == str_len(expected));
	i_assert(memcmp(body, str_data(expected), len) == 0);
}

static void fuzz_assert_report(struct fuzz_dsn *t, const char *text,
			       size_t len)
{
	const char *body, *boundary, *p, *q, *end, *header;
	const char *delims[4], *part_body;
	size_t header_len, delim_len, part_len;
	unsigned int i, count = 0;

	/* the report's header */
	p = fuzz_memmem(text, len, "\r\n\r\n", 4);
	i_assert(p != NULL);
	header_len = p + 2 - text;
	body = p + 4;
	fuzz_assert_generated(text, header_len);
	p = strstr(t_strndup(text, header_len),
		   "Content-Type: multipart/report; "
		   "report-type=delivery-status;\r\n\tboundary=\"");
	i_assert(p != NULL);
	p = strchr(p, '"') + 1;
	q = strchr(p, '"');
	i_assert(q != NULL && q > p);
	boundary = t_strdup_until(p, q);
	delim_len = strlen(boundary) + 2;

	/* the boundary: three delimiters, each at a line start, and the
	   close delimiter at the very end */
	end = text + len;
	for (p = body; (q = fuzz_memmem(p, end - p, boundary,
				   strlen(boundary))) != NULL;
	     p = q + strlen(boundary)) {
		i_assert(q - 2 >= body && q[-2] == '-' && q[-1] == '-');
		i_assert(q - 3 < body || q[-3] == '\n');
		i_assert(count < N_ELEMENTS(delims));
		delims[count++] = q - 2;
	}
	i_assert(count == 4);
	for (i = 0; i < 3; i++)
		i_assert(memcmp(delims[i] + delim_len, "\r\n", 2) == 0);
	i_assert(delims[3] + delim_len + 4 == end);
	i_assert(memcmp(delims[3] + delim_len, "--\r\n", 4) == 0);
	/* the preamble and the first two parts are generated */
	fuzz_assert_generated(body, delims[2] - body);

	fuzz_part_split(delims[0] + delim_len + 2, delims[1] - 2,
			&header, &part_body, &part_len);
	i_assert(str_begins(header, "Content-Type: text/plain; "
			    "charset=us-ascii\r\n"));
	fuzz_part_split(delims[1] + delim_len + 2, delims[2] - 2,
			&header, &part_body, &part_len);
	i_assert(strcmp(header, "Content-Type: message/delivery-status\r\n"
			"Content-Description: Delivery report\r\n") == 0);
	fuzz_assert_status_part(t, part_body, part_len);
	/* the third part's header is generated; what it returns isn't */
	fuzz_part_split(delims[2] + delim_len + 2, delims[3] - 2,
			&header, &part_body, &part_len);
	fuzz_assert_generated(header, strlen(header));
	fuzz_assert_returned(t, header, part_body, part_len);
}

static void fuzz_dsn(const unsigned char *data, size_t size)
{
	struct fuzz_dsn t;
	struct ostream *output;
	buffer_t *buf;
	const char *error;

	i_zero(&t);
	t.pool = pool_alloconly_create("fuzz dsn", 1024);
	fuzz_dsn_init(&t, data, size);

	/* not on the data stack: bag_dsn_write() writes to it from a data
	   stack frame of its own */
	buf = buffer_create_dynamic(default_pool, 4096);
	output = o_stream_create_buffer(buf);
	if (bag_dsn_write(&t.dsn, output, &error) < 0)
		i_panic("bag_dsn_write() failed: %s", error);
	i_assert(o_stream_finish(output) > 0);
	o_stream_destroy(&output);

	fuzz_assert_report(&t, buf->data, buf->used);

	buffer_free(&buf);
	i_stream_unref(&t.dsn.message);
	pool_unref(&t.pool);
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
	T_BEGIN {
		fuzz_dsn(data, size);
	} T_END;
	return 0;
}
