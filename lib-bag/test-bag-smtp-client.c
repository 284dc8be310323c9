/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* Unit tests of the SMTP client of the reversed ATRN session against a
   scripted server: a forked child on the other end of a socketpair that
   checks every byte the client sends and answers with canned replies. The
   client runs in the test's ioloop; each helper runs it until the
   client's callback. */

#include "lib.h"
#include "buffer.h"
#include "str.h"
#include "fd-util.h"
#include "net.h"
#include "ioloop.h"
#include "istream.h"
#include "ostream.h"
#include "write-full.h"
#include "smtp-address.h"
#include "smtp-params.h"
#include "test-common.h"
#include "bag-smtp-sender.h"
#include "bag-smtp-client.h"

#include <stdio.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/wait.h>

/* Script steps, by their first character:
   "<text": expect exactly these bytes from the client
   ">text": send them
   "}text": send them, ignoring errors, and end (the client hangs up)
   "~N": sleep N milliseconds
   "#": expect the big message (test_big_message())
   "=": expect nothing more for a while: the client waits for a reply
   "Ptext": write text into the message pipe (test_session_init_pipe())
   "p": close the message pipe, ending the message
   "X": close the connection, and go on with the script
   "!": close the connection at once and end
   At the end of the script the client must send nothing more: the server
   reads until EOF. */

#define TEST_SERVER_ALARM_SECS 20
#define TEST_ALARM_SECS 30
#define TEST_TIMEOUT_MSECS 10000
#define TEST_SERVER_QUIET_MSECS 100

struct test_session {
	pid_t pid;
	int fd;
	struct ioloop *ioloop;
	struct istream *input;
	struct ostream *output;
	struct bag_smtp_client *client;
	pool_t pool;
	/* the read end of the message pipe, or -1 */
	int msg_fd;

	/* what the last callback said */
	bool done;
	int ret;
	struct smtp_reply reply;
	struct bag_smtp_send_result result;
	const char *error;
};

static const char *test_sender = "sender@example.org";
static const char *const test_rcpts[] = {
	"rcpt1@example.com", "rcpt2@example.com", "rcpt3@example.com",
};

/* A big message with LF line endings, lines that start with a dot (many
   of them short: ostream-dot makes two iovecs of each) and no final
   newline, and what the server must receive for it. */
static void test_big_message(string_t *message, string_t *wire)
{
	unsigned int i;

	for (i = 0; i < 30000; i++) {
		str_append(message, ".\n");
		str_append(wire, "..\r\n");
	}
	for (i = 0; i < 20000; i++) {
		if (i % 7 == 0) {
			str_printfa(message, ".line %u\n", i);
			str_printfa(wire, "..line %u\r\n", i);
		} else {
			str_printfa(message, "line %u of the big message, "
				    "long enough to fill the buffers\n", i);
			str_printfa(wire, "line %u of the big message, "
				    "long enough to fill the buffers\r\n", i);
		}
	}
	str_append(message, "the end");
	str_append(wire, "the end\r\n.\r\n");
}

/* The child leaves through here: under valgrind it gets its own leak check,
   so it frees what it allocated, and the data stack's event that it
   inherited (lib_deinit() would do that, but the child is inside the
   parent's data stack frames). */
static buffer_t *test_server_buf;
static int test_server_msg_fd = -1;

static void ATTR_NORETURN test_server_exit(int status)
{
	buffer_free(&test_server_buf);
	data_stack_deinit_event();
	_exit(status);
}

static void test_server_print(const char *prefix, const void *data,
			      size_t size)
{
	const unsigned char *p = data;
	string_t *str = t_str_new(size * 2 + 64);
	size_t i;

	for (i = 0; i < size && i < 512; i++) {
		if (p[i] == '\r')
			str_append(str, "\\r");
		else if (p[i] == '\n')
			str_append(str, "\\n");
		else if (p[i] < 0x20 || p[i] >= 0x7f)
			str_printfa(str, "\\x%02x", p[i]);
		else
			str_append_c(str, p[i]);
	}
	if (i < size)
		str_append(str, "...");
	fprintf(stderr, "test server: %s: \"%s\"\n", prefix, str_c(str));
}

static void
test_server_expect(int fd, buffer_t *buf, const void *data, size_t size)
{
	unsigned char tmp[8192];
	ssize_t ret;

	while (buf->used < size) {
		ret = read(fd, tmp, sizeof(tmp));
		if (ret <= 0) {
			test_server_print(ret < 0 ? "read error, expected" :
					  "EOF, expected", data, size);
			test_server_print("got", buf->data, buf->used);
			test_server_exit(1);
		}
		buffer_append(buf, tmp, ret);
	}
	if (memcmp(buf->data, data, size) != 0) {
		test_server_print("expected", data, size);
		test_server_print("got", buf->data, size);
		test_server_exit(1);
	}
	buffer_delete(buf, 0, size);
}

static void test_server_expect_quiet(int fd, buffer_t *buf)
{
	struct pollfd pfd;
	unsigned char tmp[1024];
	ssize_t ret;

	i_zero(&pfd);
	pfd.fd = fd;
	pfd.events = POLLIN;
	if (buf->used == 0 && poll(&pfd, 1, TEST_SERVER_QUIET_MSECS) == 0)
		return;
	if (buf->used > 0)
		test_server_print("expected nothing, got", buf->data,
				  buf->used);
	else if ((ret = read(fd, tmp, sizeof(tmp))) > 0)
		test_server_print("expected nothing, got", tmp, ret);
	else
		fprintf(stderr, "test server: expected nothing, got EOF\n");
	test_server_exit(4);
}

static void ATTR_NORETURN
test_server_run(int fd, const char *const *script)
{
	buffer_t *buf, *message, *wire;
	unsigned char tmp[1024];
	ssize_t ret;

	buf = test_server_buf = buffer_create_dynamic(default_pool, 4096);

	for (; *script != NULL; script++) {
		const char *step = *script;

		switch (step[0]) {
		case '<':
			test_server_expect(fd, buf, step + 1,
					   strlen(step + 1));
			break;
		case '>':
			if (write_full(fd, step + 1, strlen(step + 1)) < 0) {
				fprintf(stderr, "test server: write: %m\n");
				test_server_exit(2);
			}
			break;
		case '}':
			(void)write_full(fd, step + 1, strlen(step + 1));
			test_server_exit(0);
		case '~':
			usleep(atoi(step + 1) * 1000);
			break;
		case '#':
			message = str_new(default_pool, 2 * 1024 * 1024);
			wire = str_new(default_pool, 2 * 1024 * 1024);
			test_big_message(message, wire);
			test_server_expect(fd, buf, str_data(wire),
					   str_len(wire));
			str_free(&message);
			str_free(&wire);
			break;
		case '=':
			test_server_expect_quiet(fd, buf);
			break;
		case 'P':
			i_assert(test_server_msg_fd != -1);
			if (write_full(test_server_msg_fd, step + 1,
				       strlen(step + 1)) < 0) {
				fprintf(stderr, "test server: write: %m\n");
				test_server_exit(2);
			}
			break;
		case 'p':
			i_close_fd(&test_server_msg_fd);
			break;
		case 'X':
			i_close_fd(&fd);
			break;
		case '!':
			test_server_exit(0);
		default:
			i_unreached();
		}
	}
	if (buf->used > 0) {
		test_server_print("unexpected", buf->data, buf->used);
		test_server_exit(3);
	}
	ret = read(fd, tmp, sizeof(tmp));
	if (ret != 0) {
		if (ret > 0)
			test_server_print("unexpected", tmp, ret);
		else
			fprintf(stderr, "test server: read: %m\n");
		test_server_exit(3);
	}
	test_server_exit(0);
}

static void
test_session_init_full(struct test_session *session,
		       const char *const *script, unsigned int timeout_msecs,
		       unsigned int greeting_timeout_msecs, bool msg_pipe)
{
	struct bag_smtp_client_settings set;
	int fds[2], msg_fds[2] = { -1, -1 };

	i_zero(session);
	if (msg_pipe && pipe(msg_fds) < 0)
		i_fatal("pipe() failed: %m");
	session->msg_fd = msg_fds[0];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) < 0)
		i_fatal("socketpair() failed: %m");
	fflush(stdout);
	fflush(stderr);
	session->pid = fork();
	if (session->pid < 0)
		i_fatal("fork() failed: %m");
	if (session->pid == 0) {
		i_close_fd(&fds[0]);
		if (msg_pipe)
			i_close_fd(&msg_fds[0]);
		test_server_msg_fd = msg_fds[1];
		alarm(TEST_SERVER_ALARM_SECS);
		test_server_run(fds[1], script);
	}
	i_close_fd(&fds[1]);
	if (msg_pipe)
		i_close_fd(&msg_fds[1]);
	alarm(TEST_ALARM_SECS);

	session->fd = fds[0];
	fd_set_nonblock(session->fd, TRUE);
	/* the fd ostream adds an IO when it buffers */
	session->ioloop = io_loop_create();
	session->input = i_stream_create_fd(session->fd, 4096);
	session->output = o_stream_create_fd(session->fd, SIZE_MAX);
	session->pool = pool_alloconly_create("test bag smtp client", 4096);

	i_zero(&set);
	set.my_hostname = "client.example.org";
	set.timeout_msecs = timeout_msecs;
	set.greeting_timeout_msecs = greeting_timeout_msecs;
	session->client = bag_smtp_client_init(session->input,
					       session->output, &set);
}

static void
test_session_init(struct test_session *session, const char *const *script,
		  unsigned int timeout_msecs,
		  unsigned int greeting_timeout_msecs)
{
	test_session_init_full(session, script, timeout_msecs,
			       greeting_timeout_msecs, FALSE);
}

static void test_session_deinit(struct test_session *session)
{
	int status;

	bag_smtp_client_deinit(&session->client);
	i_stream_unref(&session->input);
	o_stream_unref(&session->output);
	i_close_fd(&session->fd);
	if (session->msg_fd != -1)
		i_close_fd(&session->msg_fd);
	if (waitpid(session->pid, &status, 0) < 0)
		i_fatal("waitpid() failed: %m");
	test_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	io_loop_destroy(&session->ioloop);
	pool_unref(&session->pool);
	alarm(0);
}

static void test_session_run(struct test_session *session)
{
	if (!session->done)
		io_loop_run(session->ioloop);
	i_assert(session->done);
	session->done = FALSE;
}

static void
test_session_started(int ret, const struct smtp_reply *reply,
		     const char *error, struct test_session *session)
{
	session->done = TRUE;
	session->ret = ret;
	i_zero(&session->reply);
	if (reply != NULL)
		smtp_reply_copy(session->pool, &session->reply, reply);
	session->error = p_strdup(session->pool, error);
	io_loop_stop(session->ioloop);
}

static int
test_session_start(struct test_session *session, struct smtp_reply *reply_r,
		   const char **error_r)
{
	bag_smtp_client_start(session->client, test_session_started, session);
	test_session_run(session);
	*reply_r = session->reply;
	*error_r = session->error;
	return session->ret;
}

static void
test_session_sent(const struct bag_smtp_send_result *result,
		  const char *error, struct test_session *session)
{
	session->done = TRUE;
	i_zero(&session->result);
	if (result != NULL)
		session->result = *result;
	session->error = p_strdup(session->pool, error);
	session->ret = error == NULL ? 1 : -1;
	io_loop_stop(session->ioloop);
}

/* Send the message over the client's sender. Returns 1 when the
   transaction completed, with every reply in result_r, or -1 when the
   session can't go on (error_r; result_r has what is known). */
static int
test_session_send_raw(struct test_session *session,
		      const struct smtp_address *from,
		      const struct smtp_params_mail *mail_params,
		      const struct smtp_address *const *rcpts,
		      const struct smtp_params_rcpt *const *rcpt_params,
		      unsigned int rcpt_count, struct istream *message,
		      struct bag_smtp_send_result *result_r,
		      const char **error_r)
{
	bag_smtp_sender_send(bag_smtp_client_get_sender(session->client),
			     session->pool, from, mail_params, rcpts,
			     rcpt_params, rcpt_count, message,
			     test_session_sent, session);
	test_session_run(session);
	*result_r = session->result;
	*error_r = session->error;
	return session->ret;
}

/* Send a message from sender (NULL: <>) to the first rcpt_count test
   recipients. */
static int
test_session_send(struct test_session *session, const char *sender,
		  const struct smtp_params_mail *mail_params,
		  const struct smtp_params_rcpt *const *rcpt_params,
		  unsigned int rcpt_count, const char *message_text,
		  struct bag_smtp_send_result *result_r,
		  const char **error_r)
{
	struct smtp_address *from = NULL;
	struct smtp_address **rcpts;
	struct istream *message;
	const char *error;
	unsigned int i;
	int ret;

	i_assert(rcpt_count <= N_ELEMENTS(test_rcpts));
	if (sender != NULL) {
		if (smtp_address_parse_path(session->pool,
				t_strconcat("<", sender, ">", NULL), 0,
				&from, &error) < 0)
			i_unreached();
	} else {
		from = p_new(session->pool, struct smtp_address, 1);
	}
	rcpts = p_new(session->pool, struct smtp_address *, rcpt_count);
	for (i = 0; i < rcpt_count; i++) {
		if (smtp_address_parse_path(session->pool,
				t_strconcat("<", test_rcpts[i], ">", NULL), 0,
				&rcpts[i], &error) < 0)
			i_unreached();
	}
	message = i_stream_create_from_data(message_text,
					    strlen(message_text));
	ret = test_session_send_raw(session, from, mail_params,
		(const struct smtp_address *const *)rcpts, rcpt_params,
		rcpt_count, message, result_r, error_r);
	i_stream_unref(&message);
	return ret;
}

static void test_session_quit_done(struct test_session *session)
{
	session->done = TRUE;
	io_loop_stop(session->ioloop);
}

static void test_session_quit(struct test_session *session)
{
	bag_smtp_client_quit(session->client, test_session_quit_done,
			     session);
	test_session_run(session);
}

static bool
test_reply_is(const struct smtp_reply *reply, unsigned int status,
	      const char *first_line)
{
	return reply->status == status && reply->text_lines != NULL &&
		null_strcmp(reply->text_lines[0], first_line) == 0;
}

static bool test_reply_is_unsent(const struct smtp_reply *reply)
{
	return reply->status == 0 && reply->text_lines != NULL &&
		reply->text_lines[0] == NULL;
}

static long long test_now_msecs(void)
{
	struct timespec ts;

	if (clock_gettime(CLOCK_MONOTONIC, &ts) < 0)
		i_fatal("clock_gettime() failed: %m");
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

#define TEST_GREETING ">220 mx.example.com ESMTP\r\n"
#define TEST_EHLO "<EHLO client.example.org\r\n"
#define TEST_EHLO_PIPELINING \
	">250-mx.example.com\r\n250 PIPELINING\r\n"
#define TEST_MAIL "MAIL FROM:<sender@example.org>\r\n"
#define TEST_RCPT1 "RCPT TO:<rcpt1@example.com>\r\n"
#define TEST_RCPT2 "RCPT TO:<rcpt2@example.com>\r\n"
#define TEST_RCPT3 "RCPT TO:<rcpt3@example.com>\r\n"
#define TEST_QUIT "<QUIT\r\n", ">221 2.0.0 Bye\r\n"

static void test_pipelined_transaction(void)
{
	static const char *const script[] = {
		">220-mx.example.com ESMTP\r\n220 ready\r\n",
		TEST_EHLO,
		">250-mx.example.com Hello\r\n"
		"250-PIPELINING\r\n"
		"250-SIZE 10240000\r\n"
		"250-8BITMIME\r\n"
		"250-DSN\r\n"
		"250-ENHANCEDSTATUSCODES\r\n"
		"250 SMTPUTF8\r\n",
		"<MAIL FROM:<sender@example.org> BODY=8BITMIME ENVID=env1"
		" RET=HDRS SIZE=1234\r\n"
		"RCPT TO:<rcpt1@example.com> NOTIFY=SUCCESS,FAILURE"
		" ORCPT=rfc822;rcpt1@example.com\r\n"
		TEST_RCPT2 TEST_RCPT3 "DATA\r\n",
		/* the message waits for the 354 */
		"=",
		">250 2.1.0 Ok\r\n"
		"250 2.1.5 Ok\r\n"
		"550 5.1.1 No such user\r\n"
		"451 4.3.0 Try again later\r\n"
		"354 End data with <CR><LF>.<CR><LF>\r\n",
		"<Subject: test\r\n\r\n..leading dot\r\nline\r\n...two\r\n"
		"..\r\ncrlf\r\nlast\r\n.\r\n",
		">250-2.0.0 Ok\r\n250 2.0.0 queued as ABC\r\n",
		TEST_QUIT,
		NULL
	};
	struct test_session session;
	struct smtp_params_mail mail_params;
	struct smtp_params_rcpt rcpt_param;
	const struct smtp_params_rcpt *rcpt_params[3];
	struct bag_smtp_send_result result;
	struct smtp_reply reply;
	enum smtp_capability caps;
	const char *error;

	test_begin("bag smtp client: pipelined transaction");
	test_session_init(&session, script, TEST_TIMEOUT_MSECS, 0);
	test_assert(test_session_start(&session, &reply, &error) == 1);
	test_assert(reply.status == 250);
	caps = bag_smtp_client_get_capabilities(session.client);
	test_assert((caps & SMTP_CAPABILITY_PIPELINING) != 0);
	test_assert((caps & SMTP_CAPABILITY_SIZE) != 0);
	test_assert((caps & SMTP_CAPABILITY_8BITMIME) != 0);
	test_assert((caps & SMTP_CAPABILITY_DSN) != 0);
	test_assert((caps & SMTP_CAPABILITY_ENHANCEDSTATUSCODES) != 0);
	test_assert((caps & SMTP_CAPABILITY_CHUNKING) == 0);

	i_zero(&mail_params);
	mail_params.body.type = SMTP_PARAM_MAIL_BODY_TYPE_8BITMIME;
	mail_params.envid = "env1";
	mail_params.ret = SMTP_PARAM_MAIL_RET_HDRS;
	mail_params.size = 1234;
	i_zero(&rcpt_param);
	rcpt_param.notify = SMTP_PARAM_RCPT_NOTIFY_SUCCESS |
		SMTP_PARAM_RCPT_NOTIFY_FAILURE;
	smtp_params_rcpt_set_orcpt(&rcpt_param, session.pool,
		smtp_address_create(session.pool, "rcpt1", "example.com"));
	rcpt_params[0] = &rcpt_param;
	rcpt_params[1] = NULL;
	rcpt_params[2] = NULL;

	test_assert(test_session_send(&session, test_sender, &mail_params,
		rcpt_params, 3,
		"Subject: test\n\n.leading dot\nline\n..two\n.\ncrlf\r\nlast",
		&result, &error) == 1);
	test_assert(error == NULL);
	test_assert(test_reply_is(&result.mail_reply, 250, "Ok"));
	test_assert(result.mail_reply.enhanced_code.x == 2 &&
		    result.mail_reply.enhanced_code.y == 1 &&
		    result.mail_reply.enhanced_code.z == 0);
	test_assert(test_reply_is(&result.rcpt_replies[0], 250, "Ok"));
	test_assert(test_reply_is(&result.rcpt_replies[1], 550,
				  "No such user"));
	test_assert(result.rcpt_replies[1].enhanced_code.x == 5 &&
		    result.rcpt_replies[1].enhanced_code.y == 1 &&
		    result.rcpt_replies[1].enhanced_code.z == 1);
	test_assert(test_reply_is(&result.rcpt_replies[2], 451,
				  "Try again later"));
	test_assert(test_reply_is(&result.data_reply, 250, "Ok"));
	test_assert(str_array_length(result.data_reply.text_lines) == 2 &&
		    strcmp(result.data_reply.text_lines[1],
			   "queued as ABC") == 0);
	test_session_quit(&session);
	test_session_deinit(&session);
	test_end();
}

static void test_helo_fallback(void)
{
	static const char *const script[] = {
		TEST_GREETING,
		TEST_EHLO,
		">500 5.5.1 Command unrecognized\r\n",
		"<HELO client.example.org\r\n",
		">250 mx.example.com\r\n",
		/* no parameters without EHLO, and no pipelining */
		"<" TEST_MAIL, "=", ">250 2.1.0 Ok\r\n",
		"<" TEST_RCPT1, "=", ">250 2.1.5 Ok\r\n",
		"<DATA\r\n", "=", ">354 go ahead\r\n",
		"<Subject: x\r\n\r\nhello\r\n.\r\n",
		">250 2.0.0 Ok\r\n",
		TEST_QUIT,
		NULL
	};
	struct test_session session;
	struct smtp_params_mail mail_params;
	struct smtp_params_rcpt rcpt_param;
	const struct smtp_params_rcpt *rcpt_params[1];
	struct bag_smtp_send_result result;
	struct smtp_reply reply;
	const char *error;

	test_begin("bag smtp client: HELO fallback");
	test_session_init(&session, script, TEST_TIMEOUT_MSECS, 0);
	test_assert(test_session_start(&session, &reply, &error) == 1);
	test_assert(test_reply_is(&reply, 250, "mx.example.com"));
	test_assert(bag_smtp_client_get_capabilities(session.client) ==
		    SMTP_CAPABILITY_NONE);

	/* smtp_params_mail_write() would assert on BODY=8BITMIME */
	i_zero(&mail_params);
	mail_params.body.type = SMTP_PARAM_MAIL_BODY_TYPE_8BITMIME;
	mail_params.envid = "env1";
	mail_params.ret = SMTP_PARAM_MAIL_RET_FULL;
	mail_params.size = 99;
	i_zero(&rcpt_param);
	rcpt_param.notify = SMTP_PARAM_RCPT_NOTIFY_NEVER;
	rcpt_params[0] = &rcpt_param;
	test_assert(test_session_send(&session, test_sender, &mail_params,
				      rcpt_params, 1,
				      "Subject: x\n\nhello\n",
				      &result, &error) == 1);
	/* an accepted recipient's reply is the message's */
	test_assert(test_reply_is(&result.rcpt_replies[0], 250,
				  "2.0.0 Ok"));
	/* no ENHANCEDSTATUSCODES: the code stays in the text */
	test_assert(test_reply_is(&result.data_reply, 250, "2.0.0 Ok"));
	test_assert(result.data_reply.enhanced_code.x == 0);
	test_session_quit(&session);
	test_session_deinit(&session);
	test_end();
}

static void test_greeting_refused(void)
{
	static const char *const script[] = {
		">554 5.7.1 No service for you\r\n",
		TEST_QUIT,
		NULL
	};
	static const char *const script_ehlo[] = {
		TEST_GREETING,
		TEST_EHLO,
		">421 4.3.2 Shutting down\r\n",
		"!",
		NULL
	};
	struct test_session session;
	struct bag_smtp_send_result result;
	struct smtp_reply reply;
	const char *error;

	test_begin("bag smtp client: session refused");
	test_session_init(&session, script, TEST_TIMEOUT_MSECS, 0);
	test_assert(test_session_start(&session, &reply, &error) == 0);
	test_assert(test_reply_is(&reply, 554, "5.7.1 No service for you"));
	/* nothing is sent */
	test_assert(test_session_send(&session, test_sender, NULL, NULL, 1,
				      "x", &result, &error) == -1);
	test_assert(error != NULL && strstr(error, "refused") != NULL);
	test_assert(test_reply_is_unsent(&result.mail_reply));
	test_assert(test_reply_is_unsent(&result.rcpt_replies[0]));
	test_session_quit(&session);
	test_session_deinit(&session);

	test_session_init(&session, script_ehlo, TEST_TIMEOUT_MSECS, 0);
	test_assert(test_session_start(&session, &reply, &error) == 0);
	test_assert(test_reply_is(&reply, 421, "4.3.2 Shutting down"));
	/* QUIT meets a closed connection: no matter */
	test_session_quit(&session);
	test_session_deinit(&session);
	test_end();
}

static void test_all_rcpts_refused_pipelined(void)
{
	static const char *const script[] = {
		TEST_GREETING,
		TEST_EHLO,
		TEST_EHLO_PIPELINING,
		"<" TEST_MAIL TEST_RCPT1 TEST_RCPT2 "DATA\r\n",
		">250 Ok\r\n550 No such user\r\n550 No such user\r\n"
		"554 No valid recipients\r\n",
		"<RSET\r\n", ">250 Ok\r\n",
		/* the next transaction follows; the sender is <> and the
		   message is empty */
		"<MAIL FROM:<>\r\n" TEST_RCPT1 "DATA\r\n",
		">250 Ok\r\n250 Ok\r\n354 Go ahead\r\n",
		"<\r\n.\r\n",
		">250 Queued\r\n",
		/* a broken server that takes DATA without recipients gets an
		   empty message */
		"<" TEST_MAIL TEST_RCPT1 "DATA\r\n",
		">250 Ok\r\n550 No such user\r\n354 Go ahead\r\n",
		"<.\r\n",
		">554 No valid recipients\r\n",
		"<RSET\r\n", ">250 Ok\r\n",
		TEST_QUIT,
		NULL
	};
	struct test_session session;
	struct bag_smtp_send_result result;
	struct smtp_reply reply;
	const char *error;

	test_begin("bag smtp client: no recipient accepted, pipelined");
	test_session_init(&session, script, TEST_TIMEOUT_MSECS, 0);
	test_assert(test_session_start(&session, &reply, &error) == 1);
	test_assert(test_session_send(&session, test_sender, NULL, NULL, 2,
				      "Subject: never sent\n", &result,
				      &error) == 1);
	test_assert(test_reply_is(&result.mail_reply, 250, "Ok"));
	test_assert(test_reply_is(&result.rcpt_replies[0], 550,
				  "No such user"));
	test_assert(test_reply_is(&result.rcpt_replies[1], 550,
				  "No such user"));
	test_assert(test_reply_is(&result.data_reply, 554,
				  "No valid recipients"));

	test_assert(test_session_send(&session, NULL, NULL, NULL, 1, "",
				      &result, &error) == 1);
	test_assert(test_reply_is(&result.mail_reply, 250, "Ok"));
	test_assert(test_reply_is(&result.rcpt_replies[0], 250, "Queued"));
	test_assert(test_reply_is(&result.data_reply, 250, "Queued"));

	test_assert(test_session_send(&session, test_sender, NULL, NULL, 1,
				      "Subject: never sent\n", &result,
				      &error) == 1);
	test_assert(test_reply_is(&result.rcpt_replies[0], 550,
				  "No such user"));
	test_assert(test_reply_is(&result.data_reply, 554,
				  "No valid recipients"));
	test_session_quit(&session);
	test_session_deinit(&session);
	test_end();
}

static void test_refused_without_pipelining(void)
{
	static const char *const script[] = {
		TEST_GREETING,
		TEST_EHLO,
		">250-mx.example.com\r\n250 8BITMIME\r\n",
		/* MAIL refused: no RCPT */
		"<" TEST_MAIL, ">550 5.7.1 Sender refused\r\n",
		"<RSET\r\n", ">250 Ok\r\n",
		/* every RCPT refused: no DATA */
		"<" TEST_MAIL, ">250 Ok\r\n",
		"<" TEST_RCPT1, ">550 No such user\r\n",
		"<" TEST_RCPT2, ">450 Mailbox busy\r\n",
		"<RSET\r\n", ">250 Ok\r\n",
		/* DATA refused: no message */
		"<" TEST_MAIL, ">250 Ok\r\n",
		"<" TEST_RCPT1, ">250 Ok\r\n",
		"<DATA\r\n", ">554 No data for you\r\n",
		"<RSET\r\n", ">250 Ok\r\n",
		TEST_QUIT,
		NULL
	};
	struct test_session session;
	struct bag_smtp_send_result result;
	struct smtp_reply reply;
	const char *error;

	test_begin("bag smtp client: refusals without pipelining");
	test_session_init(&session, script, TEST_TIMEOUT_MSECS, 0);
	test_assert(test_session_start(&session, &reply, &error) == 1);
	test_assert(bag_smtp_client_get_capabilities(session.client) ==
		    SMTP_CAPABILITY_8BITMIME);

	test_assert(test_session_send(&session, test_sender, NULL, NULL, 2,
				      "x\n", &result, &error) == 1);
	test_assert(test_reply_is(&result.mail_reply, 550,
				  "5.7.1 Sender refused"));
	test_assert(test_reply_is_unsent(&result.rcpt_replies[0]));
	test_assert(test_reply_is_unsent(&result.rcpt_replies[1]));
	test_assert(test_reply_is_unsent(&result.data_reply));

	test_assert(test_session_send(&session, test_sender, NULL, NULL, 2,
				      "x\n", &result, &error) == 1);
	test_assert(test_reply_is(&result.rcpt_replies[0], 550,
				  "No such user"));
	test_assert(test_reply_is(&result.rcpt_replies[1], 450,
				  "Mailbox busy"));
	test_assert(test_reply_is_unsent(&result.data_reply));

	test_assert(test_session_send(&session, test_sender, NULL, NULL, 1,
				      "x\n", &result, &error) == 1);
	/* DATA refused: so is the accepted recipient */
	test_assert(test_reply_is(&result.rcpt_replies[0], 554,
				  "No data for you"));
	test_assert(test_reply_is(&result.data_reply, 554,
				  "No data for you"));
	test_session_quit(&session);
	test_session_deinit(&session);
	test_end();
}

static void test_data_final_failure(void)
{
	static const char *const script[] = {
		TEST_GREETING,
		TEST_EHLO,
		TEST_EHLO_PIPELINING,
		"<" TEST_MAIL TEST_RCPT1 "DATA\r\n",
		">250 Ok\r\n250 Ok\r\n354 Go ahead\r\n",
		/* already CRLF: just the "." line */
		"<Subject: y\r\n\r\nbody\r\n.\r\n",
		">451-4.3.0 Local error\r\n451 4.3.0 Try again\r\n",
		"<RSET\r\n", ">250 Ok\r\n",
		TEST_QUIT,
		NULL
	};
	struct test_session session;
	struct bag_smtp_send_result result;
	struct smtp_reply reply;
	const char *error;

	test_begin("bag smtp client: message refused");
	test_session_init(&session, script, TEST_TIMEOUT_MSECS, 0);
	test_assert(test_session_start(&session, &reply, &error) == 1);
	test_assert(test_session_send(&session, test_sender, NULL, NULL, 1,
				      "Subject: y\r\n\r\nbody\r\n", &result,
				      &error) == 1);
	/* refused after the data: so is the accepted recipient */
	test_assert(test_reply_is(&result.rcpt_replies[0], 451,
				  "4.3.0 Local error"));
	test_assert(test_reply_is(&result.data_reply, 451,
				  "4.3.0 Local error"));
	test_assert(str_array_length(result.data_reply.text_lines) == 2);
	test_session_quit(&session);
	test_session_deinit(&session);
	test_end();
}

static void test_connection_closed(void)
{
	static const char *const script[] = {
		TEST_GREETING,
		TEST_EHLO,
		TEST_EHLO_PIPELINING,
		"<" TEST_MAIL TEST_RCPT1 "DATA\r\n",
		">250 Ok\r\n",
		"!",
		NULL
	};
	static const char *const script_body[] = {
		TEST_GREETING,
		TEST_EHLO,
		">250 mx.example.com\r\n",
		"<" TEST_MAIL, ">250 Ok\r\n",
		"<" TEST_RCPT1, ">250 Ok\r\n",
		"<DATA\r\n", ">354 Go ahead\r\n",
		"<body\r\n.\r\n",
		"!",
		NULL
	};
	static const char *const script_dot[] = {
		TEST_GREETING,
		TEST_EHLO,
		TEST_EHLO_PIPELINING,
		"<" TEST_MAIL TEST_RCPT1 "DATA\r\n",
		">250 Ok\r\n250 Ok\r\n354 Go ahead\r\n",
		"Pbody\n",
		"<body\r\n",
		"X",
		"~100",
		"p",
		"!",
		NULL
	};
	static const char *const script_421[] = {
		TEST_GREETING,
		TEST_EHLO,
		TEST_EHLO_PIPELINING,
		"<" TEST_MAIL TEST_RCPT1 TEST_RCPT2 "DATA\r\n",
		">250 Ok\r\n421 4.3.2 Shutting down\r\n",
		"!",
		NULL
	};
	struct test_session session;
	struct bag_smtp_send_result result;
	struct smtp_reply reply;
	const struct smtp_address *rcpts[1];
	struct istream *message;
	const char *error;

	test_begin("bag smtp client: connection closed");
	test_session_init(&session, script, TEST_TIMEOUT_MSECS, 0);
	test_assert(test_session_start(&session, &reply, &error) == 1);
	test_assert(test_session_send(&session, test_sender, NULL, NULL, 1,
				      "x\n", &result, &error) == -1);
	test_assert_strcmp(error,
			   "Connection closed by server after RCPT TO");
	/* the client stays failed and sends nothing more, not even QUIT */
	test_assert(test_session_send(&session, test_sender, NULL, NULL, 1,
				      "x\n", &result, &error) == -1);
	test_assert_strcmp(error,
			   "Connection closed by server after RCPT TO");
	test_session_quit(&session);
	test_session_deinit(&session);

	/* 421: the transaction ends there, and so does the session, without
	   RSET */
	test_session_init(&session, script_421, TEST_TIMEOUT_MSECS, 0);
	test_assert(test_session_start(&session, &reply, &error) == 1);
	test_assert(test_session_send(&session, test_sender, NULL, NULL, 2,
				      "x\n", &result, &error) == -1);
	test_assert_strcmp(error, "Server is closing the connection: "
			   "421 4.3.2 Shutting down");
	test_assert(test_reply_is(&result.mail_reply, 250, "Ok"));
	test_assert(test_reply_is(&result.rcpt_replies[0], 421,
				  "4.3.2 Shutting down"));
	test_assert(test_reply_is_unsent(&result.rcpt_replies[1]));
	test_assert(test_reply_is_unsent(&result.data_reply));
	test_assert(test_session_send(&session, test_sender, NULL, NULL, 1,
				      "x\n", &result, &error) == -1);
	test_assert_strcmp(error, "Server is closing the connection: "
			   "421 4.3.2 Shutting down");
	test_session_quit(&session);
	test_session_deinit(&session);

	/* closed while the message is sent: the "." line meets a closed
	   connection (ostream-dot asserts that the parent takes it) */
	test_session_init_full(&session, script_dot, TEST_TIMEOUT_MSECS, 0,
			       TRUE);
	test_assert(test_session_start(&session, &reply, &error) == 1);
	rcpts[0] = smtp_address_create(session.pool, "rcpt1", "example.com");
	message = i_stream_create_fd(session.msg_fd, 4096);
	test_assert(test_session_send_raw(&session,
		smtp_address_create(session.pool, "sender", "example.org"),
		NULL, rcpts, NULL, 1, message, &result, &error) == -1);
	i_stream_unref(&message);
	test_assert(error != NULL && str_begins(error,
		"Connection lost while sending the message: "));
	/* RCPT TO's 250 was not the message's: nobody knows whether it
	   arrived */
	test_assert(test_reply_is_unsent(&result.rcpt_replies[0]));
	test_session_deinit(&session);

	/* closed before the final reply: the outcome is unknown */
	test_session_init(&session, script_body, TEST_TIMEOUT_MSECS, 0);
	test_assert(test_session_start(&session, &reply, &error) == 1);
	test_assert(test_session_send(&session, test_sender, NULL, NULL, 1,
				      "body", &result, &error) == -1);
	test_assert_strcmp(error,
			   "Connection closed by server after end of message");
	test_session_deinit(&session);
	test_end();
}

static void test_server_silent(void)
{
	static const char *const script[] = {
		TEST_GREETING,
		TEST_EHLO,
		TEST_EHLO_PIPELINING,
		"<" TEST_MAIL TEST_RCPT1 "DATA\r\n",
		NULL
	};
	static const char *const script_greeting[] = {
		NULL
	};
	struct test_session session;
	struct bag_smtp_send_result result;
	struct smtp_reply reply;
	const char *error;
	long long start, elapsed;

	test_begin("bag smtp client: timeouts");
	test_session_init(&session, script, 300, 0);
	test_assert(test_session_start(&session, &reply, &error) == 1);
	start = test_now_msecs();
	test_assert(test_session_send(&session, test_sender, NULL, NULL, 1,
				      "x\n", &result, &error) == -1);
	elapsed = test_now_msecs() - start;
	test_assert_strcmp(error, "Timed out waiting for the reply to "
			   "MAIL FROM (after 300 ms)");
	test_assert(elapsed >= 290 && elapsed < 3000);
	test_session_quit(&session);
	test_session_deinit(&session);

	test_session_init(&session, script_greeting, TEST_TIMEOUT_MSECS, 200);
	start = test_now_msecs();
	test_assert(test_session_start(&session, &reply, &error) == -1);
	elapsed = test_now_msecs() - start;
	test_assert_strcmp(error,
		"Timed out waiting for the greeting (after 200 ms)");
	test_assert(reply.status == 0);
	test_assert(elapsed >= 190 && elapsed < 3000);
	test_session_quit(&session);
	test_session_deinit(&session);
	test_end();
}

static void test_big_message_transaction(void)
{
	static const char *const script[] = {
		TEST_GREETING,
		TEST_EHLO,
		TEST_EHLO_PIPELINING,
		"<" TEST_MAIL TEST_RCPT1 "DATA\r\n",
		">250 Ok\r\n250 Ok\r\n354 Go ahead\r\n",
		/* let the socket buffer fill up */
		"~300",
		"#",
		">250 Ok\r\n",
		TEST_QUIT,
		NULL
	};
	struct test_session session;
	struct bag_smtp_send_result result;
	struct smtp_reply reply;
	string_t *message, *wire;
	const char *error;

	test_begin("bag smtp client: big message");
	test_session_init(&session, script, TEST_TIMEOUT_MSECS, 0);
	message = t_str_new(2 * 1024 * 1024);
	wire = t_str_new(2 * 1024 * 1024);
	test_big_message(message, wire);
	test_assert(test_session_start(&session, &reply, &error) == 1);
	test_assert(test_session_send(&session, test_sender, NULL, NULL, 1,
				      str_c(message), &result, &error) == 1);
	test_assert(test_reply_is(&result.data_reply, 250, "Ok"));
	/* the client's output limit was restored */
	test_assert(o_stream_get_max_buffer_size(session.output) == SIZE_MAX);
	test_session_quit(&session);
	test_session_deinit(&session);
	test_end();
}

static void test_many_recipients(void)
{
	/* more recipients than one pipelined group holds */
	const unsigned int rcpt_count = 250;
	const char **script;
	string_t *cmds, *replies;
	struct smtp_address **rcpts;
	struct test_session session;
	struct bag_smtp_send_result result;
	struct smtp_reply reply;
	struct istream *message;
	const char *error;
	unsigned int i, n = 0, group = 1;

	test_begin("bag smtp client: many recipients");
	script = t_new(const char *, 24);
	script[n++] = TEST_GREETING;
	script[n++] = TEST_EHLO;
	script[n++] = TEST_EHLO_PIPELINING;
	cmds = t_str_new(1024);
	replies = t_str_new(1024);
	str_append(cmds, "<" TEST_MAIL);
	str_append(replies, ">250 Ok\r\n");
	for (i = 0; i < rcpt_count; i++) {
		str_printfa(cmds, "RCPT TO:<r%u@example.com>\r\n", i);
		str_append(replies, i % 2 == 0 ? "250 Ok\r\n" : "550 No\r\n");
		if (++group == 100 || i == rcpt_count - 1) {
			if (i == rcpt_count - 1) {
				str_append(cmds, "DATA\r\n");
				str_append(replies, "354 Go ahead\r\n");
			}
			script[n++] = t_strdup(str_c(cmds));
			/* the next group waits for these replies */
			script[n++] = "=";
			script[n++] = t_strdup(str_c(replies));
			str_truncate(cmds, 0);
			str_truncate(replies, 0);
			str_append_c(cmds, '<');
			str_append_c(replies, '>');
			group = 0;
		}
	}
	script[n++] = "<many\r\n.\r\n";
	script[n++] = ">250 Ok\r\n";
	script[n++] = "<QUIT\r\n";
	script[n++] = ">221 Bye\r\n";
	script[n] = NULL;
	i_assert(n < 24);

	test_session_init(&session, script, TEST_TIMEOUT_MSECS, 0);
	test_assert(test_session_start(&session, &reply, &error) == 1);
	rcpts = p_new(session.pool, struct smtp_address *, rcpt_count);
	for (i = 0; i < rcpt_count; i++) {
		rcpts[i] = smtp_address_create(session.pool,
			t_strdup_printf("r%u", i), "example.com");
	}
	message = i_stream_create_from_data("many\n", 5);
	test_assert(test_session_send_raw(&session,
		smtp_address_create(session.pool, "sender", "example.org"),
		NULL, (const struct smtp_address *const *)rcpts, NULL,
		rcpt_count, message, &result, &error) == 1);
	i_stream_unref(&message);
	for (i = 0; i < rcpt_count; i++) {
		test_assert_idx(result.rcpt_replies[i].status ==
				(i % 2 == 0 ? 250U : 550U), i);
	}
	test_assert(test_reply_is(&result.data_reply, 250, "Ok"));
	test_session_quit(&session);
	test_session_deinit(&session);
	test_end();
}

static void test_invalid_replies(void)
{
	static const char *const script_garbage[] = {
		">hello there\r\n",
		NULL
	};
	const char *script[] = {
		TEST_GREETING,
		TEST_EHLO,
		NULL, /* the reply, filled in */
		NULL
	};
	struct test_session session;
	struct smtp_reply reply;
	string_t *str;
	const char *error;
	unsigned int i;

	test_begin("bag smtp client: invalid replies");
	test_session_init(&session, script_garbage, TEST_TIMEOUT_MSECS, 0);
	test_assert(test_session_start(&session, &reply, &error) == -1);
	test_assert(error != NULL &&
		    str_begins(error, "Invalid greeting: "));
	test_session_deinit(&session);

	/* more text than the parser allows */
	str = t_str_new(80 * 1024);
	str_append(str, "}250-mx.example.com\r\n250-");
	for (i = 0; i < 70 * 1024; i++)
		str_append_c(str, 'a');
	str_append(str, "\r\n250 8BITMIME\r\n");
	script[2] = str_c(str);
	test_session_init(&session, script, TEST_TIMEOUT_MSECS, 0);
	test_assert(test_session_start(&session, &reply, &error) == -1);
	test_assert_strcmp(error,
			   "Invalid reply to EHLO: Reply exceeds size limit");
	test_session_deinit(&session);

	/* empty lines, which the parser doesn't count */
	str = t_str_new(200 * 1024);
	str_append(str, "}");
	for (i = 0; i < 30000; i++)
		str_append(str, "250-\r\n");
	str_append(str, "250 8BITMIME\r\n");
	script[2] = str_c(str);
	test_session_init(&session, script, TEST_TIMEOUT_MSECS, 0);
	test_assert(test_session_start(&session, &reply, &error) == -1);
	test_assert_strcmp(error, "Reply to EHLO is too long");
	test_session_deinit(&session);
	test_end();
}

static void test_invalid_input(void)
{
	static const char *const script[] = {
		TEST_GREETING,
		TEST_EHLO,
		TEST_EHLO_PIPELINING,
		/* nothing of the refused transaction was sent */
		"<" TEST_MAIL TEST_RCPT1 "DATA\r\n",
		">250 Ok\r\n250 Ok\r\n354 Go ahead\r\n",
		"<ok\r\n.\r\n",
		">250 Ok\r\n",
		TEST_QUIT,
		NULL
	};
	struct test_session session;
	struct bag_smtp_send_result result;
	struct smtp_reply reply;
	const struct smtp_address *rcpts[2];
	struct istream *message;
	const char *error;

	test_begin("bag smtp client: invalid input");
	test_session_init(&session, script, TEST_TIMEOUT_MSECS, 0);
	test_assert(test_session_start(&session, &reply, &error) == 1);
	rcpts[0] = smtp_address_create(session.pool, "rcpt1", "example.com");
	rcpts[1] = smtp_address_create(session.pool, "evil",
				       "example.com>\r\nRCPT TO:<x@y");
	message = i_stream_create_from_data("x\n", 2);
	test_assert(test_session_send_raw(&session,
		smtp_address_create(session.pool, "sender", "example.org"),
		NULL, rcpts, NULL, 2, message, &result, &error) == -1);
	i_stream_unref(&message);
	test_assert_strcmp(error, "Invalid recipient address or parameters "
			   "(recipient #2)");
	test_assert(test_reply_is_unsent(&result.mail_reply));
	/* the connection is still usable */
	test_assert(test_session_send(&session, test_sender, NULL, NULL, 1,
				      "ok\n", &result, &error) == 1);
	test_assert(test_reply_is(&result.data_reply, 250, "Ok"));
	test_session_quit(&session);
	test_session_deinit(&session);
	test_end();
}

int main(void)
{
	static void (*const test_functions[])(void) = {
		test_pipelined_transaction,
		test_helo_fallback,
		test_greeting_refused,
		test_all_rcpts_refused_pipelined,
		test_refused_without_pipelining,
		test_data_final_failure,
		test_connection_closed,
		test_server_silent,
		test_big_message_transaction,
		test_many_recipients,
		test_invalid_replies,
		test_invalid_input,
		NULL
	};

	/* a write to a closed connection must fail, not kill */
	if (signal(SIGPIPE, SIG_IGN) == SIG_ERR)
		i_fatal("signal(SIGPIPE) failed: %m");
	return test_run(test_functions);
}
