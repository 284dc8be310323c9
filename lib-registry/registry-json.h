#ifndef REGISTRY_JSON_H
#define REGISTRY_JSON_H

#include "registry.h"

#include <json-c/json.h>

/* Parse a registry value of at most REGISTRY_VALUE_MAX_SIZE that must be
   of JSON type (array or object). */
int registry_json_parse(const char *json, enum json_type type,
			struct json_object **obj_r, const char **error_r);
int registry_json_parse_array(const char *json, struct json_object **arr_r,
			      const char **error_r);
/* The compact text of obj, which is released. */
const char *registry_json_finish(struct json_object *obj);
/* A JSON array of strings. */
const char *registry_json_strings(const ARRAY_TYPE(const_string) *strings);
int registry_json_get_int(struct json_object *obj, const char *name,
			  int64_t min, int64_t max, int64_t *value_r,
			  const char **error_r);
int registry_json_get_str(struct json_object *obj, const char *name,
			  const char **value_r, const char **error_r);
/* An optional boolean member: FALSE when missing. */
int registry_json_get_bool(struct json_object *obj, const char *name,
			   bool *value_r, const char **error_r);

#endif
