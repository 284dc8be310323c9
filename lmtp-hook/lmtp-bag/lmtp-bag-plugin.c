/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* The LMTP half of Mail Bagging. A recipient in a bagged domain needs no
   Dovecot user: RCPT TO accepts it (or refuses it with 550 5.1.1 when the
   bag has a recipient list that doesn't name it), and after DATA the
   message is stored once per transaction and domain in the INBOX of the
   domain's bag user, with its envelope (MAIL FROM and every recipient of
   the domain, with their parameters) as its first header lines. Nothing
   is relayed here: the bag service sends the bag on when the customer's
   MTA asks for it. Other recipients of the transaction are delivered as
   usual. */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "str-sanitize.h"
#include "ioloop.h"
#include "istream.h"
#include "smtp-address.h"
#include "smtp-params.h"
#include "smtp-server.h"
#include "mail-user.h"
#include "mail-storage.h"
#include "raw-storage.h"
#include "lda-settings.h"
#include "lmtp-common.h"
#include "lmtp-client.h"
#include "lmtp-recipient.h"
#include "lmtp-settings.h"
#include "mirror-address.h"
#include "mirror-registry.h"
#include "bag-registry.h"
#include "registry-lock.h"
#include "bag-envelope.h"
#include "bag-usage.h"
#include "mirror-schedule.h"
#include "mirror-copy.h"
#include "mirror-event.h"
#include "mirror-setting.h"
#include "lmtp-dsn.h"

/* how long a delivery waits for the registry lock to make a POP3 box */
#define LMTP_BAG_LOCK_TIMEOUT_MSECS (10*1000)

#define LMTP_BAG_CONTEXT_REQUIRE(obj) \
	MODULE_CONTEXT_REQUIRE(obj, lmtp_bag_client_module)
#define LMTP_BAG_RCPT_CONTEXT(obj) \
	MODULE_CONTEXT(obj, lmtp_bag_rcpt_module)

struct lmtp_bag_client {
	union lmtp_module_context module_ctx;
	struct client *client;
	struct event *event;
	struct registry *registry;
	/* bag users are opened once per connection and fsynced */
	struct mirror_copier *copier;
	const char *delimiters;
	/* monthly usage: its limits and the zone its months are in */
	struct bag_usage_limits limits;
	const char *timezone;
	/* the month being counted (empty until the first message) */
	struct mirror_month month;

	/* the bag definitions read in the current transaction (from its
	   pool) */
	struct smtp_server_transaction *trans;
	ARRAY(struct bag_def *) defs;
};

struct lmtp_bag_rcpt {
	union lmtp_recipient_module_context module_ctx;
	const struct bag_def *def;
};

/* the recipients of one domain in one transaction */
struct lmtp_bag_group {
	const struct bag_def *def;
	ARRAY(struct smtp_server_recipient *) rcpts;
};
ARRAY_DEFINE_TYPE(lmtp_bag_group, struct lmtp_bag_group);

const char *lmtp_bag_plugin_version = DOVECOT_ABI_VERSION;
const char lmtp_bag_plugin_binary_dependency[] = "lmtp";

static lmtp_client_created_func_t *next_hook_client_created;

static MODULE_CONTEXT_DEFINE_INIT(lmtp_bag_client_module,
				  &lmtp_module_register);
static MODULE_CONTEXT_DEFINE_INIT(lmtp_bag_rcpt_module,
				  &lmtp_recipient_module_register);

/* The bag of domain, read once per transaction. 1 found, 0 not bagged,
   -1 error. */
static int
lmtp_bag_lookup(struct lmtp_bag_client *bclient,
		struct smtp_server_transaction *trans, const char *domain,
		const struct bag_def **def_r, const char **error_r)
{
	struct bag_def *def;
	int ret;

	if (bclient->trans != trans) {
		bclient->trans = trans;
		p_array_init(&bclient->defs, trans->pool, 2);
	}
	array_foreach_elem(&bclient->defs, def) {
		if (strcmp(def->domain, domain) == 0) {
			*def_r = def;
			return 1;
		}
	}
	def = p_new(trans->pool, struct bag_def, 1);
	ret = bag_registry_get(bclient->registry, domain, trans->pool, def,
			       error_r);
	if (ret <= 0)
		return ret;
	array_push_back(&bclient->defs, &def);
	*def_r = def;
	return 1;
}

/* Whether the domain's recipient list names the recipient, as given or
   without its detail. 1 yes, 0 no, -1 error. */
static int
lmtp_bag_rcpt_listed(struct lmtp_bag_client *bclient,
		     const struct bag_def *def,
		     const struct smtp_address *path, const char **error_r)
{
	const char *addr, *plain, *domain;
	int ret;

	addr = t_strconcat(t_str_lcase(path->localpart), "@", def->domain,
			   NULL);
	ret = bag_registry_rcpt_lookup(bclient->registry, def->domain, addr,
				       error_r);
	if (ret != 0)
		return ret;
	if (!mirror_address_keys(path->localpart, path->domain,
				 bclient->delimiters, &plain, &domain) ||
	    strcmp(plain, addr) == 0)
		return 0;
	return bag_registry_rcpt_lookup(bclient->registry, def->domain, plain,
					error_r);
}

static int
lmtp_bag_cmd_rcpt(struct client *client, struct smtp_server_cmd_ctx *cmd,
		  struct lmtp_recipient *lrcpt)
{
	struct lmtp_bag_client *bclient = LMTP_BAG_CONTEXT_REQUIRE(client);
	struct smtp_server_recipient *rcpt = lrcpt->rcpt;
	/* rcpt->trans is set only once the recipient is approved */
	struct smtp_server_transaction *trans =
		smtp_server_connection_get_transaction(rcpt->conn);
	struct lmtp_bag_rcpt *brcpt;
	struct bag_envelope_rcpt envrcpt;
	const struct bag_def *def;
	const char *domain, *error;
	int ret;

	if (rcpt->path->domain == NULL)
		return bclient->module_ctx.super.cmd_rcpt(client, cmd, lrcpt);
	domain = t_str_lcase(rcpt->path->domain);
	ret = lmtp_bag_lookup(bclient, trans, domain, &def, &error);
	if (ret >= 0 && registry_failure_end())
		e_info(bclient->event, "Bags can be looked up again");
	if (ret == 0)
		return bclient->module_ctx.super.cmd_rcpt(client, cmd, lrcpt);
	if (ret > 0 && def->recipient_list) {
		ret = lmtp_bag_rcpt_listed(bclient, def, rcpt->path, &error);
		if (ret == 0) {
			e_debug(rcpt->event, "bag: %s is not in the "
				"recipient list of %s",
				smtp_address_encode(rcpt->path), domain);
			smtp_server_recipient_reply(rcpt, 550, "5.1.1",
				"<%s>: Recipient address rejected: "
				"User unknown",
				smtp_address_encode(rcpt->path));
			return -1;
		}
	}
	if (ret < 0) {
		/* once for a run of failures, not for every recipient */
		if (registry_failure_begin()) {
			e_error(bclient->event, "Can't look up the bag of "
				"%s: %s (until it can, every recipient gets "
				"451; logged once)",
				str_sanitize(domain, 80), error);
		}
		smtp_server_recipient_reply(rcpt, 451, "4.3.0",
					    "Temporary internal error");
		return -1;
	}
	envrcpt.addr = rcpt->path;
	envrcpt.params = rcpt->params;
	if (!bag_envelope_rcpt_fits(trans->mail_from, &trans->params,
				    &envrcpt, &error)) {
		smtp_server_recipient_reply(rcpt, 501, "5.1.3",
					    "Can't hold this recipient: %s",
					    error);
		return -1;
	}
	brcpt = p_new(rcpt->pool, struct lmtp_bag_rcpt, 1);
	brcpt->def = def;
	MODULE_CONTEXT_SET(lrcpt, lmtp_bag_rcpt_module, brcpt);
	return 1;
}

static struct lmtp_bag_group *
lmtp_bag_group_get(ARRAY_TYPE(lmtp_bag_group) *groups,
		   const struct bag_def *def)
{
	struct lmtp_bag_group *group;

	array_foreach_modifiable(groups, group) {
		if (group->def == def)
			return group;
	}
	group = array_append_space(groups);
	group->def = def;
	t_array_init(&group->rcpts, 4);
	return group;
}

/* Whether the group's recipient idx repeats an earlier one */
static bool
lmtp_bag_group_is_dup(const struct lmtp_bag_group *group, unsigned int idx)
{
	struct smtp_server_recipient *const *rcpts;
	unsigned int i;

	rcpts = array_idx(&group->rcpts, 0);
	for (i = 0; i < idx; i++) {
		if (smtp_address_equals_icase(rcpts[i]->path,
					      rcpts[idx]->path))
			return TRUE;
	}
	return FALSE;
}

/* The envelope lines and the trace record that start the bagged copy */
static const char *
lmtp_bag_header(struct client *client, struct smtp_server_transaction *trans,
		const struct lmtp_bag_group *group)
{
	ARRAY(struct bag_envelope_rcpt) rcpts;
	struct bag_envelope_rcpt *brcpt;
	struct smtp_server_recipient *rcpt;
	string_t *hdr = t_str_new(512);
	unsigned int i;

	t_array_init(&rcpts, array_count(&group->rcpts));
	for (i = 0; i < array_count(&group->rcpts); i++) {
		if (lmtp_bag_group_is_dup(group, i))
			continue;
		rcpt = array_idx_elem(&group->rcpts, i);
		brcpt = array_append_space(&rcpts);
		brcpt->addr = rcpt->path;
		brcpt->params = rcpt->params;
	}
	bag_envelope_write(hdr, trans->mail_from, &trans->params,
			   array_front(&rcpts), array_count(&rcpts));
	if (client->lmtp_set->lmtp_add_received_header) {
		smtp_server_transaction_write_trace_record(hdr, trans,
			SMTP_SERVER_TRACE_RCPT_TO_ADDRESS_FINAL);
	}
	return str_c(hdr);
}

/* event: the store's, created when it started (the duration of
   bag_store_finished is the store's) */
static void
lmtp_bag_store_finished(struct event *event,
			const struct lmtp_bag_group *group, uoff_t size,
			const char *error)
{
	struct event_passthrough *e =
		event_create_passthrough(event)->
		set_name("bag_store_finished")->
		add_str("domain", group->def->domain)->
		add_str("bag_user", group->def->user)->
		add_int("recipients", array_count(&group->rcpts))->
		add_int("size", size);

	if (error == NULL) {
		e_debug(e->event(), "Bagged %"PRIuUOFF_T" bytes for %u "
			"recipients of %s", size, array_count(&group->rcpts),
			group->def->domain);
	} else {
		e->add_str("error", error);
		e_error(e->event(), "Bagging for %s failed: %s",
			group->def->domain, error);
	}
}

/* Count the message in the domain's month; say so when it takes the month
   past a limit (mail is never refused for it). */
static void
lmtp_bag_usage_count(struct lmtp_bag_client *bclient, const char *domain,
		     uoff_t size)
{
	const struct bag_usage_limits *limits = &bclient->limits;
	const char *error;
	uint64_t messages, bytes;
	enum bag_usage_crossed crossed;

	if (!mirror_month_contains(&bclient->month, ioloop_time)) {
		mirror_local_month_get(bclient->timezone, ioloop_time,
				       &bclient->month);
	}
	if (bag_registry_usage_add(bclient->registry, domain,
				   bclient->month.name, size,
				   &messages, &bytes, &error) < 0) {
		e_error(bclient->event, "Can't count the usage of %s: %s",
			domain, error);
		return;
	}
	crossed = bag_usage_crossed(limits, messages == 0 ? 0 : messages - 1,
				    bytes < size ? 0 : bytes - size,
				    messages, bytes);
	if (crossed == BAG_USAGE_CROSSED_NONE)
		return;
	/* a moment, not a span: an event of its own, not the connection's
	   (whose age would be its duration) */
	struct event *event = event_create(bclient->event);
	struct event_passthrough *e =
		event_create_passthrough(event)->
		set_name("bag_usage_limit_crossed")->
		add_str("domain", domain)->
		add_str("month", bclient->month.name)->
		add_str("limit", (crossed & BAG_USAGE_CROSSED_MESSAGES) != 0 ?
			"messages" : "bytes")->
		add_int("messages", messages)->
		add_int("bytes", bytes)->
		add_int("tiers", bag_usage_tiers(limits, messages, bytes))->
		add_int("charge", bag_usage_charge(limits, messages, bytes));
	e_warning(e->event(), "%s went past its monthly limit of %s in %s: "
		  "%"PRIu64" messages, %"PRIu64" bytes so far",
		  domain, (crossed & BAG_USAGE_CROSSED_MESSAGES) != 0 ?
		  t_strdup_printf("%"PRIu64" messages", limits->messages) :
		  t_strdup_printf("%"PRIu64" bytes", limits->bytes),
		  bclient->month.name, messages, bytes);
	event_unref(&event);
}

/* The POP3 box of a recipient of a bag with a box per account, created
   (without a password: the administrator gives it one) on its first
   mail. */
static int
lmtp_bag_pop3_box(struct lmtp_bag_client *bclient, const struct bag_def *def,
		  const struct smtp_address *path, const char **user_r,
		  const char **error_r)
{
	const char *addr, *domain, *user;
	int ret;

	if (!mirror_address_keys(path->localpart, path->domain,
				 bclient->delimiters, &addr, &domain)) {
		*error_r = "not an address a box can be made for";
		return -1;
	}
	ret = bag_registry_box_get(bclient->registry, def->domain, addr,
				   &user, error_r);
	if (ret < 0)
		return -1;
	if (ret == 0) {
		/* the list of boxes is read and written back: under the
		   registry's lock, and looked up again in it */
		if (registry_lock(bclient->registry,
				  LMTP_BAG_LOCK_TIMEOUT_MSECS, error_r) < 0)
			return -1;
		ret = bag_registry_box_get(bclient->registry, def->domain,
					   addr, &user, error_r);
		if (ret == 0) {
			user = bag_box_user_name(addr);
			ret = bag_registry_box_add(bclient->registry,
						   def->domain, addr, user,
						   NULL, error_r);
			if (ret > 0) {
				e_info(bclient->event, "POP3 box %s created "
				       "for %s", user, addr);
			}
		}
		registry_unlock(bclient->registry);
		if (ret < 0)
			return -1;
	}
	*user_r = t_strdup(user);
	return 0;
}

/* A POP3 connector bag: one copy per recipient, saying whom it is for,
   so that a multidrop client routes Bcc and list recipients right. */
static void
lmtp_bag_store_pop3(struct client *client, struct lmtp_bag_client *bclient,
		    struct smtp_server_transaction *trans, struct mail *mail,
		    uoff_t data_size, const struct lmtp_bag_group *group)
{
	struct smtp_server_recipient *rcpt;
	struct mirror_copy_target target;
	const char *addr, *error;
	string_t *hdr = t_str_new(256);
	struct event *event = event_create(bclient->event);
	unsigned int i, stored = 0;
	int ret;

	for (i = 0; i < array_count(&group->rcpts); i++) {
		rcpt = array_idx_elem(&group->rcpts, i);
		if (lmtp_bag_group_is_dup(group, i)) {
			smtp_server_recipient_reply(rcpt, 250, "2.0.0",
				"Held for %s", group->def->domain);
			continue;
		}
		i_zero(&target);
		target.storage = group->def->user;
		ret = !group->def->pop3_per_account ? 0 :
			lmtp_bag_pop3_box(bclient, group->def, rcpt->path,
					  &target.storage, &error);
		if (ret == 0) {
			addr = smtp_address_encode(rcpt->path);
			str_truncate(hdr, 0);
			str_printfa(hdr, "Return-Path: <%s>\r\n"
				    "Delivered-To: %s\r\n"
				    "X-Envelope-To: %s\r\n",
				    smtp_address_encode(trans->mail_from),
				    addr, addr);
			if (client->lmtp_set->lmtp_add_received_header) {
				smtp_server_transaction_write_trace_record(
					hdr, trans,
					SMTP_SERVER_TRACE_RCPT_TO_ADDRESS_NONE);
			}
			target.header = str_c(hdr);
			t_array_init(&target.mirror_ids, 1);
			t_array_init(&target.envelope_to, 1);
			ret = mirror_copier_copy(bclient->copier, mail,
						 &target, 1, TRUE, event,
						 &error);
		}
		if (ret < 0) {
			e_error(bclient->event, "POP3 box of %s: %s",
				smtp_address_encode(rcpt->path), error);
			smtp_server_recipient_reply(rcpt, 451, "4.3.0",
				"Temporary internal error");
		} else {
			stored++;
			smtp_server_recipient_reply(rcpt, 250, "2.0.0",
				"Held for %s", group->def->domain);
		}
	}
	lmtp_bag_store_finished(event, group, data_size,
				stored == 0 ? "not stored for any recipient" :
				NULL);
	event_unref(&event);
	/* one message taken in, however many copies */
	if (stored > 0)
		lmtp_bag_usage_count(bclient, group->def->domain, data_size);
}

/* Store the message once for each group and reply to its recipients. */
static void
lmtp_bag_store(struct client *client, struct lmtp_bag_client *bclient,
	       struct smtp_server_transaction *trans, struct mail *mail,
	       uoff_t data_size, const ARRAY_TYPE(lmtp_bag_group) *groups)
{
	const struct lmtp_bag_group *group;
	struct smtp_server_recipient *rcpt;
	struct mirror_copy_target target;
	struct event *event;
	const char *error;
	int ret;

	array_foreach(groups, group) {
		if ((group->def->modes & BAG_MODE_POP3) != 0) {
			lmtp_bag_store_pop3(client, bclient, trans, mail,
					    data_size, group);
			continue;
		}
		event = event_create(bclient->event);
		i_zero(&target);
		target.storage = group->def->user;
		target.header = lmtp_bag_header(client, trans, group);
		t_array_init(&target.mirror_ids, 1);
		t_array_init(&target.envelope_to, 1);
		ret = mirror_copier_copy(bclient->copier, mail, &target, 1,
					 TRUE, event, &error);
		lmtp_bag_store_finished(event, group,
					data_size + strlen(target.header),
					ret < 0 ? error : NULL);
		event_unref(&event);
		if (ret == 0) {
			bag_registry_count_add(bclient->registry,
					       group->def->domain, 1,
					       bclient->event);
			lmtp_bag_usage_count(bclient, group->def->domain,
					     data_size);
		}
		array_foreach_elem(&group->rcpts, rcpt) {
			if (ret < 0) {
				smtp_server_recipient_reply(rcpt, 451, "4.3.0",
					"Temporary internal error");
			} else {
				/* LMTP puts the recipient first itself */
				smtp_server_recipient_reply(rcpt, 250, "2.0.0",
					"Held for %s", group->def->domain);
			}
		}
	}
}

static int
lmtp_bag_cmd_data(struct client *client, struct smtp_server_cmd_ctx *cmd,
		  struct smtp_server_transaction *trans,
		  struct istream *data_input, uoff_t data_size)
{
	struct lmtp_bag_client *bclient = LMTP_BAG_CONTEXT_REQUIRE(client);
	ARRAY_TYPE(lmtp_bag_group) groups;
	struct lmtp_bag_group *group;
	struct smtp_server_recipient *rcpt;
	struct lmtp_recipient *lrcpt;
	struct lmtp_bag_rcpt *brcpt;
	struct mailbox *box;
	struct mailbox_transaction_context *mtrans;
	struct mail *mail;
	unsigned int other = 0;

	t_array_init(&groups, 2);
	array_foreach_elem(&trans->rcpt_to, rcpt) {
		lrcpt = rcpt->context;
		brcpt = LMTP_BAG_RCPT_CONTEXT(lrcpt);
		if (brcpt == NULL) {
			other++;
			continue;
		}
		group = lmtp_bag_group_get(&groups, brcpt->def);
		array_push_back(&group->rcpts, &rcpt);
	}
	if (array_count(&groups) == 0)
		return bclient->module_ctx.super.cmd_data(client, cmd, trans,
							  data_input,
							  data_size);

	if (raw_mailbox_alloc_stream(client->raw_mail_user, data_input,
				     (time_t)-1,
				     smtp_address_encode(trans->mail_from),
				     &box) < 0) {
		e_error(bclient->event, "Can't open the message as raw: %s",
			mailbox_get_last_internal_error(box, NULL));
		mailbox_free(&box);
		array_foreach_modifiable(&groups, group) {
			array_foreach_elem(&group->rcpts, rcpt) {
				smtp_server_recipient_reply(rcpt, 451, "4.3.0",
					"Temporary internal error");
			}
		}
	} else {
		mtrans = mailbox_transaction_begin(box, 0, "bag store");
		mail = mail_alloc(mtrans, 0, NULL);
		mail_set_seq(mail, 1);
		lmtp_bag_store(client, bclient, trans, mail, data_size,
			       &groups);
		mail_free(&mail);
		mailbox_transaction_rollback(&mtrans);
		mailbox_free(&box);
	}
	if (other == 0)
		return 0;
	/* the rest are delivered (or proxied) as usual */
	i_stream_seek(data_input, 0);
	return bclient->module_ctx.super.cmd_data(client, cmd, trans,
						  data_input, data_size);
}

/* The success notifications of the recipients delivered here, which
   lmtp_mirror sends when it is loaded too (lmtp-dsn.h). */
static int
lmtp_bag_local_deliver(struct client *client, struct lmtp_recipient *lrcpt,
		       struct smtp_server_cmd_ctx *cmd,
		       struct smtp_server_transaction *trans,
		       struct lmtp_local_deliver_context *lldctx)
{
	struct lmtp_bag_client *bclient = LMTP_BAG_CONTEXT_REQUIRE(client);
	int ret;

	ret = bclient->module_ctx.super.local_deliver(client, lrcpt, cmd,
						      trans, lldctx);
	if (ret == 0) {
		lmtp_dsn_success(trans, lrcpt->rcpt, lldctx,
				 BAG_DSN_ACTION_DELIVERED, bclient->event);
	}
	return ret;
}

static void
lmtp_bag_trans_free(struct client *client,
		    struct smtp_server_transaction *trans)
{
	struct lmtp_bag_client *bclient = LMTP_BAG_CONTEXT_REQUIRE(client);

	/* the definitions live in the transaction's pool */
	if (bclient->trans == trans)
		bclient->trans = NULL;
	bclient->module_ctx.super.trans_free(client, trans);
}

static void lmtp_bag_client_destroy(struct client *client)
{
	struct lmtp_bag_client *bclient = LMTP_BAG_CONTEXT_REQUIRE(client);

	mirror_copier_deinit(&bclient->copier);
	registry_deinit(&bclient->registry);
	event_unref(&bclient->event);
	bclient->module_ctx.super.destroy(client);
}

static void
lmtp_bag_usage_settings(struct lmtp_bag_client *bclient, struct mail_user *user)
{
	struct mirror_schedule sched;
	const char *error;

	if (bag_usage_limits_parse(
			mail_user_plugin_getenv(user, "bag_usage_messages"),
			mail_user_plugin_getenv(user, "bag_usage_bytes"),
			mail_user_plugin_getenv(user, "bag_usage_tier_price"),
			&bclient->limits, &error) < 0) {
		e_error(bclient->event, "%s: using the defaults", error);
		bag_usage_limits_default(&bclient->limits);
	}
	if (mirror_schedule_parse(NULL,
			mail_user_plugin_getenv(user, "bag_usage_timezone"),
			bclient->client->pool, &sched, &error) < 0) {
		e_error(bclient->event, "bag_usage_timezone: %s: using %s",
			error, MIRROR_SCHEDULE_DEFAULT_TIMEZONE);
		bclient->timezone = MIRROR_SCHEDULE_DEFAULT_TIMEZONE;
	} else {
		bclient->timezone = sched.timezone;
	}
}

static void lmtp_bag_client_created(struct client **_client)
{
	struct client *client = *_client;
	struct mail_user *set_user = client->raw_mail_user;
	struct lmtp_bag_client *bclient;
	struct registry *registry;
	struct event *event;
	const char *dict_uri, *error;

	if (next_hook_client_created != NULL)
		next_hook_client_created(_client);

	event = event_create(client->event);
	event_add_category(event, &event_category_mirror);
	event_set_append_log_prefix(event, "bag: ");

	if (!mirror_setting_bool(set_user, event, "bag_enabled", TRUE)) {
		e_debug(event, "bag_enabled=no: bagging disabled");
		event_unref(&event);
		return;
	}
	/* bags live in the registry: off unless it is configured */
	dict_uri = mail_user_plugin_getenv(set_user, "mirror_dict");
	if (dict_uri == NULL || *dict_uri == '\0') {
		e_debug(event, "mirror_dict not set: bagging disabled");
		event_unref(&event);
		return;
	}
	if (registry_init(dict_uri, base_dir, event, &registry,
			  &error) < 0) {
		e_error(event, "%s: bagging disabled", error);
		event_unref(&event);
		return;
	}

	bclient = p_new(client->pool, struct lmtp_bag_client, 1);
	bclient->client = client;
	bclient->registry = registry;
	bclient->event = event;
	/* a held message must survive a crash: always fsynced, as the bag
	   user's own mail_fsync says */
	bclient->copier = mirror_copier_init(storage_service, NULL,
					     client->event, TRUE);
	bclient->delimiters =
		p_strdup(client->pool,
			 client->unexpanded_lda_set->recipient_delimiter);
	lmtp_bag_usage_settings(bclient, set_user);

	/* The envelope is kept with its DSN parameters (ENVID, RET, NOTIFY;
	   LMTP accepts ORCPT already), so that a bounce from the customer's
	   MTA weeks later still honours them: the MTA sends them only to a
	   server that offers DSN. */
	lmtp_dsn_offer(client);

	bclient->module_ctx.super = client->v;
	client->v.cmd_rcpt = lmtp_bag_cmd_rcpt;
	client->v.cmd_data = lmtp_bag_cmd_data;
	client->v.local_deliver = lmtp_bag_local_deliver;
	client->v.trans_free = lmtp_bag_trans_free;
	client->v.destroy = lmtp_bag_client_destroy;
	MODULE_CONTEXT_SET(client, lmtp_bag_client_module, bclient);
}

void lmtp_bag_plugin_init(struct module *module);
void lmtp_bag_plugin_deinit(void);

void lmtp_bag_plugin_init(struct module *module ATTR_UNUSED)
{
	next_hook_client_created =
		lmtp_client_created_hook_set(lmtp_bag_client_created);
}

void lmtp_bag_plugin_deinit(void)
{
	lmtp_client_created_hook_set(next_hook_client_created);
}
