/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* Registry values are JSON: bounded parsing and the members' checks. */

#include "lib.h"
#include "array.h"
#include "registry-json.h"

/* A registry value is an array of objects; room for one more level of
   nesting that a later version may add. */
#define REGISTRY_JSON_MAX_DEPTH 4

const char *registry_json_finish(struct json_object *obj)
{
	const char *str = t_strdup(json_object_to_json_string_ext(
		obj, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));

	json_object_put(obj);
	return str;
}

const char *registry_json_strings(const ARRAY_TYPE(const_string) *strings)
{
	struct json_object *arr = json_object_new_array();
	const char *str;

	array_foreach_elem(strings, str)
		json_object_array_add(arr, json_object_new_string(str));
	return registry_json_finish(arr);
}

int registry_json_parse(const char *json, enum json_type type,
			struct json_object **obj_r, const char **error_r)
{
	struct json_tokener *tok;
	struct json_object *obj;
	size_t len = strlen(json);

	if (len > REGISTRY_VALUE_MAX_SIZE) {
		*error_r = "value is too large";
		return -1;
	}
	tok = json_tokener_new_ex(REGISTRY_JSON_MAX_DEPTH);
	if (tok == NULL)
		i_fatal_status(FATAL_OUTOFMEM, "json_tokener_new_ex() failed");
	obj = json_tokener_parse_ex(tok, json, (int)len);
	if (obj == NULL) {
		enum json_tokener_error jerr = json_tokener_get_error(tok);

		*error_r = t_strdup_printf("invalid JSON: %s",
			jerr == json_tokener_continue ? "truncated" :
			json_tokener_error_desc(jerr));
		json_tokener_free(tok);
		return -1;
	}
	if (json_tokener_get_parse_end(tok) != len) {
		*error_r = "invalid JSON: trailing data";
		json_object_put(obj);
		json_tokener_free(tok);
		return -1;
	}
	json_tokener_free(tok);
	if (!json_object_is_type(obj, type)) {
		*error_r = type == json_type_array ? "not a JSON array" :
			"not a JSON object";
		json_object_put(obj);
		return -1;
	}
	*obj_r = obj;
	return 0;
}

int registry_json_parse_array(const char *json, struct json_object **arr_r,
			      const char **error_r)
{
	return registry_json_parse(json, json_type_array, arr_r, error_r);
}

int registry_json_get_int(struct json_object *obj, const char *name,
			  int64_t min, int64_t max, int64_t *value_r,
			  const char **error_r)
{
	struct json_object *field;

	if (!json_object_object_get_ex(obj, name, &field) ||
	    !json_object_is_type(field, json_type_int)) {
		*error_r = t_strdup_printf("'%s' is missing or not an integer",
					   name);
		return -1;
	}
	errno = 0;
	*value_r = json_object_get_int64(field);
	if (errno != 0 || *value_r < min || *value_r > max) {
		*error_r = t_strdup_printf("'%s' is out of range", name);
		return -1;
	}
	return 0;
}

int registry_json_get_str(struct json_object *obj, const char *name,
			  const char **value_r, const char **error_r)
{
	struct json_object *field;
	const char *value;

	if (!json_object_object_get_ex(obj, name, &field) ||
	    !json_object_is_type(field, json_type_string)) {
		*error_r = t_strdup_printf("'%s' is missing or not a string",
					   name);
		return -1;
	}
	value = json_object_get_string(field);
	if (strlen(value) != (size_t)json_object_get_string_len(field)) {
		*error_r = t_strdup_printf("'%s' contains NUL", name);
		return -1;
	}
	*value_r = value;
	return 0;
}

int registry_json_get_bool(struct json_object *obj, const char *name,
			   bool *value_r, const char **error_r)
{
	struct json_object *field;

	*value_r = FALSE;
	if (!json_object_object_get_ex(obj, name, &field))
		return 0;
	if (!json_object_is_type(field, json_type_boolean)) {
		*error_r = t_strdup_printf("'%s' is not a boolean", name);
		return -1;
	}
	*value_r = json_object_get_boolean(field) != 0;
	return 0;
}

