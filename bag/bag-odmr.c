/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* The odmr listener: ATRN / On-Demand Mail Relay (RFC 2645), port 366.

   The customer's MTA authenticates (AUTH through Dovecot's auth: its
   passdb), then asks with ATRN [domain[,domain...]] for the mail of
   domains it may pull (every one of them when none is named). When there
   is mail, the reply is "250 OK now reversing the connection" and the
   roles turn: the customer's MTA greets us as an SMTP server, and this
   process delivers the bags to it on the same connection, with the same
   rules as any flush, then ends with QUIT.

   Only EHLO/HELO, AUTH, ATRN, NOOP, RSET and QUIT are implemented; every
   other command gets 502: this port never relays or accepts mail. */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "str-sanitize.h"
#include "ioloop.h"
#include "istream.h"
#include "ostream.h"
#include "auth-client.h"
#include "master-service.h"
#include "smtp-server.h"
#include "smtp-reply.h"
#include "mirror-registry.h"
#include "bag-registry.h"
#include "bag-store.h"
#include "bag-flush.h"
#include "bag-smtp-client.h"
#include "bag-service.h"
#include "bag-input.h"

#include <poll.h>
#include <unistd.h>

#define BAG_ODMR_MAX_BAD_COMMANDS 10
#define BAG_ODMR_IDLE_TIMEOUT_MSECS (5*60*1000)
/* failed AUTH commands before the connection is closed (Dovecot's auth
   delays each failure too: auth_failure_delay) */
#define BAG_ODMR_MAX_AUTH_FAILURES 3
/* how long the greeting waits for the auth service */
#define BAG_ODMR_AUTH_CONNECT_TIMEOUT_MSECS (10*1000)
/* the most domains one ATRN may pull */
#define BAG_ODMR_MAX_DOMAINS 100
#define BAG_ODMR_MAX_INPUT_BUFFER (64*1024)

struct bag_odmr_domain {
	struct bag_def def;
	struct bag_store *store;
};

struct bag_odmr_client {
	pool_t pool;
	struct event *event;
	struct smtp_server *server;
	struct smtp_server_connection *conn;
	int fd;
	struct istream *input;
	struct ostream *output;
	struct ip_addr remote_ip;
	in_port_t remote_port;
	bool secured;

	struct auth_client *auth;
	struct auth_client_request *auth_request;
	struct smtp_server_cmd_ctx *auth_cmd;
	unsigned int auth_failures;
	struct timeout *to_auth_connect;
	/* the authenticated identity */
	const char *identity;

	/* after ATRN's 250: the bags to deliver, locked */
	ARRAY(struct bag_odmr_domain) domains;
	struct timeout *to_reverse;
	struct timeout *to_destroy;
};

static void bag_odmr_client_destroy(struct bag_odmr_client *client);

static bool
bag_odmr_mech_allowed(struct bag_odmr_client *client,
		      const struct auth_mech_desc *mech)
{
	if ((mech->flags & MECH_SEC_PRIVATE) != 0)
		return FALSE;
	/* there is no TLS here: a password in the clear only on loopback,
	   or where the administrator says so */
	if ((mech->flags & MECH_SEC_PLAINTEXT) != 0 && !client->secured &&
	    !bag_service.plaintext_auth)
		return FALSE;
	return TRUE;
}

static const char *bag_odmr_mechs(struct bag_odmr_client *client)
{
	const struct auth_mech_desc *mechs;
	string_t *str = t_str_new(64);
	unsigned int i, count;

	mechs = auth_client_get_available_mechs(client->auth, &count);
	for (i = 0; i < count; i++) {
		if (!bag_odmr_mech_allowed(client, &mechs[i]))
			continue;
		if (str_len(str) > 0)
			str_append_c(str, ' ');
		str_append(str, mechs[i].name);
	}
	return str_c(str);
}

static int
bag_odmr_cmd_helo(void *conn_ctx, struct smtp_server_cmd_ctx *cmd,
		  struct smtp_server_cmd_helo *data)
{
	struct bag_odmr_client *client = conn_ctx;
	struct smtp_server_reply *reply;
	const char *mechs;

	/* fetchmail wants to see both AUTH and ATRN */
	reply = smtp_server_cmd_ehlo_reply_create(cmd);
	if (!data->helo.old_smtp) {
		smtp_server_reply_ehlo_add(reply, "ATRN");
		mechs = bag_odmr_mechs(client);
		if (*mechs != '\0') {
			smtp_server_reply_ehlo_add_param(reply, "AUTH", "%s",
							 mechs);
		}
	}
	smtp_server_reply_submit(reply);
	return 1;
}

static void
bag_odmr_auth_finished(struct bag_odmr_client *client,
		       struct smtp_server_cmd_ctx *cmd,
		       enum auth_request_status status,
		       const char *const *args)
{
	const char *user = NULL;
	bool nologin = FALSE, temp = FALSE;
	unsigned int i;

	for (i = 0; args != NULL && args[i] != NULL; i++) {
		if (str_begins(args[i], "user="))
			user = args[i] + 5;
		else if (strcmp(args[i], "nologin") == 0 ||
			 strcmp(args[i], "proxy") == 0)
			nologin = TRUE;
		else if (strcmp(args[i], "temp") == 0)
			temp = TRUE;
	}
	if (status == AUTH_REQUEST_STATUS_OK && user != NULL && !nologin) {
		client->identity = p_strdup(client->pool, user);
		event_add_str(client->event, "user", client->identity);
		e_info(client->event, "Authenticated as %s",
		       str_sanitize(user, 80));
		smtp_server_cmd_auth_success(cmd, client->identity, NULL);
		return;
	}
	if (status == AUTH_REQUEST_STATUS_INTERNAL_FAIL || temp) {
		smtp_server_reply(cmd, 454, "4.7.0",
				  "Temporary authentication failure");
		return;
	}
	client->auth_failures++;
	e_info(client->event, "Authentication failed%s%s (%u)",
	       user == NULL ? "" : " for ",
	       user == NULL ? "" : str_sanitize(user, 80),
	       client->auth_failures);
	if (client->auth_failures >= BAG_ODMR_MAX_AUTH_FAILURES) {
		smtp_server_reply(cmd, 421, "4.7.0",
				  "Too many authentication failures");
		return;
	}
	smtp_server_reply(cmd, 535, "5.7.8",
			  "Authentication credentials invalid");
}

static void
bag_odmr_auth_callback(struct auth_client_request *request ATTR_UNUSED,
		       enum auth_request_status status,
		       const char *data_base64, const char *const *args,
		       void *context)
{
	struct bag_odmr_client *client = context;
	struct smtp_server_cmd_ctx *cmd = client->auth_cmd;

	if (cmd == NULL) {
		/* the command is gone (the client disconnected) */
		return;
	}
	if (status == AUTH_REQUEST_STATUS_CONTINUE) {
		smtp_server_cmd_auth_send_challenge(cmd, data_base64);
		return;
	}
	client->auth_request = NULL;
	client->auth_cmd = NULL;
	if (status == AUTH_REQUEST_STATUS_ABORT)
		return;
	bag_odmr_auth_finished(client, cmd, status, args);
}

static void
bag_odmr_auth_cmd_destroy(struct smtp_server_cmd_ctx *cmd ATTR_UNUSED,
			  struct bag_odmr_client *client)
{
	client->auth_cmd = NULL;
	if (client->auth_request != NULL)
		auth_client_request_abort(&client->auth_request, "Aborted");
}

static int
bag_odmr_cmd_auth(void *conn_ctx, struct smtp_server_cmd_ctx *cmd,
		  struct smtp_server_cmd_auth *data)
{
	struct bag_odmr_client *client = conn_ctx;
	const struct auth_mech_desc *mech;
	struct auth_request_info info;

	if (!auth_client_is_connected(client->auth)) {
		smtp_server_reply(cmd, 454, "4.7.0",
				  "Temporary authentication failure");
		return -1;
	}
	mech = auth_client_find_mech(client->auth, data->sasl_mech);
	if (mech == NULL || !bag_odmr_mech_allowed(client, mech)) {
		smtp_server_reply(cmd, 504, "5.5.4",
				  "Unsupported authentication mechanism");
		return -1;
	}
	i_zero(&info);
	info.mech = mech->name;
	info.service = "odmr";
	info.remote_ip = client->remote_ip;
	info.remote_port = client->remote_port;
	info.real_remote_ip = client->remote_ip;
	info.real_remote_port = client->remote_port;
	if (client->secured)
		info.flags |= AUTH_REQUEST_FLAG_SECURED;
	info.initial_resp_base64 = data->initial_response;

	i_assert(client->auth_request == NULL);
	client->auth_cmd = cmd;
	smtp_server_command_add_hook(cmd->cmd, SMTP_SERVER_COMMAND_HOOK_DESTROY,
				     bag_odmr_auth_cmd_destroy, client);
	client->auth_request = auth_client_request_new(client->auth, &info,
		bag_odmr_auth_callback, client);
	return 0;
}

static int
bag_odmr_cmd_auth_continue(void *conn_ctx, struct smtp_server_cmd_ctx *cmd,
			   const char *response)
{
	struct bag_odmr_client *client = conn_ctx;

	if (client->auth_request == NULL)
		return -1;
	if (strcmp(response, "*") == 0) {
		/* RFC 4954: the client cancels the exchange */
		auth_client_request_abort(&client->auth_request, "Cancelled");
		client->auth_cmd = NULL;
		smtp_server_reply(cmd, 501, "5.5.2",
				  "Authentication cancelled");
		return -1;
	}
	auth_client_request_continue(client->auth_request, response);
	return 0;
}

static void bag_odmr_domains_release(struct bag_odmr_client *client)
{
	struct bag_odmr_domain *dom;

	if (!array_is_created(&client->domains))
		return;
	array_foreach_modifiable(&client->domains, dom)
		bag_store_close(&dom->store);
	array_clear(&client->domains);
}

/* The domains ATRN names (or the identity's, when none). 0 with them, -1
   after a reply. */
static int
bag_odmr_atrn_domains(struct bag_odmr_client *client,
		      struct smtp_server_cmd_ctx *cmd,
		      struct registry *reg, const char *params,
		      ARRAY_TYPE(const_string) *domains)
{
	const char *const *names, *domain, *error;

	if (*params == '\0') {
		if (bag_registry_identity_domains(reg, client->identity,
						  pool_datastack_create(),
						  domains, &error) < 0) {
			e_error(client->event, "ATRN: %s", error);
			smtp_server_reply(cmd, 451, "4.3.0", "Access can't be "
					  "checked now: try again later");
			return -1;
		}
		return 0;
	}
	/* domain *("," domain), with spaces after the commas allowed */
	for (names = t_strsplit(params, ","); *names != NULL; names++) {
		const char *name = *names;

		while (*name == ' ')
			name++;
		if (bag_domain_parse(name, &domain, &error) < 0) {
			smtp_server_reply(cmd, 501, "5.5.4", "Invalid domain "
					  "%s", str_sanitize(*names, 80));
			return -1;
		}
		if (array_count(domains) >= BAG_ODMR_MAX_DOMAINS) {
			smtp_server_reply(cmd, 501, "5.5.4",
					  "Too many domains");
			return -1;
		}
		array_push_back(domains, &domain);
	}
	return 0;
}

/* Check and lock every domain. Returns the messages waiting, or -1 after
   a reply. */
static int
bag_odmr_atrn_prepare(struct bag_odmr_client *client,
		      struct smtp_server_cmd_ctx *cmd,
		      struct registry *reg,
		      const ARRAY_TYPE(const_string) *domains)
{
	struct bag_odmr_domain *dom;
	struct bag_store_status status;
	const char *domain, *error;
	unsigned int total = 0;
	int ret;

	array_foreach_elem(domains, domain) {
		dom = array_append_space(&client->domains);
		ret = bag_registry_get(reg, domain, client->pool, &dom->def,
				       &error);
		if (ret < 0) {
			e_error(client->event, "ATRN %s: %s", domain, error);
			smtp_server_reply(cmd, 451, "4.3.0", "Access can't be "
					  "checked now: try again later");
			return -1;
		}
		if (ret == 0 || (dom->def.modes & BAG_MODE_ATRN) == 0 ||
		    strcasecmp(dom->def.atrn_identity,
			       client->identity) != 0) {
			e_info(client->event, "ATRN for %s refused: not a "
			       "domain of %s", domain, client->identity);
			smtp_server_reply(cmd, 450, "4.7.1", "Access to %s "
					  "denied", domain);
			return -1;
		}
		ret = bag_store_open(bag_service.storage_service,
				     dom->def.user, "bag", TRUE,
				     client->event, &dom->store, &error);
		if (ret == 0 && (ret = bag_store_lock(dom->store,
						      &error)) == 0) {
			smtp_server_reply(cmd, 450, "4.2.1", "%s is being "
					  "flushed: try again later", domain);
			return -1;
		}
		if (ret > 0) {
			ret = bag_store_get_status(dom->store, FALSE, &status,
						   &error);
		}
		if (ret < 0) {
			e_error(client->event, "ATRN %s: %s", domain, error);
			smtp_server_reply(cmd, 451, "4.3.0", "Can't read the "
					  "mail of %s now: try again later",
					  domain);
			return -1;
		}
		total += status.messages;
	}
	return total;
}

/* The customer's MTA is the server now: deliver every bag to it. */
static void bag_odmr_reverse(struct bag_odmr_client *client)
{
	struct bag_smtp_client_settings set;
	struct bag_smtp_client *smtp;
	struct bag_flush_result result;
	struct registry *reg = NULL;
	struct bag_odmr_domain *dom;
	struct smtp_reply reply;
	struct pollfd pfd = { .fd = client->fd, .events = POLLOUT };
	const char *error;
	int ret;

	timeout_remove(&client->to_reverse);
	smtp_server_connection_halt(client->conn);
	/* the streams are this function's now: lib-smtp's connection must
	   not be called back when a write has to wait */
	o_stream_unset_flush_callback(client->output);
	/* the 250 must be out before the customer can greet us */
	while ((ret = o_stream_flush(client->output)) == 0) {
		if (poll(&pfd, 1, bag_service.timeout_msecs) <= 0)
			break;
	}

	i_zero(&set);
	set.my_hostname = bag_service.hostname;
	set.timeout_msecs = bag_service.timeout_msecs;
	smtp = bag_smtp_client_init(client->fd, client->input, client->output,
				    &set);
	if (ret <= 0) {
		error = client->output->stream_errno != 0 ?
			o_stream_get_error(client->output) :
			"Timed out sending the ATRN reply";
		ret = -1;
	} else {
		ret = bag_smtp_client_start(smtp, &reply, &error);
	}
	if (ret == 0) {
		e_info(client->event, "ATRN: the customer refused the "
		       "reversed session: %s",
		       str_sanitize(smtp_reply_log(&reply), 200));
	} else if (ret < 0) {
		e_info(client->event, "ATRN: the reversed session failed: %s",
		       error);
	} else {
		if (bag_service_registry_open(&reg, &error) < 0)
			e_error(client->event, "%s", error);
		array_foreach_modifiable(&client->domains, dom) {
			ret = bag_flush_run(dom->store, smtp,
					    net_ip2addr(&client->remote_ip),
					    NULL, client->event, &result);
			if (reg != NULL) {
				bag_flush_finished(reg, &dom->def, "atrn",
						   &result, client->event);
			}
			if (ret < 0)
				break;
		}
		if (ret == 0)
			bag_smtp_client_quit(smtp);
		registry_deinit(&reg);
	}
	bag_smtp_client_deinit(&smtp);
	bag_odmr_domains_release(client);
	smtp_server_connection_close(&client->conn, "ATRN finished");
}

static void
bag_odmr_atrn_cmd_destroy(struct smtp_server_cmd_ctx *cmd ATTR_UNUSED,
			  struct bag_odmr_client *client)
{
	/* out of lib-smtp's call stack before taking the connection over */
	if (array_count(&client->domains) > 0 && client->to_reverse == NULL)
		client->to_reverse = timeout_add_short(0, bag_odmr_reverse,
						       client);
}

static void bag_odmr_atrn_run(struct bag_odmr_client *client,
			      struct smtp_server_cmd_ctx *cmd,
			      const char *params)
{
	struct registry *reg;
	ARRAY_TYPE(const_string) domains;
	const char *error;
	int ret;

	if (bag_service_registry_open(&reg, &error) < 0) {
		e_error(client->event, "ATRN: %s", error);
		smtp_server_reply(cmd, 451, "4.3.0",
				  "Access can't be checked now: try again later");
		return;
	}
	t_array_init(&domains, 8);
	ret = bag_odmr_atrn_domains(client, cmd, reg, params, &domains);
	if (ret == 0 && array_count(&domains) == 0) {
		smtp_server_reply(cmd, 450, "4.7.1",
				  "No domain to pull for %s", client->identity);
		ret = -1;
	}
	if (ret == 0)
		ret = bag_odmr_atrn_prepare(client, cmd, reg, &domains);
	registry_deinit(&reg);
	if (ret <= 0) {
		if (ret == 0) {
			smtp_server_reply(cmd, 453, "",
					  "You have no mail");
		}
		bag_odmr_domains_release(client);
		return;
	}
	e_info(client->event, "ATRN %s: %d messages, reversing the "
	       "connection", params, ret);
	/* nothing more is read as commands: the next thing the customer
	   sends is its greeting */
	smtp_server_connection_input_lock(client->conn);
	smtp_server_command_add_hook(cmd->cmd, SMTP_SERVER_COMMAND_HOOK_DESTROY,
				     bag_odmr_atrn_cmd_destroy, client);
	smtp_server_reply(cmd, 250, "", "OK now reversing the connection");
}

static void bag_odmr_cmd_atrn(struct smtp_server_cmd_ctx *cmd,
			      const char *params)
{
	struct bag_odmr_client *client =
		smtp_server_connection_get_context(cmd->conn);

	if (client->identity == NULL) {
		smtp_server_reply(cmd, 530, "5.7.0",
				  "Authentication required");
		return;
	}
	T_BEGIN {
		bag_odmr_atrn_run(client, cmd, params);
	} T_END;
}

static void bag_odmr_cmd_refuse(struct smtp_server_cmd_ctx *cmd,
				const char *params ATTR_UNUSED)
{
	smtp_server_reply(cmd, 502, "5.5.1", "Command not implemented: "
			  "this is the ODMR service");
}

static void bag_odmr_conn_free(void *context)
{
	struct bag_odmr_client *client = context;

	client->conn = NULL;
	if (client->to_destroy == NULL) {
		client->to_destroy = timeout_add_short(0,
			bag_odmr_client_destroy, client);
	}
}

static const struct smtp_server_callbacks bag_odmr_callbacks = {
	.conn_cmd_helo = bag_odmr_cmd_helo,
	.conn_cmd_auth = bag_odmr_cmd_auth,
	.conn_cmd_auth_continue = bag_odmr_cmd_auth_continue,
	.conn_free = bag_odmr_conn_free,
};

static void bag_odmr_client_destroy(struct bag_odmr_client *client)
{
	pool_t pool = client->pool;

	timeout_remove(&client->to_destroy);
	timeout_remove(&client->to_reverse);
	timeout_remove(&client->to_auth_connect);
	if (client->conn != NULL)
		smtp_server_connection_close(&client->conn, "Destroyed");
	if (client->auth_request != NULL)
		auth_client_request_abort(&client->auth_request, "Destroyed");
	bag_odmr_domains_release(client);
	if (client->auth != NULL)
		auth_client_deinit(&client->auth);
	if (client->server != NULL)
		smtp_server_deinit(&client->server);
	i_stream_unref(&client->input);
	o_stream_unref(&client->output);
	i_close_fd(&client->fd);
	event_unref(&client->event);
	pool_unref(&pool);
	bag_service_client_destroyed();
}

static void bag_odmr_client_start(struct bag_odmr_client *client)
{
	timeout_remove(&client->to_auth_connect);
	auth_client_set_connect_notify(client->auth, NULL, NULL);
	if (!auth_client_is_connected(client->auth)) {
		e_error(client->event, "Can't reach the auth service at %s",
			bag_service.auth_socket_path);
	}
	smtp_server_connection_start(client->conn);
}

static void
bag_odmr_auth_connected(struct auth_client *auth ATTR_UNUSED,
			bool connected, void *context)
{
	struct bag_odmr_client *client = context;

	if (connected)
		bag_odmr_client_start(client);
}

static bool bag_odmr_ip_is_local(const struct ip_addr *ip)
{
	struct ip_addr net;
	unsigned int bits;

	if (ip->family == 0)
		return TRUE;
	if (net_parse_range(ip->family == AF_INET6 ? "::1/128" :
			    "127.0.0.0/8", &net, &bits) < 0)
		return FALSE;
	return net_is_in_network(ip, &net, bits);
}

void bag_odmr_client_create(const struct master_service_connection *conn)
{
	struct bag_odmr_client *client;
	struct smtp_server_settings set;
	pool_t pool;

	pool = pool_alloconly_create("bag odmr client", 2048);
	client = p_new(pool, struct bag_odmr_client, 1);
	client->pool = pool;
	client->fd = conn->fd;
	client->remote_ip = conn->remote_ip;
	client->remote_port = conn->remote_port;
	client->secured = bag_odmr_ip_is_local(&conn->remote_ip);
	p_array_init(&client->domains, pool, 4);
	client->event = event_create(bag_service.event);
	event_add_str(client->event, "protocol", "odmr");
	event_add_str(client->event, "remote_ip", net_ip2addr(&conn->remote_ip));
	event_set_append_log_prefix(client->event, t_strdup_printf(
		"odmr(%s): ", net_ip2addr(&conn->remote_ip)));

	i_zero(&set);
	set.protocol = SMTP_PROTOCOL_SMTP;
	set.capabilities = SMTP_CAPABILITY_ENHANCEDSTATUSCODES |
		SMTP_CAPABILITY_AUTH;
	set.hostname = bag_service.hostname;
	set.login_greeting = "ESMTP ODMR service";
	set.max_client_idle_time_msecs = BAG_ODMR_IDLE_TIMEOUT_MSECS;
	set.max_pipelined_commands = 1;
	set.max_bad_commands = BAG_ODMR_MAX_BAD_COMMANDS;
	set.reason_code_module = "bag";
	set.event_parent = client->event;
	client->server = smtp_server_init(&set);
	smtp_server_command_register(client->server, "ATRN",
				     bag_odmr_cmd_atrn, 0);
	/* refused whether or not the client has authenticated */
	smtp_server_command_register(client->server, "ETRN",
				     bag_odmr_cmd_refuse,
				     SMTP_SERVER_CMD_FLAG_PREAUTH);
	smtp_server_command_override(client->server, "MAIL",
				     bag_odmr_cmd_refuse,
				     SMTP_SERVER_CMD_FLAG_PREAUTH);
	smtp_server_command_override(client->server, "RCPT",
				     bag_odmr_cmd_refuse,
				     SMTP_SERVER_CMD_FLAG_PREAUTH);
	smtp_server_command_override(client->server, "DATA",
				     bag_odmr_cmd_refuse,
				     SMTP_SERVER_CMD_FLAG_PREAUTH);
	smtp_server_command_override(client->server, "BDAT",
				     bag_odmr_cmd_refuse,
				     SMTP_SERVER_CMD_FLAG_PREAUTH);
	smtp_server_command_override(client->server, "VRFY",
				     bag_odmr_cmd_refuse,
				     SMTP_SERVER_CMD_FLAG_PREAUTH);

	client->input = i_stream_create_fd(conn->fd,
					   BAG_ODMR_MAX_INPUT_BUFFER);
	client->output = o_stream_create_fd(conn->fd, SIZE_MAX);
	client->conn = smtp_server_connection_create_from_streams(
		client->server, client->input, client->output,
		&conn->remote_ip, conn->remote_port, NULL,
		&bag_odmr_callbacks, client);

	/* the greeting waits until the mechanisms can be listed */
	client->auth = auth_client_init(bag_service.auth_socket_path,
					(unsigned int)getpid(), FALSE);
	auth_client_set_connect_notify(client->auth, bag_odmr_auth_connected,
				       client);
	auth_client_connect(client->auth);
	if (auth_client_is_connected(client->auth))
		bag_odmr_client_start(client);
	else {
		client->to_auth_connect =
			timeout_add(BAG_ODMR_AUTH_CONNECT_TIMEOUT_MSECS,
				    bag_odmr_client_start, client);
	}
}
