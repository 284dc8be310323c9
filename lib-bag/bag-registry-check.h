#ifndef BAG_REGISTRY_CHECK_H
#define BAG_REGISTRY_CHECK_H

/* doveadm mirror check of Mail Bagging's keys (see registry-check.h): the
   bags (domain/) and their list, the recipient lists and the POP3 boxes
   with their keys, the ATRN identities' lists, the flush status, the
   retry schedules, the message counters and the monthly usage, and the
   login records of the bag users, the identities the suite created and
   the boxes. What needs a mail storage is asked of the caller.

   The bags are the truth: what is derived from them is rewritten from
   them; a list and the keys it indexes are made to agree by taking both
   (nothing an administrator added is dropped). */

struct registry_check;

struct bag_check_storage {
	/* The messages in the INBOX of user (a bag). 0, or -1 with
	   error_r. */
	int (*inbox_count)(const char *user, void *context,
			   unsigned int *count_r, const char **error_r);
	void *context;
};

/* Check Mail Bagging's keys and queue their repairs. Read errors are left
   in the check (registry_check_failed()). */
void bag_registry_check(struct registry_check *check,
			const struct bag_check_storage *storage);

#endif
