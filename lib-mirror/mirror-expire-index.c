/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* The expire index: the oldest save date in each mirror storage's INBOX,
   so that the expiry scan opens only the storages that have something
   due, and the time of the last completed scan. */

#include "lib.h"
#include "array.h"
#include "strnum.h"
#include "str-sanitize.h"
#include "registry-dict.h"
#include "mirror-expire-index.h"
#include "mirror-registry-private.h"

#define MIRROR_KEY_EXPIRE_LAST_RUN REGISTRY_KEY_MIRROR"expire-last-run"

const char *mirror_expire_storage_key(const char *storage)
{
	return registry_key_escape(t_str_lcase(storage));
}

const char *mirror_expire_key(const char *storage)
{
	return t_strconcat(MIRROR_KEY_EXPIRE,
			   mirror_expire_storage_key(storage), NULL);
}

int mirror_registry_expire_get(struct registry *reg,
			       const char *storage, time_t *oldest_r,
			       const char **error_r)
{
	return registry_get_time(reg, mirror_expire_key(storage),
				 oldest_r, error_r);
}

int mirror_registry_expire_set(struct registry *reg,
			       const char *storage, time_t oldest,
			       const char **error_r)
{
	struct dict_transaction_context *trans;

	trans = registry_transaction_begin(reg);
	if (oldest == 0)
		dict_unset(trans, mirror_expire_key(storage));
	else {
		dict_set(trans, mirror_expire_key(storage),
			 dec2str(oldest));
	}
	return registry_commit(reg, &trans, error_r);
}

int mirror_registry_expire_lower(struct registry *reg,
				 const char *storage, time_t save_date,
				 const char **error_r)
{
	time_t oldest;
	int ret;

	ret = mirror_registry_expire_get(reg, storage, &oldest, error_r);
	if (ret < 0)
		return -1;
	if (ret > 0 && oldest <= save_date)
		return 0;
	return mirror_registry_expire_set(reg, storage, save_date, error_r);
}

int mirror_registry_expire_last_run(struct registry *reg,
				    time_t *last_run_r, const char **error_r)
{
	return registry_get_time(reg, MIRROR_KEY_EXPIRE_LAST_RUN,
				 last_run_r, error_r);
}

int mirror_registry_expire_set_last_run(struct registry *reg,
					time_t last_run, const char **error_r)
{
	struct dict_transaction_context *trans;

	trans = registry_transaction_begin(reg);
	dict_set(trans, MIRROR_KEY_EXPIRE_LAST_RUN, dec2str(last_run));
	return registry_commit(reg, &trans, error_r);
}

int mirror_registry_expire_list(struct registry *reg, pool_t pool,
				const char *const *storage_keys,
				unsigned int count,
				ARRAY_TYPE(mirror_expire_entry) *entries,
				const char **error_r)
{
	struct mirror_expire_entry *entry;
	const char **keys, **values;
	pool_t lookup_pool;
	unsigned int i;
	time_t t;
	int ret = 0;

	keys = t_new(const char *, count + 1);
	values = t_new(const char *, count + 1);
	for (i = 0; i < count; i++)
		keys[i] = t_strconcat(MIRROR_KEY_EXPIRE, storage_keys[i], NULL);
	lookup_pool = pool_alloconly_create("mirror expire index", 4096);
	if (registry_get_many(reg, lookup_pool, keys, count, values,
				     error_r) < 0) {
		pool_unref(&lookup_pool);
		return -1;
	}
	for (i = 0; i < count && ret == 0; i++) {
		if (values[i] == NULL)
			continue;
		if (registry_time_parse(values[i], &t) < 0) {
			*error_r = t_strdup_printf(
				"Broken registry data in %s: not a time",
				str_sanitize(keys[i], 120));
			ret = -1;
			break;
		}
		entry = array_append_space(entries);
		entry->storage_key = p_strdup(pool, storage_keys[i]);
		entry->oldest = t;
	}
	pool_unref(&lookup_pool);
	return ret;
}
