#ifndef MIRROR_REGISTRY_PRIVATE_H
#define MIRROR_REGISTRY_PRIVATE_H

/* What the registry's other parts (bag-registry.c) share with
   mirror-registry.c: the dict handle, lookups and commits with readable
   errors, bounded JSON parsing, and the login records of users the suite
   creates. */

#include "dict.h"
#include "mirror-registry.h"

#include <json-c/json.h>

struct mirror_registry {
	struct dict *dict;
	struct dict_op_settings opset;
};

/* dict_lookup() with the key in the error. 1 found, 0 not, -1 error. */
int mirror_registry_get(struct mirror_registry *reg, const char *key,
			const char **value_r, const char **error_r);
/* Look up count keys; values_r[i] is the value (from pool) or NULL when
   the key doesn't exist. 0, or -1 with the first error. */
int mirror_registry_get_many(struct mirror_registry *reg, pool_t pool,
			     const char *const *keys, unsigned int count,
			     const char **values_r, const char **error_r);
/* A counter: 1 with its value, 0 (value 0) if it doesn't exist, -1 if it
   can't be read or isn't a number. */
int mirror_registry_get_counter(struct mirror_registry *reg, const char *key,
				uint64_t *value_r, const char **error_r);
int mirror_registry_commit(struct dict_transaction_context **trans,
			   const char **error_r);
/* Add diffs[i] to the counter keys[i], all in one transaction. Redis
   creates a missing key with INCRBY; the file and SQL dicts increment
   only existing keys, so when one is missing (DICT_COMMIT_RET_NOTFOUND)
   every key is set to its diff instead: two first increments at the same
   instant may then count as one. 0, or -1 with error_r. */
int mirror_registry_counters_add(struct mirror_registry *reg,
				 const char *const *keys,
				 const long long *diffs, unsigned int count,
				 const char **error_r);
/* Call callback with every key under prefix (its suffix) and value until
   it returns -1. */
int mirror_registry_iterate(struct mirror_registry *reg, const char *prefix,
			    int (*callback)(const char *name,
					    const char *value, void *context,
					    const char **error_r),
			    void *context, const char **error_r);

/* Parse a registry value of at most MIRROR_REGISTRY_VALUE_MAX_SIZE that
   must be of JSON type (array or object). */
int mirror_json_parse(const char *json, enum json_type type,
		      struct json_object **obj_r, const char **error_r);
/* The compact text of obj, which is released. */
const char *mirror_json_finish(struct json_object *obj);
int mirror_json_get_int(struct json_object *obj, const char *name,
			int64_t min, int64_t max, int64_t *value_r,
			const char **error_r);
int mirror_json_get_str(struct json_object *obj, const char *name,
			const char **value_r, const char **error_r);
/* An optional boolean member: FALSE when missing. */
int mirror_json_get_bool(struct json_object *obj, const char *name,
			 bool *value_r, const char **error_r);

/* The login records of a user the suite created, read by Dovecot's dict
   passdb (user/<user>: {"password": ...}; none when password_hash is NULL)
   and, when userdb_fields is not NULL, its dict userdb (userdb/<user>: the
   fields; released). */
void mirror_user_records_set(struct dict_transaction_context *trans,
			     const char *user, const char *password_hash,
			     struct json_object *userdb_fields);
/* Replace only the password of an existing passdb record. */
void mirror_user_password_set(struct dict_transaction_context *trans,
			      const char *user, const char *password_hash);
void mirror_user_records_unset(struct dict_transaction_context *trans,
			       const char *user);

#endif
