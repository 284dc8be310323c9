/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* Fuzz target: the SMTP client of the reversed ATRN session
   (bag-smtp-client.c) reading what the customer's MTA answers: the
   greeting, EHLO/HELO and its capabilities, the replies to MAIL, RCPT and
   DATA (pipelined or not), RSET after a failed transaction, and QUIT.
   (The sessions to a customer's host are lib-smtp's client, whose reply
   parser is Dovecot's and fuzzed there; what the flush makes of the
   replies is the same code for both, bag-flush.c.)

   Input: one flags byte, then everything the server sends. The client runs
   in an ioloop on one end of a socketpair; the other end is the server,
   which writes the input as the socket takes it and then closes its side,
   so the client never waits for more than there is. What the client
   writes is read from that end into a buffer.
     flags bits 0-1: recipients - 1; bit 2: MAIL parameters; bit 3: RCPT
     parameters; bit 4: a second transaction; bit 5: QUIT at the end;
     bit 6: a message that ends without a line end.

   Asserts: the results are the documented ones and errors are safe to
   log; no wait times out; every reply kept is a complete one (2xx-5xx,
   never the 354); after a failure or a refused session the client sends
   nothing more but QUIT where it may; everything it writes is
   CRLF-terminated lines, with at most one EHLO, one HELO and one QUIT
   (last), no more MAIL commands than transactions and no more RCPTs than
   recipients. */

#include "lib.h"
#include "buffer.h"
#include "str.h"
#include "ioloop.h"
#include "istream.h"
#include "ostream.h"
#include "smtp-address.h"
#include "smtp-params.h"
#include "fd-util.h"
#include "fuzz-common.h"
#include "bag-smtp-sender.h"
#include "bag-smtp-client.h"

#include <time.h>
#include <unistd.h>
#include <sys/socket.h>

#define FUZZ_FLAG_RCPTS_MASK 0x03
#define FUZZ_FLAG_MAIL_PARAMS 0x04
#define FUZZ_FLAG_RCPT_PARAMS 0x08
#define FUZZ_FLAG_SECOND_TRANSACTION 0x10
#define FUZZ_FLAG_QUIT 0x20
#define FUZZ_FLAG_NO_FINAL_LF 0x40

#define FUZZ_RCPTS_MAX 4
#define FUZZ_MY_HOSTNAME "client.example.org"
#define FUZZ_EHLO "EHLO "FUZZ_MY_HOSTNAME"\r\n"
/* the messages' first line, as sent */
#define FUZZ_MESSAGE_START "Subject: fuzz\r\n"
/* only reached if the client waits for more than it was given, which
   the elapsed time shows even where the error is not returned (QUIT) */
#define FUZZ_TIMEOUT_MSECS 2000

static const char *const fuzz_rcpt_addrs[FUZZ_RCPTS_MAX] = {
	"rcpt1@example.com", "rcpt2@example.com",
	"rcpt3@example.com", "rcpt4@example.com",
};

struct fuzz_session {
	struct ioloop *ioloop;
	struct bag_smtp_client *client;
	buffer_t *output_buf;
	pool_t pool;
	unsigned char flags;

	/* the server's end of the socketpair */
	int server_fd;
	struct io *io_server_read, *io_server_write;
	const unsigned char *server_data;
	size_t server_size, server_pos;

	/* the transactions and recipients the client was asked to send */
	unsigned int mail_count, rcpt_count;
	/* a call failed or the session was refused: no more mail */
	bool failed;
	bool broken;

	/* what the last callback said */
	bool done;
	int ret;
	struct smtp_reply reply;
	struct bag_smtp_send_result result;
	const char *error;
};

/* What the client wrote, as far as it came. */
static void fuzz_server_read(struct fuzz_session *session)
{
	unsigned char buf[4096];
	ssize_t ret;

	for (;;) {
		ret = read(session->server_fd, buf, sizeof(buf));
		if (ret <= 0) {
			if (ret == 0 || errno != EAGAIN)
				io_remove(&session->io_server_read);
			return;
		}
		buffer_append(session->output_buf, buf, ret);
	}
}

/* The server says everything it has, then closes its side. */
static void fuzz_server_write(struct fuzz_session *session)
{
	ssize_t ret;

	while (session->server_pos < session->server_size) {
		ret = write(session->server_fd,
			    session->server_data + session->server_pos,
			    session->server_size - session->server_pos);
		if (ret < 0) {
			if (errno == EAGAIN)
				return;
			/* the client is gone */
			break;
		}
		session->server_pos += ret;
	}
	io_remove(&session->io_server_write);
	(void)shutdown(session->server_fd, SHUT_WR);
}

static void fuzz_session_run(struct fuzz_session *session)
{
	if (!session->done)
		io_loop_run(session->ioloop);
	i_assert(session->done);
	session->done = FALSE;
	/* what the client wrote meanwhile */
	fuzz_server_read(session);
}

static void fuzz_assert_error(const char *error)
{
	i_assert(error != NULL);
	fuzz_assert_loggable(error);
	/* (a reply's text comes after a prefix) */
	if (str_begins(error, "Timed out"))
		i_panic("the client waited with all replies there: %s", error);
}

static void fuzz_assert_reply(const struct smtp_reply *reply)
{
	i_assert(reply->text_lines != NULL);
	if (reply->status == 0) {
		/* not sent, or not replied to */
		return;
	}
	i_assert(reply->status >= 200 && reply->status < 600);
}

static void
fuzz_session_started(int ret, const struct smtp_reply *reply,
		     const char *error, struct fuzz_session *session)
{
	session->done = TRUE;
	session->ret = ret;
	i_zero(&session->reply);
	if (reply != NULL)
		smtp_reply_copy(session->pool, &session->reply, reply);
	else
		session->reply.text_lines = t_new(const char *, 1);
	session->error = p_strdup(session->pool, error);
	io_loop_stop(session->ioloop);
}

static void fuzz_session_start(struct fuzz_session *session)
{
	struct smtp_reply reply;
	int ret;

	bag_smtp_client_start(session->client, fuzz_session_started, session);
	fuzz_session_run(session);
	ret = session->ret;
	reply = session->reply;
	fuzz_assert_reply(&reply);
	switch (ret) {
	case 1:
		i_assert(smtp_reply_is_success(&reply));
		break;
	case 0:
		/* refused: the greeting, or EHLO and HELO */
		i_assert(reply.status != 0 && !smtp_reply_is_success(&reply));
		session->failed = TRUE;
		break;
	case -1:
		fuzz_assert_error(session->error);
		session->failed = TRUE;
		session->broken = TRUE;
		break;
	default:
		i_unreached();
	}
	/* capabilities come only from a successful EHLO */
	if (ret != 1) {
		i_assert(bag_smtp_client_get_capabilities(session->client) ==
			 SMTP_CAPABILITY_NONE);
	}
	/* the first thing sent is EHLO */
	if (session->output_buf->used > 0) {
		i_assert(session->output_buf->used >= strlen(FUZZ_EHLO) &&
			 memcmp(session->output_buf->data, FUZZ_EHLO,
				strlen(FUZZ_EHLO)) == 0);
	}
}

/* Whether the client ended a message's data (the "." line) since offset
   start, after sending the message itself if with_message. */
static bool
fuzz_session_data_ended(struct fuzz_session *session, size_t start,
			bool with_message)
{
	const unsigned char *data = session->output_buf->data;
	const void *p;
	size_t size = session->output_buf->used;

	i_assert(start <= size);
	data += start;
	size -= start;
	if (with_message) {
		p = fuzz_memmem(data, size, FUZZ_MESSAGE_START,
				strlen(FUZZ_MESSAGE_START));
		if (p == NULL)
			return FALSE;
		size -= (const unsigned char *)p - data;
		data = p;
	}
	return fuzz_memmem(data, size, "\r\n.\r\n", 5) != NULL ||
		(size >= 3 && memcmp(data, ".\r\n", 3) == 0);
}

static void
fuzz_session_sent(const struct bag_smtp_send_result *result,
		  const char *error, struct fuzz_session *session)
{
	/* a send always has a result here (NULL is lib-smtp's relay when
	   its session is gone) */
	i_assert(result != NULL);
	session->done = TRUE;
	session->result = *result;
	session->error = p_strdup(session->pool, error);
	session->ret = error == NULL ? 1 : -1;
	io_loop_stop(session->ioloop);
}

static void fuzz_session_send(struct fuzz_session *session)
{
	struct smtp_params_mail mail_params;
	struct smtp_params_rcpt rcpt_param;
	const struct smtp_params_rcpt *rcpt_params[FUZZ_RCPTS_MAX];
	const struct smtp_address *rcpts[FUZZ_RCPTS_MAX];
	struct smtp_address *from;
	struct bag_smtp_send_result result;
	struct istream *message;
	const char *text, *error;
	size_t used = session->output_buf->used;
	unsigned int i, rcpt_count;
	int ret;

	rcpt_count = (session->flags & FUZZ_FLAG_RCPTS_MASK) + 1;
	from = smtp_address_create(session->pool, "sender", "example.org");
	for (i = 0; i < rcpt_count; i++) {
		const char *addr = fuzz_rcpt_addrs[i];

		rcpts[i] = smtp_address_create(session->pool,
			t_strcut(addr, '@'), strchr(addr, '@') + 1);
	}
	i_zero(&mail_params);
	if ((session->flags & FUZZ_FLAG_MAIL_PARAMS) != 0) {
		mail_params.body.type = SMTP_PARAM_MAIL_BODY_TYPE_8BITMIME;
		mail_params.envid = "env1";
		mail_params.ret = SMTP_PARAM_MAIL_RET_HDRS;
		mail_params.size = 1234;
	}
	i_zero(&rcpt_param);
	rcpt_param.notify = SMTP_PARAM_RCPT_NOTIFY_SUCCESS |
		SMTP_PARAM_RCPT_NOTIFY_FAILURE;
	smtp_params_rcpt_set_orcpt(&rcpt_param, session->pool,
		smtp_address_create(session->pool, "orig", "example.com"));
	for (i = 0; i < rcpt_count; i++)
		rcpt_params[i] = i % 2 == 0 ? &rcpt_param : NULL;

	text = (session->flags & FUZZ_FLAG_NO_FINAL_LF) != 0 ?
		FUZZ_MESSAGE_START"\n.leading dot\n..two\n.\nlast" :
		FUZZ_MESSAGE_START"\r\nhello\r\n.\r\n";
	message = i_stream_create_from_data(text, strlen(text));

	session->mail_count++;
	session->rcpt_count += rcpt_count;
	bag_smtp_sender_send(bag_smtp_client_get_sender(session->client),
		session->pool, from,
		(session->flags & FUZZ_FLAG_MAIL_PARAMS) != 0 ?
		&mail_params : NULL, rcpts,
		(session->flags & FUZZ_FLAG_RCPT_PARAMS) != 0 ?
		rcpt_params : NULL, rcpt_count, message,
		fuzz_session_sent, session);
	fuzz_session_run(session);
	i_stream_unref(&message);
	ret = session->ret;
	result = session->result;
	error = session->error;

	i_assert(result.rcpt_replies != NULL);
	fuzz_assert_reply(&result.mail_reply);
	for (i = 0; i < rcpt_count; i++)
		fuzz_assert_reply(&result.rcpt_replies[i]);
	fuzz_assert_reply(&result.data_reply);
	/* the 354 is not kept: a 3xx can only be the reply after the data
	   (which a server shouldn't give: bag-flush defers it) */
	if (result.data_reply.status / 100 == 3)
		i_assert(fuzz_session_data_ended(session, used, FALSE));

	if (session->failed) {
		/* a client that failed sends nothing more */
		i_assert(ret == -1);
		i_assert(used == session->output_buf->used);
	}
	switch (ret) {
	case 1:
		/* MAIL was always answered */
		i_assert(result.mail_reply.status != 0);
		/* what bag-flush counts as delivered was sent */
		if (smtp_reply_is_success(&result.mail_reply) &&
		    smtp_reply_is_success(&result.data_reply)) {
			for (i = 0; i < rcpt_count; i++) {
				if (smtp_reply_is_success(
					&result.rcpt_replies[i]))
					break;
			}
			if (i < rcpt_count) {
				i_assert(fuzz_session_data_ended(session, used,
								 TRUE));
			}
		}
		/* 421 means the server is closing: an error */
		i_assert(result.mail_reply.status != 421 &&
			 result.data_reply.status != 421);
		for (i = 0; i < rcpt_count; i++)
			i_assert(result.rcpt_replies[i].status != 421);
		break;
	case -1:
		fuzz_assert_error(error);
		if (!session->failed)
			session->broken = TRUE;
		session->failed = TRUE;
		break;
	default:
		i_unreached();
	}
}

static void fuzz_session_quit_done(struct fuzz_session *session)
{
	session->done = TRUE;
	io_loop_stop(session->ioloop);
}

static void fuzz_session_quit(struct fuzz_session *session)
{
	size_t used = session->output_buf->used;

	bag_smtp_client_quit(session->client, fuzz_session_quit_done,
			     session);
	fuzz_session_run(session);
	/* a broken connection gets nothing, not even QUIT (a failed RSET
	   breaks it too, unseen here) */
	if (session->broken || used == session->output_buf->used) {
		i_assert(used == session->output_buf->used);
		return;
	}
	i_assert(session->output_buf->used == used + 6);
	i_assert(memcmp(CONST_PTR_OFFSET(session->output_buf->data, used),
			"QUIT\r\n", 6) == 0);
}

static void fuzz_session_check_output(struct fuzz_session *session)
{
	const char *p = session->output_buf->data, *end, *line;
	const char *const data_end = p + session->output_buf->used;
	unsigned int ehlo = 0, helo = 0, mail = 0, rcpt = 0, quit = 0;

	for (; p < data_end; p = end + 1) {
		end = memchr(p, '\n', data_end - p);
		i_assert(end != NULL);
		i_assert(end > p && end[-1] == '\r');
		line = t_strdup_until(p, end - 1);
		i_assert(strlen(line) == (size_t)(end - 1 - p));
		i_assert(strchr(line, '\r') == NULL);
		i_assert(quit == 0);
		if (str_begins(line, "EHLO "))
			ehlo++;
		else if (str_begins(line, "HELO "))
			helo++;
		else if (str_begins(line, "MAIL FROM:"))
			mail++;
		else if (str_begins(line, "RCPT TO:"))
			rcpt++;
		else if (strcmp(line, "QUIT") == 0)
			quit++;
	}
	i_assert(ehlo <= 1 && helo <= 1);
	i_assert(mail <= session->mail_count);
	i_assert(rcpt <= session->rcpt_count);
}

static long long fuzz_now_msecs(void)
{
	struct timespec ts;

	if (clock_gettime(CLOCK_MONOTONIC, &ts) < 0)
		i_fatal("clock_gettime(CLOCK_MONOTONIC) failed: %m");
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void fuzz_smtp_client(const unsigned char *data, size_t size)
{
	const long long start_msecs = fuzz_now_msecs();
	struct bag_smtp_client_settings set;
	struct fuzz_session session;
	struct istream *input;
	struct ostream *output;
	int fds[2];

	i_zero(&session);
	session.flags = data[0];
	session.pool = pool_alloconly_create("fuzz smtp client", 1024);
	session.output_buf = buffer_create_dynamic(default_pool, 1024);
	session.ioloop = io_loop_create();

	if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) < 0)
		i_fatal("socketpair() failed: %m");
	fd_set_nonblock(fds[0], TRUE);
	fd_set_nonblock(fds[1], TRUE);
	session.server_fd = fds[1];
	session.server_data = data + 1;
	session.server_size = size - 1;
	session.io_server_write = io_add(session.server_fd, IO_WRITE,
					 fuzz_server_write, &session);
	session.io_server_read = io_add(session.server_fd, IO_READ,
					fuzz_server_read, &session);
	input = i_stream_create_fd(fds[0], 4096);
	output = o_stream_create_fd(fds[0], SIZE_MAX);

	i_zero(&set);
	set.my_hostname = FUZZ_MY_HOSTNAME;
	set.timeout_msecs = FUZZ_TIMEOUT_MSECS;
	session.client = bag_smtp_client_init(input, output, &set);
	fuzz_session_start(&session);
	fuzz_session_send(&session);
	if ((session.flags & FUZZ_FLAG_SECOND_TRANSACTION) != 0)
		fuzz_session_send(&session);
	if ((session.flags & FUZZ_FLAG_QUIT) != 0)
		fuzz_session_quit(&session);
	bag_smtp_client_deinit(&session.client);
	fuzz_server_read(&session);
	fuzz_session_check_output(&session);
	if (fuzz_now_msecs() - start_msecs >= FUZZ_TIMEOUT_MSECS)
		i_panic("the client waited with all replies there");

	i_stream_unref(&input);
	o_stream_destroy(&output);
	io_remove(&session.io_server_read);
	io_remove(&session.io_server_write);
	i_close_fd(&fds[0]);
	i_close_fd(&fds[1]);
	io_loop_destroy(&session.ioloop);
	buffer_free(&session.output_buf);
	pool_unref(&session.pool);
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
	if (size == 0)
		return 0;
	T_BEGIN {
		fuzz_smtp_client(data, size);
	} T_END;
	return 0;
}
