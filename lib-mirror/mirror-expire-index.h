#ifndef MIRROR_EXPIRE_INDEX_H
#define MIRROR_EXPIRE_INDEX_H

/* The expire index, kept by the expire_mirror plugin and the expiry scan.

   Key layout (under shared/mirror/):
     expire/<user>    the oldest save date (unix time) in the INBOX of
                      mirror storage <user>; unset when the INBOX is empty
     expire-last-run  the time of the last completed expiry scan */

#include "registry.h"

/* get: 1 with the oldest save date, 0 if there is none (an empty INBOX or
   an unknown storage), -1 on error. set: oldest == 0 unsets. lower: sets
   save_date if there is no entry or a later one (returns 0 either
   way). */
int mirror_registry_expire_get(struct registry *reg,
			       const char *storage, time_t *oldest_r,
			       const char **error_r);
int mirror_registry_expire_set(struct registry *reg,
			       const char *storage, time_t oldest,
			       const char **error_r);
int mirror_registry_expire_lower(struct registry *reg,
				 const char *storage, time_t save_date,
				 const char **error_r);

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
int mirror_registry_expire_list(struct registry *reg, pool_t pool,
				const char *const *storage_keys,
				unsigned int count,
				ARRAY_TYPE(mirror_expire_entry) *entries,
				const char **error_r);

/* 1 with the time of the last completed scan, 0 if never, -1 on error */
int mirror_registry_expire_last_run(struct registry *reg,
				    time_t *last_run_r, const char **error_r);
int mirror_registry_expire_set_last_run(struct registry *reg,
					time_t last_run, const char **error_r);

#endif
