/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* The etrn listener: ETRN (RFC 1985).

     ETRN example.org    the bag of example.org
     ETRN @example.org   the bags of example.org and its subdomains
     ETRN #example.org   the bag named example.org (a bag's queue name is
                         its domain)

   A bag is flushed only for a client whose address is one of its ETRN
   networks. The reply comes at once, with the number of messages waiting
   (253), or 251 when there are none; the mail goes over a new connection
   to the bag's host, opened by the bag-flush listener, never over this
   one. Unknown domains and refused clients get the same 459 reply, so the
   list of bagged domains can't be probed.

   This listener is not a relay: MAIL FROM is accepted (so that ETRN in a
   transaction gets its 503, as RFC 1985 asks), every RCPT TO is refused,
   and AUTH is not offered. */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "str-sanitize.h"
#include "ioloop.h"
#include "master-service.h"
#include "master-service-ssl.h"
#include "smtp-address.h"
#include "smtp-server.h"
#include "mirror-registry.h"
#include "bag-registry.h"
#include "bag-store.h"
#include "bag-flush-client.h"
#include "bag-service.h"
#include "bag-listener.h"
#include "bag-input.h"

#define BAG_ETRN_MAX_BAD_COMMANDS 10
#define BAG_ETRN_IDLE_TIMEOUT_MSECS (5*60*1000)
/* every bag @domain matches at most */
#define BAG_ETRN_MAX_DOMAINS 1000

struct bag_etrn_client {
	pool_t pool;
	struct event *event;
	struct smtp_server_connection *conn;
	struct bag_listener listener;
	struct ip_addr remote_ip;
};

/* one server for the process's connections */
static struct smtp_server *bag_etrn_server;

enum bag_etrn_kind {
	/* "domain" */
	BAG_ETRN_DOMAIN,
	/* "@domain": the domain and its subdomains */
	BAG_ETRN_SUBDOMAINS,
	/* "#queue" */
	BAG_ETRN_QUEUE,
};

static const char *bag_etrn_printable(const char *node)
{
	return str_sanitize(node, 80);
}

static bool bag_etrn_matches(const char *domain, const char *node,
			     enum bag_etrn_kind kind)
{
	size_t dlen = strlen(domain), nlen = strlen(node);

	if (strcmp(domain, node) == 0)
		return TRUE;
	return kind == BAG_ETRN_SUBDOMAINS && dlen > nlen + 1 &&
		domain[dlen - nlen - 1] == '.' &&
		strcmp(domain + dlen - nlen, node) == 0;
}

/* The bags the client may flush for node. Returns 0 with them (maybe
   none), -1 on error. */
static int
bag_etrn_find(struct bag_etrn_client *client, struct registry *reg,
	      const char *node, enum bag_etrn_kind kind,
	      ARRAY_TYPE(bag_def) *defs_r, const char **error_r)
{
	ARRAY_TYPE(bag_def) all;
	struct bag_def def;
	const struct bag_def *d;
	int ret;

	t_array_init(&all, 16);
	if (kind != BAG_ETRN_SUBDOMAINS) {
		ret = bag_registry_get(reg, node, pool_datastack_create(),
				       &def, error_r);
		if (ret < 0)
			return -1;
		if (ret > 0)
			array_push_back(&all, &def);
	} else if (bag_registry_list(reg, pool_datastack_create(), &all,
				     error_r) < 0) {
		return -1;
	}
	array_foreach(&all, d) {
		if (!bag_etrn_matches(d->domain, node, kind) ||
		    (d->modes & BAG_MODE_ETRN) == 0)
			continue;
		if (!bag_def_allows_ip(d, &client->remote_ip)) {
			e_info(client->event, "ETRN for %s refused: %s is not "
			       "one of its networks", d->domain,
			       net_ip2addr(&client->remote_ip));
			continue;
		}
		if (array_count(defs_r) < BAG_ETRN_MAX_DOMAINS)
			array_push_back(defs_r, d);
	}
	return 0;
}

/* Messages waiting in the bag: the registry's counter, so that the reply
   comes as fast for a big bag as for a small one. The counter is a hint
   (a flush sets it right): when it says none, the bag's index says. */
static int
bag_etrn_count(struct registry *reg, const struct bag_def *def,
	       unsigned int *count_r, const char **error_r)
{
	struct bag_store *store = NULL;
	struct bag_store_status status;
	const char *error;
	int ret;

	i_zero(&status);
	if (bag_registry_count_get(reg, def->domain, count_r, &error) < 0)
		e_error(bag_service.event, "%s", error);
	else if (*count_r > 0)
		return 0;
	ret = bag_store_open(bag_service.storage_service, def->user, "bag",
			     FALSE, bag_service.event, &store, error_r);
	if (ret == 0)
		ret = bag_store_get_status(store, FALSE, &status, error_r);
	bag_store_close(&store);
	*count_r = status.messages;
	return ret;
}

static void
bag_etrn_run(struct bag_etrn_client *client, struct smtp_server_cmd_ctx *cmd,
	     const char *node, enum bag_etrn_kind kind)
{
	struct registry *reg;
	struct bag_flush_client *fclient;
	ARRAY_TYPE(bag_def) defs;
	const struct bag_def *def;
	const char *error;
	unsigned int count, total = 0;
	int ret;

	if (bag_service_registry_open(&reg, &error) < 0) {
		e_error(client->event, "ETRN %s: %s", node, error);
		smtp_server_reply(cmd, 458, "4.3.0", "Unable to queue "
				  "messages for node %s", node);
		return;
	}
	t_array_init(&defs, 4);
	ret = bag_etrn_find(client, reg, node, kind, &defs, &error);
	if (ret < 0) {
		e_error(client->event, "ETRN %s: %s", node, error);
		smtp_server_reply(cmd, 458, "4.3.0", "Unable to queue "
				  "messages for node %s", node);
		registry_deinit(&reg);
		return;
	}
	if (array_count(&defs) == 0) {
		smtp_server_reply(cmd, 459, "4.7.1", "Node %s not allowed: "
				  "not a bagged domain of this client", node);
		registry_deinit(&reg);
		return;
	}
	array_foreach(&defs, def) {
		if (bag_etrn_count(reg, def, &count, &error) < 0) {
			e_error(client->event, "ETRN %s: %s", def->domain,
				error);
			smtp_server_reply(cmd, 458, "4.3.0", "Unable to queue "
					  "messages for node %s", node);
			registry_deinit(&reg);
			return;
		}
		total += count;
	}
	registry_deinit(&reg);
	if (total == 0) {
		smtp_server_reply(cmd, 251, "2.0.0", "OK, no messages "
				  "waiting for node %s", node);
		return;
	}
	array_foreach(&defs, def) {
		if (bag_flush_client_request(bag_service.base_dir,
					     def->domain, NULL, 0, NULL, NULL,
					     &fclient, &error) < 0) {
			e_error(client->event, "ETRN %s: Can't start the "
				"flush: %s", def->domain, error);
			smtp_server_reply(cmd, 458, "4.3.0", "Unable to queue "
					  "messages for node %s", node);
			return;
		}
		e_info(client->event, "ETRN %s from %s: flush of %s started",
		       node, net_ip2addr(&client->remote_ip), def->domain);
	}
	smtp_server_reply(cmd, 253, "2.0.0", "OK, %u pending messages for "
			  "node %s started", total, node);
}

static void bag_etrn_cmd(struct smtp_server_cmd_ctx *cmd, const char *params)
{
	struct bag_etrn_client *client =
		smtp_server_connection_get_context(cmd->conn);
	enum bag_etrn_kind kind = BAG_ETRN_DOMAIN;
	const char *node = params, *domain, *error;

	if (smtp_server_connection_get_helo_data(cmd->conn)->domain == NULL) {
		smtp_server_reply(cmd, 503, "5.5.1", "Send EHLO first");
		return;
	}
	if (smtp_server_connection_get_transaction(cmd->conn) != NULL) {
		smtp_server_reply(cmd, 503, "5.5.1",
				  "ETRN is not allowed in a mail transaction");
		return;
	}
	if (*node == '@') {
		kind = BAG_ETRN_SUBDOMAINS;
		node++;
	} else if (*node == '#') {
		kind = BAG_ETRN_QUEUE;
		node++;
	}
	if (*params == '\0' || strchr(params, ' ') != NULL) {
		smtp_server_reply(cmd, 501, "5.5.4",
				  "Syntax: ETRN [@|#]domain");
		return;
	}
	if (bag_domain_parse(node, &domain, &error) < 0) {
		smtp_server_reply(cmd, 501, "5.5.4", "Invalid node %s",
				  bag_etrn_printable(params));
		return;
	}
	T_BEGIN {
		bag_etrn_run(client, cmd, domain, kind);
	} T_END;
}

static int
bag_etrn_cmd_helo(void *conn_ctx, struct smtp_server_cmd_ctx *cmd,
		  struct smtp_server_cmd_helo *data)
{
	struct bag_etrn_client *client = conn_ctx;
	struct smtp_server_reply *reply;

	bag_listener_greeted(&client->listener);
	/* fetchmail sends ETRN only to a server that lists it */
	reply = smtp_server_cmd_ehlo_reply_create(cmd);
	if (!data->helo.old_smtp)
		smtp_server_reply_ehlo_add(reply, "ETRN");
	smtp_server_reply_submit(reply);
	return 1;
}

static int
bag_etrn_cmd_mail(void *conn_ctx ATTR_UNUSED,
		  struct smtp_server_cmd_ctx *cmd ATTR_UNUSED,
		  struct smtp_server_cmd_mail *data ATTR_UNUSED)
{
	return 1;
}

static int
bag_etrn_cmd_rcpt(void *conn_ctx, struct smtp_server_cmd_ctx *cmd ATTR_UNUSED,
		  struct smtp_server_recipient *rcpt)
{
	struct bag_etrn_client *client = conn_ctx;

	e_info(client->event, "Relaying to %s refused: this is the ETRN "
	       "service", smtp_address_encode(rcpt->path));
	smtp_server_recipient_reply(rcpt, 554, "5.7.1",
				    "Relay access denied");
	return -1;
}

static int
bag_etrn_cmd_data_begin(void *conn_ctx ATTR_UNUSED,
			struct smtp_server_cmd_ctx *cmd,
			struct smtp_server_transaction *trans ATTR_UNUSED,
			struct istream *data_input ATTR_UNUSED)
{
	/* no recipient is ever accepted, so lib-smtp refuses DATA before
	   this: stay safe all the same */
	smtp_server_reply(cmd, 554, "5.7.1", "Relay access denied");
	return -1;
}

static int
bag_etrn_cmd_data_continue(void *conn_ctx ATTR_UNUSED,
			   struct smtp_server_cmd_ctx *cmd,
			   struct smtp_server_transaction *trans ATTR_UNUSED)
{
	smtp_server_reply(cmd, 554, "5.7.1", "Relay access denied");
	return -1;
}

static int
bag_etrn_start_tls(void *conn_ctx, struct istream **input,
		   struct ostream **output)
{
	struct bag_etrn_client *client = conn_ctx;

	return bag_listener_start_tls(&client->listener, input, output);
}

static void bag_etrn_conn_free(void *context)
{
	struct bag_etrn_client *client = context;
	pool_t pool = client->pool;

	client->conn = NULL;
	bag_listener_deinit(&client->listener);
	event_unref(&client->event);
	bag_service_client_destroyed(&client->remote_ip);
	pool_unref(&pool);
}

static const struct smtp_server_callbacks bag_etrn_callbacks = {
	.conn_cmd_helo = bag_etrn_cmd_helo,
	.conn_cmd_mail = bag_etrn_cmd_mail,
	.conn_cmd_rcpt = bag_etrn_cmd_rcpt,
	.conn_cmd_data_begin = bag_etrn_cmd_data_begin,
	.conn_cmd_data_continue = bag_etrn_cmd_data_continue,
	.conn_start_tls = bag_etrn_start_tls,
	.conn_free = bag_etrn_conn_free,
};

static void bag_etrn_server_init(void)
{
	struct smtp_server_settings set;

	i_zero(&set);
	set.protocol = SMTP_PROTOCOL_SMTP;
	set.capabilities = SMTP_CAPABILITY_ENHANCEDSTATUSCODES |
		SMTP_CAPABILITY_PIPELINING;
	/* with Dovecot's ssl_cert and ssl_key; lib-smtp discards what a
	   client pipelines after STARTTLS */
	if (master_service_ssl_is_enabled(master_service))
		set.capabilities |= SMTP_CAPABILITY_STARTTLS;
	set.hostname = bag_service.hostname;
	set.login_greeting = "ESMTP ETRN service";
	set.max_client_idle_time_msecs = BAG_ETRN_IDLE_TIMEOUT_MSECS;
	set.max_pipelined_commands = 1;
	set.max_bad_commands = BAG_ETRN_MAX_BAD_COMMANDS;
	set.max_recipients = 1;
	set.auth_optional = TRUE;
	set.reason_code_module = "bag";
	set.event_parent = bag_service.event;
	bag_etrn_server = smtp_server_init(&set);
	smtp_server_command_register(bag_etrn_server, "ETRN", bag_etrn_cmd, 0);
}

static void bag_etrn_first_timeout(struct bag_etrn_client *client)
{
	smtp_server_connection_terminate(&client->conn, "4.4.2",
		"Timed out waiting for EHLO");
}

void bag_etrn_client_create(const struct master_service_connection *conn)
{
	struct bag_etrn_client *client;
	const char *error;
	pool_t pool;

	if (bag_etrn_server == NULL)
		bag_etrn_server_init();

	pool = pool_alloconly_create("bag etrn client", 1024);
	client = p_new(pool, struct bag_etrn_client, 1);
	client->pool = pool;
	client->remote_ip = conn->remote_ip;
	client->event = bag_listener_event_create("etrn", conn);

	if (bag_listener_init(&client->listener, conn, client->event,
			      (void (*)(void *))bag_etrn_first_timeout,
			      client, &error) < 0) {
		e_error(client->event, "%s", error);
		bag_listener_deinit(&client->listener);
		event_unref(&client->event);
		bag_service_client_destroyed(&client->remote_ip);
		pool_unref(&pool);
		return;
	}
	client->conn = smtp_server_connection_create_from_streams(
		bag_etrn_server, client->listener.input,
		client->listener.output, &conn->remote_ip, conn->remote_port,
		NULL, &bag_etrn_callbacks, client);
	smtp_server_connection_start(client->conn);
	if (client->listener.tls) {
		/* implicit TLS: no STARTTLS, and secured */
		smtp_server_connection_set_ssl_streams(client->conn,
			client->listener.input, client->listener.output);
	}
}

void bag_etrn_deinit(void)
{
	if (bag_etrn_server != NULL)
		smtp_server_deinit(&bag_etrn_server);
}
