/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* Mirror definitions: their checks and their JSON in the registry. */

#include "lib.h"
#include "array.h"
#include "strnum.h"
#include "str-sanitize.h"
#include "unichar.h"
#include "registry-json.h"
#include "mirror-def.h"

int mirror_days_parse(const char *str, unsigned int *days_r,
		      const char **error_r)
{
	unsigned int days;

	if (str_to_uint(str, &days) < 0) {
		*error_r = t_strdup_printf(
			"Invalid days '%s': not a number (%u..%u)",
			str_sanitize(str, 20), MIRROR_DAYS_MIN,
			MIRROR_DAYS_MAX);
		return -1;
	}
	if (days < MIRROR_DAYS_MIN || days > MIRROR_DAYS_MAX) {
		*error_r = t_strdup_printf(
			"Invalid days %u: out of range %u..%u", days,
			MIRROR_DAYS_MIN, MIRROR_DAYS_MAX);
		return -1;
	}
	*days_r = days;
	return 0;
}

bool mirror_storage_is_valid(const char *storage, const char **error_r)
{
	const char *p;

	if (*storage == '\0') {
		*error_r = "empty storage user";
		return FALSE;
	}
	if (strlen(storage) > MIRROR_STORAGE_MAX_LEN) {
		*error_r = "storage user name is too long";
		return FALSE;
	}
	for (p = storage; *p != '\0'; p++) {
		if ((unsigned char)*p <= ' ' || (unsigned char)*p >= 0x7f ||
		    *p == '/' || *p == '"' || *p == '\\') {
			*error_r = "storage user name contains an invalid "
				"character";
			return FALSE;
		}
	}
	return TRUE;
}

bool mirror_def_is_valid(const struct mirror_def *def, const char **error_r)
{
	enum mirror_type type;
	const char *normalized, *error;

	if (def->id == 0) {
		*error_r = "id must be positive";
		return FALSE;
	}
	if (mirror_source_parse(def->source, &type, &normalized, &error) < 0) {
		*error_r = error;
		return FALSE;
	}
	if (type != def->type || strcmp(normalized, def->source) != 0) {
		*error_r = t_strdup_printf(
			"source '%s' does not match type %s",
			str_sanitize(def->source, 80),
			mirror_type_to_str(def->type));
		return FALSE;
	}
	if (!mirror_storage_is_valid(def->storage, &error)) {
		*error_r = error;
		return FALSE;
	}
	if (def->days < MIRROR_DAYS_MIN || def->days > MIRROR_DAYS_MAX) {
		*error_r = t_strdup_printf("days %u out of range", def->days);
		return FALSE;
	}
	if (def->created < 0) {
		*error_r = "negative creation time";
		return FALSE;
	}
	if (def->hold_since < 0) {
		*error_r = "negative hold time";
		return FALSE;
	}
	if (def->hold_since == 0 ? def->hold_reason != NULL :
	    (def->hold_reason == NULL ||
	     !mirror_hold_reason_is_valid(def->hold_reason, &error))) {
		*error_r = def->hold_since == 0 ?
			"a hold reason without a hold" :
			t_strdup_printf("hold reason: %s",
					def->hold_reason == NULL ?
					"missing" : error);
		return FALSE;
	}
	return TRUE;
}

bool mirror_hold_reason_is_valid(const char *reason, const char **error_r)
{
	const unsigned char *p;

	if (strlen(reason) > MIRROR_HOLD_REASON_MAX_LEN) {
		*error_r = t_strdup_printf("longer than %u bytes",
					   MIRROR_HOLD_REASON_MAX_LEN);
		return FALSE;
	}
	if (!uni_utf8_str_is_valid(reason)) {
		*error_r = "not valid UTF-8";
		return FALSE;
	}
	for (p = (const unsigned char *)reason; *p != '\0'; p++) {
		if (*p < 0x20 || *p == 0x7f) {
			*error_r = "has a control character";
			return FALSE;
		}
	}
	return TRUE;
}

const char *mirror_defs_encode(const ARRAY_TYPE(mirror_def) *defs)
{
	struct json_object *arr = json_object_new_array(), *obj;
	const struct mirror_def *def;

	array_foreach(defs, def) {
		obj = json_object_new_object();
		json_object_object_add(obj, "id",
			json_object_new_int64(def->id));
		json_object_object_add(obj, "type",
			json_object_new_string(mirror_type_to_str(def->type)));
		json_object_object_add(obj, "source",
			json_object_new_string(def->source));
		json_object_object_add(obj, "storage",
			json_object_new_string(def->storage));
		json_object_object_add(obj, "days",
			json_object_new_int64(def->days));
		json_object_object_add(obj, "created",
			json_object_new_int64(def->created));
		json_object_object_add(obj, "readonly",
			json_object_new_boolean(def->readonly));
		json_object_object_add(obj, "auto",
			json_object_new_boolean(def->auto_storage));
		if (def->hold_since != 0) {
			struct json_object *hold = json_object_new_object();

			json_object_object_add(hold, "since",
				json_object_new_int64(def->hold_since));
			json_object_object_add(hold, "reason",
				json_object_new_string(def->hold_reason));
			json_object_object_add(obj, "hold", hold);
		}
		json_object_array_add(arr, obj);
	}
	return registry_json_finish(arr);
}

const char *mirror_sources_encode(const ARRAY_TYPE(const_string) *sources)
{
	return registry_json_strings(sources);
}

static int
mirror_def_from_json(struct json_object *obj, struct mirror_def *def_r,
		     const char **error_r)
{
	struct json_object *hold;
	const char *type, *error;
	int64_t num;

	i_zero(def_r);
	if (!json_object_is_type(obj, json_type_object)) {
		*error_r = "element is not an object";
		return -1;
	}
	if (registry_json_get_int(obj, "id", 1, UINT_MAX, &num, error_r) < 0)
		return -1;
	def_r->id = (unsigned int)num;
	if (registry_json_get_str(obj, "type", &type, error_r) < 0 ||
	    registry_json_get_str(obj, "source", &def_r->source, error_r) < 0 ||
	    registry_json_get_str(obj, "storage", &def_r->storage, error_r) < 0)
		return -1;
	if (mirror_type_from_str(type, &def_r->type) < 0) {
		*error_r = "'type' is not single or all";
		return -1;
	}
	if (registry_json_get_int(obj, "days", MIRROR_DAYS_MIN, MIRROR_DAYS_MAX,
				&num, error_r) < 0)
		return -1;
	def_r->days = (unsigned int)num;
	if (registry_json_get_int(obj, "created", 0, INT64_MAX, &num,
				error_r) < 0)
		return -1;
	def_r->created = (time_t)num;
	if (registry_json_get_bool(obj, "readonly", &def_r->readonly,
				 error_r) < 0 ||
	    registry_json_get_bool(obj, "auto", &def_r->auto_storage,
				   error_r) < 0)
		return -1;
	if (json_object_object_get_ex(obj, "hold", &hold)) {
		if (!json_object_is_type(hold, json_type_object)) {
			*error_r = "'hold' is not an object";
			return -1;
		}
		if (registry_json_get_int(hold, "since", 1, INT64_MAX, &num,
					  error_r) < 0 ||
		    registry_json_get_str(hold, "reason", &def_r->hold_reason,
					  error_r) < 0)
			return -1;
		def_r->hold_since = (time_t)num;
	}
	if (!mirror_def_is_valid(def_r, &error)) {
		*error_r = t_strdup_printf("mirror %u: %s", def_r->id, error);
		return -1;
	}
	return 0;
}

int mirror_defs_decode(const char *json, pool_t pool,
		       ARRAY_TYPE(mirror_def) *defs, const char **error_r)
{
	struct json_object *arr;
	struct mirror_def *decoded;
	size_t i, count;
	int ret = 0;

	if (registry_json_parse_array(json, &arr, error_r) < 0)
		return -1;
	count = json_object_array_length(arr);
	decoded = t_new(struct mirror_def, count + 1);
	for (i = 0; i < count && ret == 0; i++) {
		ret = mirror_def_from_json(json_object_array_get_idx(arr, i),
					   &decoded[i], error_r);
	}
	if (ret == 0) {
		for (i = 0; i < count; i++) {
			decoded[i].source = p_strdup(pool, decoded[i].source);
			decoded[i].storage = p_strdup(pool, decoded[i].storage);
			decoded[i].hold_reason =
				p_strdup(pool, decoded[i].hold_reason);
			array_push_back(defs, &decoded[i]);
		}
	}
	json_object_put(arr);
	return ret;
}

int mirror_sources_decode(const char *json, pool_t pool,
			  ARRAY_TYPE(const_string) *sources,
			  const char **error_r)
{
	struct json_object *arr, *elem;
	const char *const *decoded, *source, *normalized, *error;
	enum mirror_type type;
	size_t i, count;
	int ret = 0;

	if (registry_json_parse_array(json, &arr, error_r) < 0)
		return -1;
	count = json_object_array_length(arr);
	decoded = t_new(const char *, count + 1);
	for (i = 0; i < count && ret == 0; i++) {
		elem = json_object_array_get_idx(arr, i);
		if (!json_object_is_type(elem, json_type_string)) {
			*error_r = "source is not a string";
			ret = -1;
			break;
		}
		source = json_object_get_string(elem);
		if (mirror_source_parse(source, &type, &normalized,
					&error) < 0 ||
		    strcmp(source, normalized) != 0) {
			*error_r = t_strdup_printf("invalid source '%s'",
						   str_sanitize(source, 80));
			ret = -1;
			break;
		}
		((const char **)decoded)[i] = source;
	}
	if (ret == 0) {
		for (i = 0; i < count; i++) {
			source = p_strdup(pool, decoded[i]);
			array_push_back(sources, &source);
		}
	}
	json_object_put(arr);
	return ret;
}
