/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* The login records of the users the suite creates (registry-user.h). */

#include "lib.h"
#include "registry-dict.h"
#include "registry-json.h"
#include "registry-user.h"

/* usernames are compared case-insensitively, as Dovecot's usual
   username_format=%Lu does */
const char *registry_user_key(const char *user)
{
	return t_strconcat(REGISTRY_KEY_USER,
			   registry_key_escape(t_str_lcase(user)), NULL);
}

const char *registry_userdb_key(const char *user)
{
	return t_strconcat(REGISTRY_KEY_USERDB,
			   registry_key_escape(t_str_lcase(user)), NULL);
}

void registry_user_password_set(struct dict_transaction_context *trans,
				const char *user, const char *password_hash)
{
	struct json_object *obj = json_object_new_object();

	json_object_object_add(obj, "password",
			       json_object_new_string(password_hash));
	dict_set(trans, registry_user_key(user), registry_json_finish(obj));
}

void registry_user_records_set(struct dict_transaction_context *trans,
			       const char *user, const char *password_hash,
			       struct json_object *userdb_fields)
{
	if (password_hash != NULL)
		registry_user_password_set(trans, user, password_hash);
	if (userdb_fields != NULL) {
		dict_set(trans, registry_userdb_key(user),
			 registry_json_finish(userdb_fields));
	}
}

void registry_user_records_unset(struct dict_transaction_context *trans,
				 const char *user)
{
	dict_unset(trans, registry_user_key(user));
	dict_unset(trans, registry_userdb_key(user));
}

int registry_userdb_get(struct registry *reg, const char *user,
			struct json_object **fields_r, const char **error_r)
{
	const char *key = registry_userdb_key(user), *value, *error;
	int ret;

	if ((ret = registry_get(reg, key, &value, error_r)) <= 0)
		return ret;
	if (registry_json_parse(value, json_type_object, fields_r,
				&error) < 0) {
		*error_r = t_strdup_printf("Broken registry data in %s: %s",
					   key, error);
		return -1;
	}
	return 1;
}

int registry_user_exists(struct registry *reg, const char *user,
			 const char **error_r)
{
	const char *value;

	return registry_get(reg, registry_user_key(user), &value, error_r);
}

int registry_user_remove(struct registry *reg, const char *user,
			 const char **error_r)
{
	struct dict_transaction_context *trans;

	trans = registry_transaction_begin(reg);
	registry_user_records_unset(trans, user);
	return registry_commit(reg, &trans, error_r);
}
