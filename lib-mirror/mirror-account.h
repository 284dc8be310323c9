#ifndef MIRROR_ACCOUNT_H
#define MIRROR_ACCOUNT_H

/* Service levels and accounts: a domain belongs to at most one account,
   and the account's level (setting mirror_levels = NAME:LIMIT ...) limits
   how many mirrors the domain's sources may have.

   Key layout (under shared/mirror/):
     account/<name>   {"level": "<level>", "domains": [...]}
     accounts         JSON array of every account name
     domain/<domain>  the account a domain belongs to */

#include "registry.h"

/* account and service level names: [a-z0-9._-] */
#define MIRROR_NAME_MAX_LEN 64

struct mirror_level {
	const char *name;
	/* UINT_MAX: unlimited */
	unsigned int limit;
};
ARRAY_DEFINE_TYPE(mirror_level, struct mirror_level);

struct mirror_account {
	const char *name;
	const char *level;
	ARRAY_TYPE(const_string) domains;
};

bool mirror_name_is_valid(const char *name);
int mirror_levels_parse(const char *str, pool_t pool,
			ARRAY_TYPE(mirror_level) *levels, const char **error_r);
const struct mirror_level *
mirror_level_find(const ARRAY_TYPE(mirror_level) *levels, const char *name);

/* 1 found, 0 no such account, -1 error */
int mirror_registry_account_get(struct registry *reg, const char *name,
				pool_t pool, struct mirror_account *acct_r,
				const char **error_r);
int mirror_registry_accounts(struct registry *reg, pool_t pool,
			     ARRAY_TYPE(const_string) *names,
			     const char **error_r);
/* Create the account or change its level. */
int mirror_registry_account_set_level(struct registry *reg,
				      const char *name, const char *level,
				      const char **error_r);
/* 1 with the domain's account, 0 if unassigned, -1 error */
int mirror_registry_domain_account(struct registry *reg,
				   const char *domain, const char **account_r,
				   const char **error_r);
/* Move domain to account (NULL: unassign). 1 done, 0 unknown account,
   -1 error. */
int mirror_registry_domain_assign(struct registry *reg,
				  const char *domain, const char *account,
				  const char **error_r);

#endif
