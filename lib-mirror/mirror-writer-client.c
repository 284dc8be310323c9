/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* The client side of the mirror-writer protocol (mirror-writer-client.h).
   LMTP delivers one message at a time, so every call waits for the one
   reply it needs (PREPARE has none), as Dovecot's auth-master client
   does. The connection
   lives in an ioloop of its own, created with it and run only while a
   call waits: nothing comes from the writer unasked, and a wait costs no
   ioloop to create and no io to move (which would also take the
   delivery's ioloop context, and with it the user's privileges, down
   and up again). */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "strnum.h"
#include "strescape.h"
#include "str-sanitize.h"
#include "ioloop.h"
#include "istream.h"
#include "ostream.h"
#include "fdpass.h"
#include "connection.h"
#include "mirror-writer-client.h"

struct mirror_writer_client {
	struct connection conn;
	struct connection_list *list;
	unsigned int timeout_msecs;
	/* the reply's strings, until the next delivery */
	pool_t pool;

	/* the delivery handed over (0: none) */
	unsigned int tag, last_tag;
	struct mirror_copy_target *targets;
	unsigned int count;
	/* DONE's synced */
	bool synced;

	/* the connection's own, run while a call waits for its reply */
	struct ioloop *ioloop;
	const char *wait_cmd;
	bool replied;
	/* the connection is gone, or a reply was wrong: error */
	char *error;
	/* the writer didn't answer in time (it may still do the work) */
	bool timed_out;
};

static void
mirror_writer_client_fail(struct mirror_writer_client *client,
			  const char *error)
{
	if (client->error == NULL)
		client->error = i_strdup(error);
	if (client->ioloop != NULL)
		io_loop_stop(client->ioloop);
}

static void mirror_writer_client_destroy(struct connection *conn)
{
	struct mirror_writer_client *client =
		container_of(conn, struct mirror_writer_client, conn);

	mirror_writer_client_fail(client, conn->disconnect_reason ==
		CONNECTION_DISCONNECT_HANDSHAKE_FAILED ?
		"mirror-writer speaks another version of its protocol" :
		t_strdup_printf("mirror-writer closed the connection: %s",
				connection_disconnect_reason(conn)));
	connection_deinit(conn);
}

static int
mirror_writer_client_parse(struct mirror_writer_client *client,
			   const char *const *args, bool done)
{
	unsigned int i, fields = done ? 2 : 1;
	uoff_t size;

	if (done) {
		if (args[0] == NULL ||
		    (strcmp(args[0], "0") != 0 && strcmp(args[0], "1") != 0))
			return -1;
		client->synced = args[0][0] == '1';
		args++;
	}
	if (str_array_length(args) != client->count * fields)
		return -1;
	for (i = 0; i < client->count; i++) {
		const char *error = args[i * fields];
		struct mirror_copy_target *target = &client->targets[i];

		target->error = *error == '\0' ? NULL :
			p_strdup(client->pool, error);
		if (done) {
			if (str_to_uoff(args[i * fields + 1], &size) < 0)
				return -1;
			target->size = size;
		}
	}
	return 0;
}

static int
mirror_writer_client_input_args(struct connection *conn,
				const char *const *args)
{
	struct mirror_writer_client *client =
		container_of(conn, struct mirror_writer_client, conn);
	unsigned int tag;

	if (args[0] == NULL || args[1] == NULL ||
	    str_to_uint(args[1], &tag) < 0) {
		mirror_writer_client_fail(client, t_strdup_printf(
			"Invalid reply from mirror-writer: %s",
			str_sanitize(t_strarray_join(args, " "), 80)));
		return -1;
	}
	if (client->wait_cmd == NULL || tag != client->tag ||
	    strcmp(args[0], client->wait_cmd) != 0) {
		/* a reply not waited for (SAVED when the delivery didn't
		   wait, or one of a delivery given up on) */
		return 1;
	}
	if (mirror_writer_client_parse(client, args + 2,
				       strcmp(args[0], "DONE") == 0) < 0) {
		mirror_writer_client_fail(client, t_strdup_printf(
			"Invalid %s reply from mirror-writer", args[0]));
		return -1;
	}
	client->replied = TRUE;
	io_loop_stop(client->ioloop);
	/* the next line is for another wait */
	return 0;
}

static const struct connection_settings mirror_writer_client_set = {
	.service_name_in = MIRROR_WRITER_SERVICE_NAME,
	.service_name_out = MIRROR_WRITER_SERVICE_NAME,
	.major_version = MIRROR_WRITER_PROTOCOL_MAJOR,
	.minor_version = MIRROR_WRITER_PROTOCOL_MINOR,
	.input_max_size = MIRROR_WRITER_LINE_MAX,
	.output_max_size = SIZE_MAX,
	.client = TRUE,
};

static const struct connection_vfuncs mirror_writer_client_vfuncs = {
	.destroy = mirror_writer_client_destroy,
	.input_args = mirror_writer_client_input_args,
};

int mirror_writer_client_connect(const char *path,
				 unsigned int timeout_msecs,
				 struct mirror_writer_client **client_r,
				 const char **error_r)
{
	struct mirror_writer_client *client;
	struct ioloop *prev_ioloop = current_ioloop;
	int ret;

	client = i_new(struct mirror_writer_client, 1);
	client->timeout_msecs = timeout_msecs;
	client->pool = pool_alloconly_create("mirror writer client", 512);
	client->list = connection_list_init(&mirror_writer_client_set,
					    &mirror_writer_client_vfuncs);
	/* the connection's io and stream ioloops are its own */
	client->ioloop = io_loop_create();
	connection_init_client_unix(client->list, &client->conn, path);
	ret = connection_client_connect(&client->conn);
	if (ret < 0) {
		*error_r = t_strdup_printf("net_connect_unix(%s) failed: %m",
					   path);
	}
	io_loop_set_current(prev_ioloop);
	if (ret < 0) {
		mirror_writer_client_deinit(&client);
		return -1;
	}
	*client_r = client;
	return 0;
}

void mirror_writer_client_deinit(struct mirror_writer_client **_client)
{
	struct mirror_writer_client *client = *_client;
	struct ioloop *prev_ioloop;

	if (client == NULL)
		return;
	*_client = NULL;
	if (client->conn.list != NULL)
		connection_deinit(&client->conn);
	connection_list_deinit(&client->list);
	/* destroying an ioloop makes the one it was created in current:
	   the same as now, unless the caller waits in a nested one */
	prev_ioloop = current_ioloop;
	io_loop_set_current(client->ioloop);
	io_loop_destroy(&client->ioloop);
	io_loop_set_current(prev_ioloop);
	pool_unref(&client->pool);
	i_free(client->error);
	i_free(client);
}

static void mirror_writer_client_timeout(struct mirror_writer_client *client)
{
	client->timed_out = TRUE;
	mirror_writer_client_fail(client, t_strdup_printf(
		"mirror-writer didn't answer in %u s",
		client->timeout_msecs / 1000));
}

/* Wait for the reply cmd to the current delivery. */
static int
mirror_writer_client_wait(struct mirror_writer_client *client,
			  const char *cmd, const char **error_r)
{
	struct ioloop *prev_ioloop = current_ioloop;
	struct timeout *to;

	if (client->error != NULL) {
		*error_r = t_strdup(client->error);
		return -1;
	}
	client->wait_cmd = cmd;
	client->replied = FALSE;
	io_loop_set_current(client->ioloop);
	to = timeout_add(client->timeout_msecs,
			 mirror_writer_client_timeout, client);
	/* the reply may be read already */
	if (i_stream_get_data_size(client->conn.input) > 0)
		client->conn.v.input(&client->conn);
	if (!client->replied && client->error == NULL)
		io_loop_run(client->ioloop);
	timeout_remove(&to);
	io_loop_set_current(prev_ioloop);
	client->wait_cmd = NULL;

	if (!client->replied) {
		if (client->error == NULL)
			client->error = i_strdup("mirror-writer: no reply");
		/* what it does with this delivery is unknown: nothing more
		   goes over this connection */
		if (client->conn.list != NULL)
			connection_deinit(&client->conn);
		*error_r = t_strdup(client->error);
		return client->timed_out ? -2 : -1;
	}
	return 0;
}

static int
mirror_writer_client_send(struct mirror_writer_client *client,
			  const char *line, int fd, const char **error_r)
{
	ssize_t ret = 0;
	size_t len = strlen(line);

	if (client->error != NULL) {
		*error_r = t_strdup(client->error);
		return -1;
	}
	if (fd != -1) {
		/* the descriptor goes with the line's first byte */
		ret = fd_send(client->conn.fd_out, fd, line, len);
		if (ret <= 0) {
			mirror_writer_client_fail(client, t_strdup_printf(
				"fd_send() to mirror-writer failed: %s",
				ret < 0 ? strerror(errno) : "nothing sent"));
			connection_deinit(&client->conn);
			*error_r = t_strdup(client->error);
			return -1;
		}
	}
	o_stream_nsend(client->conn.output, line + ret, len - ret);
	if (o_stream_flush(client->conn.output) < 0) {
		mirror_writer_client_fail(client, t_strdup_printf(
			"write() to mirror-writer failed: %s",
			o_stream_get_error(client->conn.output)));
		connection_deinit(&client->conn);
		*error_r = t_strdup(client->error);
		return -1;
	}
	return 0;
}

/* Start a delivery: its SAVE or PREPARE line. */
static const char *
mirror_writer_client_save_line(struct mirror_writer_client *client,
			       const char *cmd, time_t received_date,
			       struct mirror_copy_target *targets,
			       unsigned int count)
{
	string_t *line = t_str_new(256);
	const char *addr;
	unsigned int i, id;

	i_assert(client->tag == 0);
	i_assert(count > 0 && count <= MIRROR_WRITER_MAX_TARGETS);
	p_clear(client->pool);
	if (++client->last_tag == 0)
		client->last_tag = 1;
	client->tag = client->last_tag;
	client->targets = targets;
	client->count = count;

	str_printfa(line, "%s\t%u\t%lld\t%u", cmd, client->tag,
		    (long long)received_date, count);
	for (i = 0; i < count; i++) {
		/* the protocol carries no header of the caller's own */
		i_assert(targets[i].header == NULL);
		str_append_c(line, '\t');
		str_append_tabescaped(line, targets[i].storage);
		str_append_c(line, '\t');
		array_foreach_elem(&targets[i].mirror_ids, id)
			str_printfa(line, "%u,", id);
		str_truncate(line, str_len(line) - 1);
		str_printfa(line, "\t%u", array_count(&targets[i].envelope_to));
		array_foreach_elem(&targets[i].envelope_to, addr) {
			str_append_c(line, '\t');
			str_append_tabescaped(line, addr);
		}
		targets[i].error = NULL;
	}
	str_append_c(line, '\n');
	return str_c(line);
}

int mirror_writer_client_save(struct mirror_writer_client *client, int fd,
			      time_t received_date,
			      struct mirror_copy_target *targets,
			      unsigned int count, bool commit,
			      struct mirror_writer_sync *sync,
			      const char **error_r)
{
	const char *line;

	line = mirror_writer_client_save_line(client, "SAVE", received_date,
					      targets, count);
	if (!commit) {
		if (mirror_writer_client_send(client, line, fd, error_r) < 0)
			return -1;
		return mirror_writer_client_wait(client, "SAVED", error_r);
	}
	/* Two writes: one would commit sooner and so make smaller batches,
	   which cost the writer more CPU per copy than it saves (measured
	   with scripts/bench) */
	if (mirror_writer_client_send(client, line, fd, error_r) < 0) {
		client->tag = 0;
		return -1;
	}
	return mirror_writer_client_commit(client, targets, count, sync,
					   error_r);
}

int mirror_writer_client_prepare(struct mirror_writer_client *client, int fd,
				 time_t received_date,
				 struct mirror_copy_target *targets,
				 unsigned int count, const char **error_r)
{
	const char *line;

	line = mirror_writer_client_save_line(client, "PREPARE",
					      received_date, targets, count);
	if (mirror_writer_client_send(client, line, fd, error_r) < 0) {
		client->tag = 0;
		return -1;
	}
	return 0;
}

int mirror_writer_client_commit(struct mirror_writer_client *client,
				struct mirror_copy_target *targets,
				unsigned int count,
				struct mirror_writer_sync *sync,
				const char **error_r)
{
	string_t *line = t_str_new(64);
	unsigned int i;
	int ret;

	i_assert(client->tag != 0 && client->count == count);
	client->targets = targets;
	client->synced = FALSE;
	str_printfa(line, "COMMIT\t%u", client->tag);
	if (sync != NULL && sync->count > 0)
		str_printfa(line, "\t%lld", sync->since_usecs);
	for (i = 0; sync != NULL && i < sync->count; i++)
		str_printfa(line, "\t%llu", (unsigned long long)sync->devs[i]);
	str_append_c(line, '\n');
	if (mirror_writer_client_send(client, str_c(line), -1, error_r) < 0)
		ret = -1;
	else
		ret = mirror_writer_client_wait(client, "DONE", error_r);
	client->tag = 0;
	if (sync != NULL) {
		sync->answered = ret == 0;
		sync->synced = ret == 0 && sync->count > 0 && client->synced;
	}
	return ret;
}

void mirror_writer_client_abort(struct mirror_writer_client *client)
{
	const char *error;

	i_assert(client->tag != 0);
	(void)mirror_writer_client_send(client, t_strdup_printf(
		"ABORT\t%u\n", client->tag), -1, &error);
	client->tag = 0;
}
