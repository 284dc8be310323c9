#ifndef MIRROR_EXPIRE_LEASE_H
#define MIRROR_EXPIRE_LEASE_H

/* The lease that makes one server of a fleet run a scheduled expiry scan.

   Key layout (under shared/mirror/):
     expire-lease/<run>/<attempt>
                      a counter: the server that increments it to 1 holds
                      the attempt
     expire-lease/<run>/holder
                      "<attempt> <last refresh> <holder>" */

#include "registry.h"

/* 1 if this holder took attempt of the scan scheduled at run (the first to
   increment its counter), 0 if another server did, -1 on error. The
   holder then refreshes the lease while the scan runs; when it goes
   silent (died, or two servers lost to each other), the next attempt
   is taken the same way. */
int mirror_registry_expire_lease_take(struct registry *reg,
				      time_t run, unsigned int attempt,
				      const char *holder, const char **error_r);
int mirror_registry_expire_lease_refresh(struct registry *reg,
					 time_t run, unsigned int attempt,
					 const char *holder,
					 const char **error_r);
/* 1 with the holder's attempt, last refresh and name; 0 if nobody holds
   the lease of run; -1 on error */
int mirror_registry_expire_lease_holder(struct registry *reg,
					time_t run, unsigned int *attempt_r,
					time_t *refreshed_r,
					const char **holder_r,
					const char **error_r);
/* remove the lease keys of a past run */
int mirror_registry_expire_lease_forget(struct registry *reg,
					time_t run, unsigned int attempts,
					const char **error_r);

#endif
