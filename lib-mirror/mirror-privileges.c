/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* Saving and restoring a process's effective identity around work done
   as another user (mirror-privileges.h). */

#define _GNU_SOURCE /* getresgid(), setresgid() */
#include "lib.h"
#include "mirror-privileges.h"

#include <unistd.h>
#include <grp.h>

/* Supplementary groups read with one getgroups() call into this many
   entries; more take a second call for the count */
#define MIRROR_PRIVILEGES_GROUPS_GUESS 32

/* The identity last set or read, while known (mirror_privileges_track()) */
static struct {
	bool tracking, known;
	struct mirror_privileges privs;
	gid_t groups[MIRROR_PRIVILEGES_GROUPS_GUESS];
} mirror_privileges_cur;

static void mirror_privileges_remember(const struct mirror_privileges *p)
{
	if (!mirror_privileges_cur.tracking)
		return;
	if (p->ngroups > (int)N_ELEMENTS(mirror_privileges_cur.groups)) {
		mirror_privileges_cur.known = FALSE;
		return;
	}
	mirror_privileges_cur.privs = *p;
	mirror_privileges_cur.privs.groups = mirror_privileges_cur.groups;
	memcpy(mirror_privileges_cur.groups, p->groups,
	       sizeof(gid_t) * p->ngroups);
	mirror_privileges_cur.known = TRUE;
}

/* The remembered identity, if it is still known and the effective uid
   and gid agree with it (Dovecot's storage service changes both; mbox
   locking with mail_privileged_group the effective gid alone) */
static const struct mirror_privileges *mirror_privileges_recall(void)
{
	if (!mirror_privileges_cur.known)
		return NULL;
	if (geteuid() != mirror_privileges_cur.privs.uid ||
	    getegid() != mirror_privileges_cur.privs.gid) {
		mirror_privileges_cur.known = FALSE;
		return NULL;
	}
	return &mirror_privileges_cur.privs;
}

void mirror_privileges_track(void)
{
	mirror_privileges_cur.tracking = TRUE;
	mirror_privileges_cur.known = FALSE;
}

void mirror_privileges_forget(void)
{
	mirror_privileges_cur.known = FALSE;
}

static void mirror_privileges_get_ids(struct mirror_privileges *p)
{
	p->uid = geteuid();
	if (getresgid(&p->rgid, &p->gid, &p->sgid) < 0)
		i_fatal("getresgid() failed: %m");
}

static void mirror_privileges_get_groups(pool_t pool, struct mirror_privileges *p)
{
	gid_t guess[MIRROR_PRIVILEGES_GROUPS_GUESS];

	/* this runs around every save as another user: one call, unless
	   the process has more groups than the guess */
	p->ngroups = getgroups(N_ELEMENTS(guess), guess);
	if (p->ngroups < 0 && errno == EINVAL)
		p->ngroups = getgroups(0, NULL);
	if (p->ngroups < 0)
		i_fatal("getgroups() failed: %m");
	p->groups = p_new(pool, gid_t, p->ngroups + 1);
	if (p->ngroups <= (int)N_ELEMENTS(guess))
		memcpy(p->groups, guess, sizeof(gid_t) * p->ngroups);
	else if (getgroups(p->ngroups, p->groups) != p->ngroups)
		i_fatal("getgroups() failed: %m");
}

void mirror_privileges_get(pool_t pool, struct mirror_privileges *p)
{
	const struct mirror_privileges *cur = mirror_privileges_recall();

	if (cur != NULL) {
		*p = *cur;
		p->groups = p_new(pool, gid_t, cur->ngroups + 1);
		memcpy(p->groups, cur->groups, sizeof(gid_t) * cur->ngroups);
		return;
	}
	mirror_privileges_get_ids(p);
	mirror_privileges_get_groups(pool, p);
	mirror_privileges_remember(p);
}

static bool mirror_privileges_equal(const struct mirror_privileges *p1,
				    const struct mirror_privileges *p2)
{
	return p1->uid == p2->uid && p1->gid == p2->gid &&
		p1->rgid == p2->rgid && p1->sgid == p2->sgid &&
		p1->ngroups == p2->ngroups &&
		memcmp(p1->groups, p2->groups,
		       sizeof(gid_t) * p1->ngroups) == 0;
}

int mirror_privileges_set(const struct mirror_privileges *p,
			  const char **error_r)
{
	const struct mirror_privileges *known = mirror_privileges_recall();
	struct mirror_privileges cur;

	if (known != NULL) {
		if (mirror_privileges_equal(known, p))
			return 0;
		cur = *known;
	} else {
		mirror_privileges_get_ids(&cur);
		if (cur.uid == p->uid && cur.rgid == p->rgid &&
		    cur.gid == p->gid && cur.sgid == p->sgid) {
			bool same;

			/* the groups only decide when the ids are the
			   same */
			T_BEGIN {
				mirror_privileges_get_groups(
					pool_datastack_create(), &cur);
				same = mirror_privileges_equal(&cur, p);
			} T_END;
			if (same)
				return 0;
		}
	}

	if (cur.uid != 0 && seteuid(0) < 0) {
		*error_r = t_strdup_printf(
			"Can't switch to uid %ld: seteuid(0) failed: %m",
			(long)p->uid);
		return -1;
	}
	if (setgroups(p->ngroups, p->groups) < 0)
		i_fatal("mirror: setgroups() failed: %m");
	if (setresgid(p->rgid, p->gid, p->sgid) < 0)
		i_fatal("mirror: setresgid(%ld, %ld, %ld) failed: %m",
			(long)p->rgid, (long)p->gid, (long)p->sgid);
	if (p->uid != 0 && seteuid(p->uid) < 0)
		i_fatal("mirror: seteuid(%ld) failed: %m", (long)p->uid);
	mirror_privileges_remember(p);
	return 0;
}
