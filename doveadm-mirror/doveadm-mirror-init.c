/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* doveadm mirror init [--upgrade]: set up the registry. An empty
   registry gets its marker (registry-marker.h) and the keys every
   registry has; one with a marker is left as it is and shown. One with
   data but no marker was written by 0.1, or lost its marker: --upgrade
   says it is the former, and sets it up around its data. */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "time-util.h"
#include "doveadm.h"
#include "doveadm-cmd.h"
#include "doveadm-print.h"
#include "doveadm-settings.h"
#include "registry-dict.h"
#include "registry-marker.h"
#include "registry-lock.h"
#include "mirror-registry.h"
#include "bag-registry.h"
#include "doveadm-mirror.h"

#include <sysexits.h>

/* keys that a registry of 0.1 has once anything was ever done in it */
static const char *const mirror_init_data_keys[] = {
	REGISTRY_KEY_MIRROR"next-id",
	REGISTRY_KEY_MIRROR"sources",
	REGISTRY_KEY_MIRROR"accounts",
	REGISTRY_KEY_MIRROR"expire-last-run",
	REGISTRY_KEY_BAG"domains",
};

static int
mirror_init_iterate_any(const char *name ATTR_UNUSED,
			const char *value ATTR_UNUSED,
			void *context, const char **error_r)
{
	bool *found = context;

	*found = TRUE;
	*error_r = "found";
	return -1;
}

/* 1 if the registry has any data, 0 if it is empty, -1 on error. The
   file and SQL dicts are iterated; Redis can't be, and the keys every
   registry of 0.1 had are looked up instead. */
static int mirror_init_has_data(struct registry *reg, const char **error_r)
{
	const char *values[N_ELEMENTS(mirror_init_data_keys)];
	const char *error;
	bool found = FALSE;
	unsigned int i;
	pool_t pool;
	int ret;

	pool = pool_alloconly_create("mirror init", 256);
	ret = registry_get_many(reg, pool, mirror_init_data_keys,
				N_ELEMENTS(mirror_init_data_keys), values,
				error_r);
	for (i = 0; ret == 0 && i < N_ELEMENTS(values); i++) {
		if (values[i] != NULL)
			found = TRUE;
	}
	pool_unref(&pool);
	if (ret < 0)
		return -1;
	if (!found) {
		(void)registry_iterate(reg, DICT_PATH_SHARED,
				       mirror_init_iterate_any, &found,
				       &error);
	}
	return found ? 1 : 0;
}

static void
mirror_init_print(const struct registry_marker *marker, const char *result,
		  const ARRAY_TYPE(const_string) *made)
{
	doveadm_print_init(DOVEADM_PRINT_TYPE_PAGER);
	doveadm_print_header_simple("id");
	doveadm_print_header_simple("format");
	doveadm_print_header_simple("created");
	doveadm_print_header_simple("result");
	doveadm_print_header_simple("made");
	doveadm_print(marker->id);
	doveadm_print_num(marker->format);
	doveadm_print(t_strfgmtime("%Y-%m-%dT%H:%M:%SZ", marker->created));
	doveadm_print(result);
	if (made == NULL || array_count(made) == 0)
		doveadm_print("-");
	else {
		string_t *str = t_str_new(128);
		const char *what;

		array_foreach_elem(made, what) {
			if (str_len(str) > 0)
				str_append_c(str, ',');
			str_append(str, what);
		}
		doveadm_print(str_c(str));
	}
}

static void cmd_mirror_init(struct doveadm_cmd_context *cctx)
{
	struct dict_transaction_context *trans;
	struct registry *reg;
	struct registry_marker marker;
	ARRAY_TYPE(const_string) made;
	const char *value, *error;
	bool upgrade = FALSE;
	int ret;

	(void)doveadm_cmd_param_bool(cctx, "upgrade", &upgrade);
	if ((reg = doveadm_mirror_registry_open_unchecked()) == NULL)
		return;

	ret = registry_get(reg, REGISTRY_KEY_MARKER, &value, &error);
	if (ret > 0) {
		if (registry_marker_parse(value, &marker, &error) < 0) {
			doveadm_mirror_fail(EX_DATAERR, t_strdup_printf(
				"The registry's marker ("REGISTRY_KEY_MARKER
				") is broken: %s (doveadm mirror check)",
				error));
		} else {
			mirror_init_print(&marker, "exists", NULL);
		}
		registry_deinit(&reg);
		return;
	}
	if (ret == 0 && (ret = mirror_init_has_data(reg, &error)) > 0 &&
	    !upgrade) {
		doveadm_mirror_fail(EX_DATAERR,
			"The registry has data but no marker ("
			REGISTRY_KEY_MARKER"): either dovecot-mirror 0.1 "
			"wrote it (set it up with doveadm mirror init "
			"--upgrade), or its marker was lost with other keys "
			"(doveadm mirror check shows what is missing)");
		registry_deinit(&reg);
		return;
	}
	t_array_init(&made, 8);
	if (ret < 0 ||
	    mirror_registry_setup(reg, &made, &error) < 0 ||
	    bag_registry_setup(reg, ret > 0, &made, &error) < 0) {
		doveadm_mirror_fail(EX_TEMPFAIL, error);
		registry_deinit(&reg);
		return;
	}
	/* the marker last: until it is there, nothing uses the registry */
	registry_marker_new(&marker);
	trans = registry_transaction_begin(reg);
	registry_lock_setup(trans);
	registry_marker_set(trans, &marker);
	if (registry_commit(reg, &trans, &error) < 0)
		doveadm_mirror_fail(EX_TEMPFAIL, error);
	else
		mirror_init_print(&marker, ret > 0 ? "upgraded" : "created",
				  &made);
	registry_deinit(&reg);
}

static struct doveadm_cmd_ver2 doveadm_mirror_init_cmd = {
	.name = "mirror init",
	.cmd = cmd_mirror_init,
	.usage = "[--upgrade]",
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_PARAM('\0', "upgrade", CMD_PARAM_BOOL, 0)
DOVEADM_CMD_PARAMS_END
};

void doveadm_mirror_init_register(void)
{
	doveadm_cmd_register_ver2(&doveadm_mirror_init_cmd);
}
