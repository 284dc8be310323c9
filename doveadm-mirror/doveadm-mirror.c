/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* doveadm mirror add|list|remove: manage the mirror registry. */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "str-sanitize.h"
#include "strnum.h"
#include "ioloop.h"
#include "time-util.h"
#include "master-service.h"
#include "mail-storage-service.h"
#include "auth-master.h"
#include "unlink-directory.h"
#include "hex-binary.h"
#include "hmac.h"
#include "hmac-cram-md5.h"
#include "md5.h"
#include "safe-memset.h"
#include "doveadm.h"
#include "doveadm-cmd.h"
#include "doveadm-print.h"
#include "doveadm-settings.h"
#include "doveadm-util.h"
#include "mirror-registry.h"
#include "doveadm-mirror.h"
#include "doveadm-mirror-verify.h"
#include "doveadm-mirror-schedule.h"
#include "doveadm-mirror-expire.h"
#include "doveadm-bag.h"
#include "mirror-account.h"
#include "registry-user.h"

#include <ctype.h>
#include <sysexits.h>
#include <sys/wait.h>
#include <grp.h>
#include <unistd.h>
#include <sodium.h>

#define DOVEADM_MIRROR_AUTH_TIMEOUT_MSECS (30*1000)
/* Random bytes in a generated password: 144 bits, 24 base64url chars. */
#define DOVEADM_MIRROR_PASSWORD_BYTES 18
/* How many numbered names to try for an auto-created storage user. */
#define DOVEADM_MIRROR_MAX_NAME_TRIES 1000

const char *doveadm_mirror_plugin_version = DOVECOT_ABI_VERSION;

void doveadm_mirror_plugin_init(struct module *module);
void doveadm_mirror_plugin_deinit(void);

void doveadm_mirror_fail(int exit_code, const char *error)
{
	i_error("%s", error);
	doveadm_exit_code = exit_code;
}

struct registry *doveadm_mirror_registry_open(void)
{
	struct registry *reg;
	const char *uri, *error;

	uri = doveadm_plugin_getenv("mirror_dict");
	if (uri == NULL || *uri == '\0') {
		doveadm_mirror_fail(EX_CONFIG,
			"mirror_dict is not set: mirroring is not configured");
		return NULL;
	}
	if (registry_init(uri, doveadm_settings->base_dir, NULL,
				 &reg, &error) < 0) {
		doveadm_mirror_fail(EX_TEMPFAIL, error);
		return NULL;
	}
	return reg;
}

struct mail_storage_service_ctx *
doveadm_mirror_storage_service_init(const struct setting_parser_info *set_roots[])
{
	enum mail_storage_service_flags flags =
		MAIL_STORAGE_SERVICE_FLAG_USERDB_LOOKUP |
		MAIL_STORAGE_SERVICE_FLAG_TEMP_PRIV_DROP |
		MAIL_STORAGE_SERVICE_FLAG_NO_LOG_INIT;

	if (doveadm_debug)
		flags |= MAIL_STORAGE_SERVICE_FLAG_DEBUG;
	return mail_storage_service_init(master_service, set_roots, flags);
}


/* Look user up in the userdb. Returns 1 with its fields (from the data
   stack), 0 if there is no such user, -1 if it can't be checked. */
static int
doveadm_mirror_userdb_lookup(const char *user, const char *const **fields_r,
			     const char **error_r)
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
	} else if (ret > 0) {
		*fields_r = (const char *const *)
			p_strarray_dup(pool_datastack_create(), fields);
	}
	auth_master_deinit(&conn);
	pool_unref(&pool);
	return ret;
}

int doveadm_mirror_user_exists(const char *user, const char **error_r)
{
	const char *const *fields;

	return doveadm_mirror_userdb_lookup(user, &fields, error_r);
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
doveadm_mirror_get(struct registry *reg, unsigned int id,
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

void doveadm_mirror_auth_cache_flush(const char *user)
{
	struct auth_master_connection *conn;
	const char *users[] = { user, NULL };
	unsigned int count;

	/* without an auth cache there is nothing to flush; a failure only
	   delays the change until the cache entry expires */
	/* as doveadm auth cache flush: only auth-master may flush */
	conn = auth_master_init(t_strconcat(doveadm_settings->base_dir,
					    "/auth-master", NULL), 0);
	auth_master_set_timeout(conn, DOVEADM_MIRROR_AUTH_TIMEOUT_MSECS);
	if (auth_master_cache_flush(conn, users, &count) < 0) {
		i_warning("Couldn't flush the auth cache for %s: "
			  "the change is seen when the cache entry expires",
			  user);
	}
	auth_master_deinit(&conn);
}

/* Dovecot's {CRAM-MD5} scheme: the HMAC-MD5 inner and outer states of
   the password, in hex (what auth's cram_md5_generate() computes). */
static const char *doveadm_mirror_cram_md5(const char *password)
{
	struct hmac_context ctx;
	unsigned char context[CRAM_MD5_CONTEXTLEN];
	const char *hex;

	hmac_init(&ctx, (const unsigned char *)password, strlen(password),
		  &hash_method_md5);
	hmac_md5_get_cram_context(&ctx, context);
	hex = binary_to_hex(context, sizeof(context));
	safe_memset(&ctx, 0, sizeof(ctx));
	sodium_memzero(context, sizeof(context));
	return t_strconcat("{CRAM-MD5}", hex, NULL);
}

int doveadm_mirror_password_new(enum doveadm_mirror_password_scheme scheme,
				char **password_r, const char **hash_r)
{
	unsigned char raw[DOVEADM_MIRROR_PASSWORD_BYTES];
	size_t b64_len = sodium_base64_ENCODED_LEN(sizeof(raw),
		sodium_base64_VARIANT_URLSAFE_NO_PADDING);
	char *password = t_malloc0(b64_len);
	char hash[crypto_pwhash_argon2id_STRBYTES];

	randombytes_buf(raw, sizeof(raw));
	sodium_bin2base64(password, b64_len, raw, sizeof(raw),
			  sodium_base64_VARIANT_URLSAFE_NO_PADDING);
	sodium_memzero(raw, sizeof(raw));
	if (scheme == DOVEADM_MIRROR_PASSWORD_CRAM_MD5) {
		*password_r = password;
		*hash_r = doveadm_mirror_cram_md5(password);
		return 0;
	}
	/* the parameters of Dovecot's own {ARGON2ID} scheme */
	if (crypto_pwhash_argon2id_str(hash, password, strlen(password),
			crypto_pwhash_argon2id_OPSLIMIT_INTERACTIVE,
			crypto_pwhash_argon2id_MEMLIMIT_INTERACTIVE) < 0) {
		sodium_memzero(password, b64_len);
		doveadm_mirror_fail(EX_TEMPFAIL,
				    "Hashing the password failed: out of memory");
		return -1;
	}
	*password_r = password;
	*hash_r = t_strconcat("{ARGON2ID}", hash, NULL);
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

static bool
doveadm_mirror_limit_check(struct registry *reg,
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

	if (!doveadm_cmd_param_str(cctx, "account", &name) ||
	    !doveadm_cmd_param_str(cctx, "level", &level)) {
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
	if ((reg = doveadm_mirror_registry_open()) == NULL)
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

	if (!doveadm_cmd_param_str(cctx, "domain", &domain) ||
	    (strcmp(cctx->cmd->name, "mirror account assign") == 0 &&
	     !doveadm_cmd_param_str(cctx, "account", &name))) {
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
	if ((reg = doveadm_mirror_registry_open()) == NULL)
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

	(void)doveadm_cmd_param_str(cctx, "account", &only);
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

static void cmd_mirror_add(struct doveadm_cmd_context *cctx)
{
	struct registry *reg;
	struct mirror_def def;
	const char *source, *storage = NULL, *days_str, *hash = NULL, *error;
	char *password = NULL;
	int ret;

	if (!doveadm_cmd_param_str(cctx, "source", &source)) {
		doveadm_mirror_fail(EX_USAGE, "mirror add: Usage: "
			"mirror add [-d DAYS] [-r] [-s STORAGE_USER] SOURCE");
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
	if (doveadm_cmd_param_str(cctx, "storage", &storage)) {
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

	if ((reg = doveadm_mirror_registry_open()) == NULL)
		return;
	if (!doveadm_mirror_limit_check(reg, &def)) {
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

	if (!doveadm_cmd_param_str(cctx, "id", &id_str)) {
		doveadm_mirror_fail(EX_USAGE,
			"mirror password: Usage: mirror password ID");
		return;
	}
	if (!doveadm_mirror_parse_id(id_str, &id) ||
	    (reg = doveadm_mirror_registry_open()) == NULL)
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
	array_foreach(&defs, def) {
		if (mirror_registry_status_get(reg, def->id, &status,
					       &error) < 0) {
			doveadm_mirror_fail(EX_TEMPFAIL, error);
			i_zero(&status);
		}
		doveadm_mirror_print(def, TRUE);
		doveadm_print(dec2str(status.copies));
		doveadm_print(dec2str(status.failures));
		doveadm_print(status.last_failure == 0 ? "" :
			t_strfgmtime("%Y-%m-%dT%H:%M:%SZ", status.last_failure));
		doveadm_print(status.last_failure_reason == NULL ? "" :
			      status.last_failure_reason);
	}
	registry_deinit(&reg);
}

/* The home, uid and gid of username from the userdb. */
static int
doveadm_mirror_user_home(const char *username, const char **home_r,
			 uid_t *uid_r, gid_t *gid_r, const char **error_r)
{
	const char *const *fields, *value;
	unsigned int num;
	int ret;

	*home_r = NULL;
	*uid_r = (uid_t)-1;
	*gid_r = (gid_t)-1;
	ret = doveadm_mirror_userdb_lookup(username, &fields, error_r);
	if (ret <= 0) {
		if (ret == 0)
			*error_r = "no such user";
		return -1;
	}
	for (; *fields != NULL; fields++) {
		if (str_begins(*fields, "home="))
			*home_r = *fields + 5;
		else if (str_begins(*fields, "uid=") &&
			 str_to_uint(*fields + 4, &num) == 0)
			*uid_r = num;
		else if (str_begins(*fields, "gid=") &&
			 str_to_uint(*fields + 4, &num) == 0)
			*gid_r = num;
	}
	value = *home_r;
	if (value == NULL || value[0] != '/' ||
	    strchr(value + 1, '/') == NULL) {
		*error_r = t_strdup_printf(
			"its home '%s' is not a directory of its own",
			value == NULL ? "" : str_sanitize(value, 200));
		return -1;
	}
	return 0;
}

int doveadm_mirror_purge_storage(const char *username)
{
	const char *home, *error;
	uid_t uid;
	gid_t gid;
	pid_t pid;
	int status;

	if (doveadm_mirror_user_home(username, &home, &uid, &gid,
				     &error) < 0) {
		i_error("Can't purge %s: %s", username, error);
		return -1;
	}
	pid = fork();
	if (pid < 0) {
		i_error("fork() failed: %m");
		return -1;
	}
	if (pid == 0) {
		if (geteuid() == 0) {
			if (gid == (gid_t)-1 || uid == (uid_t)-1 || uid == 0) {
				i_error("Can't purge %s: no uid/gid of its "
					"own in the userdb", username);
				_exit(EX_CONFIG);
			}
			if (setgroups(0, NULL) < 0 || setgid(gid) < 0 ||
			    setuid(uid) < 0) {
				i_error("Can't purge %s: can't become "
					"uid %ld: %m", username, (long)uid);
				_exit(EX_TEMPFAIL);
			}
		}
		/* unlink_directory() returns to the current directory, which
		   the user may not be allowed to open */
		if (chdir("/") < 0) {
			i_error("Can't purge %s: chdir(/) failed: %m",
				username);
			_exit(EX_TEMPFAIL);
		}
		if (unlink_directory(home, UNLINK_DIRECTORY_FLAG_RMDIR,
				     &error) < 0 && errno != ENOENT) {
			i_error("Can't purge %s: %s", username, error);
			_exit(EX_TEMPFAIL);
		}
		_exit(0);
	}
	while (waitpid(pid, &status, 0) < 0) {
		if (errno != EINTR) {
			i_error("waitpid() failed: %m");
			return -1;
		}
	}
	if (WIFSIGNALED(status)) {
		i_error("Purging %s: child process killed by signal %d",
			username, WTERMSIG(status));
		return -1;
	}
	return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
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

	if (!doveadm_cmd_param_str(cctx, "id", &id_str)) {
		doveadm_mirror_fail(EX_USAGE,
			"mirror remove: Usage: mirror remove [-p] ID");
		return;
	}
	(void)doveadm_cmd_param_bool(cctx, "purge", &purge);
	if (!doveadm_mirror_parse_id(id_str, &id) ||
	    (reg = doveadm_mirror_registry_open()) == NULL)
		return;
	if (!doveadm_mirror_get(reg, id, &def)) {
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
	registry_deinit(&reg);
}

static struct doveadm_cmd_ver2 doveadm_mirror_commands[] = {
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
{
	.name = "mirror add",
	.cmd = cmd_mirror_add,
	.usage = "[-d <days>] [-r] [-s <storage user>] <address|domain>",
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

void doveadm_mirror_plugin_init(struct module *module ATTR_UNUSED)
{
	unsigned int i;

	if (sodium_init() < 0)
		i_fatal("sodium_init() failed");
	for (i = 0; i < N_ELEMENTS(doveadm_mirror_commands); i++)
		doveadm_cmd_register_ver2(&doveadm_mirror_commands[i]);
	doveadm_mirror_verify_register();
	doveadm_mirror_schedule_register();
	doveadm_mirror_expire_register();
	doveadm_bag_register();
}

void doveadm_mirror_plugin_deinit(void)
{
}
