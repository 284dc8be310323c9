#ifndef MIRROR_REGISTRY_PRIVATE_H
#define MIRROR_REGISTRY_PRIVATE_H

/* Mail Mirror's keys in the registry (laid out in mirror-registry.h,
   mirror-account.h and mirror-expire-index.h), for the files of
   lib-mirror that keep them and mirror-registry-check.c, which checks
   them. */

#include "registry-dict.h"
#include "mirror-account.h"

#define MIRROR_KEY_SOURCE REGISTRY_KEY_MIRROR"source/"
#define MIRROR_KEY_ID REGISTRY_KEY_MIRROR"id/"
#define MIRROR_KEY_SOURCES REGISTRY_KEY_MIRROR"sources"
#define MIRROR_KEY_NEXT_ID REGISTRY_KEY_MIRROR"next-id"
#define MIRROR_KEY_STORAGE REGISTRY_KEY_MIRROR"storage/"
#define MIRROR_KEY_STATUS REGISTRY_KEY_MIRROR"status/"
#define MIRROR_KEY_ACCOUNT REGISTRY_KEY_MIRROR"account/"
#define MIRROR_KEY_ACCOUNTS REGISTRY_KEY_MIRROR"accounts"
#define MIRROR_KEY_DOMAIN REGISTRY_KEY_MIRROR"domain/"
#define MIRROR_KEY_EXPIRE REGISTRY_KEY_MIRROR"expire/"

const char *mirror_source_key(const char *source);
const char *mirror_storage_key(const char *storage);
const char *mirror_id_key(unsigned int id);
/* what: copies, failures or last-failure */
const char *mirror_status_key(unsigned int id, const char *what);
const char *mirror_account_key(const char *name);
const char *mirror_domain_key(const char *domain);
const char *mirror_expire_key(const char *storage);

/* The userdb record of a storage user created for mirror_id. */
struct json_object *mirror_storage_userdb_fields(unsigned int mirror_id);

/* The JSON of an account and of the list of accounts. 0, or -1 with
   error_r. */
int mirror_account_decode(const char *name, const char *value, pool_t pool,
			  struct mirror_account *acct_r, const char **error_r);
int mirror_accounts_decode(const char *value, pool_t pool,
			   ARRAY_TYPE(const_string) *names,
			   const char **error_r);

#endif
