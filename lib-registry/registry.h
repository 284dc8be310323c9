#ifndef REGISTRY_H
#define REGISTRY_H

/* The registry: where the suite keeps what administrators define (mirrors,
   storage users, accounts, bags) and what its processes count, in one
   Dovecot dict. The embedded default is a file: dict served by Dovecot's
   dict service; a fleet shares one in Redis or SQL by changing only the
   URI.

   This is its core: opening the dict, and the names keys are made of.
   The parts that keep data in it (lib-mirror's mirror-registry.h and
   friends, lib-bag's bag-registry.h) use registry-dict.h. Every key is
   under shared/: shared/mirror/... for Mail Mirror, the storage users and
   accounts, shared/bag/... for Mail Bagging. */

struct registry;

/* Largest registry value that is decoded. */
#define REGISTRY_VALUE_MAX_SIZE (1024*1024)

int registry_init(const char *dict_uri, const char *base_dir,
		  struct event *event_parent, struct registry **reg_r,
		  const char **error_r);
/* The same registry, read whether or not it has its marker
   (registry-marker.h): for doveadm mirror init and check, which set it
   up and repair it, as root. Through the mirror-registry service
   (proxy:<socket>:mirror) the service is asked for that; another URI
   is read as it is. */
int registry_init_unchecked(const char *dict_uri, const char *base_dir,
			    struct event *event_parent,
			    struct registry **reg_r, const char **error_r);
void registry_deinit(struct registry **reg);
/* Wait until every lookup of reg that doesn't wait for its answer
   (registry-dict.h's registry_get_async()) has called back. */
void registry_wait(struct registry *reg);

/* A process that reads the registry for every delivery logs a run of
   failures (an unavailable or damaged registry) once, not once per
   message: registry_failure_begin() is TRUE for the first failure of a
   run (log it) and FALSE after it; registry_failure_end(), called after
   a success, is TRUE when it ended a run (log that). */
bool registry_failure_begin(void);
bool registry_failure_end(void);

/* Escape a name (a source, a user, a domain) for use as one component of
   a dict key: everything except [a-z0-9.@_+-] becomes %xx. */
const char *registry_key_escape(const char *str);
/* The reverse: -1 for a malformed or NUL escape. */
int registry_key_unescape(const char *str, string_t *dest);

#endif
