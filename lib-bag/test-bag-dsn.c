/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* Unit tests of the delivery status notifications: when one is due
   (bag_dsn_wanted()) and what bag_dsn_write() composes, checked part by
   part and field by field.

   With BAG_DSN_SAMPLE=PATH set, the two-recipient failure report is also
   written to PATH (RET=HDRS), PATH.full (RET=FULL) and the delay report
   to PATH.delayed, so that a real bounce parser can be run on them. */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "buffer.h"
#include "istream.h"
#include "istream-concat.h"
#include "ostream.h"
#include "write-full.h"
#include "message-date.h"
#include "smtp-address.h"
#include "smtp-params.h"
#include "test-common.h"
#include "bag-dsn.h"

#include <fcntl.h>
#include <unistd.h>

#define TEST_REPORTING_MTA "mx2.example.net"
#define TEST_FROM_ADDRESS "MAILER-DAEMON@mx2.example.net"

/* the original message, with LF-only line endings */
static const char test_orig_header[] =
	"Return-Path: <sender@example.com>\n"
	"From: Sender <sender@example.com>\n"
	"To: alice@customer.example, bob@customer.example\n"
	"Subject: quarterly report\n"
	"Message-ID: <orig-1@example.com>\n"
	"MIME-Version: 1.0\n"
	"Content-Type: text/plain; charset=us-ascii\n"
	"\n";
static const char test_orig_body[] =
	"Hello,\n"
	"\n"
	"the body line.\n"
	"--=_bag-dsn_not-the-boundary\n";

struct test_dsn {
	pool_t pool;
	struct smtp_address *return_path;
	struct smtp_params_mail mail_params;
	struct smtp_params_rcpt rcpt_params[2];
	struct bag_dsn_recipient rcpts[2];
	struct bag_dsn dsn;
	const char *message;
	struct istream *input;
};

/* what bag_dsn_write() produced, cut into its pieces */
struct test_report {
	const char *text, *header, *boundary;
	/* each part's header and body */
	const char *part_header[3], *part_body[3];
	unsigned int part_count;
};

static const char *test_crlf(const char *text)
{
	string_t *str = t_str_new(strlen(text) * 2);

	for (; *text != '\0'; text++) {
		if (*text == '\n')
			str_append_c(str, '\r');
		str_append_c(str, *text);
	}
	return str_c(str);
}

static void test_dsn_params_mail(struct test_dsn *t, const char *args)
{
	enum smtp_param_parse_error error_code;
	const char *error;

	test_assert(smtp_params_mail_parse(t->pool, args, SMTP_CAPABILITY_DSN,
					   NULL, NULL, &t->mail_params,
					   &error_code, &error) == 0);
}

static void
test_dsn_params_rcpt(struct test_dsn *t, unsigned int idx, const char *args)
{
	enum smtp_param_parse_error error_code;
	const char *error;

	test_assert(smtp_params_rcpt_parse(t->pool, args, 0,
					   SMTP_CAPABILITY_DSN, NULL,
					   &t->rcpt_params[idx], &error_code,
					   &error) == 0);
}

/* Two failed recipients: alice with ORCPT and NOTIFY=FAILURE, rejected by
   the customer's MTA; bob without parameters, expired without ever being
   attempted. mail_args are the MAIL FROM parameters. */
static void test_dsn_init(struct test_dsn *t, const char *mail_args)
{
	i_zero(t);
	t->pool = pool_alloconly_create("test bag dsn", 2048);
	t->return_path = smtp_address_create(t->pool, "sender",
					     "example.com");
	test_dsn_params_mail(t, mail_args);
	test_dsn_params_rcpt(t, 0, "ORCPT=rfc822;alice@customer.example "
			     "NOTIFY=FAILURE");
	test_dsn_params_rcpt(t, 1, "");

	t->rcpts[0].rcpt = smtp_address_create(t->pool, "alice",
					       "customer.example");
	t->rcpts[0].params = &t->rcpt_params[0];
	t->rcpts[0].action = BAG_DSN_ACTION_FAILED;
	t->rcpts[0].status = "5.1.1";
	t->rcpts[0].remote_mta = "mx.customer.example";
	t->rcpts[0].diagnostic = "550 5.1.1 <alice@customer.example>: "
		"Recipient address rejected: User unknown";
	t->rcpts[0].last_attempt = 1767261600;

	t->rcpts[1].rcpt = smtp_address_create(t->pool, "bob",
					       "customer.example");
	t->rcpts[1].params = &t->rcpt_params[1];
	t->rcpts[1].action = BAG_DSN_ACTION_FAILED;
	t->rcpts[1].status = "4.4.7";

	t->message = t_strconcat(test_orig_header, test_orig_body, NULL);
	t->dsn.reporting_mta = TEST_REPORTING_MTA;
	t->dsn.from_address = TEST_FROM_ADDRESS;
	t->dsn.return_path = t->return_path;
	t->dsn.mail_params = &t->mail_params;
	t->dsn.arrival_date = 1767225600;
	t->dsn.rcpts = t->rcpts;
	t->dsn.rcpt_count = N_ELEMENTS(t->rcpts);
}

/* Both recipients delayed, with a date until which retrying goes on. */
static void test_dsn_set_delayed(struct test_dsn *t)
{
	unsigned int i;

	for (i = 0; i < N_ELEMENTS(t->rcpts); i++) {
		t->rcpts[i].action = BAG_DSN_ACTION_DELAYED;
		t->rcpts[i].status = "4.4.1";
		t->rcpts[i].will_retry_until = 1767657600;
	}
	t->rcpts[0].diagnostic = "421 4.4.1 mx.customer.example busy";
}

static void test_dsn_deinit(struct test_dsn *t)
{
	i_stream_unref(&t->input);
	pool_unref(&t->pool);
}

static int
test_dsn_write_from(struct test_dsn *t, struct istream *input,
		    const char **text_r, const char **error_r)
{
	/* not on the data stack: bag_dsn_write() writes to it from inside
	   a data stack frame of its own */
	buffer_t *buf = buffer_create_dynamic(default_pool, 4096);
	struct ostream *output;
	int ret;

	i_stream_unref(&t->input);
	t->input = input;
	t->dsn.message = input;
	output = o_stream_create_buffer(buf);
	ret = bag_dsn_write(&t->dsn, output, error_r);
	if (ret == 0)
		test_assert(o_stream_finish(output) > 0);
	else
		o_stream_abort(output);
	o_stream_destroy(&output);
	*text_r = t_strndup(buf->data, buf->used);
	/* the report is text: no NUL can hide the rest from the checks */
	test_assert(strlen(*text_r) == buf->used);
	buffer_free(&buf);
	return ret;
}

static const char *test_dsn_write(struct test_dsn *t)
{
	const char *text, *error = NULL;

	test_assert(test_dsn_write_from(t, i_stream_create_from_data(
		t->message, strlen(t->message)), &text, &error) == 0);
	test_assert(error == NULL);
	return text;
}

static bool test_ends_with(const char *text, const char *suffix)
{
	size_t len = strlen(text), suffix_len = strlen(suffix);

	return len >= suffix_len &&
		strcmp(text + len - suffix_len, suffix) == 0;
}

static bool test_is_crlf_only(const char *text)
{
	const char *p;

	for (p = text; *p != '\0'; p++) {
		if (*p == '\n' && (p == text || p[-1] != '\r'))
			return FALSE;
		if (*p == '\r' && p[1] != '\n')
			return FALSE;
	}
	return TRUE;
}

static size_t test_max_line_length(const char *text)
{
	size_t max = 0;
	const char *p, *line = text;

	for (p = text; *p != '\0'; p++) {
		if (*p == '\n') {
			max = I_MAX(max, (size_t)(p - line));
			line = p + 1;
		}
	}
	return I_MAX(max, (size_t)(p - line));
}

static unsigned int test_count(const char *text, const char *needle)
{
	unsigned int count = 0;

	while ((text = strstr(text, needle)) != NULL) {
		count++;
		text += strlen(needle);
	}
	return count;
}

/* Whether a block of CRLF-ended lines has this exact line. */
static bool test_has_line(const char *block, const char *line)
{
	const char *needle = t_strconcat("\r\n", line, "\r\n", NULL);

	return strstr(t_strconcat("\r\n", block, NULL), needle) != NULL;
}

/* Whether a block of CRLF-ended lines has a field of this name. */
static bool test_has_field(const char *block, const char *name)
{
	const char *needle = t_strconcat("\r\n", name, ":", NULL);

	return strstr(t_strconcat("\r\n", block, NULL), needle) != NULL;
}

/* The value of a field (unfolded, first occurrence), or NULL. */
static const char *test_field(const char *block, const char *name)
{
	const char *needle = t_strconcat("\r\n", name, ": ", NULL);
	const char *p, *end;
	string_t *value;

	p = strstr(t_strconcat("\r\n", block, NULL), needle);
	if (p == NULL)
		return NULL;
	p += strlen(needle);
	value = t_str_new(128);
	for (;;) {
		end = strstr(p, "\r\n");
		i_assert(end != NULL);
		str_append_data(value, p, end - p);
		if (end[2] != ' ' && end[2] != '\t')
			break;
		p = end + 2;
	}
	return str_c(value);
}

/* Cut the report at its top header's end and its boundaries, checking on
   the way that the boundary appears only in Content-Type and as the
   delimiters. */
static void test_report_parse(const char *text, struct test_report *r)
{
	const char *p, *body, *ctype, *delim, *close, *next;

	i_zero(r);
	r->text = text;
	p = strstr(text, "\r\n\r\n");
	test_assert(p != NULL);
	if (p == NULL)
		return;
	r->header = t_strdup_until(text, p + 2);
	body = p + 4;

	ctype = test_field(r->header, "Content-Type");
	test_assert(ctype != NULL);
	if (ctype == NULL)
		return;
	p = strstr(ctype, "boundary=\"");
	test_assert(p != NULL);
	if (p == NULL)
		return;
	p += strlen("boundary=\"");
	r->boundary = t_strdup_until(p, strchr(p, '"'));
	test_assert(strlen(r->boundary) >= 32 && strlen(r->boundary) <= 70);

	/* header parameter + 3 delimiters + the close delimiter */
	test_assert(test_count(text, r->boundary) == 5);
	delim = t_strconcat("\r\n--", r->boundary, "\r\n", NULL);
	close = t_strconcat("\r\n--", r->boundary, "--\r\n", NULL);
	/* the preamble, then the first delimiter at a line start */
	p = strstr(body, delim + 2);
	test_assert(p != NULL && p > body && p[-1] == '\n');
	if (p == NULL)
		return;
	p += strlen(delim + 2);
	while (r->part_count < N_ELEMENTS(r->part_body)) {
		const char *hdr_end = strstr(p, "\r\n\r\n");
		bool last;

		test_assert(hdr_end != NULL);
		if (hdr_end == NULL)
			return;
		r->part_header[r->part_count] = t_strdup_until(p, hdr_end + 2);
		p = hdr_end + 4;
		next = strstr(p, delim);
		last = next == NULL;
		if (last)
			next = strstr(p, close);
		test_assert(next != NULL);
		if (next == NULL)
			return;
		r->part_body[r->part_count++] = t_strdup_until(p, next);
		if (last) {
			/* nothing after the close delimiter */
			test_assert(strcmp(next, close) == 0);
			break;
		}
		p = next + strlen(delim);
	}
	test_assert(r->part_count == 3);
}

/* The blocks of the delivery-status part: [0] is the per-message one. */
static const char *const *test_status_blocks(const char *body)
{
	ARRAY_TYPE(const_string) blocks;
	const char *p, *end, *block;

	t_array_init(&blocks, 4);
	p = body;
	while (*p != '\0') {
		end = strstr(p, "\r\n\r\n");
		if (end == NULL) {
			/* the last block ends with the part */
			test_assert(test_ends_with(p, "\r\n"));
			block = t_strdup(p);
			array_push_back(&blocks, &block);
			break;
		}
		block = t_strdup_until(p, end + 2);
		array_push_back(&blocks, &block);
		p = end + 4;
	}
	array_append_zero(&blocks);
	return array_front(&blocks);
}

static void test_report_check_common(const struct test_report *r)
{
	const char *value, *p, *end;
	time_t date = 0;
	int tz;

	test_assert(test_is_crlf_only(r->text));
	test_assert(test_max_line_length(r->text) <= 998);
	test_assert(test_has_line(r->header, "From: Mail Delivery System "
				  "<" TEST_FROM_ADDRESS ">"));
	test_assert(test_has_line(r->header, "To: <sender@example.com>"));
	test_assert(test_has_line(r->header, "Auto-Submitted: auto-replied"));
	test_assert(test_has_line(r->header, "MIME-Version: 1.0"));
	value = test_field(r->header, "Content-Type");
	test_assert(value != NULL && str_begins(value,
		"multipart/report; report-type=delivery-status;"));
	value = test_field(r->header, "Date");
	test_assert(value != NULL && message_date_parse(
		(const unsigned char *)value, strlen(value), &date, &tz));
	test_assert(value != NULL && date > time(NULL) - 60 &&
		    date <= time(NULL) + 1);
	value = test_field(r->header, "Message-ID");
	/* <32 hex digits@host> */
	test_assert(value != NULL && value[0] == '<' &&
		    strspn(value + 1, "0123456789abcdef") == 32 &&
		    strcmp(value + 33, "@" TEST_REPORTING_MTA ">") == 0);
	test_assert(r->part_count == 3);
	if (r->part_count != 3)
		return;
	test_assert(test_has_line(r->part_header[0], "Content-Type: "
				  "text/plain; charset=us-ascii"));
	test_assert(test_has_line(r->part_header[1], "Content-Type: "
				  "message/delivery-status"));
	/* only printable US-ASCII outside the returned message */
	end = strstr(r->text, r->part_header[2]);
	for (p = r->text; p < end; p++) {
		if (*p != '\r' && *p != '\n' && *p != '\t' &&
		    ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f)) {
			test_assert(FALSE);
			break;
		}
	}
}

static void test_report_check_failed_status(const char *body)
{
	const char *const *blocks = test_status_blocks(body);
	const char *value;

	test_assert(str_array_length(blocks) == 3);
	if (str_array_length(blocks) != 3)
		return;
	/* per message: ENVID=QQ314159+2Bx, decoded */
	test_assert(test_has_line(blocks[0],
				  "Original-Envelope-Id: QQ314159+x"));
	test_assert(test_has_line(blocks[0],
				  "Reporting-MTA: dns; " TEST_REPORTING_MTA));
	value = test_field(blocks[0], "Arrival-Date");
	test_assert_strcmp(value, message_date_create(1767225600));
	test_assert(!test_has_field(blocks[0], "Final-Recipient"));

	/* alice: ORCPT and everything known about the attempt */
	test_assert(test_has_line(blocks[1], "Original-Recipient: "
				  "rfc822; alice@customer.example"));
	test_assert(test_has_line(blocks[1], "Final-Recipient: "
				  "rfc822; alice@customer.example"));
	test_assert(test_has_line(blocks[1], "Action: failed"));
	test_assert(test_has_line(blocks[1], "Status: 5.1.1"));
	test_assert(test_has_line(blocks[1],
				  "Remote-MTA: dns; mx.customer.example"));
	test_assert(test_has_line(blocks[1], "Diagnostic-Code: smtp; "
		"550 5.1.1 <alice@customer.example>: "
		"Recipient address rejected: User unknown"));
	test_assert_strcmp(test_field(blocks[1], "Last-Attempt-Date"),
			   message_date_create(1767261600));
	test_assert(!test_has_field(blocks[1], "Will-Retry-Until"));
	test_assert(str_begins(blocks[1], "Original-Recipient: "));

	/* bob: no ORCPT, never attempted */
	test_assert(!test_has_field(blocks[2], "Original-Recipient"));
	test_assert(test_has_line(blocks[2], "Final-Recipient: "
				  "rfc822; bob@customer.example"));
	test_assert(test_has_line(blocks[2], "Action: failed"));
	test_assert(test_has_line(blocks[2], "Status: 4.4.7"));
	test_assert(!test_has_field(blocks[2], "Remote-MTA"));
	test_assert(!test_has_field(blocks[2], "Diagnostic-Code"));
	test_assert(!test_has_field(blocks[2], "Last-Attempt-Date"));
	test_assert(!test_has_field(blocks[2], "Will-Retry-Until"));
}

static void test_report_check_headers_only(const struct test_report *r)
{
	test_assert(test_has_line(r->part_header[2],
				  "Content-Type: text/rfc822-headers"));
	/* the whole original header, its blank line included, and nothing
	   of the body */
	test_assert_strcmp(r->part_body[2], test_crlf(test_orig_header));
	test_assert(strstr(r->text, "the body line") == NULL);
}

/* With BAG_DSN_SAMPLE set, write text to its path with suffix added. */
static void test_write_sample(const char *suffix, const char *text)
{
	const char *path = getenv("BAG_DSN_SAMPLE");
	int fd;

	if (path == NULL)
		return;
	path = t_strconcat(path, suffix, NULL);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd == -1)
		i_fatal("open(%s) failed: %m", path);
	if (write_full(fd, text, strlen(text)) < 0)
		i_fatal("write(%s) failed: %m", path);
	i_close_fd(&fd);
}

static void test_bag_dsn_write_hdrs(void)
{
	static const char *const mail_args[] = {
		"ENVID=QQ314159+2Bx RET=HDRS", "ENVID=QQ314159+2Bx"
	};
	struct test_report r;
	struct test_dsn t;
	const char *text;
	unsigned int i;

	test_begin("bag_dsn_write() RET=HDRS and RET unspecified");
	for (i = 0; i < N_ELEMENTS(mail_args); i++) {
		test_dsn_init(&t, mail_args[i]);
		text = test_dsn_write(&t);
		test_report_parse(text, &r);
		test_report_check_common(&r);
		test_assert_idx(test_has_line(r.header, "Subject: Undelivered "
			"Mail Returned to Sender"), i);
		if (r.part_count == 3) {
			test_assert(strstr(r.part_body[0],
					   "<alice@customer.example>: failed "
					   "(5.1.1)\r\n") != NULL);
			test_assert(strstr(r.part_body[0],
					   "<bob@customer.example>: failed "
					   "(4.4.7)\r\n") != NULL);
			test_assert(strstr(r.part_body[0], "    mx.customer."
					   "example said:\r\n    550 5.1.1 ")
				    != NULL);
			test_report_check_failed_status(r.part_body[1]);
			test_report_check_headers_only(&r);
		}
		if (i == 0)
			test_write_sample("", text);
		test_dsn_deinit(&t);
	}
	test_end();
}

/* A recipient whose customer's MTA was never reached: the connection
   error is no SMTP reply, and says so in its Diagnostic-Code type. */
static void test_bag_dsn_write_local_diagnostic(void)
{
	const char *const *blocks;
	struct test_report r;
	struct test_dsn t;
	const char *text;

	test_begin("bag_dsn_write() connection error as diagnostic");
	test_dsn_init(&t, "");
	t.rcpts[1].local_diagnostic = "connect(mx.customer.example:25) "
		"failed: Connection refused\r\nX-Evil: 1";
	text = test_dsn_write(&t);
	test_report_parse(text, &r);
	test_report_check_common(&r);
	if (r.part_count == 3) {
		blocks = test_status_blocks(r.part_body[1]);
		test_assert(str_array_length(blocks) == 3);
		if (str_array_length(blocks) == 3) {
			test_assert(test_has_line(blocks[2],
				"Diagnostic-Code: X-Dovecot-Bag; "
				"connect(mx.customer.example:25) failed: "
				"Connection refused X-Evil: 1"));
			test_assert(!test_has_field(blocks[2], "Remote-MTA"));
			/* the reply of the other one is still smtp's */
			test_assert(test_has_line(blocks[1],
				"Diagnostic-Code: smtp; 550 5.1.1 "
				"<alice@customer.example>: Recipient address "
				"rejected: User unknown"));
		}
		test_assert(strstr(r.part_body[0], "(4.4.7)\r\n    connect("
				   "mx.customer.example:25) failed") != NULL);
	}
	test_dsn_deinit(&t);
	test_end();
}

static void test_bag_dsn_write_full(void)
{
	struct test_report r;
	struct test_dsn t;
	const char *text;

	test_begin("bag_dsn_write() RET=FULL");
	test_dsn_init(&t, "RET=FULL ENVID=QQ314159+2Bx");
	text = test_dsn_write(&t);
	test_write_sample(".full", text);
	test_report_parse(text, &r);
	test_report_check_common(&r);
	test_assert(test_has_line(r.header, "Subject: Undelivered "
				  "Mail Returned to Sender"));
	if (r.part_count == 3) {
		test_report_check_failed_status(r.part_body[1]);
		test_assert(test_has_line(r.part_header[2],
					  "Content-Type: message/rfc822"));
		/* the whole message, LFs turned into CRLFs */
		test_assert_strcmp(r.part_body[2], test_crlf(t.message));
	}
	test_dsn_deinit(&t);
	test_end();
}

static void test_bag_dsn_write_no_params(void)
{
	struct test_report r;
	struct test_dsn t;

	test_begin("bag_dsn_write() without ENVID");
	test_dsn_init(&t, "");
	t.rcpts[0].params = NULL;
	t.dsn.mail_params = NULL;
	t.dsn.arrival_date = 0;
	test_report_parse(test_dsn_write(&t), &r);
	test_report_check_common(&r);
	if (r.part_count == 3) {
		test_assert(!test_has_field(r.part_body[1],
					    "Original-Envelope-Id"));
		test_assert(!test_has_field(r.part_body[1],
					    "Original-Recipient"));
		test_assert(!test_has_field(r.part_body[1], "Arrival-Date"));
		test_assert(str_begins(r.part_body[1], "Reporting-MTA: "));
		test_report_check_headers_only(&r);
	}
	test_dsn_deinit(&t);
	test_end();
}

static void test_bag_dsn_write_delayed(void)
{
	const char *const *blocks;
	struct test_report r;
	struct test_dsn t;
	const char *text;
	unsigned int i;

	test_begin("bag_dsn_write() delayed only");
	/* RET=FULL returns the message with failures only (RFC 3461 4.3) */
	test_dsn_init(&t, "RET=FULL ENVID=QQ314159+2Bx");
	test_dsn_set_delayed(&t);
	text = test_dsn_write(&t);
	test_report_parse(text, &r);
	test_report_check_common(&r);
	test_assert(test_has_line(r.header, "Subject: Delayed Mail "
				  "(still being retried)"));
	if (r.part_count == 3) {
		blocks = test_status_blocks(r.part_body[1]);
		test_assert(str_array_length(blocks) == 3);
		for (i = 1; i < 3 && blocks[i] != NULL; i++) {
			test_assert_idx(test_has_line(blocks[i],
				"Action: delayed"), i);
			test_assert_idx(test_has_line(blocks[i],
				"Status: 4.4.1"), i);
			test_assert_strcmp_idx(test_field(blocks[i],
				"Will-Retry-Until"),
				message_date_create(1767657600), i);
		}
		test_assert(strstr(r.part_body[0], "retried until ") != NULL);
		test_report_check_headers_only(&r);
	}
	test_write_sample(".delayed", text);
	test_dsn_deinit(&t);

	/* one failure among delays: a failure report */
	test_dsn_init(&t, "RET=FULL");
	test_dsn_set_delayed(&t);
	t.rcpts[1].action = BAG_DSN_ACTION_FAILED;
	t.rcpts[1].status = "5.4.7";
	test_report_parse(test_dsn_write(&t), &r);
	test_report_check_common(&r);
	test_assert(test_has_line(r.header, "Subject: Undelivered "
				  "Mail Returned to Sender"));
	if (r.part_count == 3) {
		blocks = test_status_blocks(r.part_body[1]);
		test_assert(str_array_length(blocks) == 3);
		if (str_array_length(blocks) == 3) {
			test_assert(test_has_field(blocks[1],
						   "Will-Retry-Until"));
			test_assert(test_has_line(blocks[2],
						  "Action: failed"));
			test_assert(!test_has_field(blocks[2],
						    "Will-Retry-Until"));
		}
		test_assert(test_has_line(r.part_header[2],
					  "Content-Type: message/rfc822"));
	}
	test_dsn_deinit(&t);
	test_end();
}

static void test_bag_dsn_write_unique(void)
{
	struct test_report r1, r2;
	struct test_dsn t;

	test_begin("bag_dsn_write() boundary and Message-ID are random");
	test_dsn_init(&t, "");
	test_report_parse(test_dsn_write(&t), &r1);
	test_report_parse(test_dsn_write(&t), &r2);
	test_assert(r1.boundary != NULL && r2.boundary != NULL &&
		    strcmp(r1.boundary, r2.boundary) != 0);
	test_assert(r1.header != NULL && r2.header != NULL &&
		    strcmp(test_field(r1.header, "Message-ID"),
			   test_field(r2.header, "Message-ID")) != 0);
	test_dsn_deinit(&t);
	test_end();
}

static void test_bag_dsn_write_xtext(void)
{
	const char *const *blocks;
	struct test_report r;
	struct test_dsn t;

	test_begin("bag_dsn_write() ENVID and ORCPT decoded from xtext");
	test_dsn_init(&t, "ENVID=a+3Db+20c+2Bd");
	/* Dovecot keeps both decoded */
	test_assert_strcmp(t.mail_params.envid, "a=b c+d");
	test_dsn_params_rcpt(&t, 1, "ORCPT=rfc822;bob+2Blist@customer.example");
	test_assert_strcmp(t.rcpt_params[1].orcpt.addr_raw,
			   "bob+list@customer.example");
	test_report_parse(test_dsn_write(&t), &r);
	if (r.part_count == 3) {
		blocks = test_status_blocks(r.part_body[1]);
		test_assert(str_array_length(blocks) == 3);
		test_assert(test_has_line(blocks[0],
			"Original-Envelope-Id: a=b c+d"));
		test_assert(blocks[2] != NULL && test_has_line(blocks[2],
			"Original-Recipient: rfc822; "
			"bob+list@customer.example"));
	}
	test_dsn_deinit(&t);
	test_end();
}

static void test_bag_dsn_write_sanitize(void)
{
	const char *const *blocks;
	struct test_report r;
	struct test_dsn t;
	string_t *longtext;
	const char *diag;

	test_begin("bag_dsn_write() sanitizes peer text");
	test_dsn_init(&t, "");
	t.rcpts[0].diagnostic = "550 5.1.1 no\r\nX-Evil: 1\r\n"
		"caf\xc3\xa9\x01\tend";
	t.rcpts[0].remote_mta = "mx.example\nX-Evil: 2";
	longtext = t_str_new(5100);
	str_append(longtext, "554 5.0.0 ");
	while (str_len(longtext) < 5000)
		str_append(longtext, "too long ");
	t.rcpts[1].diagnostic = str_c(longtext);
	/* unusable codes are replaced by a generic one */
	t.rcpts[1].status = "5.1";
	test_report_parse(test_dsn_write(&t), &r);
	test_report_check_common(&r);
	test_assert(strstr(r.text, "\r\nX-Evil") == NULL);
	if (r.part_count == 3) {
		blocks = test_status_blocks(r.part_body[1]);
		test_assert(str_array_length(blocks) == 3);
		if (str_array_length(blocks) == 3) {
			test_assert(test_has_line(blocks[1],
				"Diagnostic-Code: smtp; 550 5.1.1 no "
				"X-Evil: 1 caf??? end"));
			test_assert(test_has_line(blocks[1],
				"Remote-MTA: dns; mx.example X-Evil: 2"));
			test_assert(test_has_line(blocks[2],
						  "Status: 5.0.0"));
			diag = test_field(blocks[2], "Diagnostic-Code");
			test_assert(diag != NULL &&
				    test_ends_with(diag, "..."));
		}
	}
	test_dsn_deinit(&t);

	/* a delay can't carry a permanent code */
	test_dsn_init(&t, "");
	test_dsn_set_delayed(&t);
	t.rcpts[0].status = "5.1.1";
	t.rcpts[1].status = "4.4.1x";
	test_report_parse(test_dsn_write(&t), &r);
	if (r.part_count == 3) {
		blocks = test_status_blocks(r.part_body[1]);
		test_assert(str_array_length(blocks) == 3 &&
			    test_has_line(blocks[1], "Status: 4.0.0") &&
			    test_has_line(blocks[2], "Status: 4.0.0"));
	}
	test_dsn_deinit(&t);
	test_end();
}

/* Found by fuzz-dsn (tests/fuzz/crashes/dsn/orcpt-line-too-long): each
   half of Original-Recipient was cut at 900, so the line reached 1828
   octets. */
static void test_bag_dsn_write_orcpt_long(void)
{
	const char *const *blocks, *value;
	struct test_report r;
	struct test_dsn t;
	string_t *args, *type;
	unsigned int i;

	test_begin("bag_dsn_write() long ORCPT type and address");
	test_dsn_init(&t, "");
	type = t_str_new(512);
	for (i = 0; i < 490; i++)
		str_append_c(type, 'x');
	args = t_str_new(1024);
	str_printfa(args, "ORCPT=%s;", str_c(type));
	for (i = 0; i < 490; i++)
		str_append_c(args, 'a');
	test_dsn_params_rcpt(&t, 1, str_c(args));
	test_report_parse(test_dsn_write(&t), &r);
	test_report_check_common(&r);
	if (r.part_count == 3) {
		blocks = test_status_blocks(r.part_body[1]);
		test_assert(str_array_length(blocks) == 3);
		value = blocks[2] == NULL ? NULL :
			test_field(blocks[2], "Original-Recipient");
		/* the type cut at 64, the address whole */
		str_truncate(type, 64);
		test_assert(value != NULL &&
			    strlen(value) == 64 + 3 + 2 + 490 &&
			    str_begins(value, t_strconcat(str_c(type),
							  "...; a", NULL)));
	}
	test_dsn_deinit(&t);
	test_end();
}

static void test_bag_dsn_write_odd_messages(void)
{
	struct test_report r;
	struct test_dsn t;
	string_t *big;
	const char *big_crlf;

	test_begin("bag_dsn_write() header without body, huge header");
	/* no blank line and no final LF: just the header, its last line
	   ended */
	test_dsn_init(&t, "RET=HDRS");
	t.message = "Subject: no body\nFrom: <sender@example.com>";
	test_report_parse(test_dsn_write(&t), &r);
	test_report_check_common(&r);
	if (r.part_count == 3) {
		test_assert_strcmp(r.part_body[2], "Subject: no body\r\n"
				   "From: <sender@example.com>\r\n");
	}
	/* RET=FULL of it: as it is, the delimiter ending its last line */
	t.mail_params.ret = SMTP_PARAM_MAIL_RET_FULL;
	test_report_parse(test_dsn_write(&t), &r);
	if (r.part_count == 3) {
		test_assert_strcmp(r.part_body[2], "Subject: no body\r\n"
				   "From: <sender@example.com>");
	}
	/* an empty message */
	t.mail_params.ret = SMTP_PARAM_MAIL_RET_HDRS;
	t.message = "";
	test_report_parse(test_dsn_write(&t), &r);
	if (r.part_count == 3)
		test_assert_strcmp(r.part_body[2], "");
	/* the header ends at an empty line as Dovecot reads mail: a line
	   of CRs is not empty (found by fuzz-dsn) */
	t.message = "A: b\r\n\r\r\nB: c\r\n\r\nbody\r\n";
	test_report_parse(test_dsn_write(&t), &r);
	if (r.part_count == 3) {
		test_assert_strcmp(r.part_body[2],
				   "A: b\r\n\r\r\nB: c\r\n\r\n");
	}

	/* a header going on past the limit is cut after 1 MB */
	big = t_str_new(1200 * 1024);
	while (str_len(big) < 1200 * 1024)
		str_append(big, "X-Filler: 0123456789abcdef0123456789\n");
	str_append(big, "\nbody\n");
	t.message = str_c(big);
	big_crlf = test_crlf(t.message);
	test_report_parse(test_dsn_write(&t), &r);
	if (r.part_count == 3) {
		size_t len = strlen(r.part_body[2]);

		test_assert(len <= 1024 * 1024 + 2);
		test_assert(len >= 1024 * 1024);
		test_assert(test_ends_with(r.part_body[2], "\r\n"));
		test_assert(strncmp(r.part_body[2], big_crlf, len - 2) == 0);
		test_assert(strstr(r.part_body[2], "body") == NULL);
	}
	test_dsn_deinit(&t);
	test_end();
}

static void test_bag_dsn_write_read_error(void)
{
	struct istream *inputs[3];
	struct test_dsn t;
	const char *text, *error;
	int i;

	test_begin("bag_dsn_write() read errors");
	for (i = 0; i < 2; i++) {
		test_dsn_init(&t, i == 0 ? "RET=HDRS" : "RET=FULL");
		error = NULL;
		test_assert_idx(test_dsn_write_from(&t,
			i_stream_create_error_str(EIO, "disk on fire"),
			&text, &error) == -1, i);
		test_assert_idx(error != NULL &&
				strstr(error, "disk on fire") != NULL, i);

		/* failing after part of the header */
		inputs[0] = i_stream_create_from_data("Subject: x\n", 11);
		inputs[1] = i_stream_create_error_str(EIO, "disk on fire");
		inputs[2] = NULL;
		error = NULL;
		test_assert_idx(test_dsn_write_from(&t,
			i_stream_create_concat(inputs), &text, &error) == -1,
			i);
		test_assert_idx(error != NULL &&
				strstr(error, "disk on fire") != NULL, i);
		i_stream_unref(&inputs[0]);
		i_stream_unref(&inputs[1]);
		test_dsn_deinit(&t);
	}
	test_end();
}

static void test_bag_dsn_wanted(void)
{
	static const struct {
		const char *args;
		bool failed, delayed;
	} table[] = {
		{ "", TRUE, FALSE },
		{ "NOTIFY=NEVER", FALSE, FALSE },
		{ "NOTIFY=SUCCESS", FALSE, FALSE },
		{ "NOTIFY=FAILURE", TRUE, FALSE },
		{ "NOTIFY=DELAY", FALSE, TRUE },
		{ "NOTIFY=SUCCESS,FAILURE", TRUE, FALSE },
		{ "NOTIFY=FAILURE,DELAY", TRUE, TRUE },
		{ "NOTIFY=SUCCESS,FAILURE,DELAY", TRUE, TRUE },
		{ "ORCPT=rfc822;a@example.org", TRUE, FALSE },
	};
	struct smtp_address *sender, *null_sender;
	struct smtp_params_rcpt params;
	enum smtp_param_parse_error error_code;
	const char *error;
	pool_t pool;
	unsigned int i;

	test_begin("bag_dsn_wanted()");
	pool = pool_alloconly_create("test bag dsn wanted", 1024);
	sender = smtp_address_create(pool, "sender", "example.com");
	test_assert(smtp_address_parse_path(pool, "<>",
		SMTP_ADDRESS_PARSE_FLAG_ALLOW_EMPTY, &null_sender,
		&error) == 0);
	for (i = 0; i < N_ELEMENTS(table); i++) {
		test_assert_idx(smtp_params_rcpt_parse(pool, table[i].args, 0,
			SMTP_CAPABILITY_DSN, NULL, &params, &error_code,
			&error) == 0, i);
		test_assert_idx(bag_dsn_wanted(sender, &params,
			BAG_DSN_ACTION_FAILED) == table[i].failed, i);
		test_assert_idx(bag_dsn_wanted(sender, &params,
			BAG_DSN_ACTION_DELAYED) == table[i].delayed, i);
		/* never to the null sender */
		test_assert_idx(!bag_dsn_wanted(null_sender, &params,
			BAG_DSN_ACTION_FAILED), i);
		test_assert_idx(!bag_dsn_wanted(null_sender, &params,
			BAG_DSN_ACTION_DELAYED), i);
		test_assert_idx(!bag_dsn_wanted(NULL, &params,
			BAG_DSN_ACTION_FAILED), i);
	}
	/* no parameters at all: as without NOTIFY */
	test_assert(bag_dsn_wanted(sender, NULL, BAG_DSN_ACTION_FAILED));
	test_assert(!bag_dsn_wanted(sender, NULL, BAG_DSN_ACTION_DELAYED));
	pool_unref(&pool);
	test_end();
}

int main(void)
{
	static void (*const test_functions[])(void) = {
		test_bag_dsn_wanted,
		test_bag_dsn_write_hdrs,
		test_bag_dsn_write_local_diagnostic,
		test_bag_dsn_write_full,
		test_bag_dsn_write_no_params,
		test_bag_dsn_write_delayed,
		test_bag_dsn_write_unique,
		test_bag_dsn_write_xtext,
		test_bag_dsn_write_sanitize,
		test_bag_dsn_write_orcpt_long,
		test_bag_dsn_write_odd_messages,
		test_bag_dsn_write_read_error,
		NULL
	};
	return test_run(test_functions);
}
