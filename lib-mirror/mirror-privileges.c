/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* Saving and restoring a process's effective identity around work done
   as another user (mirror-privileges.h). */

#define _GNU_SOURCE /* getresgid(), setresgid() */
#include "lib.h"
#include "mirror-privileges.h"

#include <unistd.h>
#include <grp.h>

void mirror_privileges_get(pool_t pool, struct mirror_privileges *p)
{
	p->uid = geteuid();
	if (getresgid(&p->rgid, &p->gid, &p->sgid) < 0)
		i_fatal("getresgid() failed: %m");
	p->ngroups = getgroups(0, NULL);
	if (p->ngroups < 0)
		i_fatal("getgroups() failed: %m");
	p->groups = p_new(pool, gid_t, p->ngroups + 1);
	if (getgroups(p->ngroups, p->groups) < 0)
		i_fatal("getgroups() failed: %m");
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
	struct mirror_privileges cur;

	T_BEGIN {
		mirror_privileges_get(pool_datastack_create(), &cur);
		if (mirror_privileges_equal(&cur, p))
			cur.ngroups = -1;
	} T_END;
	if (cur.ngroups == -1)
		return 0;

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
	return 0;
}
