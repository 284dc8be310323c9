/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* The registry's marker (registry-marker.h). */

#include "lib.h"
#include "hex-binary.h"
#include "randgen.h"
#include "ioloop.h"
#include "str-sanitize.h"
#include "registry-dict.h"
#include "registry-json.h"
#include "registry-marker.h"

bool registry_id_is_valid(const char *id)
{
	const char *p;

	if (strlen(id) != REGISTRY_ID_HEX_LEN)
		return FALSE;
	for (p = id; *p != '\0'; p++) {
		if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
			return FALSE;
	}
	return TRUE;
}

void registry_marker_new(struct registry_marker *marker_r)
{
	unsigned char id[REGISTRY_ID_HEX_LEN / 2];

	random_fill(id, sizeof(id));
	i_zero(marker_r);
	marker_r->format = REGISTRY_FORMAT;
	marker_r->id = binary_to_hex(id, sizeof(id));
	marker_r->created = ioloop_time;
}

const char *registry_marker_encode(const struct registry_marker *marker)
{
	struct json_object *obj = json_object_new_object();

	json_object_object_add(obj, "format",
			       json_object_new_int64(marker->format));
	json_object_object_add(obj, "id", json_object_new_string(marker->id));
	json_object_object_add(obj, "created",
			       json_object_new_int64(marker->created));
	return registry_json_finish(obj);
}

int registry_marker_parse(const char *value, struct registry_marker *marker_r,
			  const char **error_r)
{
	struct json_object *obj;
	const char *id, *error;
	int64_t format, created;

	i_zero(marker_r);
	if (registry_json_parse(value, json_type_object, &obj, &error) < 0) {
		*error_r = error;
		return -1;
	}
	if (registry_json_get_int(obj, "format", 1, UINT_MAX, &format,
				  &error) < 0 ||
	    registry_json_get_str(obj, "id", &id, &error) < 0 ||
	    registry_json_get_int(obj, "created", 0, INT64_MAX, &created,
				  &error) < 0) {
		json_object_put(obj);
		*error_r = error;
		return -1;
	}
	if (!registry_id_is_valid(id)) {
		json_object_put(obj);
		*error_r = "'id' is not 32 hex digits";
		return -1;
	}
	marker_r->format = format;
	marker_r->id = t_strdup(id);
	marker_r->created = created;
	json_object_put(obj);
	return 0;
}

const char *registry_marker_check(const char *value, const char *expected_id)
{
	struct registry_marker marker;
	const char *error;

	if (value == NULL) {
		return "it has no marker ("REGISTRY_KEY_MARKER"): it is lost "
			"or damaged, or was never set up (doveadm mirror init)";
	}
	if (registry_marker_parse(value, &marker, &error) < 0) {
		return t_strdup_printf("its marker ("REGISTRY_KEY_MARKER") is "
				       "broken: %s (doveadm mirror check)",
				       error);
	}
	if (marker.format > REGISTRY_FORMAT) {
		return t_strdup_printf("its format %u is newer than this "
				       "version of dovecot-mirror reads (%u)",
				       marker.format, REGISTRY_FORMAT);
	}
	if (expected_id != NULL && strcmp(marker.id, expected_id) != 0) {
		return t_strdup_printf("it is registry %s, not %s: a registry "
				       "of another installation", marker.id,
				       expected_id);
	}
	return NULL;
}

int registry_marker_get(struct registry *reg, struct registry_marker *marker_r,
			const char **error_r)
{
	const char *value, *error;
	int ret;

	if ((ret = registry_get(reg, REGISTRY_KEY_MARKER, &value,
				error_r)) <= 0)
		return ret;
	if (registry_marker_parse(value, marker_r, &error) < 0) {
		*error_r = t_strdup_printf("Broken registry data in "
					   REGISTRY_KEY_MARKER": %s", error);
		return -1;
	}
	return 1;
}

void registry_marker_set(struct dict_transaction_context *trans,
			 const struct registry_marker *marker)
{
	dict_set(trans, REGISTRY_KEY_MARKER, registry_marker_encode(marker));
}
