/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* A small synchronous SMTP client (RFC 5321, with RFC 2920 pipelining) that
   delivers bagged mail to a customer's MTA.

   Every wait is a poll() on the socket, bounded by the configured timeout;
   replies are read with lib-smtp's reply parser and bounded both in text
   size (by the parser) and in bytes on the wire (here, because the parser
   doesn't count empty continuation lines). Nothing the peer sends reaches
   an error string unsanitized.

   The streams belong to the caller. Dovecot's fd ostream adds an IO to the
   current ioloop when it has to buffer, so there must be one (there always
   is in a Dovecot service), and SIGPIPE must be ignored (master_service
   does that). */

#include "lib.h"
#include "str.h"
#include "str-sanitize.h"
#include "net.h"
#include "ioloop.h"
#include "istream.h"
#include "istream-crlf.h"
#include "ostream.h"
#include "ostream-dot.h"
#include "smtp-address.h"
#include "smtp-syntax.h"
#include "smtp-reply-parser.h"
#include "bag-smtp-client.h"

#include <limits.h>
#include <poll.h>
#include <time.h>

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

struct bag_smtp_client {
	pool_t pool;
	int fd;
	struct istream *input;
	struct ostream *output;
	struct smtp_reply_parser *parser;

	struct bag_smtp_client_settings set;
	enum smtp_capability caps;

	/* why the client can't send mail (anymore) */
	const char *failure;

	bool started:1;
	bool ready:1;
	/* the protocol state is unknown: send nothing more, not even QUIT */
	bool broken:1;
	bool quit_sent:1;
};

static const char *const bag_smtp_no_lines[] = { NULL };

static long long bag_smtp_client_now_msecs(void)
{
	struct timespec ts;

	if (clock_gettime(CLOCK_MONOTONIC, &ts) < 0)
		i_fatal("clock_gettime(CLOCK_MONOTONIC) failed: %m");
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const char *bag_smtp_client_msecs_str(unsigned int msecs)
{
	if (msecs % 1000 == 0)
		return t_strdup_printf("%u s", msecs / 1000);
	return t_strdup_printf("%u ms", msecs);
}

/* poll() one fd until deadline. Returns 1 when ready, 0 on timeout,
   -1 on error (errno set). */
static int bag_smtp_client_poll(struct pollfd *pfd, long long deadline)
{
	long long left;
	int ret;

	for (;;) {
		left = deadline - bag_smtp_client_now_msecs();
		if (left < 0)
			left = 0;
		else if (left > INT_MAX)
			left = INT_MAX;
		pfd->revents = 0;
		ret = poll(pfd, 1, (int)left);
		if (ret >= 0)
			return ret;
		if (errno != EINTR)
			return -1;
	}
}

static const char *bag_smtp_client_reply_str(const struct smtp_reply *reply)
{
	return str_sanitize(smtp_reply_log(reply),
			    BAG_SMTP_CLIENT_MAX_ERROR_REPLY_LEN);
}

static void bag_smtp_reply_init_unsent(struct smtp_reply *reply)
{
	i_zero(reply);
	reply->text_lines = bag_smtp_no_lines;
}

static void
bag_smtp_client_set_broken(struct bag_smtp_client *client, const char *error)
{
	client->broken = TRUE;
	if (client->failure == NULL)
		client->failure = p_strdup(client->pool, error);
}

/*
 * Reading replies
 */

/* Read one reply to cmd (NULL: the greeting). Returns 1 with the parser's
   reply (valid until the next read), or -1 with error_r. */
static int
bag_smtp_client_read_reply_from(struct bag_smtp_client *client,
				struct istream *input, const char *cmd,
				bool ehlo, unsigned int timeout_msecs,
				struct smtp_reply **reply_r,
				const char **error_r)
{
	const bool enhanced =
		(client->caps & SMTP_CAPABILITY_ENHANCEDSTATUSCODES) != 0;
	const long long deadline =
		bag_smtp_client_now_msecs() + timeout_msecs;
	struct pollfd pfd;
	const char *error = NULL;
	int ret;

	for (;;) {
		if (ehlo) {
			ret = smtp_reply_parse_ehlo(client->parser,
						    reply_r, &error);
		} else {
			ret = smtp_reply_parse_next(client->parser, enhanced,
						    reply_r, &error);
		}
		if (ret > 0)
			return 1;

		if (client->input->stream_errno != 0) {
			*error_r = t_strdup_printf(
				"Connection lost %s %s: %s",
				cmd == NULL ? "before" : "after",
				cmd == NULL ? "the greeting" : cmd,
				i_stream_get_error(client->input));
			return -1;
		}
		/* The parser returns 0 at EOF between replies and -1
		   ("Premature end of input") in the middle of one. */
		if (client->input->eof) {
			*error_r = cmd == NULL ?
				"Connection closed by server before greeting" :
				t_strdup_printf(
					"Connection closed by server after %s",
					cmd);
			return -1;
		}
		if (input->eof) {
			/* the limit stream ended, not the connection */
			*error_r = cmd == NULL ? "Greeting is too long" :
				t_strdup_printf("Reply to %s is too long",
						cmd);
			return -1;
		}
		if (ret < 0) {
			i_assert(error != NULL);
			error = str_sanitize(
				error, BAG_SMTP_CLIENT_MAX_ERROR_REPLY_LEN);
			*error_r = cmd == NULL ?
				t_strdup_printf("Invalid greeting: %s", error) :
				t_strdup_printf("Invalid reply to %s: %s",
						cmd, error);
			return -1;
		}

		i_zero(&pfd);
		pfd.fd = client->fd;
		pfd.events = POLLIN;
		ret = bag_smtp_client_poll(&pfd, deadline);
		if (ret < 0) {
			*error_r = t_strdup_printf("poll() failed: %m");
			return -1;
		}
		if (ret == 0) {
			const char *after =
				bag_smtp_client_msecs_str(timeout_msecs);

			*error_r = cmd == NULL ?
				t_strdup_printf("Timed out waiting for the "
						"greeting (after %s)", after) :
				t_strdup_printf("Timed out waiting for the "
						"reply to %s (after %s)",
						cmd, after);
			return -1;
		}
	}
}

static int
bag_smtp_client_read_reply(struct bag_smtp_client *client, const char *cmd,
			   bool ehlo, unsigned int timeout_msecs,
			   struct smtp_reply **reply_r, const char **error_r)
{
	struct istream *input;
	int ret;

	i_assert(!client->broken);

	/* The parser reads for as long as data keeps coming, and it bounds
	   a reply's text but not its empty lines: give it only as many
	   bytes as a reply may take. Destroying the limit stream moves the
	   connection's stream past what the parser consumed. */
	input = i_stream_create_limit(client->input,
				      BAG_SMTP_CLIENT_MAX_REPLY_WIRE_SIZE);
	smtp_reply_parser_set_stream(client->parser, input);
	ret = bag_smtp_client_read_reply_from(client, input, cmd, ehlo,
					      timeout_msecs, reply_r,
					      error_r);
	smtp_reply_parser_set_stream(client->parser, NULL);
	i_stream_unref(&input);
	return ret;
}

/*
 * Writing
 */

/* Wait until the socket takes more output. The deadline moves whenever the
   socket becomes writable: the timeout is for a write that doesn't
   progress. */
static int
bag_smtp_client_wait_output(struct bag_smtp_client *client,
			    unsigned int timeout_msecs, long long *deadline,
			    const char *what, const char **error_r)
{
	struct pollfd pfd;
	int ret;

	i_zero(&pfd);
	pfd.fd = client->fd;
	pfd.events = POLLOUT;

	ret = bag_smtp_client_poll(&pfd, *deadline);
	if (ret < 0) {
		*error_r = t_strdup_printf("poll() failed: %m");
		return -1;
	}
	if (ret == 0) {
		*error_r = t_strdup_printf("Timed out sending %s (after %s)",
			what, bag_smtp_client_msecs_str(timeout_msecs));
		return -1;
	}
	/* on POLLERR and POLLHUP the next write fails */
	*deadline = bag_smtp_client_now_msecs() + timeout_msecs;
	return 0;
}

static void
bag_smtp_client_write_error(struct ostream *output, const char *what,
			    const char **error_r)
{
	*error_r = t_strdup_printf("Connection lost while sending %s: %s",
				   what, o_stream_get_error(output));
}

static int
bag_smtp_client_flush(struct bag_smtp_client *client,
		      unsigned int timeout_msecs, long long *deadline,
		      const char *what, const char **error_r)
{
	int ret;

	while ((ret = o_stream_flush(client->output)) == 0) {
		if (bag_smtp_client_wait_output(client, timeout_msecs,
						deadline, what, error_r) < 0)
			return -1;
	}
	if (ret < 0) {
		bag_smtp_client_write_error(client->output, what, error_r);
		return -1;
	}
	return 0;
}

/* Send data and flush it all. */
static int
bag_smtp_client_send_data(struct bag_smtp_client *client,
			  const void *data, size_t size,
			  unsigned int timeout_msecs, const char *what,
			  const char **error_r)
{
	long long deadline = bag_smtp_client_now_msecs() + timeout_msecs;
	size_t pos = 0;
	ssize_t ret;

	i_assert(!client->broken);

	while (pos < size) {
		ret = o_stream_send(client->output,
				    CONST_PTR_OFFSET(data, pos), size - pos);
		if (ret < 0) {
			bag_smtp_client_write_error(client->output, what,
						    error_r);
			return -1;
		}
		pos += ret;
		if (pos == size)
			break;
		/* the output buffer is full */
		if (bag_smtp_client_wait_output(client, timeout_msecs,
						&deadline, what, error_r) < 0)
			return -1;
		if (o_stream_flush(client->output) < 0) {
			bag_smtp_client_write_error(client->output, what,
						    error_r);
			return -1;
		}
	}
	return bag_smtp_client_flush(client, timeout_msecs, &deadline,
				     what, error_r);
}

static int
bag_smtp_client_send_str(struct bag_smtp_client *client, const string_t *str,
			 const char *what, const char **error_r)
{
	return bag_smtp_client_send_data(client, str_data(str), str_len(str),
					 client->set.timeout_msecs, what,
					 error_r);
}

static int
bag_smtp_client_command(struct bag_smtp_client *client, const char *line,
			const char *what, bool ehlo,
			struct smtp_reply **reply_r, const char **error_r)
{
	const char *cmd = t_strconcat(line, "\r\n", NULL);

	if (bag_smtp_client_send_data(client, cmd, strlen(cmd),
				      client->set.timeout_msecs, what,
				      error_r) < 0)
		return -1;
	return bag_smtp_client_read_reply(client, what, ehlo,
					  client->set.timeout_msecs,
					  reply_r, error_r);
}

/* Wait for the message stream to have more input. Only a non-blocking
   message stream gets here; bagged mail is read from files. */
static int
bag_smtp_client_wait_message(struct bag_smtp_client *client,
			     struct istream *message, const char **error_r)
{
	struct pollfd pfd;
	int ret;

	i_zero(&pfd);
	pfd.fd = i_stream_get_fd(message);
	if (pfd.fd == -1) {
		*error_r = t_strdup_printf(
			"read(%s) returned no data from a non-blocking stream",
			i_stream_get_name(message));
		return -1;
	}
	pfd.events = POLLIN;
	ret = bag_smtp_client_poll(&pfd, bag_smtp_client_now_msecs() +
				   client->set.timeout_msecs);
	if (ret < 0) {
		*error_r = t_strdup_printf("poll() failed: %m");
		return -1;
	}
	if (ret == 0) {
		*error_r = t_strdup_printf(
			"Timed out reading the message from %s (after %s)",
			i_stream_get_name(message),
			bag_smtp_client_msecs_str(client->set.timeout_msecs));
		return -1;
	}
	return 0;
}

static int
bag_smtp_client_send_body(struct bag_smtp_client *client,
			  struct istream *input, struct ostream *dot_output,
			  const char **error_r)
{
	static const char *what = "the message";
	const unsigned int timeout_msecs = client->set.timeout_msecs;
	long long deadline = bag_smtp_client_now_msecs() + timeout_msecs;
	const bool was_corked = o_stream_is_corked(client->output);
	enum ostream_send_istream_result res;
	int ret;

	for (;;) {
		/* ostream-dot allocates from the data stack for each
		   chunk: give each round its own frame */
		T_BEGIN {
			res = o_stream_send_istream(dot_output, input);
		} T_END;

		switch (res) {
		case OSTREAM_SEND_ISTREAM_RESULT_FINISHED:
			break;
		case OSTREAM_SEND_ISTREAM_RESULT_WAIT_INPUT:
			if (bag_smtp_client_wait_message(client, input,
							 error_r) < 0)
				return -1;
			continue;
		case OSTREAM_SEND_ISTREAM_RESULT_WAIT_OUTPUT:
			if (bag_smtp_client_wait_output(client, timeout_msecs,
							&deadline, what,
							error_r) < 0)
				return -1;
			continue;
		case OSTREAM_SEND_ISTREAM_RESULT_ERROR_INPUT:
			*error_r = t_strdup_printf("read(%s) failed: %s",
						   i_stream_get_name(input),
						   i_stream_get_error(input));
			return -1;
		case OSTREAM_SEND_ISTREAM_RESULT_ERROR_OUTPUT:
			bag_smtp_client_write_error(dot_output, what, error_r);
			return -1;
		}
		break;
	}

	/* ostream-dot writes the final "." line only when finished: CRLF.CRLF
	   if the message didn't end with CRLF (so a missing final newline is
	   added), and just ".CRLF" if it did. It sends the line with
	   o_stream_send() and asserts that the parent took all of it, but an
	   fd ostream with an empty buffer writes at once, and fails if the
	   server has closed the connection: cork the parent, so it only
	   buffers the line, and let the flush report the error. */
	for (;;) {
		if (!was_corked)
			o_stream_cork(client->output);
		ret = o_stream_finish(dot_output);
		if (!was_corked && o_stream_uncork_flush(client->output) < 0)
			ret = -1;
		if (ret != 0)
			break;
		if (bag_smtp_client_wait_output(client, timeout_msecs,
						&deadline, what, error_r) < 0)
			return -1;
	}
	if (ret < 0) {
		bag_smtp_client_write_error(client->output->stream_errno != 0 ?
					    client->output : dot_output,
					    what, error_r);
		return -1;
	}
	return bag_smtp_client_flush(client, timeout_msecs, &deadline,
				     what, error_r);
}

/* Send the message with its line endings made CRLF, dot-stuffed and
   terminated with the "." line. */
static int
bag_smtp_client_send_message(struct bag_smtp_client *client,
			     struct istream *message, const char **error_r)
{
	struct istream *input;
	struct ostream *dot_output;
	size_t old_max_size;
	int ret;

	/* Bound the output buffer while sending (see
	   BAG_SMTP_CLIENT_MAX_BODY_BUFFER); an unlimited one would also take
	   in the whole message at once. */
	old_max_size = o_stream_get_max_buffer_size(client->output);
	if (old_max_size > BAG_SMTP_CLIENT_MAX_BODY_BUFFER) {
		o_stream_set_max_buffer_size(client->output,
					     BAG_SMTP_CLIENT_MAX_BODY_BUFFER);
	}

	/* ostream-dot adds missing CRs too, but each costs it two iovecs;
	   istream-crlf adds them in a plain copy. */
	input = i_stream_create_crlf(message);
	dot_output = o_stream_create_dot(client->output, FALSE);
	ret = bag_smtp_client_send_body(client, input, dot_output, error_r);
	o_stream_unref(&dot_output);
	i_stream_unref(&input);

	/* o_stream_send_istream() set flush-pending on WAIT_OUTPUT; it isn't
	   the caller's to handle */
	o_stream_set_flush_pending(client->output, FALSE);
	if (old_max_size > BAG_SMTP_CLIENT_MAX_BODY_BUFFER)
		o_stream_set_max_buffer_size(client->output, old_max_size);
	return ret;
}

/*
 * Connecting
 */

static int
bag_smtp_client_connect_ip(const struct ip_addr *ip, in_port_t port,
			   unsigned int timeout_msecs, const char **error_r)
{
	struct pollfd pfd;
	int fd, ret, err;

	fd = net_connect_ip(ip, port, NULL);
	if (fd == -1) {
		*error_r = t_strdup_printf("%m");
		return -1;
	}

	i_zero(&pfd);
	pfd.fd = fd;
	pfd.events = POLLOUT;
	ret = bag_smtp_client_poll(&pfd, bag_smtp_client_now_msecs() +
				   timeout_msecs);
	if (ret < 0) {
		*error_r = t_strdup_printf("poll() failed: %m");
		i_close_fd(&fd);
		return -1;
	}
	if (ret == 0) {
		*error_r = t_strdup_printf("Timed out after %s",
			bag_smtp_client_msecs_str(timeout_msecs));
		i_close_fd(&fd);
		return -1;
	}
	err = net_geterror(fd);
	if (err != 0) {
		*error_r = t_strdup_printf("%s", strerror(err));
		i_close_fd(&fd);
		return -1;
	}
	return fd;
}

int bag_smtp_client_connect(const char *host, in_port_t port,
			    unsigned int timeout_msecs, const char **error_r)
{
	struct ip_addr *ips, literal;
	unsigned int ips_count, i;
	const char *name, *error = NULL;
	string_t *errors;
	int fd, ret;

	i_assert(timeout_msecs > 0);

	name = strchr(host, ':') != NULL && host[0] != '[' ?
		t_strdup_printf("[%s]:%u", host, port) :
		t_strdup_printf("%s:%u", host, port);

	ret = net_gethostbyname(host, &ips, &ips_count);
	if (ret != 0) {
		*error_r = t_strdup_printf("connect(%s) failed: "
					   "Host name lookup failed: %s",
					   name, net_gethosterror(ret));
		return -1;
	}
	if (ips_count == 0) {
		*error_r = t_strdup_printf("connect(%s) failed: "
					   "Host name has no addresses", name);
		return -1;
	}

	/* each address gets the whole timeout, as in Postfix */
	errors = t_str_new(128);
	for (i = 0; i < ips_count; i++) {
		fd = bag_smtp_client_connect_ip(&ips[i], port, timeout_msecs,
						&error);
		if (fd != -1)
			return fd;
		if (str_len(errors) > 0)
			str_append(errors, ", ");
		if (ips_count > 1 || net_addr2ip(host, &literal) < 0)
			str_printfa(errors, "%s: ", net_ip2addr(&ips[i]));
		str_append(errors, error);
	}
	*error_r = t_strdup_printf("connect(%s) failed: %s",
				   name, str_c(errors));
	return -1;
}

/*
 * Session
 */

struct bag_smtp_client *
bag_smtp_client_init(int fd, struct istream *input, struct ostream *output,
		     const struct bag_smtp_client_settings *set)
{
	struct bag_smtp_client *client;
	pool_t pool;

	i_assert(fd != -1);
	i_assert(set->my_hostname != NULL && *set->my_hostname != '\0');
	i_assert(strpbrk(set->my_hostname, "\r\n") == NULL);
	i_assert(set->timeout_msecs > 0);
	/* the fd ostream adds its IO there when it buffers */
	i_assert(current_ioloop != NULL);

	pool = pool_alloconly_create("bag smtp client", 1024);
	client = p_new(pool, struct bag_smtp_client, 1);
	client->pool = pool;
	client->fd = fd;
	client->input = input;
	i_stream_ref(input);
	client->output = output;
	o_stream_ref(output);
	client->set = *set;
	client->set.my_hostname = p_strdup(pool, set->my_hostname);
	if (client->set.greeting_timeout_msecs == 0)
		client->set.greeting_timeout_msecs = set->timeout_msecs;
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

	smtp_reply_parser_deinit(&client->parser);
	i_stream_unref(&client->input);
	o_stream_unref(&client->output);
	pool_unref(&client->pool);
}

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

static int
bag_smtp_client_start_real(struct bag_smtp_client *client,
			   struct smtp_reply *reply_r, const char **error_r)
{
	struct smtp_reply *reply;
	bool ehlo = TRUE;

	if (bag_smtp_client_read_reply(client, NULL, FALSE,
				       client->set.greeting_timeout_msecs,
				       &reply, error_r) < 0)
		return -1;
	if (!smtp_reply_is_success(reply)) {
		smtp_reply_copy(client->pool, reply_r, reply);
		client->failure = p_strdup_printf(client->pool,
			"Server refused the session: %s",
			bag_smtp_client_reply_str(reply));
		return 0;
	}

	if (bag_smtp_client_command(client, t_strconcat(
			"EHLO ", client->set.my_hostname, NULL),
			"EHLO", TRUE, &reply, error_r) < 0)
		return -1;
	if (reply->status / 100 == 5) {
		/* an old server (RFC 5321, section 3.2) */
		ehlo = FALSE;
		if (bag_smtp_client_command(client, t_strconcat(
				"HELO ", client->set.my_hostname, NULL),
				"HELO", FALSE, &reply, error_r) < 0)
			return -1;
	}
	smtp_reply_copy(client->pool, reply_r, reply);
	if (!smtp_reply_is_success(reply)) {
		client->failure = p_strdup_printf(client->pool,
			"Server refused %s: %s", ehlo ? "EHLO" : "HELO",
			bag_smtp_client_reply_str(reply));
		return 0;
	}
	if (ehlo)
		bag_smtp_client_parse_capabilities(client, reply);
	client->ready = TRUE;
	return 1;
}

int bag_smtp_client_start(struct bag_smtp_client *client,
			  struct smtp_reply *reply_r, const char **error_r)
{
	const char *error;
	int ret;

	i_assert(!client->started);
	client->started = TRUE;

	bag_smtp_reply_init_unsent(reply_r);
	T_BEGIN {
		ret = bag_smtp_client_start_real(client, reply_r, &error);
		if (ret < 0)
			bag_smtp_client_set_broken(client, error);
	} T_END_PASS_STR_IF(ret < 0, &error);
	if (ret < 0)
		*error_r = error;
	return ret;
}

enum smtp_capability
bag_smtp_client_get_capabilities(struct bag_smtp_client *client)
{
	return client->caps;
}

/*
 * Transaction
 */

static bool bag_smtp_command_is_valid(string_t *cmd)
{
	/* an address or parameter must not end the line or add one */
	return strlen(str_c(cmd)) == str_len(cmd) &&
		strpbrk(str_c(cmd), "\r\n") == NULL;
}

static int
bag_smtp_client_build_commands(struct bag_smtp_client *client,
	const struct smtp_address *mail_from,
	const struct smtp_params_mail *mail_params,
	const struct smtp_address *const *rcpts,
	const struct smtp_params_rcpt *const *rcpt_params,
	unsigned int rcpt_count, string_t **mail_cmd_r,
	string_t ***rcpt_cmds_r, const char **error_r)
{
	struct smtp_params_mail params;
	string_t *cmd, **rcpt_cmds;
	size_t pos;
	unsigned int i;

	cmd = t_str_new(256);
	str_append(cmd, "MAIL FROM:");
	smtp_address_write_path(cmd, mail_from);
	if (mail_params != NULL) {
		params = *mail_params;
		/* BODY= is the 8BITMIME extension's (RFC 6152), and
		   smtp_params_mail_write() asserts the capability rather than
		   leave it out. BINARYMIME needs BDAT, which this client
		   doesn't speak. */
		if ((client->caps & SMTP_CAPABILITY_8BITMIME) == 0 ||
		    params.body.type == SMTP_PARAM_MAIL_BODY_TYPE_BINARYMIME) {
			params.body.type =
				SMTP_PARAM_MAIL_BODY_TYPE_UNSPECIFIED;
		}
		pos = str_len(cmd);
		str_append_c(cmd, ' ');
		/* SIZE, ENVID and RET are left out without their
		   capability; extra parameters are never written (none are
		   named) */
		smtp_params_mail_write(cmd, client->caps, NULL, &params);
		if (str_len(cmd) == pos + 1)
			str_truncate(cmd, pos);
	}
	if (!bag_smtp_command_is_valid(cmd)) {
		*error_r = "Invalid MAIL FROM address or parameters";
		return -1;
	}
	str_append(cmd, "\r\n");
	*mail_cmd_r = cmd;

	rcpt_cmds = t_new(string_t *, rcpt_count);
	for (i = 0; i < rcpt_count; i++) {
		cmd = t_str_new(128);
		str_append(cmd, "RCPT TO:");
		i_assert(!smtp_address_isnull(rcpts[i]));
		smtp_address_write_path(cmd, rcpts[i]);
		if (rcpt_params != NULL && rcpt_params[i] != NULL) {
			pos = str_len(cmd);
			str_append_c(cmd, ' ');
			/* NOTIFY and ORCPT are left out without DSN */
			smtp_params_rcpt_write(cmd, client->caps, NULL,
					       rcpt_params[i]);
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
		rcpt_cmds[i] = cmd;
	}
	*rcpt_cmds_r = rcpt_cmds;
	return 0;
}

/* Reset the session after a failed transaction. A failure here doesn't
   change the transaction's outcome, which is known; it only makes the
   connection unusable. */
static void bag_smtp_client_rset(struct bag_smtp_client *client)
{
	struct smtp_reply *reply;
	const char *error;

	if (bag_smtp_client_command(client, "RSET", "RSET", FALSE,
				    &reply, &error) < 0) {
		bag_smtp_client_set_broken(client, error);
		return;
	}
	if (!smtp_reply_is_success(reply)) {
		bag_smtp_client_set_broken(client, t_strdup_printf(
			"RSET failed: %s", bag_smtp_client_reply_str(reply)));
	}
}

/* Read a reply in the transaction into dest (but for DATA, not a 3xx: dest
   stays unsent then). Returns 1, 0 if the server is closing the connection
   (421, RFC 5321 section 3.8: no more replies follow, and the transaction
   is over), or -1 on error. */
static int
bag_smtp_client_read_tx_reply(struct bag_smtp_client *client, pool_t pool,
			      const char *cmd, bool data,
			      struct smtp_reply *dest, const char **error_r)
{
	struct smtp_reply *reply;

	if (bag_smtp_client_read_reply(client, cmd, FALSE,
				       client->set.timeout_msecs,
				       &reply, error_r) < 0)
		return -1;
	if (data && reply->status / 100 == 3) {
		/* the 354 isn't kept */
		i_assert(dest->status == 0);
		return 1;
	}
	smtp_reply_copy(pool, dest, reply);
	if (reply->status == 421) {
		bag_smtp_client_set_broken(client, t_strdup_printf(
			"Server is closing the connection: %s",
			bag_smtp_client_reply_str(reply)));
		return 0;
	}
	return 1;
}

static int
bag_smtp_client_transaction(struct bag_smtp_client *client, pool_t pool,
			    const string_t *mail_cmd,
			    string_t *const *rcpt_cmds,
			    unsigned int rcpt_count, struct istream *message,
			    struct bag_smtp_send_result *result,
			    bool *failed_r, const char **error_r)
{
	const bool pipelining =
		(client->caps & SMTP_CAPABILITY_PIPELINING) != 0;
	const unsigned int group_max =
		pipelining ? BAG_SMTP_CLIENT_PIPELINE_MAX_COMMANDS : 1;
	unsigned int count, sent = 0, replied = 0, accepted = 0;
	bool mail_replied = FALSE, mail_ok = FALSE, data_sent = FALSE;
	string_t *cmds;
	int ret;

	*failed_r = TRUE;

	/* MAIL and the RCPTs go in groups (of one command without
	   PIPELINING), and each group's replies are read before the next
	   group is sent. With PIPELINING the last group ends with DATA; the
	   message waits for its 354 (RFC 2920, section 3.1). */
	cmds = t_str_new(256);
	str_append_str(cmds, mail_cmd);
	count = 1;
	for (;;) {
		for (; sent < rcpt_count && count < group_max; count++)
			str_append_str(cmds, rcpt_cmds[sent++]);
		if (pipelining && sent == rcpt_count) {
			str_append(cmds, "DATA\r\n");
			data_sent = TRUE;
		}
		if (bag_smtp_client_send_str(client, cmds,
				mail_replied ? "RCPT TO" : "MAIL FROM",
				error_r) < 0)
			return -1;

		if (!mail_replied) {
			ret = bag_smtp_client_read_tx_reply(client, pool,
				"MAIL FROM", FALSE, &result->mail_reply,
				error_r);
			if (ret <= 0)
				return ret < 0 ? -1 : 1;
			mail_replied = TRUE;
			mail_ok = smtp_reply_is_success(&result->mail_reply);
		}
		for (; replied < sent; replied++) {
			ret = bag_smtp_client_read_tx_reply(client, pool,
				"RCPT TO", FALSE,
				&result->rcpt_replies[replied],
				error_r);
			if (ret <= 0)
				return ret < 0 ? -1 : 1;
			if (smtp_reply_is_success(
				&result->rcpt_replies[replied]))
				accepted++;
		}
		/* after a refused MAIL, send no more than was sent, but
		   read all of its replies */
		if (sent == rcpt_count || (!mail_ok && !data_sent))
			break;
		str_truncate(cmds, 0);
		count = 0;
	}
	if (!mail_ok)
		accepted = 0;

	if (!data_sent) {
		if (accepted == 0)
			return 1;
		if (bag_smtp_client_send_data(client, "DATA\r\n", 6,
					      client->set.timeout_msecs,
					      "DATA", error_r) < 0)
			return -1;
	}
	ret = bag_smtp_client_read_tx_reply(client, pool, "DATA", TRUE,
					    &result->data_reply, error_r);
	if (ret <= 0)
		return ret < 0 ? -1 : 1;
	if (result->data_reply.status != 0) {
		/* refused (a 354 leaves it unsent) */
		if (smtp_reply_is_success(&result->data_reply)) {
			/* "accepted" without the message: nothing sane to
			   do */
			*error_r = t_strdup_printf(
				"Unexpected reply to DATA: %s",
				bag_smtp_client_reply_str(
					&result->data_reply));
			return -1;
		}
		return 1;
	}

	if (accepted == 0) {
		/* A pipelining server must refuse DATA after no valid
		   recipients (RFC 2920, section 3.1); this one didn't.
		   End the data at once rather than send the message. */
		if (bag_smtp_client_send_data(client, ".\r\n", 3,
					      client->set.timeout_msecs,
					      "end of message", error_r) < 0)
			return -1;
	} else {
		if (bag_smtp_client_send_message(client, message,
						 error_r) < 0)
			return -1;
	}
	ret = bag_smtp_client_read_tx_reply(client, pool, "end of message",
					    FALSE, &result->data_reply,
					    error_r);
	if (ret <= 0)
		return ret < 0 ? -1 : 1;
	*failed_r = accepted == 0 ||
		!smtp_reply_is_success(&result->data_reply);
	return 1;
}

int bag_smtp_client_send(struct bag_smtp_client *client, pool_t pool,
			 const struct smtp_address *mail_from,
			 const struct smtp_params_mail *mail_params,
			 const struct smtp_address *const *rcpts,
			 const struct smtp_params_rcpt *const *rcpt_params,
			 unsigned int rcpt_count, struct istream *message,
			 struct bag_smtp_send_result *result_r,
			 const char **error_r)
{
	string_t *mail_cmd, **rcpt_cmds;
	const char *error;
	unsigned int i;
	bool failed;
	int ret;

	i_assert(rcpt_count > 0);
	i_assert(message != NULL);

	i_zero(result_r);
	bag_smtp_reply_init_unsent(&result_r->mail_reply);
	bag_smtp_reply_init_unsent(&result_r->data_reply);
	result_r->rcpt_replies = p_new(pool, struct smtp_reply, rcpt_count);
	for (i = 0; i < rcpt_count; i++)
		bag_smtp_reply_init_unsent(&result_r->rcpt_replies[i]);

	if (client->failure != NULL) {
		*error_r = client->failure;
		return -1;
	}
	i_assert(client->ready);

	T_BEGIN {
		ret = bag_smtp_client_build_commands(client, mail_from,
			mail_params, rcpts, rcpt_params, rcpt_count,
			&mail_cmd, &rcpt_cmds, &error);
		if (ret == 0) {
			ret = bag_smtp_client_transaction(client, pool,
				mail_cmd, rcpt_cmds, rcpt_count, message,
				result_r, &failed, &error);
			if (ret < 0)
				bag_smtp_client_set_broken(client, error);
			else if (failed && !client->broken)
				bag_smtp_client_rset(client);
		}
	} T_END_PASS_STR_IF(ret < 0, &error);
	if (ret < 0)
		*error_r = error;
	return ret;
}

void bag_smtp_client_quit(struct bag_smtp_client *client)
{
	unsigned int timeout_msecs;
	struct smtp_reply *reply;
	const char *error;

	if (!client->started || client->broken || client->quit_sent)
		return;
	client->quit_sent = TRUE;
	client->ready = FALSE;
	if (client->failure == NULL)
		client->failure = "QUIT was already sent";

	timeout_msecs = I_MIN(client->set.timeout_msecs,
			      BAG_SMTP_CLIENT_QUIT_TIMEOUT_MSECS);
	T_BEGIN {
		if (bag_smtp_client_send_data(client, "QUIT\r\n", 6,
					      timeout_msecs, "QUIT",
					      &error) == 0) {
			/* the reply doesn't matter */
			(void)bag_smtp_client_read_reply(client, "QUIT",
				FALSE, timeout_msecs, &reply, &error);
		}
	} T_END;
}
