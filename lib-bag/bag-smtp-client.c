/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* The SMTP client of the reversed ATRN session (bag-smtp-client.h), in
   the ioloop: the replies it waits for are queued in the order their
   commands went, and each is handled as it comes. */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "str-sanitize.h"
#include "ioloop.h"
#include "istream.h"
#include "istream-crlf.h"
#include "ostream.h"
#include "ostream-dot.h"
#include "smtp-address.h"
#include "smtp-syntax.h"
#include "smtp-params.h"
#include "smtp-reply-parser.h"
#include "bag-smtp-sender.h"
#include "bag-smtp-client.h"

#include <limits.h>

/* Text of one reply, as the parser counts it (RFC 5321 allows 512 bytes a
   line; EHLO replies and multi-line rejections are longer, but not this). */
#define BAG_SMTP_CLIENT_MAX_REPLY_SIZE (64 * 1024)
/* Bytes on the wire for one reply, which also bounds its number of lines */
#define BAG_SMTP_CLIENT_MAX_REPLY_WIRE_SIZE (128 * 1024)
/* The output buffer while the message is sent. ostream-dot writes at most
   this much per call, as about one iovec per 1.5 bytes; the fd ostream
   mishandles a writev() of more than IOV_MAX iovecs on a socket (it counts
   its offset twice and then fails with "lseek() failed: Illegal seek"), so
   a message of many short dot-lines fails with a larger buffer. */
#define BAG_SMTP_CLIENT_MAX_BODY_BUFFER IOV_MAX
/* The longest wait for the reply to QUIT */
#define BAG_SMTP_CLIENT_QUIT_TIMEOUT_MSECS 5000
/* Commands in one pipelined write. Their replies fit in the socket
   buffers, so a server that writes all its replies before it reads on can't
   deadlock a long batch (RFC 2920, section 3.1). */
#define BAG_SMTP_CLIENT_PIPELINE_MAX_COMMANDS 100
/* How much of a reply goes into an error string */
#define BAG_SMTP_CLIENT_MAX_ERROR_REPLY_LEN 256

enum bag_smtp_client_expect {
	BAG_SMTP_EXPECT_GREETING = 0,
	BAG_SMTP_EXPECT_EHLO,
	BAG_SMTP_EXPECT_HELO,
	BAG_SMTP_EXPECT_MAIL,
	BAG_SMTP_EXPECT_RCPT,
	BAG_SMTP_EXPECT_DATA,
	BAG_SMTP_EXPECT_END_OF_DATA,
	BAG_SMTP_EXPECT_RSET,
	BAG_SMTP_EXPECT_QUIT,
};

static const char *const bag_smtp_expect_names[] = {
	[BAG_SMTP_EXPECT_GREETING] = "the greeting",
	[BAG_SMTP_EXPECT_EHLO] = "EHLO",
	[BAG_SMTP_EXPECT_HELO] = "HELO",
	[BAG_SMTP_EXPECT_MAIL] = "MAIL FROM",
	[BAG_SMTP_EXPECT_RCPT] = "RCPT TO",
	[BAG_SMTP_EXPECT_DATA] = "DATA",
	[BAG_SMTP_EXPECT_END_OF_DATA] = "end of message",
	[BAG_SMTP_EXPECT_RSET] = "RSET",
	[BAG_SMTP_EXPECT_QUIT] = "QUIT",
};

struct bag_smtp_client_trans {
	pool_t pool;
	struct bag_smtp_send_result *result;
	string_t *mail_cmd;
	string_t **rcpt_cmds;
	unsigned int rcpt_count;
	/* RCPTs sent, replied, accepted */
	unsigned int sent, replied, accepted;
	struct istream *message;
	struct ostream *dot_output;
	struct io *io_message;
	size_t old_max_buffer_size;
	bool mail_sent:1;
	bool mail_replied:1;
	bool mail_ok:1;
	bool data_sent:1;
	/* the reply after the message came */
	bool data_replied:1;
	/* the transaction failed: RSET follows, then the callback */
	bool failed:1;
	bag_smtp_sender_callback_t *callback;
	void *context;
};

struct bag_smtp_client {
	struct bag_smtp_sender sender;
	pool_t pool;
	int refcount;
	struct istream *input;
	struct ostream *output;
	struct smtp_reply_parser *parser;
	/* bounds the reply being read */
	struct istream *reply_input;
	struct io *io;
	struct timeout *to;
	unsigned int wait_msecs;

	struct bag_smtp_client_settings set;
	enum smtp_capability caps;
	ARRAY(enum bag_smtp_client_expect) expect;

	/* why the client can't send mail (anymore) */
	const char *failure;

	bag_smtp_client_start_callback_t *start_callback;
	void *start_context;
	struct smtp_reply *start_reply;

	struct bag_smtp_client_trans *trans;

	void (*quit_callback)(void *context);
	void *quit_context;
	struct timeout *to_quit;
	/* a send that can't start fails from here: send_error says why
	   (the session goes on), or failure (it doesn't) */
	struct timeout *to_fail;
	const char *send_error;

	bool started:1;
	bool ready:1;
	bool ehlo:1;
	/* the protocol state is unknown: send nothing more, not even QUIT */
	bool broken:1;
	bool quit_sent:1;
	bool destroyed:1;
};

static const char *const bag_smtp_no_lines[] = { NULL };

static void bag_smtp_client_input(struct bag_smtp_client *client);
static void bag_smtp_client_send_message(struct bag_smtp_client *client);

static const char *bag_smtp_client_msecs_str(unsigned int msecs)
{
	if (msecs % 1000 == 0)
		return t_strdup_printf("%u s", msecs / 1000);
	return t_strdup_printf("%u ms", msecs);
}

static const char *bag_smtp_client_reply_str(const struct smtp_reply *reply)
{
	return str_sanitize(smtp_reply_log(reply),
			    BAG_SMTP_CLIENT_MAX_ERROR_REPLY_LEN);
}

static void bag_smtp_client_ref(struct bag_smtp_client *client)
{
	client->refcount++;
}

static void bag_smtp_client_unref(struct bag_smtp_client **_client)
{
	struct bag_smtp_client *client = *_client;

	*_client = NULL;
	i_assert(client->refcount > 0);
	if (--client->refcount > 0)
		return;
	pool_unref(&client->pool);
}

/*
 * Waiting
 */

static void bag_smtp_client_fail(struct bag_smtp_client *client,
				 const char *error);

static void bag_smtp_client_timeout(struct bag_smtp_client *client)
{
	const char *after = bag_smtp_client_msecs_str(client->wait_msecs);
	const enum bag_smtp_client_expect *expect;

	if (client->trans != NULL && client->trans->dot_output != NULL) {
		bag_smtp_client_fail(client, t_strdup_printf(
			"Timed out sending the message (after %s)", after));
		return;
	}
	if (array_count(&client->expect) == 0) {
		bag_smtp_client_fail(client, t_strdup_printf(
			"Timed out sending (after %s)", after));
		return;
	}
	expect = array_front(&client->expect);
	bag_smtp_client_fail(client, *expect == BAG_SMTP_EXPECT_GREETING ?
		t_strdup_printf("Timed out waiting for the greeting "
				"(after %s)", after) :
		t_strdup_printf("Timed out waiting for the reply to %s "
				"(after %s)", bag_smtp_expect_names[*expect],
				after));
}

/* Wait msecs for what comes next: a reply (input), or more room for the
   message (then what the server may say meanwhile waits, rather than
   wake us up for nothing). */
static void
bag_smtp_client_wait(struct bag_smtp_client *client, unsigned int msecs,
		     bool input)
{
	timeout_remove(&client->to);
	client->wait_msecs = msecs;
	client->to = timeout_add(msecs, bag_smtp_client_timeout, client);
	if (!input)
		io_remove(&client->io);
	else if (client->io == NULL) {
		client->io = io_add_istream(client->input,
					    bag_smtp_client_input, client);
	}
}

static void bag_smtp_client_idle(struct bag_smtp_client *client)
{
	timeout_remove(&client->to);
	io_remove(&client->io);
}

static void
bag_smtp_client_expect(struct bag_smtp_client *client,
		       enum bag_smtp_client_expect expect)
{
	unsigned int msecs = client->set.timeout_msecs;

	if (expect == BAG_SMTP_EXPECT_GREETING)
		msecs = client->set.greeting_timeout_msecs;
	else if (expect == BAG_SMTP_EXPECT_QUIT)
		msecs = I_MIN(msecs, BAG_SMTP_CLIENT_QUIT_TIMEOUT_MSECS);
	array_push_back(&client->expect, &expect);
	if (client->to == NULL || client->io == NULL)
		bag_smtp_client_wait(client, msecs, TRUE);
}

/* Send a command line; its reply is expected (after the others'). */
static void
bag_smtp_client_command(struct bag_smtp_client *client, const char *line,
			enum bag_smtp_client_expect expect)
{
	o_stream_nsend_str(client->output, t_strconcat(line, "\r\n", NULL));
	bag_smtp_client_expect(client, expect);
}

static void bag_smtp_client_flush(struct bag_smtp_client *client)
{
	if (o_stream_flush(client->output) < 0) {
		bag_smtp_client_fail(client, t_strdup_printf(
			"Connection lost while sending: %s",
			o_stream_get_error(client->output)));
	}
}

/*
 * Failures and the callbacks
 */

static void
bag_smtp_client_trans_free(struct bag_smtp_client *client)
{
	struct bag_smtp_client_trans *trans = client->trans;

	if (trans == NULL)
		return;
	client->trans = NULL;
	io_remove(&trans->io_message);
	if (trans->dot_output != NULL) {
		o_stream_unset_flush_callback(client->output);
		o_stream_set_max_buffer_size(client->output,
					     trans->old_max_buffer_size);
		o_stream_destroy(&trans->dot_output);
	}
	i_stream_unref(&trans->message);
	i_free(trans);
}

static void
bag_smtp_client_trans_callback(struct bag_smtp_client *client,
			       const char *error)
{
	struct bag_smtp_client_trans *trans = client->trans;
	bag_smtp_sender_callback_t *callback = trans->callback;
	struct bag_smtp_send_result *result = trans->result;
	void *context = trans->context;
	struct smtp_reply *reply;
	unsigned int i;

	/* An accepted recipient's reply is the reply to the message: the
	   one after it, or DATA's refusal. Without either (the connection
	   was lost, DATA was answered 2xx) nobody knows whether the message
	   arrived: the recipient has no reply, and waits. */
	for (i = 0; i < trans->rcpt_count; i++) {
		reply = &result->rcpt_replies[i];
		if (reply->status == 0 || !smtp_reply_is_success(reply))
			continue;
		/* (a server that refused MAIL got no message) */
		if (trans->mail_ok &&
		    (trans->data_replied ||
		     (result->data_reply.status != 0 &&
		      !smtp_reply_is_success(&result->data_reply)))) {
			*reply = result->data_reply;
			continue;
		}
		i_zero(reply);
		reply->text_lines = bag_smtp_no_lines;
	}
	bag_smtp_client_trans_free(client);
	if (callback != NULL)
		callback(result, error, context);
}

static void bag_smtp_client_call_quit(struct bag_smtp_client *client)
{
	void (*callback)(void *context) = client->quit_callback;

	timeout_remove(&client->to_quit);
	client->quit_callback = NULL;
	if (callback != NULL)
		callback(client->quit_context);
}

static void
bag_smtp_client_fail(struct bag_smtp_client *client, const char *error)
{
	bag_smtp_client_start_callback_t *start_callback;

	client->broken = TRUE;
	if (client->failure == NULL)
		client->failure = p_strdup(client->pool, error);
	bag_smtp_client_idle(client);
	array_clear(&client->expect);

	bag_smtp_client_ref(client);
	if (client->start_callback != NULL) {
		start_callback = client->start_callback;
		client->start_callback = NULL;
		start_callback(-1, NULL, error, client->start_context);
	}
	if (client->trans != NULL && !client->destroyed)
		bag_smtp_client_trans_callback(client, error);
	if (!client->destroyed)
		bag_smtp_client_call_quit(client);
	bag_smtp_client_unref(&client);
}

/*
 * Starting
 */

static void
bag_smtp_client_parse_capabilities(struct bag_smtp_client *client,
				   const struct smtp_reply *reply)
{
	const char *const *lines = reply->text_lines;
	const char *const *params;
	const char *name, *error;

	client->caps = SMTP_CAPABILITY_NONE;
	if (lines[0] == NULL)
		return;
	/* the first line is the server's name and greeting */
	for (lines++; *lines != NULL; lines++) {
		if (smtp_ehlo_line_parse(*lines, &name, &params, &error) <= 0)
			continue;
		client->caps |= smtp_capability_find_by_name(name);
	}
}

static void
bag_smtp_client_started(struct bag_smtp_client *client, int ret,
			const struct smtp_reply *reply)
{
	bag_smtp_client_start_callback_t *callback = client->start_callback;

	client->start_callback = NULL;
	if (ret > 0)
		client->ready = TRUE;
	else {
		client->failure = p_strdup_printf(client->pool,
			"Server refused %s: %s",
			!client->ehlo ? "the session" :
			(client->caps == 0 ? "EHLO/HELO" : "EHLO"),
			bag_smtp_client_reply_str(reply));
	}
	callback(ret, reply, NULL, client->start_context);
}

static void
bag_smtp_client_start_reply(struct bag_smtp_client *client,
			    enum bag_smtp_client_expect expect,
			    const struct smtp_reply *reply)
{
	switch (expect) {
	case BAG_SMTP_EXPECT_GREETING:
		if (!smtp_reply_is_success(reply)) {
			bag_smtp_client_started(client, 0, reply);
			return;
		}
		client->ehlo = TRUE;
		bag_smtp_client_command(client, t_strconcat(
			"EHLO ", client->set.my_hostname, NULL),
			BAG_SMTP_EXPECT_EHLO);
		bag_smtp_client_flush(client);
		return;
	case BAG_SMTP_EXPECT_EHLO:
		if (reply->status / 100 == 5) {
			/* an old server (RFC 5321, section 3.2) */
			bag_smtp_client_command(client, t_strconcat(
				"HELO ", client->set.my_hostname, NULL),
				BAG_SMTP_EXPECT_HELO);
			bag_smtp_client_flush(client);
			return;
		}
		if (smtp_reply_is_success(reply))
			bag_smtp_client_parse_capabilities(client, reply);
		bag_smtp_client_started(client, smtp_reply_is_success(reply) ?
					1 : 0, reply);
		return;
	case BAG_SMTP_EXPECT_HELO:
		bag_smtp_client_started(client, smtp_reply_is_success(reply) ?
					1 : 0, reply);
		return;
	default:
		i_unreached();
	}
}

/*
 * Transactions
 */

static bool bag_smtp_command_is_valid(string_t *cmd)
{
	/* an address or parameter must not end the line or add one */
	return strlen(str_c(cmd)) == str_len(cmd) &&
		strpbrk(str_c(cmd), "\r\n") == NULL;
}

static int
bag_smtp_client_build_commands(struct bag_smtp_client *client, pool_t pool,
	const struct smtp_address *mail_from,
	const struct smtp_params_mail *mail_params,
	const struct smtp_address *const *rcpts,
	const struct smtp_params_rcpt *const *rcpt_params,
	unsigned int rcpt_count, struct bag_smtp_client_trans *trans,
	const char **error_r)
{
	struct smtp_params_mail params;
	struct smtp_params_rcpt rparams;
	string_t *cmd;
	size_t pos;
	unsigned int i;

	cmd = str_new(pool, 256);
	str_append(cmd, "MAIL FROM:");
	smtp_address_write_path(cmd, mail_from);
	if (mail_params != NULL) {
		bag_smtp_params_mail_for(&params, mail_params, client->caps);
		pos = str_len(cmd);
		str_append_c(cmd, ' ');
		/* SIZE, ENVID and RET are left out without their
		   capability */
		smtp_params_mail_write(cmd, client->caps, NULL, &params);
		if (str_len(cmd) == pos + 1)
			str_truncate(cmd, pos);
	}
	if (!bag_smtp_command_is_valid(cmd)) {
		*error_r = "Invalid MAIL FROM address or parameters";
		return -1;
	}
	str_append(cmd, "\r\n");
	trans->mail_cmd = cmd;

	trans->rcpt_cmds = p_new(pool, string_t *, rcpt_count);
	for (i = 0; i < rcpt_count; i++) {
		cmd = str_new(pool, 128);
		str_append(cmd, "RCPT TO:");
		i_assert(!smtp_address_isnull(rcpts[i]));
		smtp_address_write_path(cmd, rcpts[i]);
		if (rcpt_params != NULL && rcpt_params[i] != NULL) {
			bag_smtp_params_rcpt_for(&rparams, rcpt_params[i]);
			pos = str_len(cmd);
			str_append_c(cmd, ' ');
			/* NOTIFY and ORCPT are left out without DSN */
			smtp_params_rcpt_write(cmd, client->caps, NULL,
					       &rparams);
			if (str_len(cmd) == pos + 1)
				str_truncate(cmd, pos);
		}
		if (!bag_smtp_command_is_valid(cmd)) {
			*error_r = t_strdup_printf(
				"Invalid recipient address or parameters "
				"(recipient #%u)", i + 1);
			return -1;
		}
		str_append(cmd, "\r\n");
		trans->rcpt_cmds[i] = cmd;
	}
	return 0;
}

/* MAIL and the RCPTs go in groups (of one command without PIPELINING),
   and each group's replies are read before the next group is sent. With
   PIPELINING the last group ends with DATA; the message waits for its 354
   (RFC 2920, section 3.1). */
static void bag_smtp_client_send_group(struct bag_smtp_client *client)
{
	struct bag_smtp_client_trans *trans = client->trans;
	const bool pipelining =
		(client->caps & SMTP_CAPABILITY_PIPELINING) != 0;
	const unsigned int group_max =
		pipelining ? BAG_SMTP_CLIENT_PIPELINE_MAX_COMMANDS : 1;
	unsigned int count = 0;

	o_stream_cork(client->output);
	if (!trans->mail_sent) {
		trans->mail_sent = TRUE;
		o_stream_nsend(client->output, str_data(trans->mail_cmd),
			       str_len(trans->mail_cmd));
		bag_smtp_client_expect(client, BAG_SMTP_EXPECT_MAIL);
		count++;
	}
	for (; trans->sent < trans->rcpt_count && count < group_max; count++) {
		string_t *cmd = trans->rcpt_cmds[trans->sent++];

		o_stream_nsend(client->output, str_data(cmd), str_len(cmd));
		bag_smtp_client_expect(client, BAG_SMTP_EXPECT_RCPT);
	}
	if (pipelining && trans->sent == trans->rcpt_count) {
		o_stream_nsend_str(client->output, "DATA\r\n");
		bag_smtp_client_expect(client, BAG_SMTP_EXPECT_DATA);
		trans->data_sent = TRUE;
	}
	o_stream_uncork(client->output);
	bag_smtp_client_flush(client);
}

/* The transaction is over: RSET after a failed one, then the callback. */
static void bag_smtp_client_trans_done(struct bag_smtp_client *client,
				       bool failed)
{
	if (failed && !client->broken) {
		client->trans->failed = TRUE;
		bag_smtp_client_command(client, "RSET", BAG_SMTP_EXPECT_RSET);
		bag_smtp_client_flush(client);
		return;
	}
	bag_smtp_client_trans_callback(client, NULL);
}

/* A reply in the transaction: 421 means the server is closing the
   connection (RFC 5321 section 3.8): no more replies follow, and the
   transaction is over. Returns FALSE then. */
static bool
bag_smtp_client_tx_reply(struct bag_smtp_client *client,
			 const struct smtp_reply *reply,
			 struct smtp_reply *dest)
{
	struct bag_smtp_client_trans *trans = client->trans;

	smtp_reply_copy(trans->pool, dest, reply);
	if (reply->status == 421) {
		client->broken = TRUE;
		client->failure = p_strdup_printf(client->pool,
			"Server is closing the connection: %s",
			bag_smtp_client_reply_str(reply));
		bag_smtp_client_idle(client);
		array_clear(&client->expect);
		bag_smtp_client_trans_callback(client, client->failure);
		return FALSE;
	}
	return TRUE;
}

static void
bag_smtp_client_trans_reply(struct bag_smtp_client *client,
			    enum bag_smtp_client_expect expect,
			    const struct smtp_reply *reply)
{
	struct bag_smtp_client_trans *trans = client->trans;
	struct bag_smtp_send_result *result = trans->result;

	switch (expect) {
	case BAG_SMTP_EXPECT_MAIL:
		if (!bag_smtp_client_tx_reply(client, reply,
					      &result->mail_reply))
			return;
		trans->mail_replied = TRUE;
		trans->mail_ok = smtp_reply_is_success(reply);
		break;
	case BAG_SMTP_EXPECT_RCPT:
		if (!bag_smtp_client_tx_reply(client, reply,
				&result->rcpt_replies[trans->replied]))
			return;
		if (smtp_reply_is_success(reply))
			trans->accepted++;
		trans->replied++;
		break;
	case BAG_SMTP_EXPECT_DATA:
		if (reply->status / 100 == 3) {
			/* the 354 isn't kept */
			if (trans->accepted == 0 || !trans->mail_ok) {
				/* A pipelining server must refuse DATA after
				   no valid recipients (RFC 2920, section 3.1);
				   this one didn't. End the data at once
				   rather than send the message. */
				o_stream_nsend_str(client->output, ".\r\n");
				bag_smtp_client_expect(client,
					BAG_SMTP_EXPECT_END_OF_DATA);
				bag_smtp_client_flush(client);
				return;
			}
			bag_smtp_client_send_message(client);
			return;
		}
		if (!bag_smtp_client_tx_reply(client, reply,
					      &result->data_reply))
			return;
		if (smtp_reply_is_success(reply)) {
			/* "accepted" without the message: nothing sane to
			   do */
			bag_smtp_client_fail(client, t_strdup_printf(
				"Unexpected reply to DATA: %s",
				bag_smtp_client_reply_str(reply)));
			return;
		}
		bag_smtp_client_trans_done(client, TRUE);
		return;
	case BAG_SMTP_EXPECT_END_OF_DATA:
		if (!bag_smtp_client_tx_reply(client, reply,
					      &result->data_reply))
			return;
		trans->data_replied = TRUE;
		bag_smtp_client_trans_done(client, trans->accepted == 0 ||
					   !trans->mail_ok ||
					   !smtp_reply_is_success(reply));
		return;
	case BAG_SMTP_EXPECT_RSET:
		if (!smtp_reply_is_success(reply)) {
			/* the transaction's outcome is known: this only
			   makes the connection unusable */
			client->broken = TRUE;
			client->failure = p_strdup_printf(client->pool,
				"RSET failed: %s",
				bag_smtp_client_reply_str(reply));
		}
		bag_smtp_client_trans_callback(client, NULL);
		return;
	default:
		i_unreached();
	}

	/* MAIL and RCPT replies: more to send or to wait for? */
	if (array_count(&client->expect) > 0)
		return;
	if (trans->sent < trans->rcpt_count &&
	    (trans->mail_ok || trans->data_sent)) {
		bag_smtp_client_send_group(client);
		return;
	}
	/* after a refused MAIL, no more than was sent (every reply of it
	   was read) */
	if (!trans->mail_ok)
		trans->accepted = 0;
	if (!trans->data_sent) {
		if (trans->accepted == 0) {
			bag_smtp_client_trans_done(client, TRUE);
			return;
		}
		trans->data_sent = TRUE;
		bag_smtp_client_command(client, "DATA", BAG_SMTP_EXPECT_DATA);
		bag_smtp_client_flush(client);
	}
}

/* Send the message (its line ends made CRLF, dot-stuffed, ended with the
   "." line) as the socket takes it. */
static void bag_smtp_client_send_message_more(struct bag_smtp_client *client)
{
	struct bag_smtp_client_trans *trans = client->trans;
	enum ostream_send_istream_result res;
	int ret;

	io_remove(&trans->io_message);
	/* ostream-dot allocates from the data stack for each chunk: give
	   each round its own frame */
	T_BEGIN {
		res = o_stream_send_istream(trans->dot_output, trans->message);
	} T_END;
	switch (res) {
	case OSTREAM_SEND_ISTREAM_RESULT_FINISHED:
		break;
	case OSTREAM_SEND_ISTREAM_RESULT_WAIT_INPUT:
		/* only a non-blocking message stream gets here; bagged mail
		   is read from files */
		trans->io_message = io_add_istream(trans->message,
			bag_smtp_client_send_message_more, client);
		return;
	case OSTREAM_SEND_ISTREAM_RESULT_WAIT_OUTPUT:
		/* the flush callback goes on; the timeout is for a write
		   that doesn't progress */
		bag_smtp_client_wait(client, client->set.timeout_msecs,
				     FALSE);
		return;
	case OSTREAM_SEND_ISTREAM_RESULT_ERROR_INPUT:
		bag_smtp_client_fail(client, t_strdup_printf(
			"read(%s) failed: %s",
			i_stream_get_name(trans->message),
			i_stream_get_error(trans->message)));
		return;
	case OSTREAM_SEND_ISTREAM_RESULT_ERROR_OUTPUT:
		bag_smtp_client_fail(client, t_strdup_printf(
			"Connection lost while sending the message: %s",
			o_stream_get_error(trans->dot_output)));
		return;
	}

	/* ostream-dot writes the final "." line only when finished: CRLF.CRLF
	   if the message didn't end with CRLF (so a missing final newline is
	   added), and just ".CRLF" if it did. It sends the line with
	   o_stream_send() and asserts that the parent took all of it, but an
	   fd ostream with an empty buffer writes at once, and fails if the
	   server has closed the connection: cork the parent, so it only
	   buffers the line, and let the flush report the error. */
	o_stream_cork(client->output);
	ret = o_stream_finish(trans->dot_output);
	if (o_stream_uncork_flush(client->output) < 0)
		ret = -1;
	if (ret == 0) {
		bag_smtp_client_wait(client, client->set.timeout_msecs,
				     FALSE);
		return;
	}
	if (ret < 0) {
		bag_smtp_client_fail(client, t_strdup_printf(
			"Connection lost while sending the message: %s",
			client->output->stream_errno != 0 ?
			o_stream_get_error(client->output) :
			o_stream_get_error(trans->dot_output)));
		return;
	}
	o_stream_unset_flush_callback(client->output);
	/* o_stream_send_istream() set flush-pending on WAIT_OUTPUT; it isn't
	   the caller's to handle */
	o_stream_set_flush_pending(client->output, FALSE);
	o_stream_set_max_buffer_size(client->output,
				     trans->old_max_buffer_size);
	o_stream_destroy(&trans->dot_output);
	i_stream_unref(&trans->message);
	timeout_remove(&client->to);
	bag_smtp_client_expect(client, BAG_SMTP_EXPECT_END_OF_DATA);
}

static int bag_smtp_client_output(struct bag_smtp_client *client)
{
	bag_smtp_client_send_message_more(client);
	return 1;
}

static void bag_smtp_client_send_message(struct bag_smtp_client *client)
{
	struct bag_smtp_client_trans *trans = client->trans;
	struct istream *input;

	/* ostream-dot adds missing CRs too, but each costs it two iovecs;
	   istream-crlf adds them in a plain copy */
	input = i_stream_create_crlf(trans->message);
	i_stream_unref(&trans->message);
	trans->message = input;
	/* Bound the output buffer while sending (see
	   BAG_SMTP_CLIENT_MAX_BODY_BUFFER); an unlimited one would also take
	   in the whole message at once. */
	trans->old_max_buffer_size =
		o_stream_get_max_buffer_size(client->output);
	o_stream_set_max_buffer_size(client->output,
		I_MIN(trans->old_max_buffer_size,
		      BAG_SMTP_CLIENT_MAX_BODY_BUFFER));
	trans->dot_output = o_stream_create_dot(client->output, FALSE);
	o_stream_set_flush_callback(client->output, bag_smtp_client_output,
				    client);
	bag_smtp_client_send_message_more(client);
}

static void bag_smtp_client_send_failed(struct bag_smtp_client *client)
{
	const char *error = client->send_error;

	timeout_remove(&client->to_fail);
	client->send_error = NULL;
	/* nothing was sent: the session stays as it was */
	bag_smtp_client_trans_callback(client, error);
}

static void
bag_smtp_client_send(struct bag_smtp_sender *sender, pool_t pool,
		     const struct smtp_address *mail_from,
		     const struct smtp_params_mail *mail_params,
		     const struct smtp_address *const *rcpts,
		     const struct smtp_params_rcpt *const *rcpt_params,
		     unsigned int rcpt_count, struct istream *message,
		     bag_smtp_sender_callback_t *callback, void *context)
{
	struct bag_smtp_client *client =
		container_of(sender, struct bag_smtp_client, sender);
	struct bag_smtp_client_trans *trans;
	struct bag_smtp_send_result *result;
	const char *error;
	unsigned int i;

	i_assert(client->trans == NULL);
	i_assert(rcpt_count > 0);
	i_assert(message != NULL);

	result = p_new(pool, struct bag_smtp_send_result, 1);
	result->rcpt_replies = p_new(pool, struct smtp_reply, rcpt_count);
	/* a reply never received: status 0, no lines */
	result->mail_reply.text_lines = bag_smtp_no_lines;
	result->data_reply.text_lines = bag_smtp_no_lines;
	for (i = 0; i < rcpt_count; i++)
		result->rcpt_replies[i].text_lines = bag_smtp_no_lines;

	trans = i_new(struct bag_smtp_client_trans, 1);
	trans->pool = pool;
	trans->result = result;
	trans->rcpt_count = rcpt_count;
	trans->message = message;
	i_stream_ref(message);
	trans->callback = callback;
	trans->context = context;
	client->trans = trans;

	if (client->failure != NULL) {
		/* from the ioloop, as every other outcome */
		client->send_error = client->failure;
		client->to_fail = timeout_add_short(0,
			bag_smtp_client_send_failed, client);
		return;
	}
	i_assert(client->ready);
	if (bag_smtp_client_build_commands(client, pool, mail_from,
					   mail_params, rcpts, rcpt_params,
					   rcpt_count, trans, &error) < 0) {
		client->send_error = p_strdup(pool, error);
		client->to_fail = timeout_add_short(0,
			bag_smtp_client_send_failed, client);
		return;
	}
	bag_smtp_client_send_group(client);
}

static void bag_smtp_client_abort(struct bag_smtp_sender *sender)
{
	struct bag_smtp_client *client =
		container_of(sender, struct bag_smtp_client, sender);

	/* nobody knows where the protocol is now */
	client->broken = TRUE;
	if (client->failure == NULL)
		client->failure = "The transaction was aborted";
	timeout_remove(&client->to_fail);
	bag_smtp_client_trans_free(client);
	bag_smtp_client_idle(client);
	array_clear(&client->expect);
}

static const struct bag_smtp_sender_vfuncs bag_smtp_client_sender_vfuncs = {
	.send = bag_smtp_client_send,
	.abort = bag_smtp_client_abort,
};

/*
 * Reading replies
 */

static void
bag_smtp_client_reply(struct bag_smtp_client *client,
		      enum bag_smtp_client_expect expect,
		      const struct smtp_reply *reply)
{
	switch (expect) {
	case BAG_SMTP_EXPECT_GREETING:
	case BAG_SMTP_EXPECT_EHLO:
	case BAG_SMTP_EXPECT_HELO:
		bag_smtp_client_start_reply(client, expect, reply);
		return;
	case BAG_SMTP_EXPECT_QUIT:
		/* the reply doesn't matter */
		bag_smtp_client_call_quit(client);
		return;
	default:
		bag_smtp_client_trans_reply(client, expect, reply);
		return;
	}
}

/* Read the next reply. Returns 1 with it, 0 if more input is needed, -1
   if the client failed. */
static int
bag_smtp_client_read_reply(struct bag_smtp_client *client,
			   enum bag_smtp_client_expect expect,
			   struct smtp_reply **reply_r)
{
	const bool enhanced =
		(client->caps & SMTP_CAPABILITY_ENHANCEDSTATUSCODES) != 0;
	const char *what = bag_smtp_expect_names[expect];
	const bool greeting = expect == BAG_SMTP_EXPECT_GREETING;
	const char *error = NULL;
	int ret;

	if (client->reply_input == NULL) {
		/* The parser reads for as long as data keeps coming, and it
		   bounds a reply's text but not its empty lines: give it
		   only as many bytes as a reply may take. Destroying the
		   limit stream moves the connection's stream past what the
		   parser consumed. */
		client->reply_input = i_stream_create_limit(client->input,
			BAG_SMTP_CLIENT_MAX_REPLY_WIRE_SIZE);
		smtp_reply_parser_set_stream(client->parser,
					     client->reply_input);
	}
	if (expect == BAG_SMTP_EXPECT_EHLO) {
		ret = smtp_reply_parse_ehlo(client->parser, reply_r, &error);
	} else {
		ret = smtp_reply_parse_next(client->parser, enhanced,
					    reply_r, &error);
	}
	if (ret > 0)
		return 1;

	if (client->input->stream_errno != 0) {
		bag_smtp_client_fail(client, t_strdup_printf(
			"Connection lost %s %s: %s",
			greeting ? "before" : "after", what,
			i_stream_get_error(client->input)));
		return -1;
	}
	/* The parser returns 0 at EOF between replies and -1 ("Premature
	   end of input") in the middle of one. */
	if (client->input->eof) {
		bag_smtp_client_fail(client, greeting ?
			"Connection closed by server before greeting" :
			t_strdup_printf("Connection closed by server after %s",
					what));
		return -1;
	}
	if (client->reply_input->eof) {
		/* the limit stream ended, not the connection */
		bag_smtp_client_fail(client, greeting ?
			"Greeting is too long" :
			t_strdup_printf("Reply to %s is too long", what));
		return -1;
	}
	if (ret < 0) {
		i_assert(error != NULL);
		error = str_sanitize(error, BAG_SMTP_CLIENT_MAX_ERROR_REPLY_LEN);
		bag_smtp_client_fail(client, greeting ?
			t_strdup_printf("Invalid greeting: %s", error) :
			t_strdup_printf("Invalid reply to %s: %s", what, error));
		return -1;
	}
	return 0;
}

static void bag_smtp_client_input(struct bag_smtp_client *client)
{
	enum bag_smtp_client_expect expect;
	struct smtp_reply *reply;
	int ret;

	bag_smtp_client_ref(client);
	while (!client->destroyed && !client->broken &&
	       array_count(&client->expect) > 0) {
		expect = *array_front(&client->expect);
		T_BEGIN {
			ret = bag_smtp_client_read_reply(client, expect,
							 &reply);
			if (ret > 0) {
				array_pop_front(&client->expect);
				if (array_count(&client->expect) == 0)
					bag_smtp_client_idle(client);
				else {
					bag_smtp_client_wait(client,
						client->set.timeout_msecs,
						TRUE);
				}
				bag_smtp_client_reply(client, expect, reply);
			}
		} T_END;
		if (ret <= 0)
			break;
		/* the next reply gets a limit of its own */
		if (client->reply_input != NULL) {
			smtp_reply_parser_set_stream(client->parser, NULL);
			i_stream_unref(&client->reply_input);
		}
	}
	if (!client->destroyed && array_count(&client->expect) == 0 &&
	    client->to == NULL)
		io_remove(&client->io);
	bag_smtp_client_unref(&client);
}

/*
 * Public API
 */

struct bag_smtp_client *
bag_smtp_client_init(struct istream *input, struct ostream *output,
		     const struct bag_smtp_client_settings *set)
{
	struct bag_smtp_client *client;
	pool_t pool;

	i_assert(set->my_hostname != NULL && *set->my_hostname != '\0');
	i_assert(strpbrk(set->my_hostname, "\r\n") == NULL);
	i_assert(set->timeout_msecs > 0);

	pool = pool_alloconly_create("bag smtp client", 1024);
	client = p_new(pool, struct bag_smtp_client, 1);
	client->pool = pool;
	client->refcount = 1;
	client->sender.v = &bag_smtp_client_sender_vfuncs;
	client->input = input;
	i_stream_ref(input);
	client->output = output;
	o_stream_ref(output);
	client->set = *set;
	client->set.my_hostname = p_strdup(pool, set->my_hostname);
	if (client->set.greeting_timeout_msecs == 0)
		client->set.greeting_timeout_msecs = set->timeout_msecs;
	p_array_init(&client->expect, pool, 8);
	client->parser = smtp_reply_parser_init(
		input, BAG_SMTP_CLIENT_MAX_REPLY_SIZE);
	return client;
}

void bag_smtp_client_deinit(struct bag_smtp_client **_client)
{
	struct bag_smtp_client *client = *_client;

	if (client == NULL)
		return;
	*_client = NULL;

	client->destroyed = TRUE;
	client->start_callback = NULL;
	client->quit_callback = NULL;
	if (client->trans != NULL)
		client->trans->callback = NULL;
	bag_smtp_client_trans_free(client);
	bag_smtp_client_idle(client);
	timeout_remove(&client->to_quit);
	timeout_remove(&client->to_fail);
	if (client->reply_input != NULL) {
		smtp_reply_parser_set_stream(client->parser, NULL);
		i_stream_unref(&client->reply_input);
	}
	smtp_reply_parser_deinit(&client->parser);
	i_stream_unref(&client->input);
	o_stream_unref(&client->output);
	bag_smtp_client_unref(&client);
}

#undef bag_smtp_client_start
void bag_smtp_client_start(struct bag_smtp_client *client,
			   bag_smtp_client_start_callback_t *callback,
			   void *context)
{
	i_assert(!client->started);
	client->started = TRUE;
	client->start_callback = callback;
	client->start_context = context;
	bag_smtp_client_expect(client, BAG_SMTP_EXPECT_GREETING);
	/* the greeting may be buffered already */
	if (i_stream_get_data_size(client->input) > 0)
		i_stream_set_input_pending(client->input, TRUE);
}

enum smtp_capability
bag_smtp_client_get_capabilities(struct bag_smtp_client *client)
{
	return client->caps;
}

struct bag_smtp_sender *
bag_smtp_client_get_sender(struct bag_smtp_client *client)
{
	return &client->sender;
}

#undef bag_smtp_client_quit
void bag_smtp_client_quit(struct bag_smtp_client *client,
			  void (*callback)(void *context), void *context)
{
	client->quit_callback = callback;
	client->quit_context = context;
	if (!client->started || client->broken || client->quit_sent ||
	    array_count(&client->expect) > 0 || client->trans != NULL) {
		/* nothing to say: the callback from the ioloop */
		client->to_quit = timeout_add_short(
			0, bag_smtp_client_call_quit, client);
		return;
	}
	client->quit_sent = TRUE;
	client->ready = FALSE;
	if (client->failure == NULL)
		client->failure = "QUIT was already sent";
	bag_smtp_client_command(client, "QUIT", BAG_SMTP_EXPECT_QUIT);
	bag_smtp_client_flush(client);
}
