#ifndef BAG_DEF_H
#define BAG_DEF_H

/* A bagged domain: how its customer gets its mail (the modes), where it
   goes, who may ask for it. Kept in the registry by bag-registry.h. */

#include "net.h"

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

/* STARTTLS to the customer's MTA (bag_tls, and a bag's own "tls") */
enum bag_tls_mode {
	/* the bag has none of its own: the bag_tls setting applies */
	BAG_TLS_DEFAULT = 0,
	/* opportunistic: TLS when the MTA offers STARTTLS (its certificate
	   unchecked), else in the clear */
	BAG_TLS_MAY,
	/* TLS or nothing, the certificate unchecked */
	BAG_TLS_ENCRYPT,
	/* TLS or nothing, with a certificate a CA vouches for and that
	   names the host */
	BAG_TLS_VERIFY,
};

const char *bag_tls_mode_name(enum bag_tls_mode mode);
/* "may", "encrypt", "verify" (and "default" if allow_default); -1 with an
   error otherwise. */
int bag_tls_mode_parse(const char *str, bool allow_default,
		       enum bag_tls_mode *mode_r, const char **error_r);

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
	/* ETRN and backup: STARTTLS to host (BAG_TLS_DEFAULT: bag_tls) */
	enum bag_tls_mode tls;
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

const char *bag_modes_to_str(enum bag_mode modes);
/* "etrn,atrn,backup" (commas or spaces); -1 with an error for an unknown
   mode. */
int bag_modes_parse(const char *str, enum bag_mode *modes_r,
		    const char **error_r);

/* Whether ip is in one of the bag's ETRN networks. */
bool bag_def_allows_ip(const struct bag_def *def, const struct ip_addr *ip);
bool bag_def_is_valid(const struct bag_def *def, const char **error_r);
const char *bag_def_encode(const struct bag_def *def);
/* Decode and validate a definition (strings from pool). Unknown members
   are ignored. */
int bag_def_decode(const char *json, pool_t pool, struct bag_def *def_r,
		   const char **error_r);

#endif
