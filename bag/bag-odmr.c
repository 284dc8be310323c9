/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* The odmr listener: ATRN / On-Demand Mail Relay (RFC 2645), port 366,
   with STARTTLS, or implicit TLS on a listener with ssl = yes.

   The customer's MTA authenticates (AUTH through Dovecot's auth: its
   passdb), then asks with ATRN [domain[,domain...]] for the mail of
   domains it may pull (every one of them when none is named). When there
   is mail, the reply is "250 OK now reversing the connection" and the
   roles turn: the customer's MTA greets us as an SMTP server, and this
   process delivers the bags to it on the same connection (with its TLS,
   if any), with the same rules as any flush, then ends with QUIT. All of
   it in the ioloop: a process serves many connections at once.

   Mechanisms: those of the auth socket bag_auth_socket (Dovecot's own
   auth_mechanisms), and CRAM-MD5 from bag_cram_md5_auth_socket, an auth
   process of its own, so that IMAP and POP3 never offer CRAM-MD5
   (fetchmail's ODMR mode speaks nothing else). A mechanism that sends the
   password in the clear is offered only on TLS, on loopback, or with
   bag_odmr_plaintext_auth.

   Only EHLO/HELO, STARTTLS, AUTH, ATRN, NOOP, RSET and QUIT are
   implemented; every other command gets 502: this port never relays or
   accepts mail. */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "str-sanitize.h"
#include "ioloop.h"
#include "istream.h"
#include "ostream.h"
#include "iostream-ssl.h"
#include "auth-client.h"
#include "master-service.h"
#include "master-service-ssl.h"
#include "smtp-server.h"
#include "smtp-reply.h"
#include "mirror-registry.h"
#include "bag-registry.h"
#include "bag-store.h"
#include "bag-flush.h"
#include "bag-smtp-client.h"
#include "bag-service.h"
#include "bag-listener.h"
#include "bag-input.h"

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

struct bag_odmr_domain {
	struct bag_def def;
	struct bag_store *store;
};

struct bag_odmr_client {
	pool_t pool;
	struct event *event;
	struct smtp_server_connection *conn;
	struct bag_listener listener;
	struct ip_addr remote_ip;
	in_port_t remote_port;
	/* PLAIN and LOGIN may be offered: on TLS or loopback */
	bool secured;
	bool started;

	struct auth_client_request *auth_request;
	struct smtp_server_cmd_ctx *auth_cmd;
	unsigned int auth_failures;
	/* the authenticated identity */
	const char *identity;

	/* after ATRN's 250: the bags to deliver, locked */
	ARRAY(struct bag_odmr_domain) domains;
	unsigned int domain_idx;
	struct timeout *to_reverse;
	struct bag_smtp_client *smtp;
	struct bag_flush *flush;
	struct event *flush_event;
	struct registry *reg;
	bool reversed;
	bool destroying;
};

/* The process's auth clients, shared by its connections */
struct bag_odmr_auth {
	struct auth_client *auth;
	/* CRAM-MD5 only, or NULL */
	struct auth_client *cram;
	/* connections whose greeting waits for auth */
	ARRAY(struct bag_odmr_client *) waiting;
	struct timeout *to_connect;
};

static struct smtp_server *bag_odmr_server;
static struct bag_odmr_auth bag_odmr_auth;
static ARRAY(struct bag_odmr_client *) bag_odmr_clients;

static void bag_odmr_reverse_end(struct bag_odmr_client *client,
				 const char *reason);

/*
 * Authentication
 */

static bool
bag_odmr_mech_allowed(struct bag_odmr_client *client,
		      const struct auth_mech_desc *mech)
{
	if ((mech->flags & MECH_SEC_PRIVATE) != 0)
		return FALSE;
	/* a password in the clear only on TLS or loopback, or where the
	   administrator says so */
	if ((mech->flags & MECH_SEC_PLAINTEXT) != 0 && !client->secured &&
	    !bag_service.plaintext_auth)
		return FALSE;
	return TRUE;
}

/* The auth client that serves mech (NULL: none offers it here). */
static struct auth_client *
bag_odmr_auth_for(struct bag_odmr_client *client, const char *name,
		  const struct auth_mech_desc **mech_r)
{
	struct auth_client *const auths[] = {
		bag_odmr_auth.auth, bag_odmr_auth.cram
	};
	const struct auth_mech_desc *mech;
	unsigned int i;

	for (i = 0; i < N_ELEMENTS(auths); i++) {
		if (auths[i] == NULL || !auth_client_is_connected(auths[i]))
			continue;
		mech = auth_client_find_mech(auths[i], name);
		if (mech != NULL && bag_odmr_mech_allowed(client, mech)) {
			*mech_r = mech;
			return auths[i];
		}
	}
	return NULL;
}

static const char *bag_odmr_mechs(struct bag_odmr_client *client)
{
	struct auth_client *const auths[] = {
		bag_odmr_auth.auth, bag_odmr_auth.cram
	};
	const struct auth_mech_desc *mechs, *found;
	string_t *str = t_str_new(64);
	unsigned int i, j, count;

	for (i = 0; i < N_ELEMENTS(auths); i++) {
		if (auths[i] == NULL || !auth_client_is_connected(auths[i]))
			continue;
		mechs = auth_client_get_available_mechs(auths[i], &count);
		for (j = 0; j < count; j++) {
			if (!bag_odmr_mech_allowed(client, &mechs[j]) ||
			    bag_odmr_auth_for(client, mechs[j].name,
					      &found) != auths[i])
				continue;
			if (str_len(str) > 0)
				str_append_c(str, ' ');
			str_append(str, mechs[j].name);
		}
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

	bag_listener_greeted(&client->listener);
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
	struct auth_client *auth;
	struct auth_request_info info;
	unsigned int bits;

	if (bag_odmr_auth.auth == NULL ||
	    (!auth_client_is_connected(bag_odmr_auth.auth) &&
	     (bag_odmr_auth.cram == NULL ||
	      !auth_client_is_connected(bag_odmr_auth.cram)))) {
		smtp_server_reply(cmd, 454, "4.7.0",
				  "Temporary authentication failure");
		return -1;
	}
	auth = bag_odmr_auth_for(client, data->sasl_mech, &mech);
	if (auth == NULL) {
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
	if (client->listener.tls) {
		info.flags |= AUTH_REQUEST_FLAG_TRANSPORT_SECURITY_TLS;
		info.ssl_protocol = ssl_iostream_get_protocol_name(
			client->listener.ssl_iostream);
		info.ssl_cipher = ssl_iostream_get_cipher(
			client->listener.ssl_iostream, &bits);
		info.ssl_cipher_bits = bits;
	}
	info.initial_resp_base64 = data->initial_response;

	i_assert(client->auth_request == NULL);
	client->auth_cmd = cmd;
	smtp_server_command_add_hook(cmd->cmd, SMTP_SERVER_COMMAND_HOOK_DESTROY,
				     bag_odmr_auth_cmd_destroy, client);
	client->auth_request = auth_client_request_new(auth, &info,
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

/*
 * ATRN
 */

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

static void bag_odmr_client_close(struct bag_odmr_client *client,
				  const char *reason)
{
	if (client->conn != NULL)
		smtp_server_connection_close(&client->conn, reason);
}

static void bag_odmr_quit_done(struct bag_odmr_client *client)
{
	bag_odmr_client_close(client, "ATRN finished");
}

static void bag_odmr_reverse_next(struct bag_odmr_client *client);

static void
bag_odmr_flushed(const struct bag_flush_result *result,
		 struct bag_odmr_client *client)
{
	struct bag_odmr_domain *dom =
		array_idx_modifiable(&client->domains, client->domain_idx);

	client->flush = NULL;
	if (client->reg != NULL) {
		bag_flush_finished(client->reg, &dom->def, "atrn", result,
				   &client->flush_event);
	} else {
		event_unref(&client->flush_event);
	}
	bag_store_close(&dom->store);
	client->domain_idx++;
	if (result->error != NULL) {
		bag_odmr_reverse_end(client, result->error);
		return;
	}
	bag_odmr_reverse_next(client);
}

/* The next bag over the reversed session, or QUIT. */
static void bag_odmr_reverse_next(struct bag_odmr_client *client)
{
	struct bag_flush_settings set;
	struct bag_odmr_domain *dom;

	if (client->domain_idx >= array_count(&client->domains)) {
		bag_smtp_client_quit(client->smtp, bag_odmr_quit_done, client);
		return;
	}
	dom = array_idx_modifiable(&client->domains, client->domain_idx);
	i_zero(&set);
	set.remote_mta = net_ip2addr(&client->remote_ip);
	set.reg = client->reg;
	set.domain = dom->def.domain;
	/* an ATRN flush applies no retry period, even for a Backup
	   Domain: the customer is here */
	client->flush_event = bag_flush_event_create(client->event);
	client->flush = bag_flush_start(dom->store,
		bag_smtp_client_get_sender(client->smtp), NULL, &set,
		client->flush_event, bag_odmr_flushed, client);
}

static void
bag_odmr_reverse_started(int ret, const struct smtp_reply *reply,
			 const char *error, struct bag_odmr_client *client)
{
	const char *why;

	if (ret == 0) {
		why = t_strdup_printf("the customer refused the reversed "
				      "session: %s", str_sanitize(
					smtp_reply_log(reply), 200));
		e_info(client->event, "ATRN: %s", why);
		bag_odmr_reverse_end(client, why);
		return;
	}
	if (ret < 0) {
		e_info(client->event, "ATRN: the reversed session failed: %s",
		       error);
		bag_odmr_reverse_end(client, error);
		return;
	}
	if (bag_service_registry_open(&client->reg, &error) < 0)
		e_error(client->event, "%s", error);
	bag_odmr_reverse_next(client);
}

/* The session ends (reason for the log): every bag still held is
   released, the connection closed. */
static void bag_odmr_reverse_end(struct bag_odmr_client *client,
				 const char *reason)
{
	struct bag_flush_result result;

	if (client->flush != NULL) {
		bag_flush_abort(&client->flush, reason, &result);
		bag_odmr_flushed(&result, client);
		return;
	}
	event_unref(&client->flush_event);
	if (client->reg != NULL)
		registry_deinit(&client->reg);
	bag_smtp_client_deinit(&client->smtp);
	bag_odmr_domains_release(client);
	bag_odmr_client_close(client, t_strdup_printf("ATRN ended: %s",
						      reason));
}

/* The 250 is out: the customer's MTA is the server now. */
static int bag_odmr_reverse_output(struct bag_odmr_client *client)
{
	struct bag_smtp_client_settings set;
	struct ostream *output = client->listener.output;
	int ret;

	if ((ret = o_stream_flush(output)) == 0)
		return 0;
	o_stream_unset_flush_callback(output);
	if (ret < 0) {
		bag_odmr_reverse_end(client, o_stream_get_error(output));
		return -1;
	}
	i_zero(&set);
	set.my_hostname = bag_service.hostname;
	set.timeout_msecs = bag_service.timeout_msecs;
	client->smtp = bag_smtp_client_init(client->listener.input, output,
					    &set);
	bag_smtp_client_start(client->smtp, bag_odmr_reverse_started, client);
	return 1;
}

static void bag_odmr_reverse(struct bag_odmr_client *client)
{
	timeout_remove(&client->to_reverse);
	client->reversed = TRUE;
	/* lib-smtp's connection reads and writes no more: the streams are
	   this session's now */
	smtp_server_connection_halt(client->conn);
	o_stream_set_flush_callback(client->listener.output,
				    bag_odmr_reverse_output, client);
	(void)bag_odmr_reverse_output(client);
}

static void
bag_odmr_atrn_cmd_destroy(struct smtp_server_cmd_ctx *cmd ATTR_UNUSED,
			  struct bag_odmr_client *client)
{
	/* out of lib-smtp's call stack before taking the connection over */
	if (array_count(&client->domains) > 0 && client->to_reverse == NULL &&
	    !client->reversed && !client->destroying)
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

/*
 * Connections
 */

static int
bag_odmr_start_tls(void *conn_ctx, struct istream **input,
		   struct ostream **output)
{
	struct bag_odmr_client *client = conn_ctx;

	if (bag_listener_start_tls(&client->listener, input, output) < 0)
		return -1;
	client->secured = TRUE;
	return 0;
}

static void bag_odmr_waiting_remove(struct bag_odmr_client *client)
{
	struct bag_odmr_client *const *clients;
	unsigned int i, count;

	if (!array_is_created(&bag_odmr_auth.waiting))
		return;
	clients = array_get(&bag_odmr_auth.waiting, &count);
	for (i = 0; i < count; i++) {
		if (clients[i] == client) {
			array_delete(&bag_odmr_auth.waiting, i, 1);
			break;
		}
	}
}

static void bag_odmr_conn_free(void *context)
{
	struct bag_odmr_client *client = context;
	struct bag_odmr_client *const *clients;
	pool_t pool = client->pool;
	unsigned int i, count;

	client->destroying = TRUE;
	client->conn = NULL;
	timeout_remove(&client->to_reverse);
	if (client->flush != NULL || client->smtp != NULL)
		bag_odmr_reverse_end(client, "Connection closed");
	if (client->auth_request != NULL)
		auth_client_request_abort(&client->auth_request, "Destroyed");
	bag_odmr_domains_release(client);
	bag_odmr_waiting_remove(client);
	clients = array_get(&bag_odmr_clients, &count);
	for (i = 0; i < count; i++) {
		if (clients[i] == client) {
			array_delete(&bag_odmr_clients, i, 1);
			break;
		}
	}
	bag_listener_deinit(&client->listener);
	event_unref(&client->event);
	bag_service_client_destroyed(&client->remote_ip);
	pool_unref(&pool);
}

static const struct smtp_server_callbacks bag_odmr_callbacks = {
	.conn_cmd_helo = bag_odmr_cmd_helo,
	.conn_cmd_auth = bag_odmr_cmd_auth,
	.conn_cmd_auth_continue = bag_odmr_cmd_auth_continue,
	.conn_start_tls = bag_odmr_start_tls,
	.conn_free = bag_odmr_conn_free,
};

static void bag_odmr_client_start(struct bag_odmr_client *client)
{
	if (client->started)
		return;
	client->started = TRUE;
	smtp_server_connection_start(client->conn);
	if (client->listener.tls) {
		/* implicit TLS: no STARTTLS, and secured */
		smtp_server_connection_set_ssl_streams(client->conn,
			client->listener.input, client->listener.output);
	}
}

/* The auth clients are connected (or gave up connecting): the waiting
   connections get their greetings. */
static void bag_odmr_auth_ready(void *context ATTR_UNUSED)
{
	struct bag_odmr_client *client;

	timeout_remove(&bag_odmr_auth.to_connect);
	if (!auth_client_is_connected(bag_odmr_auth.auth)) {
		e_error(bag_service.event, "Can't reach the auth service at "
			"%s", bag_service.auth_socket_path);
	}
	if (bag_odmr_auth.cram != NULL &&
	    !auth_client_is_connected(bag_odmr_auth.cram)) {
		e_error(bag_service.event, "Can't reach the CRAM-MD5 auth "
			"service at %s (bag_cram_md5_auth_socket)",
			bag_service.cram_md5_auth_socket_path);
	}
	while (array_count(&bag_odmr_auth.waiting) > 0) {
		client = array_idx_elem(&bag_odmr_auth.waiting, 0);
		array_delete(&bag_odmr_auth.waiting, 0, 1);
		bag_odmr_client_start(client);
	}
}

static bool bag_odmr_auth_settled(void)
{
	return auth_client_is_connected(bag_odmr_auth.auth) &&
		(bag_odmr_auth.cram == NULL ||
		 auth_client_is_connected(bag_odmr_auth.cram));
}

static void
bag_odmr_auth_connected(struct auth_client *auth ATTR_UNUSED,
			bool connected ATTR_UNUSED, void *context ATTR_UNUSED)
{
	if (bag_odmr_auth_settled())
		bag_odmr_auth_ready(NULL);
}

static struct auth_client *bag_odmr_auth_client(const char *path)
{
	struct auth_client *auth;

	auth = auth_client_init(path, (unsigned int)getpid(), FALSE);
	auth_client_set_connect_notify(auth, bag_odmr_auth_connected, NULL);
	auth_client_connect(auth);
	return auth;
}

static void bag_odmr_init(void)
{
	struct smtp_server_settings set;

	i_array_init(&bag_odmr_clients, 16);
	i_array_init(&bag_odmr_auth.waiting, 16);
	bag_odmr_auth.auth =
		bag_odmr_auth_client(bag_service.auth_socket_path);
	if (bag_service.cram_md5_auth_socket_path != NULL) {
		bag_odmr_auth.cram = bag_odmr_auth_client(
			bag_service.cram_md5_auth_socket_path);
	}

	i_zero(&set);
	set.protocol = SMTP_PROTOCOL_SMTP;
	set.capabilities = SMTP_CAPABILITY_ENHANCEDSTATUSCODES |
		SMTP_CAPABILITY_AUTH;
	/* with Dovecot's ssl_cert and ssl_key; lib-smtp discards what a
	   client pipelines after STARTTLS */
	if (master_service_ssl_is_enabled(master_service))
		set.capabilities |= SMTP_CAPABILITY_STARTTLS;
	set.hostname = bag_service.hostname;
	set.login_greeting = "ESMTP ODMR service";
	set.max_client_idle_time_msecs = BAG_ODMR_IDLE_TIMEOUT_MSECS;
	set.max_pipelined_commands = 1;
	set.max_bad_commands = BAG_ODMR_MAX_BAD_COMMANDS;
	set.reason_code_module = "bag";
	set.event_parent = bag_service.event;
	bag_odmr_server = smtp_server_init(&set);
	smtp_server_command_register(bag_odmr_server, "ATRN",
				     bag_odmr_cmd_atrn, 0);
	/* refused whether or not the client has authenticated */
	smtp_server_command_register(bag_odmr_server, "ETRN",
				     bag_odmr_cmd_refuse,
				     SMTP_SERVER_CMD_FLAG_PREAUTH);
	smtp_server_command_override(bag_odmr_server, "MAIL",
				     bag_odmr_cmd_refuse,
				     SMTP_SERVER_CMD_FLAG_PREAUTH);
	smtp_server_command_override(bag_odmr_server, "RCPT",
				     bag_odmr_cmd_refuse,
				     SMTP_SERVER_CMD_FLAG_PREAUTH);
	smtp_server_command_override(bag_odmr_server, "DATA",
				     bag_odmr_cmd_refuse,
				     SMTP_SERVER_CMD_FLAG_PREAUTH);
	smtp_server_command_override(bag_odmr_server, "BDAT",
				     bag_odmr_cmd_refuse,
				     SMTP_SERVER_CMD_FLAG_PREAUTH);
	smtp_server_command_override(bag_odmr_server, "VRFY",
				     bag_odmr_cmd_refuse,
				     SMTP_SERVER_CMD_FLAG_PREAUTH);
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

static void bag_odmr_first_timeout(struct bag_odmr_client *client)
{
	if (!client->started) {
		/* no greeting was sent yet */
		bag_odmr_client_close(client, "Timed out waiting for auth");
		return;
	}
	smtp_server_connection_terminate(&client->conn, "4.4.2",
		"Timed out waiting for EHLO");
}

void bag_odmr_client_create(const struct master_service_connection *conn)
{
	struct bag_odmr_client *client;
	const char *error;
	pool_t pool;

	if (bag_odmr_server == NULL)
		bag_odmr_init();

	pool = pool_alloconly_create("bag odmr client", 2048);
	client = p_new(pool, struct bag_odmr_client, 1);
	client->pool = pool;
	client->remote_ip = conn->remote_ip;
	client->remote_port = conn->remote_port;
	client->secured = bag_odmr_ip_is_local(&conn->remote_ip);
	p_array_init(&client->domains, pool, 4);
	client->event = bag_listener_event_create("odmr", conn);

	if (bag_listener_init(&client->listener, conn, client->event,
			      (void (*)(void *))bag_odmr_first_timeout,
			      client, &error) < 0) {
		e_error(client->event, "%s", error);
		bag_listener_deinit(&client->listener);
		event_unref(&client->event);
		bag_service_client_destroyed(&client->remote_ip);
		pool_unref(&pool);
		return;
	}
	if (client->listener.tls)
		client->secured = TRUE;
	client->conn = smtp_server_connection_create_from_streams(
		bag_odmr_server, client->listener.input,
		client->listener.output, &conn->remote_ip, conn->remote_port,
		NULL, &bag_odmr_callbacks, client);
	array_push_back(&bag_odmr_clients, &client);

	/* the greeting waits until the mechanisms can be listed */
	if (bag_odmr_auth_settled()) {
		bag_odmr_client_start(client);
		return;
	}
	array_push_back(&bag_odmr_auth.waiting, &client);
	if (bag_odmr_auth.to_connect == NULL) {
		bag_odmr_auth.to_connect = timeout_add(
			BAG_ODMR_AUTH_CONNECT_TIMEOUT_MSECS,
			bag_odmr_auth_ready, (void *)NULL);
	}
}

void bag_odmr_deinit(void)
{
	struct bag_odmr_client *client;

	if (bag_odmr_server == NULL)
		return;
	/* dovecot stop: the reversed sessions end, what they confirmed
	   stays confirmed */
	while (array_count(&bag_odmr_clients) > 0) {
		client = array_idx_elem(&bag_odmr_clients, 0);
		if (client->flush != NULL || client->smtp != NULL) {
			/* closes the connection and frees the client */
			bag_odmr_reverse_end(client, "The bag service is "
					     "shutting down");
			continue;
		}
		if (client->conn != NULL) {
			smtp_server_connection_close(&client->conn,
				"The bag service is shutting down");
		} else {
			break;
		}
	}
	smtp_server_deinit(&bag_odmr_server);
	timeout_remove(&bag_odmr_auth.to_connect);
	/* disconnecting calls the connect notify */
	auth_client_set_connect_notify(bag_odmr_auth.auth, NULL, NULL);
	auth_client_deinit(&bag_odmr_auth.auth);
	if (bag_odmr_auth.cram != NULL) {
		auth_client_set_connect_notify(bag_odmr_auth.cram, NULL, NULL);
		auth_client_deinit(&bag_odmr_auth.cram);
	}
	array_free(&bag_odmr_auth.waiting);
	array_free(&bag_odmr_clients);
}
