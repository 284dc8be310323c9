/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* doveadm mirror add|list|remove: manage the mirror registry. */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "str-sanitize.h"
#include "strnum.h"
#include "ioloop.h"
#include "time-util.h"
#include "module-dir.h"
#include "auth-master.h"
#include "doveadm.h"
#include "doveadm-cmd.h"
#include "doveadm-print.h"
#include "doveadm-settings.h"
#include "doveadm-util.h"
#include "mirror-registry.h"
#include "doveadm-mirror-verify.h"

#include <sysexits.h>

#define DOVEADM_MIRROR_AUTH_TIMEOUT_MSECS (30*1000)

const char *doveadm_mirror_plugin_version = DOVECOT_ABI_VERSION;

void doveadm_mirror_plugin_preinit(void);
void doveadm_mirror_plugin_init(struct module *module);
void doveadm_mirror_plugin_deinit(void);

static void doveadm_mirror_fail(int exit_code, const char *error)
{
	i_error("%s", error);
	doveadm_exit_code = exit_code;
}

static struct mirror_registry *doveadm_mirror_registry_open(void)
{
	struct mirror_registry *reg;
	const char *uri, *error;

	uri = doveadm_plugin_getenv("mirror_dict");
	if (uri == NULL || *uri == '\0') {
		doveadm_mirror_fail(EX_CONFIG,
			"mirror_dict is not set: mirroring is not configured");
		return NULL;
	}
	if (mirror_registry_init(uri, doveadm_settings->base_dir, NULL,
				 &reg, &error) < 0) {
		doveadm_mirror_fail(EX_TEMPFAIL, error);
		return NULL;
	}
	return reg;
}

/* Returns 1 if user exists, 0 if not, -1 if it can't be checked. */
static int doveadm_mirror_user_exists(const char *user, const char **error_r)
{
	struct auth_master_connection *conn;
	struct auth_user_info info;
	const char *username, *const *fields;
	pool_t pool;
	int ret;

	i_zero(&info);
	info.service = "doveadm";
	conn = auth_master_init(doveadm_settings->auth_socket_path,
				AUTH_MASTER_FLAG_NO_IDLE_TIMEOUT);
	auth_master_set_timeout(conn, DOVEADM_MIRROR_AUTH_TIMEOUT_MSECS);
	/* the lookup runs an ioloop: not from the data stack */
	pool = pool_alloconly_create("doveadm mirror userdb", 1024);
	ret = auth_master_user_lookup(conn, user, &info, pool,
				      &username, &fields);
	if (ret < 0) {
		*error_r = fields != NULL && fields[0] != NULL ?
			t_strdup_printf("userdb lookup failed: %s", fields[0]) :
			"userdb lookup failed (is Dovecot running?)";
	}
	auth_master_deinit(&conn);
	pool_unref(&pool);
	return ret;
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

static void cmd_mirror_add(struct doveadm_cmd_context *cctx)
{
	struct mirror_registry *reg;
	struct mirror_def def;
	const char *source, *storage, *days_str, *error;
	int ret;

	if (!doveadm_cmd_param_str(cctx, "source", &source) ||
	    !doveadm_cmd_param_str(cctx, "storage", &storage)) {
		doveadm_mirror_fail(EX_USAGE, "mirror add: "
			"Usage: mirror add [-d DAYS] -s STORAGE_USER SOURCE");
		return;
	}
	i_zero(&def);
	def.days = MIRROR_DAYS_DEFAULT;
	(void)doveadm_cmd_param_bool(cctx, "readonly", &def.readonly);
	if (doveadm_cmd_param_str(cctx, "days", &days_str) &&
	    mirror_days_parse(days_str, &def.days, &error) < 0) {
		doveadm_mirror_fail(EX_USAGE, error);
		return;
	}
	if (mirror_source_parse(source, &def.type, &def.source, &error) < 0) {
		doveadm_mirror_fail(EX_USAGE, error);
		return;
	}
	if (!mirror_storage_is_valid(storage, &error)) {
		doveadm_mirror_fail(EX_USAGE, t_strdup_printf(
			"Invalid storage user '%s': %s",
			str_sanitize(storage, 80), error));
		return;
	}
	def.storage = storage;
	if (def.type == MIRROR_TYPE_SINGLE &&
	    strcasecmp(def.storage, def.source) == 0) {
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

	if ((reg = doveadm_mirror_registry_open()) == NULL)
		return;
	ret = mirror_registry_add(reg, &def, NULL, &error);
	mirror_registry_deinit(&reg);
	if (ret <= 0) {
		doveadm_mirror_fail(ret == 0 ? DOVEADM_EX_NOTPOSSIBLE :
				    EX_TEMPFAIL, error);
		return;
	}
	doveadm_print_init(DOVEADM_PRINT_TYPE_TABLE);
	doveadm_mirror_print_header(FALSE);
	doveadm_mirror_print(&def, FALSE);
}

static void cmd_mirror_list(struct doveadm_cmd_context *cctx)
{
	struct mirror_registry *reg;
	ARRAY_TYPE(mirror_def) defs;
	const struct mirror_def *def;
	const char *source = NULL, *error;
	enum mirror_type type;
	int ret;

	if (doveadm_cmd_param_str(cctx, "source", &source) &&
	    mirror_source_parse(source, &type, &source, &error) < 0) {
		doveadm_mirror_fail(EX_USAGE, error);
		return;
	}
	if ((reg = doveadm_mirror_registry_open()) == NULL)
		return;
	t_array_init(&defs, 16);
	ret = mirror_registry_list(reg, source, pool_datastack_create(),
				   &defs, &error);
	mirror_registry_deinit(&reg);
	if (ret < 0) {
		doveadm_mirror_fail(EX_TEMPFAIL, error);
		return;
	}
	doveadm_print_init(DOVEADM_PRINT_TYPE_TABLE);
	doveadm_mirror_print_header(TRUE);
	array_foreach(&defs, def)
		doveadm_mirror_print(def, TRUE);
}

static void cmd_mirror_remove(struct doveadm_cmd_context *cctx)
{
	struct mirror_registry *reg;
	struct mirror_def def;
	const char *id_str, *error;
	unsigned int id;
	int ret;

	if (!doveadm_cmd_param_str(cctx, "id", &id_str)) {
		doveadm_mirror_fail(EX_USAGE,
				    "mirror remove: Usage: mirror remove ID");
		return;
	}
	if (str_to_uint(id_str, &id) < 0 || id == 0) {
		doveadm_mirror_fail(EX_USAGE, t_strdup_printf(
			"Invalid mirror id '%s'", str_sanitize(id_str, 20)));
		return;
	}
	if ((reg = doveadm_mirror_registry_open()) == NULL)
		return;
	ret = mirror_registry_remove(reg, id, pool_datastack_create(), &def,
				     &error);
	mirror_registry_deinit(&reg);
	if (ret <= 0) {
		doveadm_mirror_fail(ret == 0 ? DOVEADM_EX_NOTFOUND :
				    EX_TEMPFAIL, ret == 0 ?
				    t_strdup_printf("Unknown mirror id %u", id) :
				    error);
		return;
	}
	doveadm_print_init(DOVEADM_PRINT_TYPE_TABLE);
	doveadm_mirror_print_header(FALSE);
	doveadm_mirror_print(&def, FALSE);
}

static bool doveadm_mirror_parse_id(const char *id_str, unsigned int *id_r)
{
	if (str_to_uint(id_str, id_r) < 0 || *id_r == 0) {
		doveadm_mirror_fail(EX_USAGE, t_strdup_printf(
			"Invalid mirror id '%s'", str_sanitize(id_str, 20)));
		return FALSE;
	}
	return TRUE;
}

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

/* Find mirror id, failing the command if it doesn't exist. */
static bool
doveadm_mirror_get(struct mirror_registry *reg, unsigned int id,
		   struct mirror_def *def_r)
{
	const char *error;
	int ret;

	ret = mirror_registry_get_def(reg, id, pool_datastack_create(), def_r,
				      &error);
	if (ret <= 0) {
		doveadm_mirror_fail(ret == 0 ? DOVEADM_EX_NOTFOUND :
				    EX_TEMPFAIL, ret == 0 ?
				    t_strdup_printf("Unknown mirror id %u", id) :
				    error);
		return FALSE;
	}
	return TRUE;
}

static void cmd_mirror_set(struct doveadm_cmd_context *cctx)
{
	struct mirror_registry *reg;
	struct mirror_def def;
	const char *id_str, *days_str = NULL, *ro_str = NULL, *error;
	unsigned int id, days = 0;
	bool readonly = FALSE;

	if (!doveadm_cmd_param_str(cctx, "id", &id_str)) {
		doveadm_mirror_fail(EX_USAGE, "mirror set: Usage: "
			"mirror set [-d DAYS] [-r yes|no] ID");
		return;
	}
	if (!doveadm_mirror_parse_id(id_str, &id))
		return;
	if (doveadm_cmd_param_str(cctx, "days", &days_str) &&
	    mirror_days_parse(days_str, &days, &error) < 0) {
		doveadm_mirror_fail(EX_USAGE, error);
		return;
	}
	if (doveadm_cmd_param_str(cctx, "readonly", &ro_str) &&
	    doveadm_mirror_parse_bool(ro_str, &readonly) < 0)
		return;
	if ((reg = doveadm_mirror_registry_open()) == NULL)
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
	mirror_registry_deinit(&reg);
}

static struct doveadm_cmd_ver2 doveadm_mirror_commands[] = {
{
	.name = "mirror add",
	.cmd = cmd_mirror_add,
	.usage = "[-d <days>] [-r] -s <storage user> <address|domain>",
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_PARAM('d', "days", CMD_PARAM_STR, 0)
DOVEADM_CMD_PARAM('r', "readonly", CMD_PARAM_BOOL, 0)
DOVEADM_CMD_PARAM('s', "storage", CMD_PARAM_STR, 0)
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
	.usage = "<id>",
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_PARAM('\0', "id", CMD_PARAM_STR, CMD_PARAM_FLAG_POSITIONAL)
DOVEADM_CMD_PARAMS_END
},
};

/* The commands are registered when the module is loaded: doveadm loads
   it from its module directory, or (for an instance whose plugins live
   elsewhere) as a mail plugin listed in protocol doveadm's mail_plugins.
   Either way registration must happen before the command line is parsed,
   and only once if both load it. */
void doveadm_mirror_plugin_preinit(void)
{
	unsigned int i;

	if (doveadm_cmd_find_ver2(doveadm_mirror_commands[0].name) != NULL)
		return;
	for (i = 0; i < N_ELEMENTS(doveadm_mirror_commands); i++)
		doveadm_cmd_register_ver2(&doveadm_mirror_commands[i]);
	doveadm_mirror_verify_register();
}

void doveadm_mirror_plugin_init(struct module *module ATTR_UNUSED)
{
}

void doveadm_mirror_plugin_deinit(void)
{
}
