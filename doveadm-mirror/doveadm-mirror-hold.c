/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* doveadm mirror hold [-m REASON] ID, doveadm mirror release [-m REASON]
   ID: put a legal hold on a mirror, or take it off.

   The hold is in the mirror's definition in the registry (changed under
   the registry's lock): while it is there, the expiry scan removes
   nothing from the mirror's storage, and the mirror can't be removed.
   Each command also appends a record to the mirror's hash chain (a hold
   or a release record, whose content hash is the reason's), so that the
   chain shows when the mirror was held and released, and why.

   The registry is changed first: a hold takes effect even if its chain
   record can't be written (the storage user is gone, its disk is full);
   the command then fails with 75 and says so. The record is appended
   while the registry's lock is held, so that the chain has the holds and
   releases in the order they were made. A scan that is running reads
   every storage's definitions again before it opens the storage: a hold
   made meanwhile stops it too (mirror-expire.h). */

#include "lib.h"
#include "ioloop.h"
#include "str-sanitize.h"
#include "time-util.h"
#include "hash-method.h"
#include "mail-storage-service.h"
#include "doveadm.h"
#include "doveadm-cmd.h"
#include "doveadm-print.h"
#include "mirror-def.h"
#include "mirror-registry.h"
#include "mirror-chain.h"
#include "mirror-privileges.h"
#include "doveadm-mirror.h"

#include <sysexits.h>

/* Append a hold or release record with reason to the chain of def's
   mirror, as the storage user. 0, or -1 with error_r. */
static int
doveadm_mirror_hold_record(const struct mirror_def *def,
			   enum mirror_chain_record_type type,
			   const char *reason, time_t now,
			   struct mirror_chain_record *rec_r,
			   const char **error_r)
{
	struct mail_storage_service_ctx *service;
	struct doveadm_mirror_inbox inbox;
	struct mirror_privileges privs;
	unsigned char hash[MIRROR_CHAIN_HASH_SIZE];
	void *hash_ctx;
	const char *path, *error;
	int ret;

	hash_ctx = t_malloc0(mirror_chain_hash_method.context_size);
	mirror_chain_hash_method.init(hash_ctx);
	mirror_chain_hash_method.loop(hash_ctx, reason, strlen(reason));
	mirror_chain_hash_method.result(hash_ctx, hash);

	mirror_privileges_get(pool_datastack_create(), &privs);
	service = doveadm_mirror_storage_service_init(NULL);
	ret = doveadm_mirror_inbox_open(service, def->storage, &inbox, error_r);
	if (ret > 0) {
		/* fsync: a hold is rare, and must not be lost */
		ret = doveadm_mirror_chain_path(inbox.box, def->id, &path,
						error_r) < 0 ||
			mirror_chain_append(path, def->id, type, now, 0, 0,
					    hash, TRUE, rec_r,
					    error_r) < 0 ? -1 : 1;
	}
	doveadm_mirror_inbox_close(&inbox);
	if (mirror_privileges_set(&privs, &error) < 0)
		i_fatal("%s", error);
	mail_storage_service_deinit(&service);
	return ret > 0 ? 0 : -1;
}

static void doveadm_mirror_hold_print(const struct mirror_def *def,
				      const struct mirror_chain_record *rec)
{
	doveadm_print_init(DOVEADM_PRINT_TYPE_TABLE);
	doveadm_print_header_simple("id");
	doveadm_print_header_simple("storage");
	doveadm_print_header_simple("hold");
	doveadm_print_header_simple("hold_reason");
	doveadm_print_header_simple("record");
	doveadm_print_num(def->id);
	doveadm_print(def->storage);
	doveadm_print(def->hold_since == 0 ? "" :
		      t_strfgmtime("%Y-%m-%dT%H:%M:%SZ", def->hold_since));
	doveadm_print(def->hold_reason == NULL ? "" : def->hold_reason);
	doveadm_print(rec == NULL ? "" : dec2str(rec->seq));
}

static void
cmd_mirror_hold_change(struct doveadm_cmd_context *cctx, bool hold)
{
	const char *name = hold ? "hold" : "release";
	struct registry *reg;
	struct mirror_def def;
	struct mirror_chain_record rec;
	const char *id_str, *reason = "", *error;
	unsigned int id;
	time_t now = time(NULL);

	if (!doveadm_mirror_param_str(cctx, "id", &id_str)) {
		doveadm_mirror_fail(EX_USAGE, t_strdup_printf(
			"mirror %s: Usage: mirror %s [-m REASON] ID",
			name, name));
		return;
	}
	if (!doveadm_mirror_parse_id(id_str, &id))
		return;
	(void)doveadm_mirror_param_str(cctx, "reason", &reason);
	if (!mirror_hold_reason_is_valid(reason, &error)) {
		doveadm_mirror_fail(EX_USAGE, t_strdup_printf(
			"Invalid reason '%s': %s", str_sanitize(reason, 40),
			error));
		return;
	}
	if ((reg = doveadm_mirror_registry_open_locked()) == NULL)
		return;
	if (!doveadm_mirror_get(reg, id, &def)) {
		registry_deinit(&reg);
		return;
	}
	if (hold && def.hold_since != 0) {
		doveadm_mirror_fail(EX_DATAERR, t_strdup_printf(
			"Mirror %u is on hold already, since %s", id,
			t_strfgmtime("%Y-%m-%dT%H:%M:%SZ", def.hold_since)));
		registry_deinit(&reg);
		return;
	}
	if (!hold && def.hold_since == 0) {
		doveadm_mirror_fail(EX_DATAERR, t_strdup_printf(
			"Mirror %u is not on hold", id));
		registry_deinit(&reg);
		return;
	}
	def.hold_since = hold ? now : 0;
	def.hold_reason = hold ? reason : NULL;
	if (mirror_registry_update(reg, &def, &error) < 0) {
		doveadm_mirror_fail(EX_TEMPFAIL, error);
		registry_deinit(&reg);
		return;
	}
	/* still under the registry's lock: holds and releases of a mirror
	   reach its chain in the order they changed the registry */
	if (doveadm_mirror_hold_record(&def, hold ? MIRROR_CHAIN_RECORD_HOLD :
				       MIRROR_CHAIN_RECORD_RELEASE, reason,
				       now, &rec, &error) < 0) {
		doveadm_mirror_fail(EX_TEMPFAIL, t_strdup_printf(
			"Mirror %u is %s, but its chain record failed: %s",
			id, hold ? "on hold" : "released", error));
		doveadm_mirror_hold_print(&def, NULL);
	} else {
		doveadm_mirror_hold_print(&def, &rec);
	}
	registry_deinit(&reg);
}

static void cmd_mirror_hold(struct doveadm_cmd_context *cctx)
{
	cmd_mirror_hold_change(cctx, TRUE);
}

static void cmd_mirror_release(struct doveadm_cmd_context *cctx)
{
	cmd_mirror_hold_change(cctx, FALSE);
}

static struct doveadm_cmd_ver2 doveadm_mirror_hold_commands[] = {
{
	.name = "mirror hold",
	.cmd = cmd_mirror_hold,
	.usage = "[-m <reason>] <id>",
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_PARAM('m', "reason", CMD_PARAM_STR, 0)
DOVEADM_CMD_PARAM('\0', "id", CMD_PARAM_STR, CMD_PARAM_FLAG_POSITIONAL)
DOVEADM_CMD_PARAMS_END
},
{
	.name = "mirror release",
	.cmd = cmd_mirror_release,
	.usage = "[-m <reason>] <id>",
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_PARAM('m', "reason", CMD_PARAM_STR, 0)
DOVEADM_CMD_PARAM('\0', "id", CMD_PARAM_STR, CMD_PARAM_FLAG_POSITIONAL)
DOVEADM_CMD_PARAMS_END
},
};

void doveadm_mirror_hold_register(void)
{
	unsigned int i;

	for (i = 0; i < N_ELEMENTS(doveadm_mirror_hold_commands); i++)
		doveadm_cmd_register_ver2(&doveadm_mirror_hold_commands[i]);
}
