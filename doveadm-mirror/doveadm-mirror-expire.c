/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* doveadm mirror expire [-n] [-T UNIX_TIME] [--rebuild-index]: run the
   expiry scan now (see mirror-expire.h), then, with mirror_witness_address
   set, send the chain heads to the witness (doveadm-mirror-witness.c). A storage that is due but held
   gets a row too, with the mirrors that hold it (held_by). */

#include "lib.h"
#include "str-sanitize.h"
#include "time-util.h"
#include "master-service.h"
#include "mail-storage-service.h"
#include "doveadm.h"
#include "doveadm-cmd.h"
#include "doveadm-print.h"
#include "doveadm-settings.h"
#include "mirror-expire.h"
#include "doveadm-mirror.h"

#include <sysexits.h>
#include <time.h>


static void
doveadm_mirror_expire_print(const struct mirror_expire_storage_result *res,
			    void *context ATTR_UNUSED)
{
	doveadm_print(res->mirror_ids);
	doveadm_print(res->storage);
	doveadm_print_num(res->removed);
	doveadm_print_num(res->bytes);
	doveadm_print(res->oldest_kept == 0 || res->error != NULL ? "" :
		      t_strfgmtime("%Y-%m-%dT%H:%M:%SZ", res->oldest_kept));
	doveadm_print(res->held_ids == NULL ? "" : res->held_ids);
}

static void cmd_mirror_expire(struct doveadm_cmd_context *cctx)
{
	struct mirror_expire_settings set;
	struct mirror_expire_result result;
	struct mail_storage_service_ctx *service;
	const char *error, *witness;
	time_t now;
	int ret;

	i_zero(&set);
	set.dict_uri = doveadm_plugin_getenv("mirror_dict");
	if (set.dict_uri == NULL || *set.dict_uri == '\0') {
		doveadm_mirror_fail(EX_CONFIG,
			"mirror_dict is not set: mirroring is not configured");
		return;
	}
	set.base_dir = doveadm_settings->base_dir;
	if ((ret = doveadm_mirror_param_time(cctx, "time", &now)) < 0)
		return;
	set.now = ret > 0 ? now : time(NULL);
	(void)doveadm_cmd_param_bool(cctx, "dry-run", &set.dry_run);
	(void)doveadm_cmd_param_bool(cctx, "rebuild-index",
				     &set.rebuild_index);
	set.debug = doveadm_debug;

	doveadm_print_init(DOVEADM_PRINT_TYPE_TABLE);
	doveadm_print_header_simple("ids");
	doveadm_print_header_simple("storage");
	doveadm_print_header_simple("removed");
	doveadm_print_header_simple("bytes");
	doveadm_print_header_simple("oldest_kept");
	doveadm_print_header_simple("held_by");

	service = doveadm_mirror_storage_service_init(NULL);
	ret = mirror_expire_run(&set, service, NULL,
				doveadm_mirror_expire_print, NULL, &result,
				&error);
	mail_storage_service_deinit(&service);
	if (ret < 0) {
		doveadm_mirror_fail(EX_TEMPFAIL, error);
		/* a storage whose visit failed doesn't keep the others'
		   heads from being witnessed; a registry that failed does */
		if (result.failed == 0)
			return;
	}
	/* the nightly scan also has the heads witnessed, if it is set up */
	witness = doveadm_plugin_getenv("mirror_witness_address");
	if (!set.dry_run && !set.rebuild_index && witness != NULL &&
	    *witness != '\0' && doveadm_mirror_witness(FALSE, &error) < 0) {
		doveadm_mirror_fail(EX_TEMPFAIL, t_strdup_printf(
			"mirror witness: %s", error));
	}
}

static struct doveadm_cmd_ver2 doveadm_mirror_expire_cmd = {
	.name = "mirror expire",
	.cmd = cmd_mirror_expire,
	.usage = "[-n] [-T <unix time>] [--rebuild-index]",
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_PARAM('n', "dry-run", CMD_PARAM_BOOL, 0)
/* a string, as every UNIX time of the module's commands: doveadm
   ignores an INT64 option that isn't a number, and would run the scan now */
DOVEADM_CMD_PARAM('T', "time", CMD_PARAM_STR, 0)
DOVEADM_CMD_PARAM('\0', "rebuild-index", CMD_PARAM_BOOL, 0)
DOVEADM_CMD_PARAMS_END
};

void doveadm_mirror_expire_register(void)
{
	doveadm_cmd_register_ver2(&doveadm_mirror_expire_cmd);
}
