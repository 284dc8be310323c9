/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* doveadm bag add|list|show|remove|password: the bagged domains, their
   bag users and ATRN identities; and what the doveadm bag commands share
   (doveadm-bag.h). */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "str-sanitize.h"
#include "ioloop.h"
#include "strescape.h"
#include "istream.h"
#include "time-util.h"
#include "settings-parser.h"
#include "mail-storage-service.h"
#include "doveadm.h"
#include "doveadm-cmd.h"
#include "doveadm-print.h"
#include "doveadm-settings.h"
#include "mirror-privileges.h"
#include "mirror-registry.h"
#include "bag-registry.h"
#include "bag-usage.h"
#include "mirror-schedule.h"
#include "bag-store.h"
#include "bag-flush.h"
#include "bag-flush-client.h"
#include "doveadm-mirror.h"
#include "doveadm-bag.h"
#include "registry-user.h"
#include "bag-input.h"

#include <sysexits.h>
#include <sodium.h>

#define DOVEADM_BAG_USER_PREFIX "_bag"
/* How many numbered names to try for a bag user */
#define DOVEADM_BAG_MAX_NAME_TRIES 1000

/* _bag@DOMAIN, or _bag-N@DOMAIN if that is taken */
static const char *
doveadm_bag_user_choose(struct registry *reg, const char *domain)
{
	const char *name, *error;
	unsigned int n;
	int ret;

	for (n = 1; n <= DOVEADM_BAG_MAX_NAME_TRIES; n++) {
		name = n == 1 ?
			t_strdup_printf(DOVEADM_BAG_USER_PREFIX"@%s", domain) :
			t_strdup_printf(DOVEADM_BAG_USER_PREFIX"-%u@%s", n,
					domain);
		if (!mirror_storage_is_valid(name, &error)) {
			doveadm_mirror_fail(EX_USAGE, t_strdup_printf(
				"Can't make a bag user for %s: %s", domain,
				error));
			return NULL;
		}
		if ((ret = doveadm_bag_name_free(reg, name)) != 0)
			return ret > 0 ? name : NULL;
	}
	doveadm_mirror_fail(DOVEADM_EX_NOTPOSSIBLE, t_strdup_printf(
		"No free bag user name for %s", domain));
	return NULL;
}

/* The ETRN networks: every -e value, each a comma-separated list */
static bool
doveadm_bag_nets_parse(const char *const *args, struct bag_def *def)
{
	const char *const *nets, *net, *error;

	for (; *args != NULL; args++) {
		for (nets = t_strsplit_spaces(*args, ", "); *nets != NULL;
		     nets++) {
			if (!bag_net_is_valid(*nets, &error)) {
				doveadm_mirror_fail(EX_USAGE, error);
				return FALSE;
			}
			net = t_strdup(*nets);
			array_push_back(&def->etrn_nets, &net);
		}
	}
	if (array_count(&def->etrn_nets) > BAG_NETS_MAX) {
		doveadm_mirror_fail(EX_USAGE, t_strdup_printf(
			"At most %u ETRN networks", BAG_NETS_MAX));
		return FALSE;
	}
	return TRUE;
}

static const char *bag_nets_str(const struct bag_def *def)
{
	string_t *str = t_str_new(64);
	const char *net;

	array_foreach_elem(&def->etrn_nets, net) {
		if (str_len(str) > 0)
			str_append_c(str, ' ');
		str_append(str, net);
	}
	return str_c(str);
}

static void doveadm_bag_print_header(void)
{
	doveadm_print_header_simple("domain");
	doveadm_print_header_simple("user");
	doveadm_print_header_simple("modes");
	doveadm_print_header_simple("etrn_nets");
	doveadm_print_header_simple("host");
	doveadm_print_header_simple("atrn_identity");
	doveadm_print_header_simple("retry_period");
	doveadm_print_header_simple("pop3");
	doveadm_print_header_simple("recipient_list");
	doveadm_print_header_simple("tls");
}

static void doveadm_bag_print(const struct bag_def *def)
{
	doveadm_print(def->domain);
	doveadm_print(def->user);
	doveadm_print(bag_modes_to_str(def->modes));
	doveadm_print(bag_nets_str(def));
	doveadm_print(def->host == NULL ? "" : def->host);
	doveadm_print(def->atrn_identity == NULL ? "" : def->atrn_identity);
	doveadm_print(def->retry_period == 0 ? "" :
		      dec2str(def->retry_period));
	doveadm_print((def->modes & BAG_MODE_POP3) == 0 ? "" :
		      (def->pop3_per_account ? "per-account" : "catch-all"));
	doveadm_print(def->recipient_list ? "yes" : "no");
	/* empty: bag_tls applies */
	doveadm_print(def->tls == BAG_TLS_DEFAULT ? "" :
		      bag_tls_mode_name(def->tls));
}

/* Who pulls the domain with ATRN: an identity of other bags (reused), a
   user the userdb or passdb of the site knows (reused: its password is
   the site's), or a new one that gets a password. Returns 1 if a new one
   is to be created, 0 if it exists, -1 if the command failed. */
static int
doveadm_bag_identity_check(struct registry *reg, const char *identity)
{
	ARRAY_TYPE(const_string) domains;
	const char *error;
	int ret;

	t_array_init(&domains, 4);
	if (bag_registry_identity_domains(reg, identity,
					  pool_datastack_create(), &domains,
					  &error) < 0) {
		doveadm_mirror_fail(EX_TEMPFAIL, error);
		return -1;
	}
	if (array_count(&domains) > 0)
		return 0;
	ret = registry_user_exists(reg, identity, &error);
	if (ret != 0) {
		doveadm_mirror_fail(ret < 0 ? EX_TEMPFAIL :
				    DOVEADM_EX_NOTPOSSIBLE, ret < 0 ? error :
				    t_strdup_printf("%s is a mirror or bag user, "
						    "not an ATRN identity",
						    identity));
		return -1;
	}
	ret = doveadm_mirror_user_exists(identity, &error);
	if (ret < 0) {
		doveadm_mirror_fail(EX_TEMPFAIL, error);
		return -1;
	}
	return ret > 0 ? 0 : 1;
}

static void cmd_bag_add(struct doveadm_cmd_context *cctx)
{
	struct registry *reg;
	struct bag_def def;
	const char *const *nets = NULL, *host = NULL, *identity = NULL;
	const char *period = NULL, *pop3 = NULL, *tls = NULL;
	const char *domain, *hash, *identity_hash = NULL, *error;
	char *password = NULL, *identity_password = NULL;
	unsigned int secs;
	bool backup = FALSE;
	in_port_t port;
	int ret;

	if ((domain = doveadm_bag_domain_param(cctx)) == NULL)
		return;
	i_zero(&def);
	def.domain = domain;
	t_array_init(&def.etrn_nets, 4);
	(void)doveadm_cmd_param_array(cctx, "etrn-net", &nets);
	(void)doveadm_mirror_param_str(cctx, "host", &host);
	(void)doveadm_mirror_param_str(cctx, "atrn-identity", &identity);
	(void)doveadm_cmd_param_bool(cctx, "backup", &backup);
	(void)doveadm_mirror_param_str(cctx, "retry-period", &period);
	(void)doveadm_mirror_param_str(cctx, "tls", &tls);
	if (doveadm_mirror_param_str(cctx, "pop3", &pop3)) {
		if (nets != NULL || host != NULL || identity != NULL ||
		    backup || period != NULL) {
			doveadm_mirror_fail(EX_USAGE, "A POP3 connector (-P) "
					    "goes with no other mode");
			return;
		}
		if (strcmp(pop3, "per-account") == 0)
			def.pop3_per_account = TRUE;
		else if (strcmp(pop3, "catch-all") != 0) {
			doveadm_mirror_fail(EX_USAGE, t_strdup_printf(
				"Invalid POP3 connector '%s' (catch-all or "
				"per-account)", str_sanitize(pop3, 20)));
			return;
		}
		def.modes |= BAG_MODE_POP3;
	}
	if (host != NULL && nets == NULL && !backup) {
		doveadm_mirror_fail(EX_USAGE, "-h is the MTA of ETRN (-e) or "
				    "of a backup domain (-b)");
		return;
	}
	if ((nets != NULL || backup) && host == NULL) {
		doveadm_mirror_fail(EX_USAGE, "ETRN (-e) and a backup domain "
				    "(-b) need the customer's MTA (-h)");
		return;
	}
	if (host != NULL &&
	    bag_host_parse(host, &def.host, &port, &error) < 0) {
		doveadm_mirror_fail(EX_USAGE, error);
		return;
	}
	def.host = host;
	if (nets != NULL) {
		if (!doveadm_bag_nets_parse(nets, &def))
			return;
		def.modes |= BAG_MODE_ETRN;
	}
	if (period != NULL && !backup) {
		doveadm_mirror_fail(EX_USAGE, "-p is the retry period of a "
				    "backup domain (-b)");
		return;
	}
	if (backup) {
		def.retry_period = BAG_RETRY_PERIOD_DEFAULT_SECS;
		if (period != NULL &&
		    bag_retry_period_parse(period, &secs, &error) < 0) {
			doveadm_mirror_fail(EX_USAGE, error);
			return;
		}
		if (period != NULL)
			def.retry_period = secs;
		def.modes |= BAG_MODE_BACKUP;
	}
	if (identity != NULL) {
		if (!mirror_storage_is_valid(identity, &error)) {
			doveadm_mirror_fail(EX_USAGE, t_strdup_printf(
				"Invalid ATRN identity '%s': %s",
				str_sanitize(identity, 80), error));
			return;
		}
		def.atrn_identity = identity;
		def.modes |= BAG_MODE_ATRN;
	}
	if (tls != NULL) {
		if (host == NULL) {
			doveadm_mirror_fail(EX_USAGE, "-t is the TLS to the "
					    "customer's MTA (-h)");
			return;
		}
		if (bag_tls_mode_parse(tls, TRUE, &def.tls, &error) < 0) {
			doveadm_mirror_fail(EX_USAGE, error);
			return;
		}
	}
	if (def.modes == 0) {
		doveadm_mirror_fail(EX_USAGE, "Give a mode: ETRN (-e NETS "
				    "-h HOST), ATRN (-a IDENTITY), a backup "
				    "domain (-b -h HOST) or a POP3 connector "
				    "(-P catch-all|per-account)");
		return;
	}
	if ((reg = doveadm_mirror_registry_open_locked()) == NULL)
		return;
	def.user = doveadm_bag_user_choose(reg, domain);
	ret = def.user == NULL ? -1 : 0;
	if (ret == 0 && identity != NULL &&
	    (ret = doveadm_bag_identity_check(reg, identity)) > 0) {
		ret = doveadm_mirror_password_new(
			DOVEADM_MIRROR_PASSWORD_CRAM_MD5, &identity_password,
			&identity_hash);
	}
	if (ret >= 0)
		ret = doveadm_mirror_password_new(
			DOVEADM_MIRROR_PASSWORD_ARGON2ID, &password, &hash);
	if (ret >= 0) {
		ret = bag_registry_add(reg, &def, hash, identity_hash, &error);
		if (ret <= 0) {
			doveadm_mirror_fail(ret == 0 ? DOVEADM_EX_NOTPOSSIBLE :
					    EX_TEMPFAIL, error);
		} else {
			doveadm_print_init(DOVEADM_PRINT_TYPE_TABLE);
			doveadm_bag_print_header();
			doveadm_print_header_simple("password");
			doveadm_print_header_simple("atrn_password");
			doveadm_bag_print(&def);
			doveadm_print(password);
			doveadm_print(identity_password == NULL ? "" :
				      identity_password);
		}
	}
	registry_deinit(&reg);
	if (password != NULL)
		sodium_memzero(password, strlen(password));
	if (identity_password != NULL)
		sodium_memzero(identity_password, strlen(identity_password));
}

/* bag set: change the settings of a bag (its TLS mode) */
static void cmd_bag_set(struct doveadm_cmd_context *cctx)
{
	struct registry *reg;
	struct bag_def def;
	const char *domain, *tls = NULL, *error;
	enum bag_tls_mode mode;

	if ((domain = doveadm_bag_domain_param(cctx)) == NULL)
		return;
	if (!doveadm_mirror_param_str(cctx, "tls", &tls)) {
		doveadm_bag_usage(cctx);
		return;
	}
	if (bag_tls_mode_parse(tls, TRUE, &mode, &error) < 0) {
		doveadm_mirror_fail(EX_USAGE, error);
		return;
	}
	/* read, change and write the definition under the registry's lock:
	   a concurrent change of the same bag is not lost */
	if ((reg = doveadm_mirror_registry_open_locked()) == NULL)
		return;
	if (!doveadm_bag_get(reg, domain, &def)) {
		registry_deinit(&reg);
		return;
	}
	if ((def.modes & (BAG_MODE_ETRN | BAG_MODE_BACKUP)) == 0) {
		doveadm_mirror_fail(DOVEADM_EX_NOTPOSSIBLE, t_strdup_printf(
			"%s has no customer's MTA to send to (ETRN or backup)",
			domain));
		registry_deinit(&reg);
		return;
	}
	def.tls = mode;
	if (bag_registry_def_update(reg, &def, &error) < 0) {
		doveadm_mirror_fail(EX_TEMPFAIL, error);
		registry_deinit(&reg);
		return;
	}
	registry_deinit(&reg);
	doveadm_print_init(DOVEADM_PRINT_TYPE_TABLE);
	doveadm_bag_print_header();
	doveadm_bag_print(&def);
}

static void cmd_bag_list(struct doveadm_cmd_context *cctx ATTR_UNUSED)
{
	struct registry *reg;
	ARRAY_TYPE(bag_def) defs;
	const struct bag_def *def;
	const char *error;

	if ((reg = doveadm_mirror_registry_open()) == NULL)
		return;
	t_array_init(&defs, 16);
	if (bag_registry_list(reg, pool_datastack_create(), &defs,
			      &error) < 0) {
		doveadm_mirror_fail(EX_TEMPFAIL, error);
		registry_deinit(&reg);
		return;
	}
	registry_deinit(&reg);
	doveadm_print_init(DOVEADM_PRINT_TYPE_TABLE);
	doveadm_bag_print_header();
	array_foreach(&defs, def)
		doveadm_bag_print(def);
}

/* What waits in the bag of user (the bag user or a POP3 box). It is opened
   as itself: the caller's identity is restored afterwards. */
static int
doveadm_bag_status(const char *user, bool with_size,
		   struct bag_store_status *status_r)
{
	struct mail_storage_service_ctx *service;
	struct mirror_privileges privs;
	struct bag_store *store = NULL;
	const char *error;
	int ret;

	mirror_privileges_get(pool_datastack_create(), &privs);
	service = doveadm_mirror_storage_service_init(bag_store_set_roots);
	ret = bag_store_open(service, user, "doveadm", TRUE, NULL, &store,
			     &error);
	if (ret == 0)
		ret = bag_store_get_status(store, with_size, status_r, &error);
	bag_store_close(&store);
	mail_storage_service_deinit(&service);
	if (mirror_privileges_set(&privs, &error) < 0)
		i_fatal("%s", error);
	if (ret < 0)
		doveadm_mirror_fail(EX_TEMPFAIL, error);
	return ret;
}

/* What waits for a domain: in its bag user and, for a POP3 connector with
   a box per account, in every box (box_users_r: those boxes). */
static int
doveadm_bag_status_all(struct registry *reg, const struct bag_def *def,
		       bool with_size, struct bag_store_status *status_r,
		       ARRAY_TYPE(const_string) *box_users_r)
{
	ARRAY_TYPE(const_string) box_addrs;
	struct bag_store_status box;
	const char *user, *error;

	if (doveadm_bag_status(def->user, with_size, status_r) < 0)
		return -1;
	t_array_init(&box_addrs, 16);
	if (bag_registry_box_list(reg, def->domain, pool_datastack_create(),
				  &box_addrs, box_users_r, &error) < 0) {
		doveadm_mirror_fail(EX_TEMPFAIL, error);
		return -1;
	}
	array_foreach_elem(box_users_r, user) {
		if (doveadm_bag_status(user, with_size, &box) < 0)
			return -1;
		status_r->messages += box.messages;
		status_r->bytes += box.bytes;
		if (box.oldest != 0 &&
		    (status_r->oldest == 0 || box.oldest < status_r->oldest))
			status_r->oldest = box.oldest;
	}
	return 0;
}

static const char *doveadm_bag_time(time_t t)
{
	return t == 0 ? "" : t_strfgmtime("%Y-%m-%dT%H:%M:%SZ", t);
}

static void cmd_bag_show(struct doveadm_cmd_context *cctx)
{
	struct registry *reg;
	struct bag_store_status status;
	struct bag_backup_state backup;
	struct bag_status flush;
	struct bag_def def;
	ARRAY_TYPE(const_string) box_users;
	const char *domain, *error;
	int ret;

	if ((domain = doveadm_bag_domain_param(cctx)) == NULL ||
	    (reg = doveadm_mirror_registry_open()) == NULL)
		return;
	if (!doveadm_bag_get(reg, domain, &def)) {
		registry_deinit(&reg);
		return;
	}
	if (bag_registry_status_get(reg, domain, pool_datastack_create(),
				    &flush, &error) < 0 ||
	    bag_registry_backup_get(reg, domain, &backup, &error) < 0) {
		doveadm_mirror_fail(EX_TEMPFAIL, error);
		registry_deinit(&reg);
		return;
	}
	t_array_init(&box_users, 16);
	ret = doveadm_bag_status_all(reg, &def, TRUE, &status, &box_users);
	registry_deinit(&reg);
	if (ret < 0)
		return;

	doveadm_print_init(DOVEADM_PRINT_TYPE_PAGER);
	doveadm_bag_print_header();
	doveadm_print_header_simple("created");
	doveadm_print_header_simple("messages");
	doveadm_print_header_simple("bytes");
	doveadm_print_header_simple("oldest");
	doveadm_print_header_simple("last_flush");
	doveadm_print_header_simple("last_flush_result");
	doveadm_print_header_simple("delivered");
	doveadm_print_header_simple("deferred");
	doveadm_print_header_simple("bounced");
	doveadm_print_header_simple("last_flush_tls");
	doveadm_print_header_simple("next_retry");
	doveadm_print_header_simple("failed_tries");
	doveadm_bag_print(&def);
	doveadm_print(doveadm_bag_time(def.created));
	doveadm_print_num(status.messages);
	doveadm_print_num(status.bytes);
	doveadm_print(doveadm_bag_time(status.oldest));
	doveadm_print(doveadm_bag_time(flush.time));
	doveadm_print(flush.result == NULL ? "" : flush.result);
	doveadm_print_num(flush.delivered);
	doveadm_print_num(flush.deferred);
	doveadm_print_num(flush.bounced);
	doveadm_print(flush.tls == NULL ? "" : flush.tls);
	doveadm_print(doveadm_bag_time(backup.next));
	doveadm_print_num(backup.failures);
}

/* Delete the mail of a user the suite created for a bag, then its login
   (kept if the mail can't be deleted, so that it can be read and deleted
   later). */
static bool
doveadm_bag_user_purge(struct registry *reg, const char *domain,
		       const char *user)
{
	const char *error;
	bool purged;

	purged = doveadm_mirror_purge_storage(user) == 0;
	if (!purged) {
		doveadm_mirror_fail(EX_TEMPFAIL, t_strdup_printf(
			"%s is no longer bagged, but deleting the mail of %s "
			"failed: its user is kept", domain, user));
	} else if (registry_user_remove(reg, user, &error) < 0) {
		doveadm_mirror_fail(EX_TEMPFAIL, error);
	}
	doveadm_mirror_auth_cache_flush(user);
	return purged;
}

static void cmd_bag_remove(struct doveadm_cmd_context *cctx)
{
	struct registry *reg;
	ARRAY_TYPE(const_string) box_users;
	struct bag_store_status status;
	struct bag_def def;
	const char *domain, *user, *error;
	unsigned int messages;
	bool force = FALSE, purged;
	int ret;

	if ((domain = doveadm_bag_domain_param(cctx)) == NULL)
		return;
	(void)doveadm_cmd_param_bool(cctx, "force", &force);
	if ((reg = doveadm_mirror_registry_open_locked()) == NULL)
		return;
	t_array_init(&box_users, 16);
	if (!doveadm_bag_get(reg, domain, &def) ||
	    doveadm_bag_status_all(reg, &def, FALSE, &status,
				   &box_users) < 0) {
		registry_deinit(&reg);
		return;
	}
	messages = status.messages;
	if (messages > 0 && !force) {
		doveadm_mirror_fail(DOVEADM_EX_NOTPOSSIBLE, t_strdup_printf(
			"%u messages wait in the bag of %s: flush them first, "
			"or remove with -f to delete them", messages,
			domain));
		registry_deinit(&reg);
		return;
	}
	/* no more mail is bagged from here on */
	ret = bag_registry_remove(reg, domain, pool_datastack_create(), &def,
				  &error);
	if (ret <= 0) {
		doveadm_mirror_fail(ret == 0 ? DOVEADM_EX_NOTFOUND :
				    EX_TEMPFAIL, ret == 0 ?
				    t_strdup_printf("%s is not bagged",
						    domain) : error);
		registry_deinit(&reg);
		return;
	}
	/* the bag user and the boxes were the suite's: their mail goes
	   with them */
	purged = doveadm_bag_user_purge(reg, domain, def.user);
	array_foreach_elem(&box_users, user) {
		if (!doveadm_bag_user_purge(reg, domain, user))
			purged = FALSE;
	}
	registry_deinit(&reg);
	doveadm_print_init(DOVEADM_PRINT_TYPE_TABLE);
	doveadm_bag_print_header();
	doveadm_print_header_simple("messages_deleted");
	doveadm_bag_print(&def);
	doveadm_print_num(purged ? messages : 0);
}

/* bag password -r ADDRESS: a new password for the POP3 box of a recipient
   (a bag with a box per account), creating the box if it has none yet. */
static void cmd_bag_password_box(const char *name)
{
	struct registry *reg;
	struct bag_def def;
	const char *at, *domain, *addr, *user, *hash, *error;
	char *password;
	int ret;

	if ((at = strrchr(name, '@')) == NULL ||
	    bag_domain_parse(at + 1, &domain, &error) < 0 ||
	    bag_rcpt_parse(name, domain, &addr, &error) < 0) {
		doveadm_mirror_fail(EX_USAGE, at == NULL ? t_strdup_printf(
			"Invalid address '%s'", str_sanitize(name, 64)) :
			error);
		return;
	}
	if ((reg = doveadm_mirror_registry_open_locked()) == NULL)
		return;
	if (!doveadm_bag_get(reg, domain, &def)) {
		registry_deinit(&reg);
		return;
	}
	if (!def.pop3_per_account) {
		doveadm_mirror_fail(DOVEADM_EX_NOTPOSSIBLE, t_strdup_printf(
			"The bag of %s has no box per account", domain));
		registry_deinit(&reg);
		return;
	}
	if (def.recipient_list &&
	    (ret = bag_registry_rcpt_lookup(reg, domain, addr, &error)) <= 0) {
		doveadm_mirror_fail(ret == 0 ? DOVEADM_EX_NOTFOUND :
				    EX_TEMPFAIL, ret == 0 ? t_strdup_printf(
				    "%s is not in the recipient list of %s",
				    addr, domain) : error);
		registry_deinit(&reg);
		return;
	}
	if ((ret = bag_registry_box_get(reg, domain, addr, &user,
					&error)) < 0) {
		doveadm_mirror_fail(EX_TEMPFAIL, error);
		registry_deinit(&reg);
		return;
	}
	if (ret == 0) {
		user = bag_box_user_name(addr);
		if ((ret = doveadm_bag_name_free(reg, user)) <= 0) {
			if (ret == 0) {
				doveadm_mirror_fail(DOVEADM_EX_NOTPOSSIBLE,
					t_strdup_printf("The box name %s of "
							"%s is taken", user,
							addr));
			}
			registry_deinit(&reg);
			return;
		}
		ret = 0;
	}
	if (doveadm_mirror_password_new(DOVEADM_MIRROR_PASSWORD_ARGON2ID,
					&password, &hash) < 0) {
		registry_deinit(&reg);
		return;
	}
	ret = ret == 0 ?
		bag_registry_box_add(reg, domain, addr, user, hash, &error) :
		bag_registry_password_set(reg, user, hash, &error);
	if (ret < 0)
		doveadm_mirror_fail(EX_TEMPFAIL, error);
	else
		doveadm_bag_print_login(user, password);
	sodium_memzero(password, strlen(password));
	registry_deinit(&reg);
}

static void cmd_bag_password(struct doveadm_cmd_context *cctx)
{
	struct registry *reg;
	ARRAY_TYPE(const_string) domains;
	struct bag_def def;
	const char *name, *user, *hash, *error;
	char *password;
	bool identity = FALSE, recipient = FALSE;
	int ret;

	if (!doveadm_mirror_param_str(cctx, "name", &name)) {
		doveadm_bag_usage(cctx);
		return;
	}
	(void)doveadm_cmd_param_bool(cctx, "atrn-identity", &identity);
	(void)doveadm_cmd_param_bool(cctx, "recipient", &recipient);
	if (identity && recipient) {
		doveadm_mirror_fail(EX_USAGE, "-a and -r don't go together");
		return;
	}
	if (recipient) {
		cmd_bag_password_box(name);
		return;
	}
	if (!identity && bag_domain_parse(name, &name, &error) < 0) {
		doveadm_mirror_fail(EX_USAGE, error);
		return;
	}
	if ((reg = doveadm_mirror_registry_open_locked()) == NULL)
		return;
	if (!identity) {
		if (!doveadm_bag_get(reg, name, &def)) {
			registry_deinit(&reg);
			return;
		}
		user = def.user;
	} else {
		/* only an identity the suite created has a password here */
		t_array_init(&domains, 4);
		ret = bag_registry_identity_domains(reg, name,
				pool_datastack_create(), &domains, &error);
		if (ret == 0 && array_count(&domains) > 0) {
			ret = bag_registry_get(reg,
				array_idx_elem(&domains, 0),
				pool_datastack_create(), &def, &error);
			if (ret > 0 && !def.auto_identity) {
				error = t_strdup_printf("%s is a user of the "
					"site: its password is not managed "
					"here", name);
				ret = 0;
			}
		} else if (ret == 0) {
			error = t_strdup_printf("%s is not an ATRN identity",
						name);
		}
		if (ret <= 0) {
			doveadm_mirror_fail(ret == 0 ? DOVEADM_EX_NOTFOUND :
					    EX_TEMPFAIL, error);
			registry_deinit(&reg);
			return;
		}
		user = name;
	}
	if (doveadm_mirror_password_new(identity ?
			DOVEADM_MIRROR_PASSWORD_CRAM_MD5 :
			DOVEADM_MIRROR_PASSWORD_ARGON2ID, &password,
			&hash) < 0) {
		registry_deinit(&reg);
		return;
	}
	if (bag_registry_password_set(reg, user, hash, &error) < 0)
		doveadm_mirror_fail(EX_TEMPFAIL, error);
	else
		doveadm_bag_print_login(user, password);
	sodium_memzero(password, strlen(password));
	registry_deinit(&reg);
}

void doveadm_bag_usage(struct doveadm_cmd_context *cctx)
{
	doveadm_mirror_fail(EX_USAGE, t_strdup_printf(
		"%s: Usage: doveadm %s %s", cctx->cmd->name, cctx->cmd->name,
		cctx->cmd->usage));
}

/* The DOMAIN parameter, normalized; fails the command if missing or
   invalid. */
const char *doveadm_bag_domain_param(struct doveadm_cmd_context *cctx)
{
	const char *str, *domain, *error;

	if (!doveadm_mirror_param_str(cctx, "domain", &str)) {
		doveadm_bag_usage(cctx);
		return NULL;
	}
	if (bag_domain_parse(str, &domain, &error) < 0) {
		doveadm_mirror_fail(EX_USAGE, error);
		return NULL;
	}
	return domain;
}

bool doveadm_bag_get(struct registry *reg, const char *domain,
		     struct bag_def *def_r)
{
	const char *error;
	int ret;

	ret = bag_registry_get(reg, domain, pool_datastack_create(), def_r,
			       &error);
	if (ret <= 0) {
		doveadm_mirror_fail(ret == 0 ? DOVEADM_EX_NOTFOUND :
				    EX_TEMPFAIL, ret == 0 ?
				    t_strdup_printf("%s is not bagged",
						    domain) : error);
		return FALSE;
	}
	return TRUE;
}

/* Whether name is free: no login record in the registry and no user the
   userdb knows. 1 free, 0 taken, -1 error (the command failed). */
int doveadm_bag_name_free(struct registry *reg, const char *name)
{
	const char *error;
	int ret;

	ret = registry_user_exists(reg, name, &error);
	if (ret == 0)
		ret = doveadm_mirror_user_exists(name, &error);
	if (ret < 0) {
		doveadm_mirror_fail(EX_TEMPFAIL, error);
		return -1;
	}
	return ret == 0 ? 1 : 0;
}

/* A login just given a new password: the only time the password is shown */
void doveadm_bag_print_login(const char *user, const char *password)
{
	doveadm_mirror_auth_cache_flush(user);
	doveadm_print_init(DOVEADM_PRINT_TYPE_TABLE);
	doveadm_print_header_simple("user");
	doveadm_print_header_simple("password");
	doveadm_print(user);
	doveadm_print(password);
}

static struct doveadm_cmd_ver2 doveadm_bag_commands[] = {
{
	.name = "bag add",
	.cmd = cmd_bag_add,
	.usage = "[-e <network>[,...]] [-b [-p <retry period>]] "
		 "[-h <host>[:<port>] [-t may|encrypt|verify]] "
		 "[-a <atrn identity>] [-P catch-all|per-account] <domain>",
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_PARAM('e', "etrn-net", CMD_PARAM_ARRAY, 0)
DOVEADM_CMD_PARAM('t', "tls", CMD_PARAM_STR, 0)
DOVEADM_CMD_PARAM('b', "backup", CMD_PARAM_BOOL, 0)
DOVEADM_CMD_PARAM('P', "pop3", CMD_PARAM_STR, 0)
DOVEADM_CMD_PARAM('p', "retry-period", CMD_PARAM_STR, 0)
DOVEADM_CMD_PARAM('h', "host", CMD_PARAM_STR, 0)
DOVEADM_CMD_PARAM('a', "atrn-identity", CMD_PARAM_STR, 0)
DOVEADM_CMD_PARAM('\0', "domain", CMD_PARAM_STR, CMD_PARAM_FLAG_POSITIONAL)
DOVEADM_CMD_PARAMS_END
},
{
	.name = "bag set",
	.cmd = cmd_bag_set,
	.usage = "-t may|encrypt|verify|default <domain>",
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_PARAM('t', "tls", CMD_PARAM_STR, 0)
DOVEADM_CMD_PARAM('\0', "domain", CMD_PARAM_STR, CMD_PARAM_FLAG_POSITIONAL)
DOVEADM_CMD_PARAMS_END
},
{
	.name = "bag list",
	.cmd = cmd_bag_list,
	.usage = "",
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_PARAMS_END
},
{
	.name = "bag show",
	.cmd = cmd_bag_show,
	.usage = "<domain>",
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_PARAM('\0', "domain", CMD_PARAM_STR, CMD_PARAM_FLAG_POSITIONAL)
DOVEADM_CMD_PARAMS_END
},
{
	.name = "bag remove",
	.cmd = cmd_bag_remove,
	.usage = "[-f] <domain>",
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_PARAM('f', "force", CMD_PARAM_BOOL, 0)
DOVEADM_CMD_PARAM('\0', "domain", CMD_PARAM_STR, CMD_PARAM_FLAG_POSITIONAL)
DOVEADM_CMD_PARAMS_END
},
{
	.name = "bag password",
	.cmd = cmd_bag_password,
	.usage = "[-a] <domain>|<atrn identity> | -r <address>",
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_PARAM('a', "atrn-identity", CMD_PARAM_BOOL, 0)
DOVEADM_CMD_PARAM('r', "recipient", CMD_PARAM_BOOL, 0)
DOVEADM_CMD_PARAM('\0', "name", CMD_PARAM_STR, CMD_PARAM_FLAG_POSITIONAL)
DOVEADM_CMD_PARAMS_END
},
};

void doveadm_bag_register(void)
{
	unsigned int i;

	for (i = 0; i < N_ELEMENTS(doveadm_bag_commands); i++)
		doveadm_cmd_register_ver2(&doveadm_bag_commands[i]);
}
