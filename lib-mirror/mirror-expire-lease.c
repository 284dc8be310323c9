/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* The lease that makes one server of a fleet run a scheduled expiry
   scan. */

#include "lib.h"
#include "strnum.h"
#include "registry-dict.h"
#include "mirror-expire-lease.h"

#include <time.h>

#define MIRROR_KEY_EXPIRE_LEASE REGISTRY_KEY_MIRROR"expire-lease/"

static const char *mirror_expire_lease_key(time_t run, const char *what)
{
	return t_strdup_printf(MIRROR_KEY_EXPIRE_LEASE"%ld/%s", (long)run,
			       what);
}

int mirror_registry_expire_lease_take(struct registry *reg,
				      time_t run, unsigned int attempt,
				      const char *holder, const char **error_r)
{
	const long long one = 1;
	const char *key;
	uint64_t tickets;
	int ret;

	/* the first increment of the attempt's counter makes it 1: that
	   server holds the lease. Redis creates the key with INCRBY; the
	   file and SQL dicts increment only an existing key, and a
	   missing one is set. */
	key = mirror_expire_lease_key(run, dec2str(attempt));
	if (registry_counters_add(reg, &key, &one, 1, error_r) < 0 ||
	    (ret = registry_get_counter(reg, key, &tickets,
						error_r)) < 0)
		return -1;
	if (ret == 0 || tickets == 0) {
		*error_r = t_strdup_printf("Broken registry data in %s", key);
		return -1;
	}
	if (tickets > 1)
		return 0;
	return mirror_registry_expire_lease_refresh(reg, run, attempt, holder,
						    error_r) < 0 ? -1 : 1;
}

int mirror_registry_expire_lease_refresh(struct registry *reg,
					 time_t run, unsigned int attempt,
					 const char *holder,
					 const char **error_r)
{
	struct dict_transaction_context *trans;

	trans = registry_transaction_begin(reg);
	dict_set(trans, mirror_expire_lease_key(run, "holder"),
		 t_strdup_printf("%u %ld %s", attempt, (long)time(NULL),
				 holder));
	return registry_commit(reg, &trans, error_r);
}

int mirror_registry_expire_lease_holder(struct registry *reg,
					time_t run, unsigned int *attempt_r,
					time_t *refreshed_r,
					const char **holder_r,
					const char **error_r)
{
	const char *key = mirror_expire_lease_key(run, "holder");
	const char *value, *const *args;
	long t;
	int ret;

	if ((ret = registry_get(reg, key, &value, error_r)) <= 0)
		return ret;
	args = t_strsplit(value, " ");
	if (str_array_length(args) != 3 ||
	    str_to_uint(args[0], attempt_r) < 0 || *attempt_r == 0 ||
	    str_to_long(args[1], &t) < 0 || t < 0) {
		*error_r = t_strdup_printf("Broken registry data in %s", key);
		return -1;
	}
	*refreshed_r = (time_t)t;
	*holder_r = args[2];
	return 1;
}

int mirror_registry_expire_lease_forget(struct registry *reg,
					time_t run, unsigned int attempts,
					const char **error_r)
{
	struct dict_transaction_context *trans;
	unsigned int i;

	trans = registry_transaction_begin(reg);
	dict_unset(trans, mirror_expire_lease_key(run, "holder"));
	for (i = 1; i <= attempts; i++)
		dict_unset(trans, mirror_expire_lease_key(run, dec2str(i)));
	return registry_commit(reg, &trans, error_r);
}
