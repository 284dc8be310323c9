#ifndef MIRROR_PRIVILEGES_H
#define MIRROR_PRIVILEGES_H

/* A process identity: what Dovecot's restrict_access() changes when a
   mail user is set up with a temporary privilege drop (LMTP, or a
   mail_storage_service with MAIL_STORAGE_SERVICE_FLAG_TEMP_PRIV_DROP). */
struct mirror_privileges {
	/* effective uid; the real uid stays root with a temporary drop */
	uid_t uid;
	/* real, effective and saved gid: restrict_access() sets all of
	   them, and checks the real one next time */
	gid_t rgid, gid, sgid;
	int ngroups;
	gid_t *groups;
};

/* The current identity; groups are allocated from pool. */
void mirror_privileges_get(pool_t pool, struct mirror_privileges *p);
/* Switch to identity p, regaining root first if needed (the real uid is
   root). Returns -1 if root can't be regained; failing after that is
   fatal, since carrying on with a mixed identity could touch another
   user's mail. Nothing is changed if p is the current identity. */
int mirror_privileges_set(const struct mirror_privileges *p,
			  const char **error_r);

/* For a process whose identity only these functions and the mail storage
   service calls that it follows with mirror_privileges_forget() change
   (mirror-writer): remember the identity they set or read, so that
   mirror_privileges_get() and mirror_privileges_set() read no more than
   the effective uid and gid (a change of either from elsewhere is
   noticed). */
void mirror_privileges_track(void);
/* After a call that may have changed the identity (a mail storage service
   lookup or user setup) */
void mirror_privileges_forget(void);

#endif
