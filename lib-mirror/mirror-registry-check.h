#ifndef MIRROR_REGISTRY_CHECK_H
#define MIRROR_REGISTRY_CHECK_H

/* doveadm mirror check of Mail Mirror's keys (see registry-check.h): the
   mirror definitions (source/) and what is derived from them (the source
   list, the id index and counter, the storage lists), the copy counters,
   the expire index, the storage users' login records, and the accounts
   with their domains. What needs a mail storage or the userdb is asked
   of the caller.

   The definitions are the truth: what is derived from them is rewritten
   from them. A definition that can't be read is left, and so is
   everything that might belong to it. */

#include "mirror-def.h"

struct registry_check;

struct mirror_check_storage {
	/* The copy records in the hash chain of def's mirror (see
	   mirror-chain.h), less the copies that mirror-writer has yet to
	   count. 0, or -1 with error_r. */
	int (*chain_copies)(const struct mirror_def *def, void *context,
			    uint64_t *copies_r, const char **error_r);
	/* The oldest save date in storage's INBOX, 0 if it is empty, as
	   doveadm mirror expire --rebuild-index finds it
	   (mirror_expire_storage_oldest()). 0, or -1 with error_r. */
	int (*oldest_saved)(const char *storage, void *context,
			    time_t *oldest_r, const char **error_r);
	/* 1 if the userdb knows user, 0 if not, -1 (with error_r) if it
	   can't tell. */
	int (*user_exists)(const char *user, void *context,
			   const char **error_r);
	void *context;
};

/* Check Mail Mirror's keys and queue their repairs. Read errors are left
   in the check (registry_check_failed()). */
void mirror_registry_check(struct registry_check *check,
			   const struct mirror_check_storage *storage);

#endif
