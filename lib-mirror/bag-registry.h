#ifndef BAG_REGISTRY_H
#define BAG_REGISTRY_H

#include "net.h"
#include "mirror-registry.h"

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
                         "delivered":, "deferred":, "bounced":}
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
   are escaped with mirror_key_escape(). */

#define BAG_HOST_MAX_LEN 255
#define BAG_DEFAULT_PORT 25
/* more would make a definition no administrator can read */
#define BAG_NETS_MAX 64
/* bag_timeout: how long to wait for each reply of the customer's MTA (RFC
   5321 asks for minutes) */
#define BAG_TIMEOUT_DEFAULT_SECS 300

enum bag_mode {
	/* the customer's MTA asks with ETRN (RFC 1985) from an allowed
	   address; the bag is sent to host */
	BAG_MODE_ETRN = 0x01,
	/* the customer's MTA authenticates and pulls with ATRN (RFC 2645) */
	BAG_MODE_ATRN = 0x02,
	/* Backup Domain: the bag service sends the bag to host by itself,
	   retrying, and bounces what waited longer than retry_period */
	BAG_MODE_BACKUP = 0x04,
	/* POP3 connector: one copy per recipient, with X-Envelope-To, in a
	   POP3 box the customer collects: the bag user's (catch-all) or one
	   per recipient (pop3_per_account). No other mode goes with it. */
	BAG_MODE_POP3 = 0x08,
};
#define BAG_MODES_ALL \
	(BAG_MODE_ETRN | BAG_MODE_ATRN | BAG_MODE_BACKUP | BAG_MODE_POP3)
/* RFC 5321 4.5.4.1: give up after at least 4-5 days */
#define BAG_RETRY_PERIOD_DEFAULT_SECS (5*24*60*60)
#define BAG_RETRY_PERIOD_MAX_SECS (365*24*60*60)

struct bag_def {
	/* lowercase */
	const char *domain;
	/* the user whose INBOX is the bag */
	const char *user;
	enum bag_mode modes;
	/* ETRN: the networks ETRN is accepted from ("192.0.2.0/24", "::1") */
	ARRAY_TYPE(const_string) etrn_nets;
	/* ETRN and backup: where the bag goes, "host", "host:port" or
	   "[ip6]:port" */
	const char *host;
	/* backup: how long a message is retried before it bounces */
	unsigned int retry_period;
	/* ATRN: the identity (passdb user) allowed to pull the domain */
	const char *atrn_identity;
	/* pop3: each recipient has a box of its own */
	bool pop3_per_account;
	/* RCPT TO is refused for addresses not in the domain's list */
	bool recipient_list;
	/* the identity's login record was created for this bag */
	bool auto_identity;
	time_t created;
};
ARRAY_DEFINE_TYPE(bag_def, struct bag_def);

struct bag_status {
	/* 0: never flushed */
	time_t time;
	const char *result;
	unsigned int delivered, deferred, bounced;
};

const char *bag_modes_to_str(enum bag_mode modes);
/* "etrn,atrn,backup" (commas or spaces); -1 with an error for an unknown
   mode. */
int bag_modes_parse(const char *str, enum bag_mode *modes_r,
		    const char **error_r);

/* A domain as the administrator or a client gives it: lowercased, checked
   to be a DNS name of two labels or more. */
int bag_domain_parse(const char *str, const char **domain_r,
		     const char **error_r);
/* "host", "host:port", "[ip6]", "[ip6]:port"; the port is 25 if not
   given. */
int bag_host_parse(const char *str, const char **host_r, in_port_t *port_r,
		   const char **error_r);
/* An address or a network (ADDR/BITS), as net_parse_range() reads it. */
bool bag_net_is_valid(const char *str, const char **error_r);
/* Whether ip is in one of the bag's ETRN networks. */
bool bag_def_allows_ip(const struct bag_def *def, const struct ip_addr *ip);
/* An address of the recipient list: "local@domain" of the bag's domain,
   lowercased, without a recipient detail (see mirror_address_keys()). */
int bag_rcpt_parse(const char *str, const char *domain, const char **addr_r,
		   const char **error_r);

bool bag_def_is_valid(const struct bag_def *def, const char **error_r);
const char *bag_def_encode(const struct bag_def *def);
/* Decode and validate a definition (strings from pool). Unknown members
   are ignored. */
int bag_def_decode(const char *json, pool_t pool, struct bag_def *def_r,
		   const char **error_r);

/* 1 with the bag of domain, 0 if the domain isn't bagged, -1 on error
   (an unreadable store, broken data). */
int bag_registry_get(struct mirror_registry *reg, const char *domain,
		     pool_t pool, struct bag_def *def_r, const char **error_r);
/* Every bag, sorted by domain. */
int bag_registry_list(struct mirror_registry *reg, pool_t pool,
		      ARRAY_TYPE(bag_def) *defs, const char **error_r);
/* Add a bag. def->created is set. user_password_hash: the login record of
   the bag user, which must not exist yet. identity_password_hash: the
   identity's login record is created too (it must not exist). Returns 1
   if added, 0 if the domain is bagged already or a login record exists
   (error_r says which), -1 on error. */
int bag_registry_add(struct mirror_registry *reg, struct bag_def *def,
		     const char *user_password_hash,
		     const char *identity_password_hash,
		     const char **error_r);
/* Remove the bag of domain (and its recipient list, status and the login
   record of its identity if that was created for it and pulls no other
   domain). The bag user's records stay, so that its mail can be found and
   deleted: remove them with mirror_registry_user_remove() then. 1 removed
   (removed_r from pool), 0 not bagged, -1 error. */
int bag_registry_remove(struct mirror_registry *reg, const char *domain,
			pool_t pool, struct bag_def *removed_r,
			const char **error_r);

/* 1 if addr is in the domain's recipient list, 0 if not, -1 on error. */
int bag_registry_rcpt_lookup(struct mirror_registry *reg, const char *domain,
			     const char *addr, const char **error_r);
/* Add (add=TRUE) or remove addresses of the list; turns the list on. */
int bag_registry_rcpt_update(struct mirror_registry *reg,
			     const struct bag_def *def,
			     const char *const *addrs, bool add,
			     const char **error_r);
/* Drop the whole list: every recipient is accepted again. */
int bag_registry_rcpt_clear(struct mirror_registry *reg,
			    const struct bag_def *def, const char **error_r);
/* The list, sorted. */
int bag_registry_rcpt_list(struct mirror_registry *reg, const char *domain,
			   pool_t pool, ARRAY_TYPE(const_string) *addrs,
			   const char **error_r);

/* The domains identity may pull with ATRN, sorted. */
int bag_registry_identity_domains(struct mirror_registry *reg,
				  const char *identity, pool_t pool,
				  ARRAY_TYPE(const_string) *domains,
				  const char **error_r);

int bag_registry_status_get(struct mirror_registry *reg, const char *domain,
			    pool_t pool, struct bag_status *status_r,
			    const char **error_r);
/* Errors are logged: a failed status write must not fail a flush. */
void bag_registry_status_set(struct mirror_registry *reg, const char *domain,
			     const struct bag_status *status,
			     struct event *event);

/* The message counter of the bag. get: 1 with it, 0 if there is none.
   add and set log their errors: the counter is only a hint. */
int bag_registry_count_get(struct mirror_registry *reg, const char *domain,
			   unsigned int *count_r, const char **error_r);
void bag_registry_count_add(struct mirror_registry *reg, const char *domain,
			    unsigned int count, struct event *event);
void bag_registry_count_set(struct mirror_registry *reg, const char *domain,
			    unsigned int count, struct event *event);

/* Count one message of size bytes in the domain's usage of month, and
   read back the month's totals (as they are after this message; other
   servers' messages may be in them too). */
int bag_registry_usage_add(struct mirror_registry *reg, const char *domain,
			   const char *month, uint64_t size,
			   uint64_t *messages_r, uint64_t *bytes_r,
			   const char **error_r);
/* 1 with a month's usage, 0 if nothing was counted, -1 on error. */
int bag_registry_usage_get(struct mirror_registry *reg, const char *domain,
			   const char *month, uint64_t *messages_r,
			   uint64_t *bytes_r, const char **error_r);

/* The POP3 box user of a recipient address: _bag_LOCAL@DOMAIN, with the
   characters a username can't safely have made '-'. */
const char *bag_box_user_name(const char *addr);
/* 1 with the box user of addr, 0 if it has none, -1 on error. */
int bag_registry_box_get(struct mirror_registry *reg, const char *domain,
			 const char *addr, const char **user_r,
			 const char **error_r);
/* Create the box of addr (a userdb record; with password_hash a login
   too). 1 if created, 0 if it exists (nothing changed), -1 on error. */
int bag_registry_box_add(struct mirror_registry *reg, const char *domain,
			 const char *addr, const char *user,
			 const char *password_hash, const char **error_r);
/* Every box of a domain: addresses and their users, sorted. */
int bag_registry_box_list(struct mirror_registry *reg, const char *domain,
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
int bag_registry_backup_get(struct mirror_registry *reg, const char *domain,
			    struct bag_backup_state *state_r,
			    const char **error_r);
int bag_registry_backup_set(struct mirror_registry *reg, const char *domain,
			    const struct bag_backup_state *state,
			    const char **error_r);

/* Replace the password hash of a login record the suite created. */
int bag_registry_password_set(struct mirror_registry *reg, const char *user,
			      const char *password_hash,
			      const char **error_r);

#endif
