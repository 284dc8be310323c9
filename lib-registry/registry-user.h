#ifndef REGISTRY_USER_H
#define REGISTRY_USER_H

/* The login records of the users the suite creates (mirror storage users,
   bag users, ATRN identities, POP3 boxes), read by Dovecot's dict passdb
   and userdb (see dovecot-mirror-auth.conf.ext):

     shared/mirror/user/<user>    {"password": "{ARGON2ID}..."}
     shared/mirror/userdb/<user>  the user's userdb fields

   Dovecot reads each as an "object": every member becomes a field, so the
   two records hold only what each one needs. <user> is lowercased and
   escaped with registry_key_escape(). */

#include "registry.h"

#include <json-c/json.h>

#define REGISTRY_KEY_USER REGISTRY_KEY_MIRROR"user/"
#define REGISTRY_KEY_USERDB REGISTRY_KEY_MIRROR"userdb/"

struct dict_transaction_context;

/* The keys of user's passdb and userdb records. */
const char *registry_user_key(const char *user);
const char *registry_userdb_key(const char *user);

/* In trans: the passdb record (none when password_hash is NULL) and, when
   userdb_fields is not NULL, the userdb record (the fields; released). */
void registry_user_records_set(struct dict_transaction_context *trans,
			       const char *user, const char *password_hash,
			       struct json_object *userdb_fields);
/* In trans: replace only the password of an existing passdb record. */
void registry_user_password_set(struct dict_transaction_context *trans,
				const char *user, const char *password_hash);
/* In trans: remove both records. */
void registry_user_records_unset(struct dict_transaction_context *trans,
				 const char *user);

/* The userdb record of user: 1 with its fields (an object to release),
   0 if it has none, -1 on error or broken data. */
int registry_userdb_get(struct registry *reg, const char *user,
			struct json_object **fields_r, const char **error_r);

/* 1 if the user has a passdb record, 0 if not, -1 on error. */
int registry_user_exists(struct registry *reg, const char *user,
			 const char **error_r);
/* Remove both records. */
int registry_user_remove(struct registry *reg, const char *user,
			 const char **error_r);

#endif
