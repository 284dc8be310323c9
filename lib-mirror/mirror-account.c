/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* Service levels (mirror_levels) and the accounts that domains belong
   to: how many mirrors a domain may have. */

#include "lib.h"
#include "array.h"
#include "strnum.h"
#include "str-sanitize.h"
#include "registry-dict.h"
#include "registry-json.h"
#include "mirror-account.h"
#include "mirror-registry-private.h"

const char *mirror_account_key(const char *name)
{
	return t_strconcat(MIRROR_KEY_ACCOUNT, registry_key_escape(name),
			   NULL);
}

const char *mirror_domain_key(const char *domain)
{
	return t_strconcat(MIRROR_KEY_DOMAIN, registry_key_escape(domain),
			   NULL);
}

bool mirror_name_is_valid(const char *name)
{
	const char *p;

	if (*name == '\0' || strlen(name) > MIRROR_NAME_MAX_LEN)
		return FALSE;
	for (p = name; *p != '\0'; p++) {
		if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
		      *p == '.' || *p == '_' || *p == '-'))
			return FALSE;
	}
	return TRUE;
}

int mirror_levels_parse(const char *str, pool_t pool,
			ARRAY_TYPE(mirror_level) *levels, const char **error_r)
{
	const char *const *words, *p;
	struct mirror_level level;

	for (words = t_strsplit_spaces(str, " "); *words != NULL; words++) {
		p = strchr(*words, ':');
		i_zero(&level);
		if (p == NULL) {
			*error_r = t_strdup_printf(
				"mirror_levels: '%s' is not NAME:LIMIT",
				str_sanitize(*words, 40));
			return -1;
		}
		level.name = t_strdup_until(*words, p);
		if (!mirror_name_is_valid(level.name)) {
			*error_r = t_strdup_printf(
				"mirror_levels: invalid level name '%s'",
				str_sanitize(level.name, 40));
			return -1;
		}
		if (strcmp(p + 1, "unlimited") == 0)
			level.limit = UINT_MAX;
		else if (str_to_uint(p + 1, &level.limit) < 0 ||
			 level.limit == UINT_MAX) {
			*error_r = t_strdup_printf(
				"mirror_levels: invalid limit for level %s",
				level.name);
			return -1;
		}
		if (mirror_level_find(levels, level.name) != NULL) {
			*error_r = t_strdup_printf(
				"mirror_levels: level %s is given twice",
				level.name);
			return -1;
		}
		level.name = p_strdup(pool, level.name);
		array_push_back(levels, &level);
	}
	return 0;
}

const struct mirror_level *
mirror_level_find(const ARRAY_TYPE(mirror_level) *levels, const char *name)
{
	const struct mirror_level *level;

	array_foreach(levels, level) {
		if (strcmp(level->name, name) == 0)
			return level;
	}
	return NULL;
}

static const char *mirror_account_encode(const struct mirror_account *acct)
{
	struct json_object *obj = json_object_new_object();
	struct json_object *arr = json_object_new_array();
	const char *domain;

	json_object_object_add(obj, "level",
			       json_object_new_string(acct->level));
	array_foreach_elem(&acct->domains, domain)
		json_object_array_add(arr, json_object_new_string(domain));
	json_object_object_add(obj, "domains", arr);
	return registry_json_finish(obj);
}

int mirror_account_decode(const char *name, const char *value, pool_t pool,
			  struct mirror_account *acct_r, const char **error_r)
{
	struct json_object *obj, *arr;
	const char *level, *domain, *error = NULL;
	size_t i;

	i_zero(acct_r);
	if (registry_json_parse(value, json_type_object, &obj, error_r) < 0)
		return -1;
	acct_r->name = p_strdup(pool, name);
	p_array_init(&acct_r->domains, pool, 4);
	if (registry_json_get_str(obj, "level", &level, &error) == 0) {
		acct_r->level = p_strdup(pool, level);
		if (!json_object_object_get_ex(obj, "domains", &arr) ||
		    !json_object_is_type(arr, json_type_array))
			error = "'domains' is missing or not an array";
	}
	for (i = 0; error == NULL && i < json_object_array_length(arr); i++) {
		struct json_object *elem = json_object_array_get_idx(arr, i);

		if (!json_object_is_type(elem, json_type_string)) {
			error = "domain is not a string";
			break;
		}
		domain = p_strdup(pool, json_object_get_string(elem));
		array_push_back(&acct_r->domains, &domain);
	}
	json_object_put(obj);
	if (error != NULL) {
		*error_r = error;
		return -1;
	}
	return 0;
}

int mirror_registry_account_get(struct registry *reg, const char *name,
				pool_t pool, struct mirror_account *acct_r,
				const char **error_r)
{
	const char *value, *error;
	int ret;

	i_zero(acct_r);
	ret = registry_get(reg, mirror_account_key(name), &value, error_r);
	if (ret <= 0)
		return ret;
	if (mirror_account_decode(name, value, pool, acct_r, &error) < 0) {
		*error_r = t_strdup_printf(
			"Broken registry data for account %s: %s",
			str_sanitize(name, 80), error);
		return -1;
	}
	return 1;
}

int mirror_accounts_decode(const char *value, pool_t pool,
			   ARRAY_TYPE(const_string) *names,
			   const char **error_r)
{
	struct json_object *arr, *elem;
	const char *name;
	size_t i;

	if (registry_json_parse_array(value, &arr, error_r) < 0)
		return -1;
	for (i = 0; i < json_object_array_length(arr); i++) {
		elem = json_object_array_get_idx(arr, i);
		if (!json_object_is_type(elem, json_type_string) ||
		    !mirror_name_is_valid(json_object_get_string(elem))) {
			*error_r = "invalid account name";
			json_object_put(arr);
			return -1;
		}
		name = p_strdup(pool, json_object_get_string(elem));
		array_push_back(names, &name);
	}
	json_object_put(arr);
	return 0;
}

int mirror_registry_accounts(struct registry *reg, pool_t pool,
			     ARRAY_TYPE(const_string) *names,
			     const char **error_r)
{
	const char *value, *error;
	int ret;

	ret = registry_get(reg, MIRROR_KEY_ACCOUNTS, &value, error_r);
	if (ret < 0)
		return -1;
	if (ret == 0) {
		/* set up by doveadm mirror init and never removed */
		*error_r = "Broken registry: "MIRROR_KEY_ACCOUNTS" is missing "
			"(doveadm mirror check --repair rebuilds it)";
		return -1;
	}
	if (mirror_accounts_decode(value, pool, names, &error) < 0) {
		*error_r = t_strdup_printf(
			"Broken registry data in the account list: %s", error);
		return -1;
	}
	return 0;
}

int mirror_registry_account_set_level(struct registry *reg,
				      const char *name, const char *level,
				      const char **error_r)
{
	struct dict_transaction_context *trans;
	struct mirror_account acct;
	ARRAY_TYPE(const_string) names;
	pool_t pool = pool_datastack_create();
	int ret;

	if ((ret = mirror_registry_account_get(reg, name, pool, &acct,
					       error_r)) < 0)
		return -1;
	t_array_init(&names, 16);
	if (mirror_registry_accounts(reg, pool, &names, error_r) < 0)
		return -1;
	trans = registry_transaction_begin(reg);
	if (ret == 0) {
		acct.name = name;
		t_array_init(&acct.domains, 1);
		if (array_lsearch(&names, &name, i_strcmp_p) == NULL) {
			array_push_back(&names, &name);
			dict_set(trans, MIRROR_KEY_ACCOUNTS,
				 registry_json_strings(&names));
		}
	}
	acct.level = level;
	dict_set(trans, mirror_account_key(name),
		 mirror_account_encode(&acct));
	return registry_commit(reg, &trans, error_r);
}

int mirror_registry_domain_account(struct registry *reg,
				   const char *domain, const char **account_r,
				   const char **error_r)
{
	return registry_get(reg, mirror_domain_key(domain), account_r,
			    error_r);
}

static void
mirror_account_drop_domain(struct mirror_account *acct, const char *domain)
{
	const char *const *domains;
	unsigned int i, count;

	domains = array_get(&acct->domains, &count);
	for (i = 0; i < count; i++) {
		if (strcmp(domains[i], domain) == 0) {
			array_delete(&acct->domains, i, 1);
			return;
		}
	}
}

int mirror_registry_domain_assign(struct registry *reg,
				  const char *domain, const char *account,
				  const char **error_r)
{
	struct dict_transaction_context *trans;
	struct mirror_account old_acct, new_acct;
	const char *old, *domain_key;
	pool_t pool = pool_datastack_create();
	bool moved;
	int ret;

	domain_key = mirror_domain_key(domain);
	if (account != NULL) {
		ret = mirror_registry_account_get(reg, account, pool,
						  &new_acct, error_r);
		if (ret <= 0) {
			if (ret == 0) {
				*error_r = t_strdup_printf(
					"Unknown account %s", account);
			}
			return ret;
		}
	}
	if ((ret = mirror_registry_domain_account(reg, domain, &old,
						  error_r)) < 0)
		return -1;
	i_zero(&old_acct);
	moved = ret > 0 && (account == NULL || strcmp(old, account) != 0);
	if (moved && mirror_registry_account_get(reg, old, pool, &old_acct,
						 error_r) < 0)
		return -1;
	trans = registry_transaction_begin(reg);
	if (moved) {
		if (old_acct.name != NULL) {
			mirror_account_drop_domain(&old_acct, domain);
			dict_set(trans, mirror_account_key(old),
				 mirror_account_encode(&old_acct));
		}
	}
	if (account == NULL)
		dict_unset(trans, domain_key);
	else {
		mirror_account_drop_domain(&new_acct, domain);
		array_push_back(&new_acct.domains, &domain);
		dict_set(trans, domain_key, account);
		dict_set(trans, mirror_account_key(account),
			 mirror_account_encode(&new_acct));
	}
	if (registry_commit(reg, &trans, error_r) < 0)
		return -1;
	return 1;
}
