/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* doveadm mirror add|list|set|password|remove: the mirrors themselves,
   with their storage users. */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "str-sanitize.h"
#include "strnum.h"
#include "ioloop.h"
#include "time-util.h"
#include "master-service.h"
#include "mail-storage-service.h"
#include "doveadm.h"
#include "doveadm-cmd.h"
#include "doveadm-print.h"
#include "doveadm-settings.h"
#include "doveadm-util.h"
#include "registry-user.h"
#include "mirror-registry.h"
#include "mirror-account.h"
#include "mirror-address.h"
#include "doveadm-mirror.h"

#include <ctype.h>
#include <sysexits.h>
#include <sodium.h>

/* How many numbered names to try for an auto-created storage user. */
#define DOVEADM_MIRROR_MAX_NAME_TRIES 1000

static int doveadm_mirror_parse_bool(const char *str, bool *value_r)
{
	if (strcmp(str, "yes") == 0 || strcmp(str, "on") == 0)
		*value_r = TRUE;
	else if (strcmp(str, "no") == 0 || strcmp(str, "off") == 0)
		*value_r = FALSE;
	else {
		doveadm_mirror_fail(EX_USAGE, t_strdup_printf(
			"Invalid value '%s': expected yes or no",
			str_sanitize(str, 20)));
		return -1;
	}
	return 0;
}

/* _mirror@DOMAIN (all) or _mirror_USER@DOMAIN (single), with -N before
   the @ for the Nth try. Characters that are not safe in a username on
   every backend become '-'. */
static const char *
doveadm_mirror_storage_name(const struct mirror_def *def, unsigned int n)
{
	const char *at = strrchr(def->source, '@'), *domain = def->source;
	string_t *name = t_str_new(64);
	const char *p;

	str_append(name, "_mirror");
	if (def->type == MIRROR_TYPE_SINGLE) {
		i_assert(at != NULL);
		domain = at + 1;
		str_append_c(name, '_');
		for (p = def->source; p < at; p++) {
			if (i_isalnum(*p) || *p == '.' || *p == '_' ||
			    *p == '-')
				str_append_c(name, *p);
			else
				str_append_c(name, '-');
		}
	}
	if (n > 1)
		str_printfa(name, "-%u", n);
	str_printfa(name, "@%s", domain);
	return str_c(name);
}

/* Find a storage name that is neither a Dovecot user nor a user record. */
static const char *
doveadm_mirror_storage_choose(struct registry *reg,
			      const struct mirror_def *def)
{
	const char *name, *error;
	unsigned int n;
	int ret;

	for (n = 1; n <= DOVEADM_MIRROR_MAX_NAME_TRIES; n++) {
		name = doveadm_mirror_storage_name(def, n);
		if (!mirror_storage_is_valid(name, &error)) {
			doveadm_mirror_fail(EX_USAGE, t_strdup_printf(
				"Can't make a storage user for %s: %s",
				def->source, error));
			return NULL;
		}
		ret = registry_user_exists(reg, name, &error);
		if (ret == 0)
			ret = doveadm_mirror_user_exists(name, &error);
		if (ret < 0) {
			doveadm_mirror_fail(EX_TEMPFAIL, error);
			return NULL;
		}
		if (ret == 0)
			return name;
	}
	doveadm_mirror_fail(DOVEADM_EX_NOTPOSSIBLE, t_strdup_printf(
		"No free storage user name for %s", def->source));
	return NULL;
}

static void doveadm_mirror_print_header(bool with_created)
{
	doveadm_print_header_simple("id");
	doveadm_print_header_simple("type");
	doveadm_print_header_simple("source");
	doveadm_print_header_simple("storage");
	doveadm_print_header_simple("days");
	doveadm_print_header_simple("readonly");
	if (with_created)
		doveadm_print_header_simple("created");
}

static void doveadm_mirror_print(const struct mirror_def *def,
				 bool with_created)
{
	doveadm_print_num(def->id);
	doveadm_print(mirror_type_to_str(def->type));
	doveadm_print(def->source);
	doveadm_print(def->storage);
	doveadm_print_num(def->days);
	doveadm_print(def->readonly ? "yes" : "no");
	if (with_created)
		doveadm_print(t_strfgmtime("%Y-%m-%dT%H:%M:%SZ",
					      def->created));
}

/* Whether mail can come for def's source: LMTP strips a recipient's
   detail (recipient_delimiter) before anything else, so a source with a
   detail would never get a copy. Fails the command if not. */
static bool doveadm_mirror_source_deliverable(const struct mirror_def *def)
{
	const char *at, *address, *domain;

	if (def->type != MIRROR_TYPE_SINGLE)
		return TRUE;
	at = strrchr(def->source, '@');
	i_assert(at != NULL);
	if (!mirror_address_keys(t_strdup_until(def->source, at), at + 1,
				 doveadm_mirror_recipient_delimiter(),
				 &address, &domain) ||
	    strcmp(address, def->source) == 0)
		return TRUE;
	doveadm_mirror_fail(EX_USAGE, t_strdup_printf(
		"%s has a recipient detail, which delivery strips "
		"(recipient_delimiter): no mail would ever be copied; "
		"mirror %s instead", def->source, address));
	return FALSE;
}

/* Whether storage is free of other mirrors' auto-created storage users:
   copying into one would let its mirror's password read this mirror's
   copies. Fails the command if not. */
static bool
doveadm_mirror_storage_unshared(struct registry *reg, const char *storage)
{
	ARRAY_TYPE(mirror_def) defs;
	const struct mirror_def *def;
	const char *error;

	t_array_init(&defs, 4);
	if (mirror_registry_storage_lookup(reg, storage,
					   pool_datastack_create(), &defs,
					   &error) < 0) {
		doveadm_mirror_fail(EX_TEMPFAIL, error);
		return FALSE;
	}
	array_foreach(&defs, def) {
		if (!def->auto_storage)
			continue;
		doveadm_mirror_fail(EX_USAGE, t_strdup_printf(
			"%s is the storage user mirror %u created: its "
			"password would read this mirror's copies too; add "
			"-S to share it anyway", str_sanitize(storage, 80),
			def->id));
		return FALSE;
	}
	return TRUE;
}

static void cmd_mirror_add(struct doveadm_cmd_context *cctx)
{
	struct registry *reg;
	struct mirror_def def;
	const char *source, *storage = NULL, *days_str, *hash = NULL, *error;
	char *password = NULL;
	bool share = FALSE;
	int ret;

	if (!doveadm_mirror_param_str(cctx, "source", &source)) {
		doveadm_mirror_fail(EX_USAGE, "mirror add: Usage: "
			"mirror add [-d DAYS] [-r] [-s STORAGE_USER [-S]] "
			"SOURCE");
		return;
	}
	i_zero(&def);
	def.days = MIRROR_DAYS_DEFAULT;
	(void)doveadm_cmd_param_bool(cctx, "readonly", &def.readonly);
	if (doveadm_mirror_param_str(cctx, "days", &days_str) &&
	    mirror_days_parse(days_str, &def.days, &error) < 0) {
		doveadm_mirror_fail(EX_USAGE, error);
		return;
	}
	if (mirror_source_parse(source, &def.type, &def.source, &error) < 0) {
		doveadm_mirror_fail(EX_USAGE, error);
		return;
	}
	if (!doveadm_mirror_source_deliverable(&def))
		return;
	(void)doveadm_cmd_param_bool(cctx, "share", &share);
	if (doveadm_mirror_param_str(cctx, "storage", &storage)) {
		/* an existing mailbox */
		if (!mirror_storage_is_valid(storage, &error)) {
			doveadm_mirror_fail(EX_USAGE, t_strdup_printf(
				"Invalid storage user '%s': %s",
				str_sanitize(storage, 80), error));
			return;
		}
		if (def.type == MIRROR_TYPE_SINGLE &&
		    strcasecmp(storage, def.source) == 0) {
			doveadm_mirror_fail(EX_USAGE, t_strdup_printf(
				"Storage user %s is the mirrored address itself",
				def.source));
			return;
		}
		ret = doveadm_mirror_user_exists(storage, &error);
		if (ret <= 0) {
			doveadm_mirror_fail(ret == 0 ? EX_NOUSER : EX_TEMPFAIL,
				ret == 0 ? t_strdup_printf(
					"Unknown storage user %s",
					str_sanitize(storage, 80)) : error);
			return;
		}
	}

	if ((reg = doveadm_mirror_registry_open_locked()) == NULL)
		return;
	if (!doveadm_mirror_limit_check(reg, &def) ||
	    (storage != NULL && !share &&
	     !doveadm_mirror_storage_unshared(reg, storage))) {
		registry_deinit(&reg);
		return;
	}
	if (storage == NULL) {
		/* auto-create a storage user */
		storage = doveadm_mirror_storage_choose(reg, &def);
		if (storage == NULL ||
		    doveadm_mirror_password_new(DOVEADM_MIRROR_PASSWORD_ARGON2ID,
					&password, &hash) < 0) {
			registry_deinit(&reg);
			return;
		}
	}
	def.storage = storage;
	ret = mirror_registry_add(reg, &def, hash, &error);
	registry_deinit(&reg);
	if (ret <= 0) {
		doveadm_mirror_fail(ret == 0 ? DOVEADM_EX_NOTPOSSIBLE :
				    EX_TEMPFAIL, error);
	} else {
		if (!def.auto_storage) {
			i_warning("Messages in %s older than %u days will be "
				  "deleted by the mirror expiry scan",
				  def.storage, def.days);
		}
		doveadm_print_init(DOVEADM_PRINT_TYPE_TABLE);
		doveadm_mirror_print_header(FALSE);
		doveadm_print_header_simple("password");
		doveadm_mirror_print(&def, FALSE);
		doveadm_print(password == NULL ? "" : password);
	}
	if (password != NULL)
		sodium_memzero(password, strlen(password));
}

static void cmd_mirror_password(struct doveadm_cmd_context *cctx)
{
	struct registry *reg;
	struct mirror_def def;
	const char *id_str, *hash, *error;
	char *password;
	unsigned int id;

	if (!doveadm_mirror_param_str(cctx, "id", &id_str)) {
		doveadm_mirror_fail(EX_USAGE,
			"mirror password: Usage: mirror password ID");
		return;
	}
	if (!doveadm_mirror_parse_id(id_str, &id) ||
	    (reg = doveadm_mirror_registry_open_locked()) == NULL)
		return;
	if (!doveadm_mirror_get(reg, id, &def)) {
		registry_deinit(&reg);
		return;
	}
	if (!def.auto_storage) {
		doveadm_mirror_fail(DOVEADM_EX_NOTPOSSIBLE, t_strdup_printf(
			"Mirror %u copies into %s, an existing mailbox: "
			"its password is not managed here", id, def.storage));
		registry_deinit(&reg);
		return;
	}
	if (doveadm_mirror_password_new(DOVEADM_MIRROR_PASSWORD_ARGON2ID,
					&password, &hash) < 0) {
		registry_deinit(&reg);
		return;
	}
	if (mirror_registry_user_set(reg, def.storage, hash, id, &error) < 0)
		doveadm_mirror_fail(EX_TEMPFAIL, error);
	else {
		doveadm_mirror_auth_cache_flush(def.storage);
		doveadm_print_init(DOVEADM_PRINT_TYPE_TABLE);
		doveadm_print_header_simple("id");
		doveadm_print_header_simple("storage");
		doveadm_print_header_simple("password");
		doveadm_print_num(id);
		doveadm_print(def.storage);
		doveadm_print(password);
	}
	sodium_memzero(password, strlen(password));
	registry_deinit(&reg);
}

static void cmd_mirror_list(struct doveadm_cmd_context *cctx)
{
	struct registry *reg;
	ARRAY_TYPE(mirror_def) defs;
	const struct mirror_def *def;
	struct mirror_status status;
	ARRAY_TYPE(mirror_count_pending) uncounted;
	const char *source = NULL, *error;
	enum mirror_type type;
	int ret;

	if (doveadm_mirror_param_str(cctx, "source", &source) &&
	    mirror_source_parse(source, &type, &source, &error) < 0) {
		doveadm_mirror_fail(EX_USAGE, error);
		return;
	}
	if ((reg = doveadm_mirror_registry_open()) == NULL)
		return;
	t_array_init(&defs, 16);
	ret = mirror_registry_list(reg, source, pool_datastack_create(),
				   &defs, &error);
	if (ret < 0) {
		doveadm_mirror_fail(EX_TEMPFAIL, error);
		registry_deinit(&reg);
		return;
	}
	doveadm_print_init(DOVEADM_PRINT_TYPE_TABLE);
	doveadm_mirror_print_header(TRUE);
	doveadm_print_header_simple("copies");
	doveadm_print_header_simple("failures");
	doveadm_print_header_simple("last_failure");
	doveadm_print_header_simple("last_failure_reason");
	doveadm_print_header_simple("hold");
	doveadm_print_header_simple("hold_reason");
	/* the journal before the registry */
	t_array_init(&uncounted, 8);
	(void)doveadm_mirror_uncounted_read(&uncounted);
	array_foreach(&defs, def) {
		const struct mirror_count_pending *p =
			mirror_count_pending_find(&uncounted, def->id);
		unsigned int copies, failures;

		if (mirror_registry_status_get(reg, def->id, &status,
					       &error) < 0) {
			doveadm_mirror_fail(EX_TEMPFAIL, error);
			i_zero(&status);
		}
		doveadm_mirror_uncounted_sum(p, &copies, &failures);
		status.copies += copies;
		status.failures += failures;
		doveadm_mirror_print(def, TRUE);
		doveadm_print(dec2str(status.copies));
		doveadm_print(dec2str(status.failures));
		doveadm_print(status.last_failure == 0 ? "" :
			t_strfgmtime("%Y-%m-%dT%H:%M:%SZ", status.last_failure));
		doveadm_print(status.last_failure_reason == NULL ? "" :
			      status.last_failure_reason);
		doveadm_print(def->hold_since == 0 ? "" :
			t_strfgmtime("%Y-%m-%dT%H:%M:%SZ", def->hold_since));
		doveadm_print(def->hold_reason == NULL ? "" :
			      def->hold_reason);
	}
	registry_deinit(&reg);
}

static void cmd_mirror_remove(struct doveadm_cmd_context *cctx)
{
	struct registry *reg;
	ARRAY_TYPE(mirror_def) storage_defs;
	struct mirror_def def;
	const char *id_str, *error;
	unsigned int id;
	bool purge = FALSE, purged = FALSE;
	int ret;

	if (!doveadm_mirror_param_str(cctx, "id", &id_str)) {
		doveadm_mirror_fail(EX_USAGE,
			"mirror remove: Usage: mirror remove [-p] ID");
		return;
	}
	(void)doveadm_cmd_param_bool(cctx, "purge", &purge);
	if (!doveadm_mirror_parse_id(id_str, &id) ||
	    (reg = doveadm_mirror_registry_open_locked()) == NULL)
		return;
	if (!doveadm_mirror_get(reg, id, &def)) {
		registry_deinit(&reg);
		return;
	}
	if (def.hold_since != 0) {
		doveadm_mirror_fail(EX_DATAERR, t_strdup_printf(
			"Mirror %u is on legal hold since %s: release it "
			"first (doveadm mirror release %u)", id,
			t_strfgmtime("%Y-%m-%dT%H:%M:%SZ", def.hold_since),
			id));
		registry_deinit(&reg);
		return;
	}
	if (purge && def.auto_storage) {
		t_array_init(&storage_defs, 4);
		if (mirror_registry_storage_lookup(reg, def.storage,
				pool_datastack_create(), &storage_defs,
				&error) < 0) {
			doveadm_mirror_fail(EX_TEMPFAIL, error);
			registry_deinit(&reg);
			return;
		}
		if (array_count(&storage_defs) > 1) {
			doveadm_mirror_fail(DOVEADM_EX_NOTPOSSIBLE,
				t_strdup_printf("Storage %s also receives "
					"other mirrors' copies: remove them "
					"first, or remove without -p",
					def.storage));
			registry_deinit(&reg);
			return;
		}
	}
	ret = mirror_registry_remove(reg, id, pool_datastack_create(), &def,
				     &error);
	if (ret <= 0) {
		doveadm_mirror_fail(ret == 0 ? DOVEADM_EX_NOTFOUND :
				    EX_TEMPFAIL, ret == 0 ?
				    t_strdup_printf("Unknown mirror id %u", id) :
				    error);
		registry_deinit(&reg);
		return;
	}
	if (purge && !def.auto_storage) {
		i_warning("Storage %s is an existing mailbox, not created for "
			  "mirror %u: it is left in place", def.storage, id);
	} else if (purge) {
		/* No copies go there any more. Delete the mail first: if
		   that fails, the user can still log in to what is left. */
		if (doveadm_mirror_purge_storage(def.storage) < 0) {
			doveadm_mirror_fail(EX_TEMPFAIL, t_strdup_printf(
				"Mirror %u is removed, but deleting the mail "
				"of %s failed: storage user kept", id,
				def.storage));
		} else if (registry_user_remove(reg, def.storage,
						       &error) < 0) {
			doveadm_mirror_fail(EX_TEMPFAIL, error);
		} else {
			purged = TRUE;
			doveadm_mirror_auth_cache_flush(def.storage);
		}
	}
	registry_deinit(&reg);
	doveadm_print_init(DOVEADM_PRINT_TYPE_TABLE);
	doveadm_mirror_print_header(FALSE);
	doveadm_print_header_simple("purged");
	doveadm_mirror_print(&def, FALSE);
	doveadm_print(purged ? "yes" : "no");
}

static void cmd_mirror_set(struct doveadm_cmd_context *cctx)
{
	struct registry *reg;
	struct mirror_def def;
	const char *id_str, *days_str = NULL, *ro_str = NULL, *error;
	unsigned int id, days = 0;
	bool readonly = FALSE;

	if (!doveadm_mirror_param_str(cctx, "id", &id_str)) {
		doveadm_mirror_fail(EX_USAGE, "mirror set: Usage: "
			"mirror set [-d DAYS] [-r yes|no] ID");
		return;
	}
	if (!doveadm_mirror_parse_id(id_str, &id))
		return;
	if (doveadm_mirror_param_str(cctx, "days", &days_str) &&
	    mirror_days_parse(days_str, &days, &error) < 0) {
		doveadm_mirror_fail(EX_USAGE, error);
		return;
	}
	if (doveadm_mirror_param_str(cctx, "readonly", &ro_str) &&
	    doveadm_mirror_parse_bool(ro_str, &readonly) < 0)
		return;
	if ((reg = doveadm_mirror_registry_open_locked()) == NULL)
		return;
	if (doveadm_mirror_get(reg, id, &def)) {
		if (days_str != NULL)
			def.days = days;
		if (ro_str != NULL)
			def.readonly = readonly;
		if (mirror_registry_update(reg, &def, &error) < 0)
			doveadm_mirror_fail(EX_TEMPFAIL, error);
		else {
			doveadm_print_init(DOVEADM_PRINT_TYPE_TABLE);
			doveadm_mirror_print_header(FALSE);
			doveadm_mirror_print(&def, FALSE);
		}
	}
	registry_deinit(&reg);
}

static struct doveadm_cmd_ver2 doveadm_mirror_commands[] = {
{
	.name = "mirror add",
	.cmd = cmd_mirror_add,
	.usage = "[-d <days>] [-r] [-s <storage user> [-S]] <address|domain>",
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_PARAM('d', "days", CMD_PARAM_STR, 0)
DOVEADM_CMD_PARAM('r', "readonly", CMD_PARAM_BOOL, 0)
DOVEADM_CMD_PARAM('s', "storage", CMD_PARAM_STR, 0)
DOVEADM_CMD_PARAM('S', "share", CMD_PARAM_BOOL, 0)
DOVEADM_CMD_PARAM('\0', "source", CMD_PARAM_STR, CMD_PARAM_FLAG_POSITIONAL)
DOVEADM_CMD_PARAMS_END
},
{
	.name = "mirror list",
	.cmd = cmd_mirror_list,
	.usage = "[<address|domain>]",
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_PARAM('\0', "source", CMD_PARAM_STR, CMD_PARAM_FLAG_POSITIONAL)
DOVEADM_CMD_PARAMS_END
},
{
	.name = "mirror password",
	.cmd = cmd_mirror_password,
	.usage = "<id>",
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_PARAM('\0', "id", CMD_PARAM_STR, CMD_PARAM_FLAG_POSITIONAL)
DOVEADM_CMD_PARAMS_END
},
{
	.name = "mirror set",
	.cmd = cmd_mirror_set,
	.usage = "[-d <days>] [-r yes|no] <id>",
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_PARAM('d', "days", CMD_PARAM_STR, 0)
DOVEADM_CMD_PARAM('r', "readonly", CMD_PARAM_STR, 0)
DOVEADM_CMD_PARAM('\0', "id", CMD_PARAM_STR, CMD_PARAM_FLAG_POSITIONAL)
DOVEADM_CMD_PARAMS_END
},
{
	.name = "mirror remove",
	.cmd = cmd_mirror_remove,
	.usage = "[-p] <id>",
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_PARAM('p', "purge", CMD_PARAM_BOOL, 0)
DOVEADM_CMD_PARAM('\0', "id", CMD_PARAM_STR, CMD_PARAM_FLAG_POSITIONAL)
DOVEADM_CMD_PARAMS_END
},
};

void doveadm_mirror_cmds_register(void)
{
	unsigned int i;

	for (i = 0; i < N_ELEMENTS(doveadm_mirror_commands); i++)
		doveadm_cmd_register_ver2(&doveadm_mirror_commands[i]);
}
