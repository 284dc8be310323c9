#ifndef MIRROR_REGISTRY_H
#define MIRROR_REGISTRY_H

#include "mirror-address.h"

/* The registry of mirror definitions. It lives in a Dovecot dict, so the
   same data can be kept in the embedded default (a file: dict) or in a
   shared store (redis:, proxy:: with SQL) by changing only the URI.

   Key layout (all under shared/mirror/):
     source/<source>  JSON array of the mirror definitions of one source;
                      the only key read on the delivery path
     id/<id>          the source of mirror <id> (to find it by id)
     sources          JSON array of every source that has a mirror
     next-id          counter for allocating ids
     storage/<user>   JSON array of the definitions that copy into <user>
                      (read when a storage user logs in)
     user/<user>      a storage user created by the suite, for Dovecot's
                      dict passdb: {"password": "{ARGON2ID}..."}
     userdb/<user>    the same user for the dict userdb:
                      {"mirror_storage": "<id>"}
     status/<id>/copies, status/<id>/failures
                      copy counters, incremented on delivery
     account/<name>   {"level": "<level>", "domains": [...]}
     accounts         JSON array of every account name
     domain/<domain>  the account a domain belongs to
     expire/<user>    the expire index: the oldest save date (unix time)
                      in the INBOX of mirror storage <user>; unset when
                      the INBOX is empty
     expire-last-run  the time of the last completed expiry scan
     status/<id>/last-failure
                      "<unix time> <reason>" of the last failed copy
   <source> is escaped with mirror_key_escape(). */

#define MIRROR_DAYS_MIN 1
#define MIRROR_DAYS_MAX 3650
#define MIRROR_DAYS_DEFAULT 30
#define MIRROR_STORAGE_MAX_LEN 255
/* account and service level names: [a-z0-9._-] */
#define MIRROR_NAME_MAX_LEN 64
/* Largest registry value that is decoded. */
#define MIRROR_REGISTRY_VALUE_MAX_SIZE (1024*1024)

struct mirror_def {
	unsigned int id;
	enum mirror_type type;
	/* normalized address (single) or domain (all) */
	const char *source;
	/* username of the mailbox that receives the copies */
	const char *storage;
	unsigned int days;
	time_t created;
	/* IMAP and POP3 users of the storage can't change or remove mail */
	bool readonly;
	/* the storage user was created for this mirror (user/<storage>) */
	bool auto_storage;
};
ARRAY_DEFINE_TYPE(mirror_def, struct mirror_def);

struct mirror_registry;

int mirror_days_parse(const char *str, unsigned int *days_r,
		      const char **error_r);
bool mirror_storage_is_valid(const char *storage, const char **error_r);
bool mirror_def_is_valid(const struct mirror_def *def, const char **error_r);

/* Encode the definitions of one source as a JSON array. */
const char *mirror_defs_encode(const ARRAY_TYPE(mirror_def) *defs);
/* Decode and validate a JSON array of definitions, appending them to defs
   (strings allocated from pool). Returns 0, or -1 with an error and defs
   unchanged. Unknown object members are ignored, so that later versions
   can add fields. */
int mirror_defs_decode(const char *json, pool_t pool,
		       ARRAY_TYPE(mirror_def) *defs, const char **error_r);
const char *mirror_sources_encode(const ARRAY_TYPE(const_string) *sources);
int mirror_sources_decode(const char *json, pool_t pool,
			  ARRAY_TYPE(const_string) *sources,
			  const char **error_r);

int mirror_registry_init(const char *dict_uri, const char *base_dir,
			 struct event *event_parent,
			 struct mirror_registry **reg_r, const char **error_r);
void mirror_registry_deinit(struct mirror_registry **reg);

/* Append the mirrors of one normalized source to defs. Returns 1 if some
   were found, 0 if none, -1 on error (unreadable store, broken data). */
int mirror_registry_lookup(struct mirror_registry *reg, const char *source,
			   pool_t pool, ARRAY_TYPE(mirror_def) *defs,
			   const char **error_r);
/* Append the mirrors that copy into storage to defs. Returns 1 if some
   were found, 0 if none, -1 on error. */
int mirror_registry_storage_lookup(struct mirror_registry *reg,
				   const char *storage, pool_t pool,
				   ARRAY_TYPE(mirror_def) *defs,
				   const char **error_r);
/* Add a mirror. def->id, def->created and def->auto_storage are filled in.
   With password_hash != NULL the storage user is created too, in the same
   transaction. Returns 1 if added, 0 if an identical mirror (same source
   and storage) or the user record exists, -1 on error. */
int mirror_registry_add(struct mirror_registry *reg, struct mirror_def *def,
			const char *password_hash, const char **error_r);
/* Find mirror id. Returns 1 if found (strings point into pool), 0 if not,
   -1 on error. */
int mirror_registry_get_def(struct mirror_registry *reg, unsigned int id,
			    pool_t pool, struct mirror_def *def_r,
			    const char **error_r);
/* Store changed settings (days, readonly) of an existing mirror. */
int mirror_registry_update(struct mirror_registry *reg,
			   const struct mirror_def *def, const char **error_r);
/* Remove mirror id. Returns 1 if removed (removed_r filled from pool), 0 if
   there is no such mirror, -1 on error. */
int mirror_registry_remove(struct mirror_registry *reg, unsigned int id,
			   pool_t pool, struct mirror_def *removed_r,
			   const char **error_r);
/* Append all mirrors (or those of one source, if source != NULL) to defs,
   sorted by id. Returns 0, or -1 on error. */
int mirror_registry_list(struct mirror_registry *reg, const char *source,
			 pool_t pool, ARRAY_TYPE(mirror_def) *defs,
			 const char **error_r);

/* Storage users created by the suite. exists returns 1/0/-1. */
int mirror_registry_user_exists(struct mirror_registry *reg, const char *user,
				const char **error_r);
int mirror_registry_user_set(struct mirror_registry *reg, const char *user,
			     const char *password_hash, unsigned int mirror_id,
			     const char **error_r);
int mirror_registry_user_remove(struct mirror_registry *reg, const char *user,
				const char **error_r);

struct mirror_copy_result {
	unsigned int id;
	/* NULL if the copy was made */
	const char *error;
};
struct mirror_status {
	uint64_t copies, failures;
	time_t last_failure;
	const char *last_failure_reason;
};
/* Count copies made and failed. Errors are logged, never returned: a
   counter must not fail a delivery. */
void mirror_registry_status_update(struct mirror_registry *reg,
				   const struct mirror_copy_result *results,
				   unsigned int count);
int mirror_registry_status_get(struct mirror_registry *reg, unsigned int id,
			       struct mirror_status *status_r,
			       const char **error_r);

/* Service levels (setting mirror_levels = NAME:LIMIT ...) and accounts */
struct mirror_level {
	const char *name;
	/* UINT_MAX: unlimited */
	unsigned int limit;
};
ARRAY_DEFINE_TYPE(mirror_level, struct mirror_level);

struct mirror_account {
	const char *name;
	const char *level;
	ARRAY_TYPE(const_string) domains;
};

bool mirror_name_is_valid(const char *name);
int mirror_levels_parse(const char *str, pool_t pool,
			ARRAY_TYPE(mirror_level) *levels, const char **error_r);
const struct mirror_level *
mirror_level_find(const ARRAY_TYPE(mirror_level) *levels, const char *name);

/* 1 found, 0 no such account, -1 error */
int mirror_registry_account_get(struct mirror_registry *reg, const char *name,
				pool_t pool, struct mirror_account *acct_r,
				const char **error_r);
int mirror_registry_accounts(struct mirror_registry *reg, pool_t pool,
			     ARRAY_TYPE(const_string) *names,
			     const char **error_r);
/* Create the account or change its level. */
int mirror_registry_account_set_level(struct mirror_registry *reg,
				      const char *name, const char *level,
				      const char **error_r);
/* 1 with the domain's account, 0 if unassigned, -1 error */
int mirror_registry_domain_account(struct mirror_registry *reg,
				   const char *domain, const char **account_r,
				   const char **error_r);
/* Move domain to account (NULL: unassign). 1 done, 0 unknown account,
   -1 error. */
int mirror_registry_domain_assign(struct mirror_registry *reg,
				  const char *domain, const char *account,
				  const char **error_r);

/* The expire index. get: 1 with the oldest save date, 0 if there is none
   (an empty INBOX or an unknown storage), -1 on error. set: oldest == 0
   unsets. lower: sets save_date if there is no entry or a later one
   (returns 0 either way). */
int mirror_registry_expire_get(struct mirror_registry *reg,
			       const char *storage, time_t *oldest_r,
			       const char **error_r);
int mirror_registry_expire_set(struct mirror_registry *reg,
			       const char *storage, time_t oldest,
			       const char **error_r);
int mirror_registry_expire_lower(struct mirror_registry *reg,
				 const char *storage, time_t save_date,
				 const char **error_r);
/* 1 with the time of the last completed scan, 0 if never, -1 on error */
/* One entry of the expire index. storage_key is the storage's name as
   the index keys it: mirror_expire_storage_key(storage). */
struct mirror_expire_entry {
	const char *storage_key;
	time_t oldest;
};
ARRAY_DEFINE_TYPE(mirror_expire_entry, struct mirror_expire_entry);
const char *mirror_expire_storage_key(const char *storage);
/* Append the expire index entries of these storages (storage keys, as
   mirror_expire_storage_key() gives them) to entries (strings from pool);
   a storage without an entry is left out. The lookups are pipelined where
   the dict can, and no dict iteration is needed (Redis has none).
   Returns 0, or -1 on error. */
int mirror_registry_expire_list(struct mirror_registry *reg, pool_t pool,
				const char *const *storage_keys,
				unsigned int count,
				ARRAY_TYPE(mirror_expire_entry) *entries,
				const char **error_r);
/* Append every mirror to defs, sorted by id: the source list, then every
   source's mirrors, with pipelined lookups (no dict iteration). */
int mirror_registry_list_all(struct mirror_registry *reg, pool_t pool,
			     ARRAY_TYPE(mirror_def) *defs,
			     const char **error_r);
/* The lease that makes one server of a fleet run a scheduled scan: 1 if
   this holder took attempt of the scan scheduled at run (the first to
   increment its counter), 0 if another server did, -1 on error. The
   holder then refreshes the lease while the scan runs; when it goes
   silent (died, or two servers lost to each other), the next attempt
   is taken the same way. */
int mirror_registry_expire_lease_take(struct mirror_registry *reg,
				      time_t run, unsigned int attempt,
				      const char *holder, const char **error_r);
int mirror_registry_expire_lease_refresh(struct mirror_registry *reg,
					 time_t run, unsigned int attempt,
					 const char *holder,
					 const char **error_r);
/* 1 with the holder's attempt, last refresh and name; 0 if nobody holds
   the lease of run; -1 on error */
int mirror_registry_expire_lease_holder(struct mirror_registry *reg,
					time_t run, unsigned int *attempt_r,
					time_t *refreshed_r,
					const char **holder_r,
					const char **error_r);
/* remove the lease keys of a past run */
int mirror_registry_expire_lease_forget(struct mirror_registry *reg,
					time_t run, unsigned int attempts,
					const char **error_r);
int mirror_registry_expire_last_run(struct mirror_registry *reg,
				    time_t *last_run_r, const char **error_r);
int mirror_registry_expire_set_last_run(struct mirror_registry *reg,
					time_t last_run, const char **error_r);

#endif
