#ifndef BAG_REGISTRY_H
#define BAG_REGISTRY_H

#include "registry.h"
#include "bag-def.h"

/* Mail Bagging: the domains whose mail is held for the customer's own
   server, in the same dict as the mirror registry.

   Key layout (all under shared/bag/):
     domain/<domain>     the bag of a domain, a JSON object (see
                         bag_def_encode())
     domains             JSON array of every bagged domain
     rcpt/<domain>/<address>
                         "1" for each address of the domain's recipient
                         list (when the bag has one)
     rcpts/<domain>      JSON array of those addresses (so that no dict
                         iteration is needed: Redis has none)
     identity/<identity> JSON array of the domains an ATRN identity may
                         pull
     box/<domain>/<address>
                         the POP3 box user of a recipient (pop3 bags with
                         a box per account)
     boxes/<domain>      JSON array of the addresses with a box
     status/<domain>     the last flush: JSON {"time":, "result":,
                         "delivered":, "deferred":, "bounced":,
                         "tls":}
     backup/<domain>     a backup bag's retry schedule: JSON
                         {"next":, "interval":, "failures":}
     usage/<domain>/<YYYY-MM>/messages, .../bytes
                         what LMTP took into the bag in a month (the
                         month in the suite's zone), see bag-usage.h
     count/<domain>      the messages in the bag: incremented by LMTP
                         for each message it stores, set to what is
                         left by each flush (a hint for ETRN's reply,
                         which must not read a big bag)
   The bag user (whose INBOX holds the domain's mail) and an ATRN identity
   created by the suite have login records like mirror storage users
   (shared/mirror/user/, shared/mirror/userdb/). <domain> and <address>
   are escaped with registry_key_escape(). */

struct bag_status {
	/* 0: never flushed */
	time_t time;
	const char *result;
	unsigned int delivered, deferred, bounced;
	/* the session's TLS, "TLSv1.3 TLS_AES_256_GCM_SHA384", or "none"
	   in the clear; NULL if not known (ATRN, older records) */
	const char *tls;
};

/* 1 with the bag of domain, 0 if the domain isn't bagged, -1 on error
   (an unreadable store, broken data). */
int bag_registry_get(struct registry *reg, const char *domain,
		     pool_t pool, struct bag_def *def_r, const char **error_r);
/* Every bag, sorted by domain. */
int bag_registry_list(struct registry *reg, pool_t pool,
		      ARRAY_TYPE(bag_def) *defs, const char **error_r);
/* Add a bag. def->created is set. user_password_hash: the login record of
   the bag user, which must not exist yet. identity_password_hash: the
   identity's login record is created too (it must not exist). Returns 1
   if added, 0 if the domain is bagged already or a login record exists
   (error_r says which), -1 on error. */
int bag_registry_add(struct registry *reg, struct bag_def *def,
		     const char *user_password_hash,
		     const char *identity_password_hash,
		     const char **error_r);
/* Remove the bag of domain (and its recipient list, status and the login
   record of its identity if that was created for it and pulls no other
   domain). The bag user's records stay, so that its mail can be found and
   deleted: remove them with registry_user_remove() then. 1 removed
   (removed_r from pool), 0 not bagged, -1 error. */
int bag_registry_remove(struct registry *reg, const char *domain,
			pool_t pool, struct bag_def *removed_r,
			const char **error_r);

/* Replace the definition of a bag (its domain, user and modes stay what
   they were: the caller changes its settings, e.g. tls). */
int bag_registry_def_update(struct registry *reg, const struct bag_def *def,
			    const char **error_r);

/* 1 if addr is in the domain's recipient list, 0 if not, -1 on error. */
int bag_registry_rcpt_lookup(struct registry *reg, const char *domain,
			     const char *addr, const char **error_r);
/* Add (add=TRUE) or remove addresses of the list; turns the list on. */
int bag_registry_rcpt_update(struct registry *reg,
			     const struct bag_def *def,
			     const char *const *addrs, bool add,
			     const char **error_r);
/* Drop the whole list: every recipient is accepted again. */
int bag_registry_rcpt_clear(struct registry *reg,
			    const struct bag_def *def, const char **error_r);
/* The list, sorted. */
int bag_registry_rcpt_list(struct registry *reg, const char *domain,
			   pool_t pool, ARRAY_TYPE(const_string) *addrs,
			   const char **error_r);

/* The domains identity may pull with ATRN, sorted. */
int bag_registry_identity_domains(struct registry *reg,
				  const char *identity, pool_t pool,
				  ARRAY_TYPE(const_string) *domains,
				  const char **error_r);

int bag_registry_status_get(struct registry *reg, const char *domain,
			    pool_t pool, struct bag_status *status_r,
			    const char **error_r);
/* Errors are logged: a failed status write must not fail a flush. */
void bag_registry_status_set(struct registry *reg, const char *domain,
			     const struct bag_status *status,
			     struct event *event);

/* The message counter of the bag. get: 1 with it, 0 if there is none.
   add and set log their errors: the counter is only a hint. */
int bag_registry_count_get(struct registry *reg, const char *domain,
			   unsigned int *count_r, const char **error_r);
void bag_registry_count_add(struct registry *reg, const char *domain,
			    unsigned int count, struct event *event);
void bag_registry_count_set(struct registry *reg, const char *domain,
			    unsigned int count, struct event *event);
/* Take count off the counter (a flush removed messages): atomic, so that
   LMTP's increments meanwhile count; nothing if there is no counter. A
   counter below 0 (the hint was off) reads as 0. */
void bag_registry_count_sub(struct registry *reg, const char *domain,
			    unsigned int count, struct event *event);

/* Count one message of size bytes in the domain's usage of month, and
   read back the month's totals (as they are after this message; other
   servers' messages may be in them too). */
int bag_registry_usage_add(struct registry *reg, const char *domain,
			   const char *month, uint64_t size,
			   uint64_t *messages_r, uint64_t *bytes_r,
			   const char **error_r);
/* 1 with a month's usage, 0 if nothing was counted, -1 on error. */
int bag_registry_usage_get(struct registry *reg, const char *domain,
			   const char *month, uint64_t *messages_r,
			   uint64_t *bytes_r, const char **error_r);

/* The POP3 box user of a recipient address: _bag_LOCAL@DOMAIN, with the
   characters a username can't safely have made '-'. */
const char *bag_box_user_name(const char *addr);
/* 1 with the box user of addr, 0 if it has none, -1 on error. */
int bag_registry_box_get(struct registry *reg, const char *domain,
			 const char *addr, const char **user_r,
			 const char **error_r);
/* Create the box of addr (a userdb record; with password_hash a login
   too). 1 if created, 0 if it exists (nothing changed), -1 on error. */
int bag_registry_box_add(struct registry *reg, const char *domain,
			 const char *addr, const char *user,
			 const char *password_hash, const char **error_r);
/* Every box of a domain: addresses and their users, sorted. */
int bag_registry_box_list(struct registry *reg, const char *domain,
			  pool_t pool, ARRAY_TYPE(const_string) *addrs,
			  ARRAY_TYPE(const_string) *users,
			  const char **error_r);

/* The retry schedule of a backup bag: next == 0 when no retry is
   pending. get: 1 with it, 0 if none, -1 on error. */
struct bag_backup_state {
	time_t next;
	unsigned int interval;
	unsigned int failures;
};
int bag_registry_backup_get(struct registry *reg, const char *domain,
			    struct bag_backup_state *state_r,
			    const char **error_r);
int bag_registry_backup_set(struct registry *reg, const char *domain,
			    const struct bag_backup_state *state,
			    const char **error_r);

/* What doveadm mirror init sets up: the list of bagged domains, made
   where missing; with upgrade, what a registry of 0.1 lacks too (the bag
   users' mirror_readonly, the bags' message counters). What was made is
   appended to made. 0, or -1 on error. */
int bag_registry_setup(struct registry *reg, bool upgrade,
		       ARRAY_TYPE(const_string) *made, const char **error_r);

/* Replace the password hash of a login record the suite created. */
int bag_registry_password_set(struct registry *reg, const char *user,
			      const char *password_hash,
			      const char **error_r);

#endif
