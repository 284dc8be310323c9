/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* doveadm mirror check [--repair]: the registry's fsck (registry-check.h).
   A registry without its marker (a lost one) is neither checked nor
   repaired: exit code 75, as for every other command. Else it checks the
   registry's own keys, Mail Mirror's (mirror-registry-check.h) and Mail
   Bagging's (bag-registry-check.h). What needs a mail storage or the
   userdb is done here: the copies in a mirror's hash chain, the oldest
   message of a mirror storage, the messages in a bag, whether the userdb
   knows a storage user.

   One row per problem: its key, the problem, and what --repair did (or
   without it, would do) or why it left it. With --repair the registry's
   lock is held (its own keys are made again first if they are what is
   broken), everything is read, and then the repairs are written at
   once. Exit codes: 0 nothing is wrong (any longer), 65 problems remain,
   75 the registry can't be read. */

#include "lib.h"
#include "array.h"
#include "str-sanitize.h"
#include "mail-storage-service.h"
#include "mail-storage.h"
#include "doveadm.h"
#include "doveadm-cmd.h"
#include "doveadm-print.h"
#include "registry-dict.h"
#include "registry-check.h"
#include "registry-lock.h"
#include "mirror-chain.h"
#include "mirror-expire.h"
#include "mirror-privileges.h"
#include "mirror-registry-check.h"
#include "bag-registry-check.h"
#include "doveadm-mirror.h"

#include <sysexits.h>
#include <time.h>

/* how long --repair waits for the registry's lock */
#define MIRROR_CHECK_LOCK_TIMEOUT_MSECS (30*1000)

struct mirror_check_cmd {
	pool_t pool;
	struct registry *reg;
	/* --repair holds the registry's lock: when it was last renewed,
	   and why renewing it failed */
	bool locked;
	time_t lock_refreshed;
	const char *lock_error;
	/* opened when a storage is first needed */
	struct mail_storage_service_ctx *service;
	/* the identity to go back to after a storage was opened */
	struct mirror_privileges privs;
};

static struct mail_storage_service_ctx *
mirror_check_service(struct mirror_check_cmd *cmd)
{
	if (cmd->service == NULL)
		cmd->service = doveadm_mirror_storage_service_init(NULL);
	return cmd->service;
}

static void mirror_check_privileges_restore(struct mirror_check_cmd *cmd)
{
	const char *error;

	if (mirror_privileges_set(&cmd->privs, &error) < 0)
		i_fatal("%s", error);
}

/* Opening storages takes its time: renew the lock's lease (between the
   check's lookups, with no transaction open) before it can run out. */
static void mirror_check_lock_refresh(struct mirror_check_cmd *cmd)
{
	const char *error;
	time_t now = time(NULL);

	if (!cmd->locked || cmd->lock_error != NULL ||
	    now - cmd->lock_refreshed < REGISTRY_LOCK_LEASE_SECS / 4)
		return;
	if (registry_lock_refresh(cmd->reg, &error) < 0)
		cmd->lock_error = p_strdup(cmd->pool, error);
	cmd->lock_refreshed = now;
}

static int
mirror_check_chain_copies(const struct mirror_def *def, void *context,
			  uint64_t *copies_r, const char **error_r)
{
	struct mirror_check_cmd *cmd = context;
	struct doveadm_mirror_inbox inbox;
	ARRAY_TYPE(mirror_chain_record) records;
	const struct mirror_chain_record *rec;
	const char *path, *broken;
	unsigned int uncounted, failures;
	int ret;

	/* the records that can be read count, whether or not their links
	   hold (doveadm mirror verify tells) */
	*copies_r = 0;
	i_array_init(&records, 256);
	ret = doveadm_mirror_inbox_open(mirror_check_service(cmd),
					def->storage, &inbox, error_r);
	if (ret > 0) {
		ret = doveadm_mirror_chain_path(inbox.box, def->id, &path,
						error_r) < 0 ||
			mirror_chain_read(path, def->id, &records, &broken,
					  error_r) < 0 ? -1 : 1;
	}
	doveadm_mirror_inbox_close(&inbox);
	mirror_check_privileges_restore(cmd);
	mirror_check_lock_refresh(cmd);
	if (ret > 0) {
		array_foreach(&records, rec) {
			if (rec->type == MIRROR_CHAIN_RECORD_COPY)
				(*copies_r)++;
		}
	}
	array_free(&records);
	if (ret <= 0)
		return -1;
	/* what mirror-writer counts later is not the counter's: its journal
	   after the chain, so that a copy made in between is left out (a
	   counter short by it is raised by verify --reconcile), never
	   counted twice */
	if (!doveadm_mirror_uncounted(def->id, &uncounted, &failures)) {
		*error_r = "the copies mirror-writer has yet to count can't be "
			"read (run as root)";
		return -1;
	}
	*copies_r -= I_MIN(*copies_r, uncounted);
	return 0;
}

static int
mirror_check_oldest_saved(const char *storage, void *context,
			  time_t *oldest_r, const char **error_r)
{
	struct mirror_check_cmd *cmd = context;

	int ret;

	/* what doveadm mirror expire --rebuild-index sets */
	ret = mirror_expire_storage_oldest(mirror_check_service(cmd), NULL,
					   storage, oldest_r, error_r);
	mirror_check_lock_refresh(cmd);
	return ret;
}

static int
mirror_check_user_exists(const char *user, void *context ATTR_UNUSED,
			 const char **error_r)
{
	return doveadm_mirror_user_exists(user, error_r);
}

static int
mirror_check_inbox_count(const char *user, void *context,
			  unsigned int *count_r, const char **error_r)
{
	struct mirror_check_cmd *cmd = context;
	struct doveadm_mirror_inbox inbox;
	struct mailbox_status status;
	int ret;

	*count_r = 0;
	ret = doveadm_mirror_inbox_open(mirror_check_service(cmd), user,
					&inbox, error_r);
	if (ret > 0) {
		mailbox_get_open_status(inbox.box, STATUS_MESSAGES, &status);
		*count_r = status.messages;
	}
	doveadm_mirror_inbox_close(&inbox);
	mirror_check_privileges_restore(cmd);
	mirror_check_lock_refresh(cmd);
	return ret > 0 ? 0 : -1;
}

static void mirror_check_print(struct registry_check *check)
{
	const struct registry_check_problem *p;

	doveadm_print_init(DOVEADM_PRINT_TYPE_TABLE);
	doveadm_print_header_simple("key");
	doveadm_print_header_simple("problem");
	doveadm_print_header_simple("action");
	array_foreach(registry_check_problems(check), p) {
		doveadm_print(p->key);
		doveadm_print(p->problem);
		doveadm_print(p->action);
	}
}

/* Check (and with repair, repair) everything: 0, or -1 with error_r if
   the registry couldn't be read or written (*found_r: what was found is
   right, and is shown). */
static int
mirror_check_run(struct mirror_check_cmd *cmd, struct registry *reg,
		 struct registry_check *check, bool *found_r,
		 const char **error_r)
{
	const struct mirror_check_storage mirror_storage = {
		.chain_copies = mirror_check_chain_copies,
		.oldest_saved = mirror_check_oldest_saved,
		.user_exists = mirror_check_user_exists,
		.context = cmd,
	};
	const struct bag_check_storage bag_storage = {
		.inbox_count = mirror_check_inbox_count,
		.context = cmd,
	};
	bool repair = registry_check_repairing(check);
	const char *error;
	int ret;

	*found_r = FALSE;
	/* no repair without a marker: what is there may not be ours */
	if ((ret = registry_check_marker(check, error_r)) <= 0) {
		*found_r = ret == 0;
		return ret;
	}
	/* nobody can lock without the lock's own keys: they are checked
	   (and repaired) first */
	registry_lock_check(check);
	if ((error = registry_check_failed(check)) != NULL) {
		*error_r = error;
		return -1;
	}
	if (repair) {
		if (registry_check_commit(check, error_r) < 0) {
			*found_r = TRUE;
			return -1;
		}
		if (registry_lock(reg, MIRROR_CHECK_LOCK_TIMEOUT_MSECS,
				  error_r) < 0)
			return -1;
		cmd->locked = TRUE;
		cmd->lock_refreshed = time(NULL);
	}
	if (registry_check_load(check, error_r) < 0)
		return -1;
	mirror_registry_check(check, &mirror_storage);
	bag_registry_check(check, &bag_storage);
	registry_check_logins_unused(check);
	if ((error = registry_check_failed(check)) != NULL) {
		*error_r = error;
		return -1;
	}
	if (cmd->lock_error != NULL) {
		*error_r = t_strconcat("Renewing the registry's lock failed, "
				       "nothing was repaired: ",
				       cmd->lock_error, NULL);
		return -1;
	}
	*found_r = TRUE;
	return registry_check_commit(check, error_r);
}

static void cmd_mirror_check(struct doveadm_cmd_context *cctx)
{
	struct mirror_check_cmd cmd;
	struct registry *reg;
	struct registry_check *check;
	const char *error;
	bool repair = FALSE, found;
	int ret;

	(void)doveadm_cmd_param_bool(cctx, "repair", &repair);
	if ((reg = doveadm_mirror_registry_open_unchecked()) == NULL)
		return;
	i_zero(&cmd);
	cmd.pool = pool_alloconly_create("mirror check", 512);
	cmd.reg = reg;
	mirror_privileges_get(cmd.pool, &cmd.privs);
	check = registry_check_init(reg, repair);

	ret = mirror_check_run(&cmd, reg, check, &found, &error);
	if (ret < 0)
		doveadm_mirror_fail(EX_TEMPFAIL, error);
	else if (registry_check_remaining(check) > 0)
		doveadm_exit_code = EX_DATAERR;
	/* what was found, and done, before a write failed too; after a
	   read failed, what was found may be wrong */
	if (found)
		mirror_check_print(check);

	registry_check_deinit(&check);
	registry_deinit(&reg);
	if (cmd.service != NULL)
		mail_storage_service_deinit(&cmd.service);
	pool_unref(&cmd.pool);
}

static struct doveadm_cmd_ver2 doveadm_mirror_check_cmd = {
	.name = "mirror check",
	.cmd = cmd_mirror_check,
	.usage = "[--repair]",
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_PARAM('\0', "repair", CMD_PARAM_BOOL, 0)
DOVEADM_CMD_PARAMS_END
};

void doveadm_mirror_check_register(void)
{
	doveadm_cmd_register_ver2(&doveadm_mirror_check_cmd);
}
