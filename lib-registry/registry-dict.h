#ifndef REGISTRY_DICT_H
#define REGISTRY_DICT_H

/* The dict behind the registry, for the parts that keep data in it
   (lib-mirror's mirror-registry.c and friends, lib-bag's bag-registry.c):
   lookups and commits with readable errors, and counters.

   No lookup may run while one of the registry's transactions is open:
   Redis queues every command between MULTI and EXEC, and Dovecot's dict
   server crashes on a lookup there. Read first, then write. */

#include "dict.h"
#include "registry.h"

#define REGISTRY_KEY_MIRROR DICT_PATH_SHARED"mirror/"
#define REGISTRY_KEY_BAG DICT_PATH_SHARED"bag/"

struct registry {
	struct dict *dict;
	struct dict_op_settings opset;
	char *base_dir;
	/* transactions begun and not yet committed */
	unsigned int transactions;

	/* the write lock (registry-lock.h): the flock of this server, the
	   generation held, and whether another holder took it over */
	struct file_lock *lock_file;
	uint64_t lock_gen;
	bool lock_held;
	bool lock_lost;
};

/* dict_lookup() with the key in the error. 1 found, 0 not, -1 error. */
int registry_get(struct registry *reg, const char *key,
		 const char **value_r, const char **error_r);
/* registry_get() that returns at once: callback is called with what it
   would have returned once the answer is in (from the ioloop, or from
   registry_wait()). value and error are valid only during the call. */
typedef void registry_get_callback_t(int ret, const char *value,
				     const char *error, void *context);
void registry_get_async(struct registry *reg, const char *key,
			registry_get_callback_t *callback, void *context);
#define registry_get_async(reg, key, callback, context) \
	registry_get_async(reg, key - \
		CALLBACK_TYPECHECK(callback, void (*)( \
			int, const char *, const char *, typeof(context))), \
		(registry_get_callback_t *)callback, context)
/* Look up count keys; values_r[i] is the value (from pool) or NULL when
   the key doesn't exist. The lookups are pipelined where the dict can.
   0, or -1 with the first error. */
int registry_get_many(struct registry *reg, pool_t pool,
		      const char *const *keys, unsigned int count,
		      const char **values_r, const char **error_r);
/* A counter: 1 with its value, 0 (value 0) if it doesn't exist, -1 if it
   can't be read or isn't a number. */
int registry_get_counter(struct registry *reg, const char *key,
			 uint64_t *value_r, const char **error_r);
/* A unix time: 1 with it, 0 (time 0) if the key doesn't exist, -1 if it
   can't be read or isn't a time. */
int registry_get_time(struct registry *reg, const char *key,
		      time_t *time_r, const char **error_r);
/* A unix time as the registry keeps it: 0, or -1 if value isn't one. */
int registry_time_parse(const char *value, time_t *time_r);

struct dict_transaction_context *
registry_transaction_begin(struct registry *reg);
/* Commit: the dict's DICT_COMMIT_RET_*, with error_r when it is < 0. */
int registry_transaction_commit(struct registry *reg,
				struct dict_transaction_context **trans,
				const char **error_r);
/* Commit: 0, or -1 with error_r (a missing key counts as done). */
int registry_commit(struct registry *reg,
		    struct dict_transaction_context **trans,
		    const char **error_r);

/* Add diffs[i] to the counter keys[i], all in one transaction. Redis
   creates a missing key with INCRBY; the file and SQL dicts increment
   only existing keys, so when one is missing (DICT_COMMIT_RET_NOTFOUND)
   every key is set to its diff instead: two first increments at the same
   instant may then count as one. 0, or -1 with error_r. */
int registry_counters_add(struct registry *reg, const char *const *keys,
			  const long long *diffs, unsigned int count,
			  const char **error_r);

/* Call callback with every key under prefix (its suffix) and value until
   it returns -1. Redis has no iteration: use it only as a fallback. */
int registry_iterate(struct registry *reg, const char *prefix,
		     int (*callback)(const char *name, const char *value,
				     void *context, const char **error_r),
		     void *context, const char **error_r);
/* The same, but 0 without calling callback if the dict can't iterate
   (Redis): 1 if it did, -1 on error. */
int registry_iterate_if_supported(struct registry *reg, const char *prefix,
		int (*callback)(const char *name, const char *value,
				void *context, const char **error_r),
		void *context, const char **error_r);

#endif
