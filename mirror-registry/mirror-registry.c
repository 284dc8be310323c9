/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* mirror-registry: the Dovecot service that serves the registry.

   Every process of the suite reaches the registry through this service's
   socket (mirror_dict = proxy:mirror-registry:mirror) with Dovecot's own
   dict client: the service speaks Dovecot's dict protocol, and keeps the
   backend (the file dict, Redis, or Dovecot's dict service for SQL, the
   uri of dovecot-mirror-registry.conf.ext) to itself. On top of what
   Dovecot's dict service does, it

   - decides by the peer's uid what a connection may do
     (registry-access.h): root and the service's own user (auth) may do
     everything, the mail uid may read everything but the login records'
     secrets and write only what mail processes keep up to date;
   - refuses to increment a counter that isn't one, which would crash
     Dovecot's file dict (and end a Redis connection).

   Like Dovecot's dict service it runs as $default_internal_user with one
   client per process, and replies in the order the requests came:
   lookups and commits are asynchronous, iterations (only doveadm's
   checks and very old bags iterate) run at once.

   The backend's configuration is a file readable only by root and the
   service's user (it may hold a Redis or SQL password), named on the
   service's command line:

     service mirror-registry {
       executable = mirror-registry /etc/dovecot/dovecot-mirror-registry.conf.ext
     }
*/

#include "lib.h"
#include "array.h"
#include "ioloop.h"
#include "istream.h"
#include "ostream.h"
#include "str.h"
#include "strescape.h"
#include "str-sanitize.h"
#include "net.h"
#include "settings.h"
#include "connection.h"
#include "restrict-access.h"
#include "master-service.h"
#include "master-service-settings.h"
#include "dict.h"
#include "dict-client.h"
#include "mirror-log.h"
#include "registry-access.h"
#include "registry-marker.h"

#include <unistd.h>

/* a registry value may be 1 MiB, escaped up to twice that */
#define REGISTRY_SERVER_MAX_LINE (4*1024*1024)
#define REGISTRY_SERVER_MAX_PENDING 1000
#define REGISTRY_SERVER_MAX_TRANSACTIONS 64
#define REGISTRY_SERVER_DEFAULT_CONFIG \
	"/etc/dovecot/dovecot-mirror-registry.conf.ext"

struct registry_change {
	enum registry_request_type type;
	const char *key, *value;
	long long diff;
};

struct registry_trans {
	unsigned int id;
	pool_t pool;
	ARRAY(struct registry_change) changes;
	struct timespec timestamp;
	/* why the connection may not commit it */
	const char *denied;
};

struct registry_cmd {
	struct registry_conn *conn;
	/* NULL until the command has finished */
	char *reply;

	/* the lookups that must come back before the command is done: of
	   the marker, of a lookup's key, of the counters a commit
	   increments */
	unsigned int lookups_left;
	/* why the registry can't be used (its marker), or the commit made */
	char *unavailable, *broken;
	/* a lookup's reply once it is known */
	char *result;

	/* a commit: its transaction */
	struct registry_trans *trans;
	bool async_commit;
};

struct registry_conn {
	struct connection conn;
	int refcount;

	enum registry_role role;
	struct net_unix_cred cred;
	/* doveadm mirror init and check read the registry without a
	   marker (and repair it) */
	bool unchecked;

	ARRAY(struct registry_cmd *) cmds;
	ARRAY(struct registry_trans *) transactions;
	unsigned int denials;
	bool destroyed;
};

struct registry_server {
	struct event *event;
	const char *config_path;
	const char *base_dir;
	char *uri;
	/* the identity the registry must have (id in the configuration),
	   NULL: any */
	char *expected_id;
	/* opened at the first request; the error if it can't be */
	struct dict *dict;
	char *dict_error;
	struct connection_list *conns;
};

static struct event_category event_category_registry = {
	.name = "mirror_registry",
};

static struct registry_server server;

static void registry_conn_flush(struct registry_conn *conn);

static const char *registry_conn_peer(struct registry_conn *conn)
{
	return t_strdup_printf("uid %ld, pid %ld", (long)conn->cred.uid,
			       (long)conn->cred.pid);
}

static struct dict *registry_server_dict(const char **error_r)
{
	struct dict_settings set;
	const char *error;

	if (server.dict != NULL)
		return server.dict;
	if (server.dict_error != NULL) {
		*error_r = server.dict_error;
		return NULL;
	}
	i_zero(&set);
	set.base_dir = server.base_dir;
	set.event_parent = server.event;
	if (dict_init(server.uri, &set, &server.dict, &error) < 0) {
		server.dict_error = i_strdup_printf(
			"The registry's backend %s (in %s) can't be opened: %s",
			server.uri, server.config_path, error);
		e_error(server.event, "%s", server.dict_error);
		*error_r = server.dict_error;
		return NULL;
	}
	return server.dict;
}

static void registry_conn_unref(struct registry_conn *conn)
{
	struct registry_trans *trans;

	i_assert(conn->refcount > 0);
	if (--conn->refcount > 0)
		return;
	i_assert(array_count(&conn->cmds) == 0);
	array_foreach_elem(&conn->transactions, trans)
		pool_unref(&trans->pool);
	array_free(&conn->transactions);
	array_free(&conn->cmds);
	connection_deinit(&conn->conn);
	i_free(conn);
	master_service_client_connection_destroyed(master_service);
}

static void registry_cmd_free(struct registry_cmd *cmd)
{
	struct registry_conn *conn = cmd->conn;

	if (cmd->trans != NULL)
		pool_unref(&cmd->trans->pool);
	i_free(cmd->broken);
	i_free(cmd->unavailable);
	i_free(cmd->result);
	i_free(cmd->reply);
	i_free(cmd);
	if (!conn->destroyed)
		connection_input_resume(&conn->conn);
	registry_conn_unref(conn);
}

/* Send the replies of the finished commands at the head of the queue. */
static void registry_conn_flush(struct registry_conn *conn)
{
	struct registry_cmd *cmd;

	while (array_count(&conn->cmds) > 0) {
		cmd = array_idx_elem(&conn->cmds, 0);
		if (cmd->reply == NULL)
			break;
		if (!conn->destroyed)
			o_stream_nsend_str(conn->conn.output, cmd->reply);
		array_pop_front(&conn->cmds);
		registry_cmd_free(cmd);
	}
}

static void registry_cmd_finish(struct registry_cmd *cmd, const char *reply)
{
	struct registry_conn *conn = cmd->conn;

	i_assert(cmd->reply == NULL);
	cmd->reply = i_strdup(reply);
	conn->refcount++;
	registry_conn_flush(conn);
	registry_conn_unref(conn);
}

static struct registry_cmd *registry_cmd_add(struct registry_conn *conn)
{
	struct registry_cmd *cmd;

	cmd = i_new(struct registry_cmd, 1);
	cmd->conn = conn;
	conn->refcount++;
	array_push_back(&conn->cmds, &cmd);
	if (array_count(&conn->cmds) >= REGISTRY_SERVER_MAX_PENDING)
		connection_input_halt(&conn->conn);
	return cmd;
}

static const char *registry_fail_reply(const char *error)
{
	string_t *str = t_str_new(128);

	str_append_c(str, DICT_PROTOCOL_REPLY_FAIL);
	str_append_tabescaped(str, error);
	str_append_c(str, '\n');
	return str_c(str);
}

static const char *registry_unavailable(const char *reason)
{
	return t_strdup_printf("The registry is unavailable: %s", reason);
}

static void registry_cmd_lookup_done(struct registry_cmd *cmd);

static void
registry_marker_callback(const struct dict_lookup_result *result,
			 struct registry_cmd *cmd)
{
	const char *reason;

	if (result->ret < 0) {
		reason = t_strdup_printf("can't read its marker: %s",
					 result->error);
	} else {
		reason = registry_marker_check(result->ret > 0 ?
					       result->value : NULL,
					       server.expected_id);
	}
	if (reason != NULL && cmd->unavailable == NULL) {
		cmd->unavailable = i_strdup(registry_unavailable(reason));
		/* once for a run: every request says it to its client */
		if (registry_failure_begin()) {
			e_error(server.event, "%s (logged once)",
				cmd->unavailable);
		}
	} else if (reason == NULL && registry_failure_end())
		e_info(server.event, "The registry is available again");
	registry_cmd_lookup_done(cmd);
}

/* Read the marker alongside the command's own lookups: a registry
   without it is never answered from. */
static void registry_cmd_check_marker(struct registry_cmd *cmd,
				      struct dict *dict)
{
	const struct dict_op_settings set = { .username = NULL };

	if (cmd->conn->unchecked)
		return;
	cmd->lookups_left++;
	dict_lookup_async(dict, &set, REGISTRY_KEY_MARKER,
			  registry_marker_callback, cmd);
}

static void
registry_lookup_callback(const struct dict_lookup_result *result,
			 struct registry_cmd *cmd)
{
	string_t *str = t_str_new(128);

	if (result->ret > 0) {
		str_append_c(str, DICT_PROTOCOL_REPLY_OK);
		str_append_tabescaped(str, result->value);
		str_append_c(str, '\n');
	} else if (result->ret == 0)
		str_append(str, "N\n");
	else {
		e_error(server.event, "Lookup failed: %s", result->error);
		str_append(str, registry_fail_reply(result->error));
	}
	cmd->result = i_strdup(str_c(str));
	registry_cmd_lookup_done(cmd);
}

static void registry_cmd_lookup(struct registry_cmd *cmd, struct dict *dict,
				const struct registry_request *req)
{
	const struct dict_op_settings set = { .username = NULL };

	/* one for this function: the callbacks may come at once */
	cmd->lookups_left = 2;
	registry_cmd_check_marker(cmd, dict);
	dict_lookup_async(dict, &set, req->key, registry_lookup_callback, cmd);
	registry_cmd_lookup_done(cmd);
}

static void registry_cmd_iterate(struct registry_cmd *cmd, struct dict *dict,
				 const struct registry_request *req)
{
	const struct dict_op_settings set = { .username = NULL };
	struct dict_iterate_context *iter;
	string_t *str = t_str_new(1024);
	const char *key, *value, *error, *marker, *reason;
	int ret;

	if (!cmd->conn->unchecked) {
		ret = dict_lookup(dict, &set, pool_datastack_create(),
				  REGISTRY_KEY_MARKER, &marker, &error);
		reason = ret < 0 ?
			t_strdup_printf("can't read its marker: %s", error) :
			registry_marker_check(ret > 0 ? marker : NULL,
					      server.expected_id);
		if (reason != NULL) {
			reason = registry_unavailable(reason);
			if (registry_failure_begin()) {
				e_error(server.event, "%s (logged once)",
					reason);
			}
			registry_cmd_finish(cmd, registry_fail_reply(reason));
			return;
		}
	}
	iter = dict_iterate_init(dict, &set, req->key,
				 req->iter_flags & ~DICT_ITERATE_FLAG_ASYNC);
	if (req->iter_max_rows > 0)
		dict_iterate_set_limit(iter, req->iter_max_rows);
	while (dict_iterate(iter, &key, &value)) {
		str_append_c(str, DICT_PROTOCOL_REPLY_OK);
		str_append_tabescaped(str, key);
		str_append_c(str, '\t');
		if ((req->iter_flags & DICT_ITERATE_FLAG_NO_VALUE) == 0)
			str_append_tabescaped(str, value);
		str_append_c(str, '\n');
	}
	if (dict_iterate_deinit(&iter, &error) < 0) {
		/* Redis can't iterate: its clients know */
		if (strstr(error, "Unsupported operation") != NULL) {
			e_debug(server.event, "Iteration of %s failed: %s",
				str_sanitize(req->key, 200), error);
		} else {
			e_error(server.event, "Iteration of %s failed: %s",
				str_sanitize(req->key, 200), error);
		}
		str_append(str, registry_fail_reply(error));
	} else {
		/* an empty line ends the iteration */
		str_append_c(str, '\n');
	}
	registry_cmd_finish(cmd, str_c(str));
}

static struct registry_trans *
registry_trans_find(struct registry_conn *conn, unsigned int id,
		    unsigned int *idx_r)
{
	struct registry_trans *const *transp;
	unsigned int i, count;

	transp = array_get(&conn->transactions, &count);
	for (i = 0; i < count; i++) {
		if (transp[i]->id == id) {
			if (idx_r != NULL)
				*idx_r = i;
			return transp[i];
		}
	}
	return NULL;
}

static const char *
registry_commit_reply(const struct registry_cmd *cmd, char chr,
		      const char *error)
{
	string_t *str = t_str_new(128);

	if (cmd->async_commit)
		str_append_c(str, DICT_PROTOCOL_REPLY_ASYNC_COMMIT);
	str_printfa(str, "%c%u", chr, cmd->trans->id);
	if (error != NULL) {
		str_append_c(str, '\t');
		str_append_tabescaped(str, error);
	}
	str_append_c(str, '\n');
	return str_c(str);
}

static void
registry_commit_callback(const struct dict_commit_result *result,
			 struct registry_cmd *cmd)
{
	const char *reply;

	switch (result->ret) {
	case DICT_COMMIT_RET_OK:
		reply = registry_commit_reply(cmd, DICT_PROTOCOL_REPLY_OK,
					      NULL);
		break;
	case DICT_COMMIT_RET_NOTFOUND:
		reply = registry_commit_reply(cmd,
			DICT_PROTOCOL_REPLY_NOTFOUND, NULL);
		break;
	case DICT_COMMIT_RET_WRITE_UNCERTAIN:
		e_error(server.event, "Commit failed: %s", result->error);
		reply = registry_commit_reply(cmd,
			DICT_PROTOCOL_REPLY_WRITE_UNCERTAIN, result->error);
		break;
	case DICT_COMMIT_RET_FAILED:
	default:
		e_error(server.event, "Commit failed: %s", result->error);
		reply = registry_commit_reply(cmd, DICT_PROTOCOL_REPLY_FAIL,
					      result->error);
		break;
	}
	registry_cmd_finish(cmd, reply);
}

static void registry_cmd_commit_now(struct registry_cmd *cmd)
{
	const struct dict_op_settings set = { .username = NULL };
	struct registry_trans *trans = cmd->trans;
	struct dict_transaction_context *ctx;
	const struct registry_change *change;
	const char *error;
	struct dict *dict;

	if (cmd->unavailable != NULL) {
		registry_cmd_finish(cmd, registry_commit_reply(cmd,
			DICT_PROTOCOL_REPLY_FAIL, cmd->unavailable));
		return;
	}
	if (cmd->broken != NULL) {
		e_error(server.event, "%s", cmd->broken);
		registry_cmd_finish(cmd, registry_commit_reply(cmd,
			DICT_PROTOCOL_REPLY_FAIL, cmd->broken));
		return;
	}
	if ((dict = registry_server_dict(&error)) == NULL) {
		registry_cmd_finish(cmd, registry_commit_reply(cmd,
			DICT_PROTOCOL_REPLY_FAIL, error));
		return;
	}
	ctx = dict_transaction_begin(dict, &set);
	if (trans->timestamp.tv_sec != 0)
		dict_transaction_set_timestamp(ctx, &trans->timestamp);
	array_foreach(&trans->changes, change) {
		switch (change->type) {
		case REGISTRY_REQUEST_SET:
			dict_set(ctx, change->key, change->value);
			break;
		case REGISTRY_REQUEST_UNSET:
			dict_unset(ctx, change->key);
			break;
		case REGISTRY_REQUEST_ATOMIC_INC:
			dict_atomic_inc(ctx, change->key, change->diff);
			break;
		default:
			i_unreached();
		}
	}
	dict_transaction_commit_async(&ctx, registry_commit_callback, cmd);
}

struct registry_counter_lookup {
	struct registry_cmd *cmd;
	const char *key;
	long long diff;
};

static void
registry_counter_callback(const struct dict_lookup_result *result,
			  struct registry_counter_lookup *lookup)
{
	struct registry_cmd *cmd = lookup->cmd;

	if (cmd->broken == NULL) {
		if (result->ret < 0) {
			cmd->broken = i_strdup_printf(
				"Can't read counter %s: %s",
				lookup->key, result->error);
		} else if (result->ret > 0 &&
			   !registry_counter_value_is_valid(result->value,
							    lookup->diff)) {
			cmd->broken = i_strdup_printf(
				"Broken registry data in %s: '%s' is not a "
				"counter (not incremented; doveadm mirror "
				"check --repair resets it)",
				str_sanitize(lookup->key, 200),
				str_sanitize(result->value, 40));
		}
	}
	registry_cmd_lookup_done(cmd);
}

/* Make the transaction, after checking every counter it increments: an
   increment of a value that isn't a number crashes the file dict. */
static void registry_cmd_commit(struct registry_cmd *cmd, struct dict *dict)
{
	const struct dict_op_settings set = { .username = NULL };
	struct registry_trans *trans = cmd->trans;
	const struct registry_change *change;
	struct registry_counter_lookup *lookup;

	if (trans->denied != NULL) {
		registry_cmd_finish(cmd, registry_commit_reply(cmd,
			DICT_PROTOCOL_REPLY_FAIL, trans->denied));
		return;
	}
	/* one for this function: the callbacks may come at once */
	cmd->lookups_left = 1;
	registry_cmd_check_marker(cmd, dict);
	array_foreach(&trans->changes, change) {
		if (change->type != REGISTRY_REQUEST_ATOMIC_INC)
			continue;
		lookup = p_new(trans->pool, struct registry_counter_lookup, 1);
		lookup->cmd = cmd;
		lookup->key = change->key;
		lookup->diff = change->diff;
		cmd->lookups_left++;
		dict_lookup_async(dict, &set, change->key,
				  registry_counter_callback, lookup);
	}
	registry_cmd_lookup_done(cmd);
}

/* The lookups of a command have all come back: answer or commit. */
static void registry_cmd_lookup_done(struct registry_cmd *cmd)
{
	i_assert(cmd->lookups_left > 0);
	if (--cmd->lookups_left > 0)
		return;
	if (cmd->trans != NULL)
		registry_cmd_commit_now(cmd);
	else if (cmd->unavailable != NULL)
		registry_cmd_finish(cmd, registry_fail_reply(cmd->unavailable));
	else
		registry_cmd_finish(cmd, cmd->result);
}

static void
registry_conn_deny(struct registry_conn *conn,
		   const struct registry_request *req, const char *reason)
{
	/* once per connection: the peer may try again and again */
	if (conn->denials++ == 0) {
		e_warning(server.event, "Denied access to %s (%s): %s",
			  str_sanitize(req->key, 200),
			  registry_conn_peer(conn), reason);
	}
}

/* A request that changes a transaction. -1 if the transaction doesn't
   exist (a broken client: disconnect). */
static int
registry_conn_trans_request(struct registry_conn *conn,
			    const struct registry_request *req)
{
	struct registry_trans *trans;
	struct registry_change *change;
	const char *reason;
	unsigned int idx;
	pool_t pool;

	trans = registry_trans_find(conn, req->trans_id, &idx);
	if (req->type == REGISTRY_REQUEST_BEGIN) {
		if (trans != NULL ||
		    array_count(&conn->transactions) >=
		    REGISTRY_SERVER_MAX_TRANSACTIONS)
			return -1;
		pool = pool_alloconly_create("registry transaction", 1024);
		trans = p_new(pool, struct registry_trans, 1);
		trans->pool = pool;
		trans->id = req->trans_id;
		p_array_init(&trans->changes, pool, 8);
		array_push_back(&conn->transactions, &trans);
		return 0;
	}
	if (trans == NULL)
		return -1;

	switch (req->type) {
	case REGISTRY_REQUEST_ROLLBACK:
		array_delete(&conn->transactions, idx, 1);
		pool_unref(&trans->pool);
		return 0;
	case REGISTRY_REQUEST_TIMESTAMP:
		/* Dovecot's dict server passes it on; the registry's keys
		   don't use it, and so it is ignored */
		return 0;
	case REGISTRY_REQUEST_SET:
	case REGISTRY_REQUEST_UNSET:
	case REGISTRY_REQUEST_ATOMIC_INC:
		break;
	default:
		i_unreached();
	}
	reason = registry_access_check(conn->role, req);
	if (reason != NULL) {
		registry_conn_deny(conn, req, reason);
		if (trans->denied == NULL) {
			trans->denied = p_strdup_printf(trans->pool,
				"Permission denied: %s: %s",
				str_sanitize(req->key, 200), reason);
		}
		return 0;
	}
	change = array_append_space(&trans->changes);
	change->type = req->type;
	change->key = p_strdup(trans->pool, req->key);
	change->value = p_strdup(trans->pool, req->value);
	change->diff = req->diff;
	return 0;
}

static int registry_conn_input_line(struct connection *_conn, const char *line)
{
	struct registry_conn *conn =
		container_of(_conn, struct registry_conn, conn);
	struct registry_request req;
	struct registry_cmd *cmd;
	struct registry_trans *trans;
	const char *error, *reason;
	struct dict *dict;
	unsigned int idx;

	if (registry_request_parse(line, &req, &error) < 0) {
		e_error(server.event, "%s (%s)", error, registry_conn_peer(conn));
		return -1;
	}
	switch (req.type) {
	case REGISTRY_REQUEST_LOOKUP:
	case REGISTRY_REQUEST_ITERATE:
		break;
	case REGISTRY_REQUEST_COMMIT:
		trans = registry_trans_find(conn, req.trans_id, &idx);
		if (trans == NULL) {
			e_error(server.event, "Commit of an unknown "
				"transaction (%s)", registry_conn_peer(conn));
			return -1;
		}
		array_delete(&conn->transactions, idx, 1);
		cmd = registry_cmd_add(conn);
		cmd->trans = trans;
		cmd->async_commit = req.async_commit;
		if ((dict = registry_server_dict(&error)) == NULL) {
			registry_cmd_finish(cmd, registry_commit_reply(cmd,
				DICT_PROTOCOL_REPLY_FAIL, error));
		} else {
			registry_cmd_commit(cmd, dict);
		}
		return 1;
	default:
		if (registry_conn_trans_request(conn, &req) < 0) {
			e_error(server.event, "Broken transaction request "
				"(%s)", registry_conn_peer(conn));
			return -1;
		}
		return 1;
	}

	cmd = registry_cmd_add(conn);
	reason = registry_access_check(conn->role, &req);
	if (reason != NULL) {
		registry_conn_deny(conn, &req, reason);
		registry_cmd_finish(cmd, registry_fail_reply(t_strdup_printf(
			"Permission denied: %s: %s",
			str_sanitize(req.key, 200), reason)));
	} else if ((dict = registry_server_dict(&error)) == NULL)
		registry_cmd_finish(cmd, registry_fail_reply(error));
	else if (req.type == REGISTRY_REQUEST_LOOKUP)
		registry_cmd_lookup(cmd, dict, &req);
	else
		registry_cmd_iterate(cmd, dict, &req);
	return 1;
}

static int
registry_conn_handshake_line(struct connection *_conn, const char *line)
{
	struct registry_conn *conn =
		container_of(_conn, struct registry_conn, conn);
	const char *name, *error;

	if (registry_handshake_parse(line, &name, &error) < 0) {
		e_error(server.event, "%s (%s)", error, registry_conn_peer(conn));
		return -1;
	}
	if (strcmp(name, REGISTRY_NAME_UNCHECKED) == 0) {
		if (conn->role != REGISTRY_ROLE_ADMIN) {
			e_error(server.event, "Only root may read the registry "
				"without its marker (%s)",
				registry_conn_peer(conn));
			return -1;
		}
		conn->unchecked = TRUE;
	}
	return 1;
}

static void registry_conn_destroy(struct connection *_conn)
{
	struct registry_conn *conn =
		container_of(_conn, struct registry_conn, conn);

	if (conn->destroyed)
		return;
	conn->destroyed = TRUE;
	/* the commands still running finish without a reader */
	io_remove(&conn->conn.io);
	registry_conn_unref(conn);
}

static const struct connection_settings registry_conn_set = {
	.dont_send_version = TRUE,
	.input_max_size = REGISTRY_SERVER_MAX_LINE,
	.output_max_size = SIZE_MAX,
};

static const struct connection_vfuncs registry_conn_vfuncs = {
	.destroy = registry_conn_destroy,
	.handshake_line = registry_conn_handshake_line,
	.input_line = registry_conn_input_line,
};

static void client_connected(struct master_service_connection *master_conn)
{
	struct registry_conn *conn;

	master_service_client_connection_accept(master_conn);
	conn = i_new(struct registry_conn, 1);
	conn->refcount = 1;
	/* the least that can be given when the peer isn't known */
	conn->role = REGISTRY_ROLE_MAIL;
	conn->cred.uid = (uid_t)-1;
	conn->cred.pid = -1;
	if (net_getunixcred(master_conn->fd, &conn->cred) < 0) {
		e_error(server.event, "Can't tell who connected: %m");
		conn->cred.uid = (uid_t)-1;
	} else if (conn->cred.uid == 0 || conn->cred.uid == geteuid())
		conn->role = REGISTRY_ROLE_ADMIN;
	i_array_init(&conn->cmds, 16);
	i_array_init(&conn->transactions, 4);
	connection_init_server(server.conns, &conn->conn, master_conn->name,
			       master_conn->fd, master_conn->fd);
}

static const char *
registry_config_callback(const char *key, const char *value,
			 void *context ATTR_UNUSED)
{
	if (strcmp(key, "uri") == 0) {
		i_free(server.uri);
		server.uri = i_strdup(value);
		return NULL;
	}
	if (strcmp(key, "id") == 0) {
		i_free(server.expected_id);
		if (*value == '\0')
			return NULL;
		if (!registry_id_is_valid(value))
			return "id must be the registry's id: 32 hex digits";
		server.expected_id = i_strdup(value);
		return NULL;
	}
	return t_strdup_printf("Unknown setting: %s", key);
}

static void registry_config_read(void)
{
	const char *error;

	if (!settings_read_nosection(server.config_path,
				     registry_config_callback, NULL, &error))
		i_fatal("Error reading %s: %s", server.config_path, error);
	if (server.uri == NULL || *server.uri == '\0')
		i_fatal("%s: uri is not set", server.config_path);
}

int main(int argc, char *argv[])
{
	const enum master_service_flags service_flags =
		MASTER_SERVICE_FLAG_DISABLE_SSL_SET |
		MASTER_SERVICE_FLAG_NO_SSL_INIT;
	struct mirror_log_nudge *log_nudge;
	const char *error;

	master_service = master_service_init("mirror-registry", service_flags,
					     &argc, &argv, "");
	if (master_getopt(master_service) > 0)
		return FATAL_DEFAULT;
	server.config_path = argv[optind] != NULL ? argv[optind] :
		REGISTRY_SERVER_DEFAULT_CONFIG;
	if (master_service_settings_read_simple(master_service, NULL,
						&error) < 0)
		i_fatal("Error reading configuration: %s", error);
	master_service_init_log_with_pid(master_service);

	server.event = event_create(NULL);
	event_add_category(server.event, &event_category_registry);
	server.base_dir = master_service_settings_get(master_service)->base_dir;
	restrict_access_by_env(RESTRICT_ACCESS_FLAG_ALLOW_ROOT, NULL);
	restrict_access_allow_coredumps(TRUE);
	/* as the service's own user, which alone may read it */
	registry_config_read();
	dict_drivers_register_builtin();
	server.conns = connection_list_init(&registry_conn_set,
					   &registry_conn_vfuncs);
	master_service_init_finish(master_service);
	log_nudge = mirror_log_nudge_start();

	master_service_run(master_service, client_connected);

	mirror_log_nudge_stop(&log_nudge);
	/* the commands still running finish first */
	if (server.dict != NULL)
		dict_wait(server.dict);
	connection_list_deinit(&server.conns);
	if (server.dict != NULL)
		dict_deinit(&server.dict);
	dict_drivers_unregister_builtin();
	i_free(server.dict_error);
	i_free(server.uri);
	i_free(server.expected_id);
	event_unref(&server.event);
	master_service_deinit(&master_service);
	return 0;
}
