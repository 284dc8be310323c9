/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* doveadm mirror account set|assign|unassign|list: service levels
   (mirror_levels) and the accounts that domains belong to, and the limit
   they put on doveadm mirror add. */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "str-sanitize.h"
#include "strnum.h"
#include "ioloop.h"
#include "master-service.h"
#include "mail-storage-service.h"
#include "doveadm.h"
#include "doveadm-cmd.h"
#include "doveadm-print.h"
#include "doveadm-settings.h"
#include "doveadm-util.h"
#include "mirror-def.h"
#include "mirror-registry.h"
#include "mirror-account.h"
#include "doveadm-mirror.h"

#include <sysexits.h>

/* Service levels. Returns 1 if limits apply (levels_r filled), 0 if
   mirror_levels is unset (no limits), -1 on a configuration error. */
static int
doveadm_mirror_levels(ARRAY_TYPE(mirror_level) *levels_r,
		      const char **default_level_r)
{
	const char *str, *error;

	str = doveadm_plugin_getenv("mirror_levels");
	if (str == NULL || *str == '\0')
		return 0;
	t_array_init(levels_r, 8);
	if (mirror_levels_parse(str, pool_datastack_create(), levels_r,
				&error) < 0) {
		doveadm_mirror_fail(EX_CONFIG, error);
		return -1;
	}
	*default_level_r = doveadm_plugin_getenv("mirror_default_level");
	if (*default_level_r == NULL || **default_level_r == '\0' ||
	    mirror_level_find(levels_r, *default_level_r) == NULL) {
		doveadm_mirror_fail(EX_CONFIG, t_strdup_printf(
			"mirror_default_level must name one of mirror_levels "
			"(now '%s')", *default_level_r == NULL ? "" :
			str_sanitize(*default_level_r, 40)));
		return -1;
	}
	return 1;
}

static const char *mirror_def_domain(const struct mirror_def *def)
{
	const char *at = strrchr(def->source, '@');

	return at == NULL ? def->source : at + 1;
}

/* The account of domain: its own if assigned, else a pseudo-account
   named after the domain at the default level. */
static int
doveadm_mirror_domain_account(struct registry *reg, const char *domain,
			      const char *default_level,
			      struct mirror_account *acct_r)
{
	const char *name, *error;
	int ret;

	ret = mirror_registry_domain_account(reg, domain, &name, &error);
	if (ret > 0) {
		ret = mirror_registry_account_get(reg, name,
				pool_datastack_create(), acct_r, &error);
		if (ret == 0) {
			error = t_strdup_printf("Broken registry data: domain "
				"%s belongs to unknown account %s", domain,
				str_sanitize(name, 80));
			ret = -1;
		}
	}
	if (ret < 0) {
		doveadm_mirror_fail(EX_TEMPFAIL, error);
		return -1;
	}
	if (ret == 0) {
		i_zero(acct_r);
		acct_r->name = domain;
		acct_r->level = default_level;
		t_array_init(&acct_r->domains, 1);
		array_push_back(&acct_r->domains, &domain);
	}
	return 0;
}

static bool
strings_contain(const ARRAY_TYPE(const_string) *arr, const char *str)
{
	const char *s;

	array_foreach_elem(arr, s) {
		if (strcmp(s, str) == 0)
			return TRUE;
	}
	return FALSE;
}

static bool
mirror_account_has_domain(const struct mirror_account *acct,
			  const char *domain)
{
	return strings_contain(&acct->domains, domain);
}

/* How many mirrors the account's domains have. */
static int
doveadm_mirror_account_used(struct registry *reg,
			    const struct mirror_account *acct,
			    unsigned int *used_r)
{
	ARRAY_TYPE(mirror_def) defs;
	const struct mirror_def *def;
	const char *error;

	t_array_init(&defs, 16);
	if (mirror_registry_list(reg, NULL, pool_datastack_create(), &defs,
				 &error) < 0) {
		doveadm_mirror_fail(EX_TEMPFAIL, error);
		return -1;
	}
	*used_r = 0;
	array_foreach(&defs, def) {
		if (mirror_account_has_domain(acct, mirror_def_domain(def)))
			(*used_r)++;
	}
	return 0;
}

bool doveadm_mirror_limit_check(struct registry *reg,
				const struct mirror_def *def)
{
	ARRAY_TYPE(mirror_level) levels;
	const struct mirror_level *level;
	struct mirror_account acct;
	const char *default_level;
	unsigned int used;
	int ret;

	if ((ret = doveadm_mirror_levels(&levels, &default_level)) <= 0)
		return ret == 0;
	if (doveadm_mirror_domain_account(reg, mirror_def_domain(def),
					  default_level, &acct) < 0)
		return FALSE;
	level = mirror_level_find(&levels, acct.level);
	if (level == NULL) {
		doveadm_mirror_fail(EX_CONFIG, t_strdup_printf(
			"Account %s has level %s, which mirror_levels does "
			"not define", acct.name, acct.level));
		return FALSE;
	}
	if (doveadm_mirror_account_used(reg, &acct, &used) < 0)
		return FALSE;
	if (used >= level->limit) {
		doveadm_mirror_fail(EX_NOPERM, t_strdup_printf(
			"Account %s (level %s) may have %u mirrors and has %u: "
			"limit reached", acct.name, level->name,
			level->limit, used));
		return FALSE;
	}
	return TRUE;
}

static void cmd_mirror_account_set(struct doveadm_cmd_context *cctx)
{
	ARRAY_TYPE(mirror_level) levels;
	struct registry *reg;
	const char *name, *level, *default_level, *error;
	int ret;

	if (!doveadm_mirror_param_str(cctx, "account", &name) ||
	    !doveadm_mirror_param_str(cctx, "level", &level)) {
		doveadm_mirror_fail(EX_USAGE, "mirror account set: Usage: "
				    "mirror account set ACCOUNT LEVEL");
		return;
	}
	if (!mirror_name_is_valid(name)) {
		doveadm_mirror_fail(EX_USAGE, t_strdup_printf(
			"Invalid account name '%s': use a-z, 0-9, '.', '_' "
			"and '-'", str_sanitize(name, 80)));
		return;
	}
	if ((ret = doveadm_mirror_levels(&levels, &default_level)) < 0)
		return;
	if (ret == 0 || mirror_level_find(&levels, level) == NULL) {
		doveadm_mirror_fail(EX_USAGE, t_strdup_printf(
			"Unknown service level '%s' (see mirror_levels)",
			str_sanitize(level, 40)));
		return;
	}
	if ((reg = doveadm_mirror_registry_open_locked()) == NULL)
		return;
	if (mirror_registry_account_set_level(reg, name, level, &error) < 0)
		doveadm_mirror_fail(EX_TEMPFAIL, error);
	registry_deinit(&reg);
}

static void cmd_mirror_account_assign(struct doveadm_cmd_context *cctx)
{
	struct registry *reg;
	const char *domain, *name = NULL, *error;
	enum mirror_type type;
	int ret;

	if (!doveadm_mirror_param_str(cctx, "domain", &domain) ||
	    (strcmp(cctx->cmd->name, "mirror account assign") == 0 &&
	     !doveadm_mirror_param_str(cctx, "account", &name))) {
		doveadm_mirror_fail(EX_USAGE, t_strdup_printf(
			"%s: Usage: %s %s", cctx->cmd->name, cctx->cmd->name,
			cctx->cmd->usage));
		return;
	}
	if (mirror_source_parse(domain, &type, &domain, &error) < 0 ||
	    type != MIRROR_TYPE_ALL) {
		doveadm_mirror_fail(EX_USAGE, t_strdup_printf(
			"Invalid domain '%s'", str_sanitize(domain, 80)));
		return;
	}
	if ((reg = doveadm_mirror_registry_open_locked()) == NULL)
		return;
	ret = mirror_registry_domain_assign(reg, domain, name, &error);
	if (ret <= 0) {
		doveadm_mirror_fail(ret == 0 ? DOVEADM_EX_NOTFOUND :
				    EX_TEMPFAIL, error);
	}
	registry_deinit(&reg);
}

static void
doveadm_mirror_account_print(struct registry *reg,
			     const ARRAY_TYPE(mirror_level) *levels,
			     const struct mirror_account *acct)
{
	const struct mirror_level *level;
	string_t *domains = t_str_new(128);
	const char *domain;
	unsigned int used;

	if (doveadm_mirror_account_used(reg, acct, &used) < 0)
		return;
	level = mirror_level_find(levels, acct->level);
	doveadm_print(acct->name);
	doveadm_print(acct->level);
	doveadm_print_num(used);
	if (level == NULL)
		doveadm_print("");
	else if (level->limit == UINT_MAX)
		doveadm_print("unlimited");
	else
		doveadm_print_num(level->limit);
	array_foreach_elem(&acct->domains, domain) {
		if (str_len(domains) > 0)
			str_append_c(domains, ' ');
		str_append(domains, domain);
	}
	doveadm_print(str_c(domains));
}

static void cmd_mirror_account_list(struct doveadm_cmd_context *cctx)
{
	ARRAY_TYPE(mirror_level) levels;
	ARRAY_TYPE(const_string) names, domains;
	ARRAY_TYPE(mirror_def) defs;
	const struct mirror_def *def;
	struct registry *reg;
	struct mirror_account acct;
	const char *only = NULL, *name, *default_level = "", *domain, *error;
	pool_t pool = pool_datastack_create();
	int ret;

	(void)doveadm_mirror_param_str(cctx, "account", &only);
	if ((ret = doveadm_mirror_levels(&levels, &default_level)) < 0)
		return;
	if (ret == 0)
		t_array_init(&levels, 1);
	if ((reg = doveadm_mirror_registry_open()) == NULL)
		return;
	t_array_init(&names, 16);
	t_array_init(&defs, 16);
	t_array_init(&domains, 16);
	if (mirror_registry_accounts(reg, pool, &names, &error) < 0 ||
	    mirror_registry_list(reg, NULL, pool, &defs, &error) < 0) {
		doveadm_mirror_fail(EX_TEMPFAIL, error);
		registry_deinit(&reg);
		return;
	}
	/* domains with mirrors but no account are accounts of their own */
	array_foreach(&defs, def) {
		domain = mirror_def_domain(def);
		if (!strings_contain(&domains, domain))
			array_push_back(&domains, &domain);
	}

	doveadm_print_init(DOVEADM_PRINT_TYPE_TABLE);
	doveadm_print_header_simple("account");
	doveadm_print_header_simple("level");
	doveadm_print_header_simple("used");
	doveadm_print_header_simple("allowed");
	doveadm_print_header_simple("domains");
	array_foreach_elem(&names, name) {
		if (only != NULL && strcmp(only, name) != 0)
			continue;
		ret = mirror_registry_account_get(reg, name, pool, &acct,
						  &error);
		if (ret < 0) {
			doveadm_mirror_fail(EX_TEMPFAIL, error);
			break;
		}
		if (ret > 0)
			doveadm_mirror_account_print(reg, &levels, &acct);
	}
	array_foreach_elem(&domains, domain) {
		if (only != NULL && strcmp(only, domain) != 0)
			continue;
		if (doveadm_mirror_domain_account(reg, domain, default_level,
						  &acct) < 0)
			break;
		if (strcmp(acct.name, domain) == 0 &&
		    !strings_contain(&names, domain))
			doveadm_mirror_account_print(reg, &levels, &acct);
	}
	registry_deinit(&reg);
}

static struct doveadm_cmd_ver2 doveadm_mirror_account_commands[] = {
{
	.name = "mirror account set",
	.cmd = cmd_mirror_account_set,
	.usage = "<account> <level>",
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_PARAM('\0', "account", CMD_PARAM_STR, CMD_PARAM_FLAG_POSITIONAL)
DOVEADM_CMD_PARAM('\0', "level", CMD_PARAM_STR, CMD_PARAM_FLAG_POSITIONAL)
DOVEADM_CMD_PARAMS_END
},
{
	.name = "mirror account assign",
	.cmd = cmd_mirror_account_assign,
	.usage = "<domain> <account>",
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_PARAM('\0', "domain", CMD_PARAM_STR, CMD_PARAM_FLAG_POSITIONAL)
DOVEADM_CMD_PARAM('\0', "account", CMD_PARAM_STR, CMD_PARAM_FLAG_POSITIONAL)
DOVEADM_CMD_PARAMS_END
},
{
	.name = "mirror account unassign",
	.cmd = cmd_mirror_account_assign,
	.usage = "<domain>",
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_PARAM('\0', "domain", CMD_PARAM_STR, CMD_PARAM_FLAG_POSITIONAL)
DOVEADM_CMD_PARAMS_END
},
{
	.name = "mirror account list",
	.cmd = cmd_mirror_account_list,
	.usage = "[<account>]",
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_PARAM('\0', "account", CMD_PARAM_STR, CMD_PARAM_FLAG_POSITIONAL)
DOVEADM_CMD_PARAMS_END
},
};

void doveadm_mirror_account_register(void)
{
	unsigned int i;

	for (i = 0; i < N_ELEMENTS(doveadm_mirror_account_commands); i++)
		doveadm_cmd_register_ver2(&doveadm_mirror_account_commands[i]);
}
