#ifndef REGISTRY_CHECK_H
#define REGISTRY_CHECK_H

/* doveadm mirror check: the registry's fsck. Each part of the suite checks
   its own keys through a registry_check (the registry's own keys here and
   in registry-lock.h, Mail Mirror's in lib-mirror's
   mirror-registry-check.h, Mail Bagging's in lib-bag's
   bag-registry-check.h):

   - it reads the registry: all of it at once where the dict can iterate
     (the file and SQL dicts), else key by key from the lists and the id
     index, with pipelined lookups (Redis has no iteration);
   - it reports each problem with its key, and either queues the changes
     that repair it (registry_check_fixed() with registry_check_set() and
     _unset()) or says why it is left;
   - registry_check_commit() writes the queued changes in one
     transaction, after everything was read: no lookup runs while a
     transaction is open (Redis would queue it).

   Reads never fail one by one: the first dict error is kept
   (registry_check_failed()) and everything after it reads as missing,
   so that the caller gives up once, at the end of a step. */

#include "registry.h"

struct json_object;
struct registry_check;

enum registry_check_state {
	/* nothing was or can be done here: the action says why */
	REGISTRY_CHECK_LEFT,
	/* the repair is queued (or, without repair, would be) */
	REGISTRY_CHECK_PENDING,
	/* repaired */
	REGISTRY_CHECK_DONE,
	/* the repair's commit failed */
	REGISTRY_CHECK_FAILED,
	/* not a problem: what the check couldn't look at */
	REGISTRY_CHECK_NOTE,
};

struct registry_check_problem {
	const char *key;
	const char *problem;
	/* what was done (or, without repair, would be), or "left: why" */
	const char *action;
	enum registry_check_state state;
};
ARRAY_DEFINE_TYPE(registry_check_problem, struct registry_check_problem);

/* repair: registry_check_commit() writes the repairs, else they are only
   described */
struct registry_check *registry_check_init(struct registry *reg, bool repair);
void registry_check_deinit(struct registry_check **check);

bool registry_check_repairing(const struct registry_check *check);
/* Memory that lives as long as the check. */
pool_t registry_check_pool(const struct registry_check *check);

/* Read every key of the registry at once if the dict can iterate (and
   forget what was read before). Where it can't, this is noted (one row
   that says what couldn't be searched) and keys are looked up as they
   are asked for. 0, or -1 with error_r if the registry can't be read. */
int registry_check_load(struct registry_check *check, const char **error_r);
/* Whether registry_check_load() read everything: only then do
   registry_check_names() and the searches for keys that no list names
   work. */
bool registry_check_iterated(const struct registry_check *check);

/* Look keys up now, pipelined, for the registry_check_get()s that follow
   (nothing to do after an iteration). */
void registry_check_prefetch(struct registry_check *check,
			     const char *const *keys, unsigned int count);
/* The same for an array of keys, which may be empty. */
void registry_check_prefetch_array(struct registry_check *check,
				   const ARRAY_TYPE(const_string) *keys);
/* The value of key, NULL if it doesn't exist (or the read failed). */
const char *registry_check_get(struct registry_check *check, const char *key);
/* After an iteration: the names of the keys under prefix (the rest of the
   key, still escaped), sorted. */
void registry_check_names(struct registry_check *check, const char *prefix,
			  ARRAY_TYPE(const_string) *names);
/* The first read error, or NULL. */
const char *registry_check_failed(const struct registry_check *check);

/* A problem with key that is left: why tells the administrator what to
   do (or why nothing can be done). */
void registry_check_left(struct registry_check *check, const char *key,
			 const char *problem, const char *why);
/* A problem that the changes queued with it repair. done says what they
   do, as a past participle ("rebuilt from the definitions"): without
   repair the action is "would be <done>". */
void registry_check_fixed(struct registry_check *check, const char *key,
			  const char *problem, const char *done);
/* What the check couldn't look at: a row that is no problem. */
void registry_check_note(struct registry_check *check, const char *key,
			 const char *text, const char *action);
/* Queue a change (the last one of a key wins). */
void registry_check_set(struct registry_check *check, const char *key,
			const char *value);
void registry_check_unset(struct registry_check *check, const char *key);
/* Whether a change of key is queued. */
bool registry_check_changes(const struct registry_check *check,
			    const char *key);
/* With repair, write the queued changes in one transaction; the
   problems they repair are done (or failed). 0, or -1 with error_r. */
int registry_check_commit(struct registry_check *check, const char **error_r);

/* Every row so far, in the order they were found. */
const ARRAY_TYPE(registry_check_problem) *
registry_check_problems(const struct registry_check *check);
/* How many problems remain: left, failed, or (without repair) found. */
unsigned int registry_check_remaining(const struct registry_check *check);

/* A counter's value: a non-negative integer in the range every backend
   keeps. */
bool registry_check_counter_is_valid(const char *value);
/* "'<value>'", sanitized, for a problem's text. */
const char *registry_check_value(const char *value);

/* The registry's marker: 1 if the rest may be checked; 0 if the marker
   is broken (a row says so, and nothing else may be checked); -1 with
   error_r (one line for the administrator) if the registry can't be
   checked: it can't be read, has no marker (a lost registry has none,
   and doveadm mirror init --upgrade sets one up), or has a newer
   format. */
int registry_check_marker(struct registry_check *check, const char **error_r);

/* The login records of a user the suite created. password_hint: the
   user must have a passdb record (shared/mirror/user/), and this says how
   to make a new one if it is missing ("doveadm mirror password 3");
   NULL: it need not have one. userdb_fields: the members its userdb
   record must have (released); NULL: it has none. A missing or wrong
   userdb record is rewritten with them (other members are kept). The
   user counts as used (registry_check_logins_unused()). */
void registry_check_login(struct registry_check *check, const char *user,
			  const char *password_hint,
			  struct json_object *userdb_fields);
/* user is used by something of the suite (a storage, a bag user, an
   ATRN identity, a POP3 box) whether or not it has login records. */
void registry_check_login_used(struct registry_check *check,
			       const char *user);
/* After an iteration: report the login records that nothing uses (left:
   removing a login is the administrator's call). */
void registry_check_logins_unused(struct registry_check *check);

#endif
