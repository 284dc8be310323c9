#ifndef MIRROR_REGISTRY_H
#define MIRROR_REGISTRY_H

/* The mirror definitions in the registry (registry.h).

   Key layout (all under shared/mirror/):
     source/<source>  JSON array of the mirror definitions of one source;
                      the only key read on the delivery path
     id/<id>          the source of mirror <id> (to find it by id)
     sources          JSON array of every source that has a mirror
     next-id          counter for allocating ids
     storage/<user>   JSON array of the definitions that copy into <user>
                      (read when a storage user logs in)
     user/<user>, userdb/<user>
                      a storage user created by the suite (registry-user.h);
                      its userdb record is {"mirror_storage": "<id>"}
     status/<id>/copies, status/<id>/failures
                      copy counters, incremented on delivery
     status/<id>/last-failure
                      "<unix time> <reason>" of the last failed copy
   The accounts (mirror-account.h) and the expire index
   (mirror-expire-index.h) are under shared/mirror/ too. <source> and
   <user> are escaped with registry_key_escape(). */

#include "registry.h"
#include "mirror-def.h"

/* Append the mirrors of one normalized source to defs. Returns 1 if some
   were found, 0 if none, -1 on error (unreadable store, broken data). */
int mirror_registry_lookup(struct registry *reg, const char *source,
			   pool_t pool, ARRAY_TYPE(mirror_def) *defs,
			   const char **error_r);
/* Append the mirrors that copy into storage to defs. Returns 1 if some
   were found, 0 if none, -1 on error. */
int mirror_registry_storage_lookup(struct registry *reg,
				   const char *storage, pool_t pool,
				   ARRAY_TYPE(mirror_def) *defs,
				   const char **error_r);
/* Whether storage is a mirror's storage, as mirror_registry_storage_lookup()
   returns it, without waiting: callback is called with 1, 0 or -1 (and
   the error) once the answer is in, from the ioloop or from
   registry_wait() (registry_get_async()). */
typedef void mirror_registry_storage_callback_t(int ret, const char *error,
						void *context);
void mirror_registry_storage_lookup_async(struct registry *reg,
	const char *storage, mirror_registry_storage_callback_t *callback,
	void *context);
#define mirror_registry_storage_lookup_async(reg, storage, callback, context) \
	mirror_registry_storage_lookup_async(reg, storage - \
		CALLBACK_TYPECHECK(callback, void (*)( \
			int, const char *, typeof(context))), \
		(mirror_registry_storage_callback_t *)callback, context)
/* Add a mirror. def->id, def->created and def->auto_storage are filled in.
   With password_hash != NULL the storage user is created too, in the same
   transaction. Returns 1 if added, 0 if an identical mirror (same source
   and storage) or the user record exists, -1 on error. */
int mirror_registry_add(struct registry *reg, struct mirror_def *def,
			const char *password_hash, const char **error_r);
/* Find mirror id. Returns 1 if found (strings point into pool), 0 if not,
   -1 on error. */
int mirror_registry_get_def(struct registry *reg, unsigned int id,
			    pool_t pool, struct mirror_def *def_r,
			    const char **error_r);
/* Store changed settings (days, readonly) of an existing mirror. */
int mirror_registry_update(struct registry *reg,
			   const struct mirror_def *def, const char **error_r);
/* Remove mirror id. Returns 1 if removed (removed_r filled from pool), 0 if
   there is no such mirror, -1 on error. */
int mirror_registry_remove(struct registry *reg, unsigned int id,
			   pool_t pool, struct mirror_def *removed_r,
			   const char **error_r);
/* Append all mirrors (or those of one source, if source != NULL) to defs,
   sorted by id. Returns 0, or -1 on error. */
int mirror_registry_list(struct registry *reg, const char *source,
			 pool_t pool, ARRAY_TYPE(mirror_def) *defs,
			 const char **error_r);
/* Append every mirror to defs, sorted by id: the source list, then every
   source's mirrors, with pipelined lookups (no dict iteration). */
int mirror_registry_list_all(struct registry *reg, pool_t pool,
			     ARRAY_TYPE(mirror_def) *defs,
			     const char **error_r);

/* What doveadm mirror init sets up: the keys that exist in every
   registry (the source list, the id counter, the account list), made
   where missing. Their names are appended to made. 0, or -1 on error. */
int mirror_registry_setup(struct registry *reg, ARRAY_TYPE(const_string) *made,
			  const char **error_r);

/* (Re)create the login records of storage user for mirror_id. */
int mirror_registry_user_set(struct registry *reg, const char *user,
			     const char *password_hash, unsigned int mirror_id,
			     const char **error_r);

struct mirror_copy_result {
	unsigned int id;
	/* NULL if the copy was made */
	const char *error;
};
ARRAY_DEFINE_TYPE(mirror_copy_result, struct mirror_copy_result);
struct mirror_status {
	uint64_t copies, failures;
	time_t last_failure;
	const char *last_failure_reason;
};
/* What to add to one mirror's counters */
struct mirror_status_delta {
	unsigned int id;
	unsigned int copies, failures;
	/* the last failure (NULL: none to record) */
	time_t last_failure_time;
	const char *last_failure;
};
/* Add to the counters of each mirror of deltas, in one transaction (a
   mirror removed meanwhile is skipped). Returns 0, or -1 with error_r. */
int mirror_registry_status_add(struct registry *reg,
			       const struct mirror_status_delta *deltas,
			       unsigned int count, const char **error_r);
/* Count copies made and failed. Errors are logged, never returned: a
   counter must not fail a delivery. */
void mirror_registry_status_update(struct registry *reg,
				   const struct mirror_copy_result *results,
				   unsigned int count);
int mirror_registry_status_get(struct registry *reg, unsigned int id,
			       struct mirror_status *status_r,
			       const char **error_r);
/* A mirror's copy counter alone (0 if it isn't there). Returns 0, or -1
   with error_r. */
int mirror_registry_copies_get(struct registry *reg, unsigned int id,
			       uint64_t *copies_r, const char **error_r);
/* Add count to a mirror's copy counter (doveadm mirror verify
   --reconcile raises a counter left short by a crash). Returns 0, or -1
   with error_r. */
int mirror_registry_status_add_copies(struct registry *reg, unsigned int id,
				      uint64_t count, const char **error_r);

#endif
