#ifndef REGISTRY_LOCK_H
#define REGISTRY_LOCK_H

/* The registry's write lock: what a change that reads a list and writes
   it back (a mirror's add, a bag recipient's, ...) holds from its first
   read to its commit, so that two administrators, or two servers sharing
   one registry, never lose each other's change.

   Dovecot's dict has no compare-and-set, and its Redis driver no way to
   learn the value an increment made, so the lock is built from what
   every backend has:

   - On a server, an flock of <base_dir>/mirror-registry.lock: one holder
     per host, released by the kernel when the holder dies.
   - Among servers, a lease in the registry. Generation <g>
     (shared/mirror/lock/gen) is held by whoever raised its claim counter
     (shared/mirror/lock/claim/<g>, made with value 0 in advance, as the
     file and SQL dicts increment only keys that exist) from 0 to 1: an
     increment followed by a lookup that finds 1. The holder records
     itself and its lease's end in shared/mirror/lock/holder/<g>, and
     releases by moving to generation g+1. When two servers increment at
     once, both may find 2 and nobody holds g: the others move on after
     REGISTRY_LOCK_NOBODY_SECS, as they do past a holder whose lease
     ran out (it died).
   - A holder that was moved past (stalled longer than its lease) finds
     out before its next commit, which then fails without changing
     anything. */

#include "registry.h"

/* how long a holder may keep the lock without refreshing it */
#define REGISTRY_LOCK_LEASE_SECS 60
/* how long a generation may stay claimed without a holder */
#define REGISTRY_LOCK_NOBODY_SECS 1
/* claim counters made in advance */
#define REGISTRY_LOCK_AHEAD 16

/* Take the lock, waiting at most timeout_msecs for it. 0, or -1 with
   error_r (a timeout, an unreadable registry). */
int registry_lock(struct registry *reg, unsigned int timeout_msecs,
		  const char **error_r);
/* Give it back (registry_deinit() does too). */
void registry_unlock(struct registry *reg);
/* Renew the lease of a holder that works longer than
   REGISTRY_LOCK_LEASE_SECS / 2. */
int registry_lock_refresh(struct registry *reg, const char **error_r);

struct dict_transaction_context;
struct registry_check;
/* In trans: the keys of the lock that a new registry has (doveadm mirror
   init), or that check --repair makes again. */
void registry_lock_setup(struct dict_transaction_context *trans);
/* Check the lock's keys (registry-check.h): its generation, which nobody
   can lock without, and the claim counters of the generations ahead. The
   repair makes them again. */
void registry_lock_check(struct registry_check *check);

#endif
