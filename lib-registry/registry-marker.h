#ifndef REGISTRY_MARKER_H
#define REGISTRY_MARKER_H

/* The registry's marker, shared/mirror/registry: the format of the
   registry and an identity made when it was set up (doveadm mirror
   init), {"format":1,"id":"<32 hex digits>","created":<unix time>}.

   Nothing reads a registry without it: a lost registry (an emptied or
   replaced file, a flushed Redis, the wrong Redis database) has none,
   and is never taken for an empty one. Where the identity the registry
   must have is configured (the id of dovecot-mirror-registry.conf.ext),
   a registry with another one is refused too. */

#include "registry.h"

#define REGISTRY_KEY_MARKER "shared/mirror/registry"
/* the format this version reads and writes */
#define REGISTRY_FORMAT 1
#define REGISTRY_ID_HEX_LEN 32

struct registry_marker {
	unsigned int format;
	/* REGISTRY_ID_HEX_LEN lowercase hex digits */
	const char *id;
	time_t created;
};

/* A new marker of this format with a random identity. */
void registry_marker_new(struct registry_marker *marker_r);
const char *registry_marker_encode(const struct registry_marker *marker);
/* 0, or -1 with error_r for a value that isn't a marker. */
int registry_marker_parse(const char *value, struct registry_marker *marker_r,
			  const char **error_r);
/* Whether a registry whose marker is value (NULL: there is none) may be
   used: NULL if so, else why not, for the log and the user. expected_id
   NULL: any identity. */
const char *registry_marker_check(const char *value, const char *expected_id);
bool registry_id_is_valid(const char *id);

struct dict_transaction_context;

/* Read the marker: 1 with it (strings from the data stack), 0 if there
   is none, -1 if it can't be read or is broken. */
int registry_marker_get(struct registry *reg, struct registry_marker *marker_r,
			const char **error_r);
void registry_marker_set(struct dict_transaction_context *trans,
			 const struct registry_marker *marker);

#endif
