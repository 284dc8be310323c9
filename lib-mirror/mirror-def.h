#ifndef MIRROR_DEF_H
#define MIRROR_DEF_H

/* A mirror: its source (an address or a domain), the storage user whose
   INBOX receives the copies, and how long copies are kept. */

#include "mirror-address.h"

#define MIRROR_DAYS_MIN 1
#define MIRROR_DAYS_MAX 3650
#define MIRROR_DAYS_DEFAULT 30
#define MIRROR_STORAGE_MAX_LEN 255
/* the longest reason a hold or a release may give */
#define MIRROR_HOLD_REASON_MAX_LEN 500

struct mirror_def {
	unsigned int id;
	enum mirror_type type;
	/* normalized address (single) or domain (all) */
	const char *source;
	/* username of the mailbox that receives the copies */
	const char *storage;
	unsigned int days;
	time_t created;
	/* IMAP and POP3 users of the storage can't change or remove mail */
	bool readonly;
	/* the storage user was created for this mirror (user/<storage>) */
	bool auto_storage;
	/* A legal hold: when it was put on (0: not held), and why ("" if
	   no reason was given). The expiry scan removes nothing from the
	   storage of a held mirror, and the mirror can't be removed. */
	time_t hold_since;
	const char *hold_reason;
};
ARRAY_DEFINE_TYPE(mirror_def, struct mirror_def);

int mirror_days_parse(const char *str, unsigned int *days_r,
		      const char **error_r);
bool mirror_storage_is_valid(const char *storage, const char **error_r);
bool mirror_def_is_valid(const struct mirror_def *def, const char **error_r);
/* A hold's or a release's reason: printable UTF-8 (no control
   characters), at most MIRROR_HOLD_REASON_MAX_LEN bytes. */
bool mirror_hold_reason_is_valid(const char *reason, const char **error_r);

/* Encode the definitions of one source as a JSON array. */
const char *mirror_defs_encode(const ARRAY_TYPE(mirror_def) *defs);
/* Decode and validate a JSON array of definitions, appending them to defs
   (strings allocated from pool). Returns 0, or -1 with an error and defs
   unchanged. Unknown object members are ignored, so that later versions
   can add fields. */
int mirror_defs_decode(const char *json, pool_t pool,
		       ARRAY_TYPE(mirror_def) *defs, const char **error_r);
/* The list of sources that have a mirror: a JSON array of normalized
   sources. */
const char *mirror_sources_encode(const ARRAY_TYPE(const_string) *sources);
int mirror_sources_decode(const char *json, pool_t pool,
			  ARRAY_TYPE(const_string) *sources,
			  const char **error_r);

#endif
