/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* The session to a customer's MTA on a connection of its own, on
   Dovecot's lib-smtp client (bag-smtp-relay.h). */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "str-sanitize.h"
#include "ioloop.h"
#include "istream.h"
#include "iostream-ssl.h"
#include "smtp-address.h"
#include "smtp-client.h"
#include "smtp-client-connection.h"
#include "smtp-client-transaction.h"
/* lib-smtp has no public way to the TLS session of a connection, whose
   protocol and cipher the flush logs (doc/development.md, "Upstream
   bugs") */
#include "smtp-client-private.h"
#include "bag-smtp-sender.h"
#include "bag-smtp-relay.h"

/* how much of a server's text goes into an error */
#define BAG_SMTP_RELAY_MAX_ERROR_LEN 256

struct bag_smtp_relay_rcpt {
	struct bag_smtp_relay *relay;
	unsigned int idx;
};

struct bag_smtp_relay {
	struct bag_smtp_sender sender;
	pool_t pool;
	struct bag_smtp_relay_settings set;
	struct event *event;
	struct ssl_iostream_settings ssl_set;
	struct smtp_client *client;
	struct smtp_client_connection *conn;
	enum smtp_client_connection_ssl_mode ssl_mode;
	/* may: the session in the clear after TLS failed, or the one with
	   STARTTLS after a clear one found it offered (upgraded) */
	bool tried_clear, tried_tls, upgraded;

	bag_smtp_relay_callback_t *callback;
	void *context;
	struct timeout *to_callback;
	int ready_ret;
	char *ready_error;
	/* what lib-smtp logged last as an error: its reply to a failed
	   connect() only says "Failed to connect to remote server" */
	char *last_error;

	/* TLS of the ready session */
	char *tls_protocol, *tls_cipher;

	/* the transaction in flight */
	struct smtp_client_transaction *trans;
	pool_t trans_pool;
	struct bag_smtp_send_result *result;
	unsigned int rcpt_count;
	struct bag_smtp_relay_rcpt *rcpts;
	bag_smtp_sender_callback_t *send_callback;
	void *send_context;
	struct timeout *to_send_failed;
	bool broken;
};

static void bag_smtp_relay_connect(struct bag_smtp_relay *relay);

static const char *
bag_smtp_relay_name(const struct bag_smtp_relay *relay)
{
	return strchr(relay->set.host, ':') != NULL ?
		t_strdup_printf("[%s]:%u", relay->set.host, relay->set.port) :
		t_strdup_printf("%s:%u", relay->set.host, relay->set.port);
}

static const char *
bag_smtp_relay_reply_str(const struct smtp_reply *reply)
{
	return str_sanitize(smtp_reply_log(reply),
			    BAG_SMTP_RELAY_MAX_ERROR_LEN);
}

static const char *
bag_smtp_relay_log_message(struct bag_smtp_relay *relay,
			   enum log_type log_type, const char *message)
{
	const char *p;

	if (log_type == LOG_TYPE_ERROR) {
		/* keep what follows lib-smtp's prefixes */
		p = strstr(message, "connect(");
		i_free(relay->last_error);
		relay->last_error = i_strdup(p != NULL ? p : message);
	}
	return message;
}

/*
 * Session
 */

static void bag_smtp_relay_callback(struct bag_smtp_relay *relay)
{
	bag_smtp_relay_callback_t *callback = relay->callback;

	timeout_remove(&relay->to_callback);
	relay->callback = NULL;
	if (callback != NULL)
		callback(relay->ready_ret, relay->ready_error, relay->context);
}

static void
bag_smtp_relay_ready(struct bag_smtp_relay *relay, int ret,
		     const char *error)
{
	relay->ready_ret = ret;
	i_free(relay->ready_error);
	relay->ready_error = i_strdup(error);
	/* out of lib-smtp's call stack: the callback may free the relay */
	if (relay->to_callback == NULL) {
		relay->to_callback = timeout_add_short(
			0, bag_smtp_relay_callback, relay);
	}
}

static void bag_smtp_relay_close(struct bag_smtp_relay *relay)
{
	if (relay->conn != NULL)
		smtp_client_connection_close(&relay->conn);
}

/* Whether a session that failed before it was ready got as far as TLS:
   STARTTLS wasn't offered or was refused, or the handshake failed (a
   refused greeting fails that way too, and is refused again in the
   clear). A connection that wasn't made says nothing about TLS. */
static bool bag_smtp_relay_tls_failed(const struct smtp_reply *reply)
{
	const char *text = smtp_reply_log(reply);

	if (smtp_reply_is_remote(reply))
		return TRUE;
	return strstr(text, "STARTTLS") != NULL ||
		strstr(text, "SSL") != NULL || strstr(text, "TLS") != NULL;
}

static void bag_smtp_relay_tls_info(struct bag_smtp_relay *relay)
{
	struct ssl_iostream *ssl_io = relay->conn->ssl_iostream;
	unsigned int bits;
	const char *protocol, *cipher;

	if (ssl_io == NULL)
		return;
	protocol = ssl_iostream_get_protocol_name(ssl_io);
	cipher = ssl_iostream_get_cipher(ssl_io, &bits);
	relay->tls_protocol = i_strdup(protocol == NULL ? "TLS" : protocol);
	relay->tls_cipher = i_strdup(cipher == NULL ? "" : cipher);
	e_info(relay->event, "%s TLS connection established to %s: %s",
	       relay->set.tls == BAG_TLS_VERIFY ? "Verified" : "Anonymous",
	       bag_smtp_relay_name(relay),
	       ssl_iostream_get_security_string(ssl_io));
}

static void
bag_smtp_relay_login_cb(const struct smtp_reply *reply,
			struct bag_smtp_relay *relay)
{
	const char *name = bag_smtp_relay_name(relay);
	const char *error;
	bool tls = relay->ssl_mode == SMTP_CLIENT_SSL_MODE_STARTTLS;

	if (smtp_reply_is_success(reply)) {
		if (!tls && relay->set.tls == BAG_TLS_MAY && !relay->tried_tls &&
		    (smtp_client_connection_get_capabilities(relay->conn) &
		     SMTP_CAPABILITY_STARTTLS) != 0) {
			/* the EHLO reply offers STARTTLS: start again with
			   it (this session ends with QUIT) */
			e_debug(relay->event, "%s offers STARTTLS: "
				"reconnecting with it", name);
			relay->tried_tls = TRUE;
			relay->upgraded = TRUE;
			relay->ssl_mode = SMTP_CLIENT_SSL_MODE_STARTTLS;
			bag_smtp_relay_close(relay);
			bag_smtp_relay_connect(relay);
			return;
		}
		if (tls)
			bag_smtp_relay_tls_info(relay);
		else if (relay->set.tls == BAG_TLS_MAY) {
			e_debug(relay->event, "%s: sending in the clear "
				"(bag_tls = may)", name);
		}
		bag_smtp_relay_ready(relay, 1, NULL);
		return;
	}

	if (smtp_reply_is_remote(reply) && !tls) {
		bag_smtp_relay_ready(relay, 0, t_strdup_printf(
			"%s refused the session: %s", name,
			bag_smtp_relay_reply_str(reply)));
		return;
	}
	error = smtp_reply_is_remote(reply) ?
		bag_smtp_relay_reply_str(reply) :
		str_sanitize(t_strarray_join(reply->text_lines, " "),
			     BAG_SMTP_RELAY_MAX_ERROR_LEN);
	if (reply->status == SMTP_CLIENT_COMMAND_ERROR_CONNECT_FAILED &&
	    relay->last_error != NULL && strstr(error, "connect(") == NULL &&
	    strstr(relay->last_error, "connect(") != NULL)
		error = str_sanitize(relay->last_error,
				     BAG_SMTP_RELAY_MAX_ERROR_LEN);
	if (tls && bag_smtp_relay_tls_failed(reply)) {
		if (relay->set.tls == BAG_TLS_MAY && !relay->tried_clear) {
			/* opportunistic: rather in the clear than not */
			if (relay->upgraded) {
				e_info(relay->event, "TLS with %s failed (%s): "
				       "sending in the clear (bag_tls = may)",
				       name, error);
			} else {
				e_warning(relay->event, "%s had TLS last time, "
					  "but now: %s; sending in the clear "
					  "(bag_tls = may)", name, error);
			}
			relay->tried_clear = TRUE;
			relay->ssl_mode = SMTP_CLIENT_SSL_MODE_NONE;
			bag_smtp_relay_close(relay);
			bag_smtp_relay_connect(relay);
			return;
		}
		bag_smtp_relay_ready(relay, 0, t_strdup_printf(
			"%s: TLS is required (bag_tls = %s), but: %s", name,
			bag_tls_mode_name(relay->set.tls), error));
		return;
	}
	if (!smtp_reply_is_remote(reply) && strstr(error, "connect(") == NULL)
		error = t_strdup_printf("connect(%s) failed: %s", name, error);
	bag_smtp_relay_ready(relay, -1, error);
}

static void bag_smtp_relay_connect(struct bag_smtp_relay *relay)
{
	i_assert(relay->conn == NULL);

	i_free(relay->last_error);
	relay->conn = smtp_client_connection_create(
		relay->client, SMTP_PROTOCOL_SMTP, relay->set.host,
		relay->set.port, relay->ssl_mode, NULL);
	smtp_client_connection_connect(relay->conn,
		(smtp_client_command_callback_t *)bag_smtp_relay_login_cb,
		relay);
}

/*
 * Transactions
 */

static void bag_smtp_relay_send_finish(struct bag_smtp_relay *relay)
{
	bag_smtp_sender_callback_t *callback = relay->send_callback;
	struct smtp_reply *data_reply = &relay->result->data_reply;
	const char *error = NULL;
	unsigned int i;

	timeout_remove(&relay->to_send_failed);
	relay->send_callback = NULL;
	relay->trans = NULL;
	if (callback == NULL) {
		/* aborted: lib-smtp finishes the transaction it destroys */
		return;
	}
	/* the session can't go on after a reply that wasn't the server's
	   (a lost connection, a timeout), or once the server said it is
	   closing the connection */
	if (relay->conn == NULL ||
	    smtp_client_connection_get_state(relay->conn) ==
	    SMTP_CLIENT_CONNECTION_STATE_DISCONNECTED)
		relay->broken = TRUE;
	for (i = 0; i < relay->rcpt_count && !relay->broken; i++) {
		const struct smtp_reply *reply = &relay->result->rcpt_replies[i];

		if (reply->status != 0 && !smtp_reply_is_remote(reply))
			relay->broken = TRUE;
	}
	if ((relay->result->mail_reply.status != 0 &&
	     !smtp_reply_is_remote(&relay->result->mail_reply)) ||
	    (data_reply->status != 0 && !smtp_reply_is_remote(data_reply)))
		relay->broken = TRUE;
	if (relay->broken) {
		const struct smtp_reply *reply =
			!smtp_reply_is_remote(data_reply) &&
			data_reply->status != 0 ? data_reply :
			&relay->result->mail_reply;
		unsigned int i;

		for (i = 0; i < relay->rcpt_count; i++) {
			if (relay->result->rcpt_replies[i].status != 0 &&
			    !smtp_reply_is_remote(
				&relay->result->rcpt_replies[i]))
				reply = &relay->result->rcpt_replies[i];
		}
		error = reply->status == 0 || smtp_reply_is_remote(reply) ?
			t_strdup_printf("Connection to %s lost",
					bag_smtp_relay_name(relay)) :
			t_strdup_printf("%s: %s", bag_smtp_relay_name(relay),
				str_sanitize(t_strarray_join(
					reply->text_lines, " "),
					BAG_SMTP_RELAY_MAX_ERROR_LEN));
	}
	callback(relay->result, error, relay->send_context);
}

static void
bag_smtp_relay_trans_finished(struct bag_smtp_relay *relay)
{
	bag_smtp_relay_send_finish(relay);
}

static void
bag_smtp_relay_mail_cb(const struct smtp_reply *reply,
		       struct bag_smtp_relay *relay)
{
	smtp_reply_copy(relay->trans_pool, &relay->result->mail_reply, reply);
}

static void
bag_smtp_relay_rcpt_cb(const struct smtp_reply *reply,
		       struct bag_smtp_relay_rcpt *rcpt)
{
	struct bag_smtp_relay *relay = rcpt->relay;

	/* a refused recipient's last word; an accepted one gets the reply
	   to the message */
	if (!smtp_reply_is_success(reply)) {
		smtp_reply_copy(relay->trans_pool,
				&relay->result->rcpt_replies[rcpt->idx],
				reply);
	}
}

static void
bag_smtp_relay_rcpt_data_cb(const struct smtp_reply *reply,
			    struct bag_smtp_relay_rcpt *rcpt)
{
	struct bag_smtp_relay *relay = rcpt->relay;

	smtp_reply_copy(relay->trans_pool,
			&relay->result->rcpt_replies[rcpt->idx], reply);
}

static void
bag_smtp_relay_data_cb(const struct smtp_reply *reply,
		       struct bag_smtp_relay *relay)
{
	smtp_reply_copy(relay->trans_pool, &relay->result->data_reply, reply);
}

static void bag_smtp_relay_send_failed(struct bag_smtp_relay *relay)
{
	bag_smtp_sender_callback_t *callback = relay->send_callback;

	timeout_remove(&relay->to_send_failed);
	relay->send_callback = NULL;
	callback(NULL, t_strdup_printf("The session with %s has ended",
				       bag_smtp_relay_name(relay)),
		 relay->send_context);
}

static void
bag_smtp_relay_send(struct bag_smtp_sender *sender, pool_t pool,
		    const struct smtp_address *mail_from,
		    const struct smtp_params_mail *mail_params,
		    const struct smtp_address *const *rcpts,
		    const struct smtp_params_rcpt *const *rcpt_params,
		    unsigned int rcpt_count, struct istream *message,
		    bag_smtp_sender_callback_t *callback, void *context)
{
	struct bag_smtp_relay *relay =
		container_of(sender, struct bag_smtp_relay, sender);
	struct smtp_params_mail mparams;
	struct smtp_params_rcpt *rparams;
	enum smtp_capability caps;
	unsigned int i;

	i_assert(relay->send_callback == NULL);
	i_assert(rcpt_count > 0);

	relay->send_callback = callback;
	relay->send_context = context;
	relay->trans_pool = pool;
	relay->rcpt_count = rcpt_count;
	relay->result = p_new(pool, struct bag_smtp_send_result, 1);
	relay->result->rcpt_replies =
		p_new(pool, struct smtp_reply, rcpt_count);
	if (relay->broken || relay->conn == NULL) {
		relay->to_send_failed = timeout_add_short(
			0, bag_smtp_relay_send_failed, relay);
		return;
	}

	caps = smtp_client_connection_get_capabilities(relay->conn);
	i_zero(&mparams);
	if (mail_params != NULL)
		bag_smtp_params_mail_for(&mparams, mail_params, caps);
	relay->trans = smtp_client_transaction_create(
		relay->conn, mail_from, &mparams, 0,
		bag_smtp_relay_trans_finished, relay);
	smtp_client_transaction_set_event(relay->trans, relay->event);
	smtp_client_transaction_start(relay->trans, bag_smtp_relay_mail_cb,
				      relay);
	relay->rcpts = p_new(pool, struct bag_smtp_relay_rcpt, rcpt_count);
	for (i = 0; i < rcpt_count; i++) {
		relay->rcpts[i].relay = relay;
		relay->rcpts[i].idx = i;
		rparams = NULL;
		if (rcpt_params != NULL && rcpt_params[i] != NULL) {
			rparams = p_new(pool, struct smtp_params_rcpt, 1);
			bag_smtp_params_rcpt_for(rparams, rcpt_params[i]);
		}
		(void)smtp_client_transaction_add_rcpt(relay->trans, rcpts[i],
			rparams, bag_smtp_relay_rcpt_cb,
			bag_smtp_relay_rcpt_data_cb, &relay->rcpts[i]);
	}
	smtp_client_transaction_send(relay->trans, message,
				     bag_smtp_relay_data_cb, relay);
}

static void bag_smtp_relay_abort(struct bag_smtp_sender *sender)
{
	struct bag_smtp_relay *relay =
		container_of(sender, struct bag_smtp_relay, sender);

	relay->send_callback = NULL;
	timeout_remove(&relay->to_send_failed);
	if (relay->trans != NULL)
		smtp_client_transaction_destroy(&relay->trans);
	relay->broken = TRUE;
}

static const struct bag_smtp_sender_vfuncs bag_smtp_relay_sender_vfuncs = {
	.send = bag_smtp_relay_send,
	.abort = bag_smtp_relay_abort,
};

/*
 * Public API
 */

#undef bag_smtp_relay_start
struct bag_smtp_relay *
bag_smtp_relay_start(const struct bag_smtp_relay_settings *set,
		     bag_smtp_relay_callback_t *callback, void *context)
{
	struct bag_smtp_relay *relay;
	struct smtp_client_settings smtp_set;
	pool_t pool;

	i_assert(set->tls != BAG_TLS_DEFAULT);
	i_assert(set->timeout_msecs > 0);

	pool = pool_alloconly_create("bag smtp relay", 1024);
	relay = p_new(pool, struct bag_smtp_relay, 1);
	relay->pool = pool;
	relay->sender.v = &bag_smtp_relay_sender_vfuncs;
	relay->set = *set;
	relay->set.host = p_strdup(pool, set->host);
	relay->set.my_hostname = p_strdup(pool, set->my_hostname);
	relay->set.ca_file = p_strdup(pool, set->ca_file);
	relay->set.ca_dir = p_strdup(pool, set->ca_dir);
	relay->callback = callback;
	relay->context = context;
	relay->event = event_create(set->event_parent);
	event_set_log_message_callback(relay->event,
				       bag_smtp_relay_log_message, relay);

	relay->ssl_set.ca_file = relay->set.ca_file;
	relay->ssl_set.ca_dir = relay->set.ca_dir;
	if (set->tls == BAG_TLS_VERIFY) {
		relay->ssl_set.verify_remote_cert = TRUE;
		relay->ssl_set.verbose_invalid_cert = TRUE;
	} else {
		/* opportunistic and encrypt: anyone's certificate */
		relay->ssl_set.allow_invalid_cert = TRUE;
	}

	i_zero(&smtp_set);
	smtp_set.my_hostname = relay->set.my_hostname;
	smtp_set.ssl = &relay->ssl_set;
	smtp_set.connect_timeout_msecs = set->timeout_msecs;
	smtp_set.command_timeout_msecs = set->timeout_msecs;
	/* the errors of local failures say what happened */
	smtp_set.verbose_user_errors = TRUE;
	smtp_set.event_parent = relay->event;
	relay->client = smtp_client_init(&smtp_set);

	relay->ssl_mode = set->tls != BAG_TLS_MAY || set->tls_last ?
		SMTP_CLIENT_SSL_MODE_STARTTLS : SMTP_CLIENT_SSL_MODE_NONE;
	relay->tried_tls = relay->ssl_mode == SMTP_CLIENT_SSL_MODE_STARTTLS;
	bag_smtp_relay_connect(relay);
	return relay;
}

struct bag_smtp_sender *bag_smtp_relay_get_sender(struct bag_smtp_relay *relay)
{
	return &relay->sender;
}

bool bag_smtp_relay_get_tls(struct bag_smtp_relay *relay,
			    const char **protocol_r, const char **cipher_r)
{
	if (relay->tls_protocol == NULL)
		return FALSE;
	*protocol_r = relay->tls_protocol;
	*cipher_r = relay->tls_cipher;
	return TRUE;
}

void bag_smtp_relay_destroy(struct bag_smtp_relay **_relay)
{
	struct bag_smtp_relay *relay = *_relay;

	if (relay == NULL)
		return;
	*_relay = NULL;

	relay->callback = NULL;
	relay->send_callback = NULL;
	timeout_remove(&relay->to_callback);
	timeout_remove(&relay->to_send_failed);
	if (relay->trans != NULL)
		smtp_client_transaction_destroy(&relay->trans);
	bag_smtp_relay_close(relay);
	smtp_client_deinit(&relay->client);
	event_unref(&relay->event);
	i_free(relay->ready_error);
	i_free(relay->last_error);
	i_free(relay->tls_protocol);
	i_free(relay->tls_cipher);
	pool_unref(&relay->pool);
}
