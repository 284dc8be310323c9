/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* The client side of the bag-flush protocol (bag-flush-client.h): ask
   the bag service for a flush, and read its reply. */

#include "lib.h"
#include "str.h"
#include "strnum.h"
#include "strescape.h"
#include "str-sanitize.h"
#include "ioloop.h"
#include "ostream.h"
#include "connection.h"
#include "bag-flush-client.h"

struct bag_flush_client {
	struct connection conn;
	struct connection_list *list;
	bag_flush_reply_callback_t *callback;
	void *context;
};

static void bag_flush_client_free(struct bag_flush_client *client)
{
	struct connection_list *list = client->list;

	connection_deinit(&client->conn);
	i_free(client);
	connection_list_deinit(&list);
}

static void
bag_flush_client_reply(struct bag_flush_client *client,
		       const struct bag_flush_reply *reply)
{
	bag_flush_reply_callback_t *callback = client->callback;

	client->callback = NULL;
	if (callback != NULL)
		callback(reply, client->context);
}

static void bag_flush_client_destroy(struct connection *conn)
{
	struct bag_flush_client *client =
		container_of(conn, struct bag_flush_client, conn);
	struct bag_flush_reply reply;

	i_zero(&reply);
	reply.status = BAG_FLUSH_REPLY_FAIL;
	reply.error = conn->disconnect_reason ==
		CONNECTION_DISCONNECT_HANDSHAKE_FAILED ?
		"The bag service speaks another version of the bag-flush "
		"protocol" :
		"The bag service closed the connection (see its log)";
	bag_flush_client_reply(client, &reply);
	bag_flush_client_free(client);
}

static int
bag_flush_client_input_args(struct connection *conn, const char *const *args)
{
	struct bag_flush_client *client =
		container_of(conn, struct bag_flush_client, conn);
	struct bag_flush_reply reply;
	const char *error;

	if (bag_flush_reply_parse(args, &reply, &error) < 0) {
		i_zero(&reply);
		reply.status = BAG_FLUSH_REPLY_FAIL;
		reply.error = error;
	}
	bag_flush_client_reply(client, &reply);
	/* one reply per connection: closing calls destroy */
	return -1;
}

static const struct connection_settings bag_flush_client_set = {
	.service_name_in = BAG_FLUSH_SERVICE_NAME,
	.service_name_out = BAG_FLUSH_SERVICE_NAME,
	.major_version = BAG_FLUSH_PROTOCOL_MAJOR,
	.minor_version = BAG_FLUSH_PROTOCOL_MINOR,
	.input_max_size = BAG_FLUSH_LINE_MAX,
	.output_max_size = SIZE_MAX,
	.client = TRUE,
};

static const struct connection_vfuncs bag_flush_client_vfuncs = {
	.destroy = bag_flush_client_destroy,
	.input_args = bag_flush_client_input_args,
};

static const char *
bag_flush_request_line(const char *domain, const char *host,
		       enum bag_flush_request_flags flags)
{
	string_t *line = t_str_new(128);

	str_append(line, "FLUSH\t");
	str_append_tabescaped(line, domain);
	if (host != NULL) {
		str_append(line, "\thost=");
		str_append_tabescaped(line, host);
	}
	if ((flags & BAG_FLUSH_REQUEST_FLAG_WAIT) != 0)
		str_append(line, "\twait");
	if ((flags & BAG_FLUSH_REQUEST_FLAG_BACKUP) != 0)
		str_append(line, "\tbackup");
	str_append_c(line, '\n');
	return str_c(line);
}

int bag_flush_client_request(const char *base_dir, const char *domain,
			     const char *host,
			     enum bag_flush_request_flags flags,
			     bag_flush_reply_callback_t *callback,
			     void *context, struct bag_flush_client **client_r,
			     const char **error_r)
{
	struct bag_flush_client *client;
	const char *path = t_strconcat(base_dir, "/"BAG_FLUSH_SOCKET, NULL);
	bool wait = (flags & BAG_FLUSH_REQUEST_FLAG_WAIT) != 0;

	i_assert(wait == (callback != NULL));
	*client_r = NULL;
	client = i_new(struct bag_flush_client, 1);
	client->list = connection_list_init(&bag_flush_client_set,
					    &bag_flush_client_vfuncs);
	client->callback = callback;
	client->context = context;
	connection_init_client_unix(client->list, &client->conn, path);
	if (connection_client_connect(&client->conn) < 0) {
		*error_r = t_strdup_printf("net_connect_unix(%s) failed: %s",
					   path, strerror(errno));
		client->callback = NULL;
		bag_flush_client_free(client);
		return -1;
	}
	o_stream_nsend_str(client->conn.output,
			   bag_flush_request_line(domain, host, flags));
	if (!wait) {
		/* a line this short goes at once on a unix socket */
		if (o_stream_flush(client->conn.output) <= 0) {
			*error_r = t_strdup_printf("write(%s) failed: %s",
				path, o_stream_get_error(client->conn.output));
			bag_flush_client_free(client);
			return -1;
		}
		bag_flush_client_free(client);
		return 0;
	}
	*client_r = client;
	return 0;
}

void bag_flush_client_deinit(struct bag_flush_client **_client)
{
	struct bag_flush_client *client = *_client;

	if (client == NULL)
		return;
	*_client = NULL;
	client->callback = NULL;
	bag_flush_client_free(client);
}

struct bag_flush_client_run_context {
	struct ioloop *ioloop;
	struct bag_flush_reply reply;
	/* the reply's error, which lives only during the callback */
	char *error;
};

static void
bag_flush_client_run_reply(const struct bag_flush_reply *reply,
			   void *context)
{
	struct bag_flush_client_run_context *ctx = context;

	ctx->reply = *reply;
	ctx->error = i_strdup(reply->error);
	io_loop_stop(ctx->ioloop);
}

int bag_flush_client_run(const char *base_dir, const char *domain,
			 const char *host, enum bag_flush_request_flags flags,
			 struct bag_flush_reply *reply_r,
			 const char **error_r)
{
	struct bag_flush_client_run_context ctx;
	struct bag_flush_client *client;
	int ret;

	i_zero(&ctx);
	ctx.ioloop = io_loop_create();
	ret = bag_flush_client_request(base_dir, domain, host,
				       flags | BAG_FLUSH_REQUEST_FLAG_WAIT,
				       bag_flush_client_run_reply, &ctx,
				       &client, error_r);
	/* a flush takes as long as it takes: each of its replies from the
	   customer's MTA has its own timeout */
	if (ret == 0)
		io_loop_run(ctx.ioloop);
	io_loop_destroy(&ctx.ioloop);
	*reply_r = ctx.reply;
	reply_r->error = t_strdup(ctx.error);
	i_free(ctx.error);
	return ret;
}

void bag_flush_reply_append(string_t *dest,
			    const struct bag_flush_reply *reply)
{
	switch (reply->status) {
	case BAG_FLUSH_REPLY_DONE:
		str_printfa(dest, "DONE\t%u\t%u\t%u\t%u", reply->delivered,
			    reply->deferred, reply->bounced, reply->broken);
		if (reply->error != NULL) {
			str_append_c(dest, '\t');
			str_append_tabescaped(dest, reply->error);
		}
		break;
	case BAG_FLUSH_REPLY_BUSY:
		str_append(dest, "BUSY");
		break;
	case BAG_FLUSH_REPLY_FAIL:
		str_append(dest, "FAIL\t");
		str_append_tabescaped(dest, reply->error);
		break;
	}
}

int bag_flush_reply_parse(const char *const *args,
			  struct bag_flush_reply *reply_r,
			  const char **error_r)
{
	i_zero(reply_r);
	if (args[0] != NULL && strcmp(args[0], "BUSY") == 0 &&
	    args[1] == NULL) {
		reply_r->status = BAG_FLUSH_REPLY_BUSY;
		return 0;
	}
	if (args[0] != NULL && strcmp(args[0], "FAIL") == 0 &&
	    args[1] != NULL && args[2] == NULL) {
		reply_r->status = BAG_FLUSH_REPLY_FAIL;
		reply_r->error = args[1];
		return 0;
	}
	if (args[0] != NULL && strcmp(args[0], "DONE") == 0 &&
	    str_array_length(args) >= 5 && str_array_length(args) <= 6 &&
	    str_to_uint(args[1], &reply_r->delivered) == 0 &&
	    str_to_uint(args[2], &reply_r->deferred) == 0 &&
	    str_to_uint(args[3], &reply_r->bounced) == 0 &&
	    str_to_uint(args[4], &reply_r->broken) == 0) {
		reply_r->status = BAG_FLUSH_REPLY_DONE;
		reply_r->error = args[5];
		return 0;
	}
	*error_r = t_strdup_printf("Unexpected reply from the bag service: %s",
		str_sanitize(t_strarray_join(args, " "), 120));
	return -1;
}
