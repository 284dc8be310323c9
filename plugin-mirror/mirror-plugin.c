/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* The mirror mail plugin: watches deliveries for the LMTP plugin
   (mirror-plugin.h), marks the users whose sessions are read-only
   (mirror-readonly.c) and those whose access is logged
   (mirror-access-log.c). */

#define _GNU_SOURCE /* syncfs() */
#include "lib.h"
#include "module-dir.h"
#include "mail-user.h"
#include "mail-storage-private.h"
#include "mail-storage-hooks.h"
#include "mirror-registry.h"
#include "mirror-copy.h"
#include "mirror-readonly.h"
#include "mirror-access-log.h"
#include "mirror-search.h"
#include "mirror-plugin.h"
#include "mirror-event.h"

#include <unistd.h>
#include <sys/stat.h>

#define MIRROR_USER_CONTEXT(obj) \
	MODULE_CONTEXT(obj, mirror_user_module)
#define MIRROR_CONTEXT_REQUIRE(obj) \
	MODULE_CONTEXT_REQUIRE(obj, mirror_storage_module)

/* A filesystem that a watched delivery writes to, with a descriptor
   opened before its first write there: a syncfs() of it reports any
   writeback error since. */
struct mirror_delivery_fs {
	dev_t dev;
	int fd;
	const char *path;
	/* written without syncs */
	bool deferred;
};
ARRAY_DEFINE_TYPE(mirror_delivery_fs, struct mirror_delivery_fs);

enum mirror_box_sync {
	MIRROR_BOX_SYNC_UNKNOWN = 0,
	/* Dovecot's own syncs */
	MIRROR_BOX_SYNC_NORMAL,
	/* Dovecot's own syncs, and its filesystems are reported too (to
	   learn whether they can be synced by someone else) */
	MIRROR_BOX_SYNC_PROBE,
	/* written without syncs until the first commit is over */
	MIRROR_BOX_SYNC_DEFER,
};

struct mirror_delivery_watch {
	mirror_delivery_callback_t *callback;
	mirror_delivery_committed_callback_t *committed;
	void *context;
	const char *error;
	/* mirror_user_defer_delivery_sync(): the filesystems the committed
	   callback can have synced, and those written to (since_usecs:
	   before the first write) */
	ARRAY_TYPE(mirror_dev) covered;
	ARRAY_TYPE(mirror_delivery_fs) fss;
	long long since_usecs;
	bool called:1;
	bool failed:1;
	bool defer_sync:1;
};

struct mirror_mailbox {
	union mailbox_module_context module_ctx;
	/* the storage's settings with mail_fsync=never (deferred sync) */
	struct mail_storage_settings *nosync_set;
	enum mirror_box_sync sync;
};

struct mirror_user {
	union mail_user_module_context module_ctx;
	struct mirror_delivery_watch watch;
	/* IMAP or POP3 session of a read-only mirror storage */
	enum mirror_readonly_mode readonly;
	/* IMAP or POP3 session of a mirror storage: its access is logged */
	bool access_logged;
};

const char *mirror_plugin_version = DOVECOT_ABI_VERSION;

static MODULE_CONTEXT_DEFINE_INIT(mirror_user_module,
				  &mail_user_module_register);
static MODULE_CONTEXT_DEFINE_INIT(mirror_storage_module,
				  &mail_storage_module_register);

bool mirror_user_watch_delivery(struct mail_user *user,
				mirror_delivery_callback_t *callback,
				mirror_delivery_committed_callback_t *committed,
				void *context)
{
	struct mirror_user *muser = MIRROR_USER_CONTEXT(user);

	if (muser == NULL)
		return FALSE;
	i_assert(muser->watch.callback == NULL);
	i_zero(&muser->watch);
	muser->watch.callback = callback;
	muser->watch.committed = committed;
	muser->watch.context = context;
	return TRUE;
}

void mirror_user_defer_delivery_sync(struct mail_user *user,
				     const dev_t *covered,
				     unsigned int covered_count)
{
	struct mirror_user *muser = MIRROR_USER_CONTEXT(user);

	i_assert(muser != NULL && muser->watch.callback != NULL &&
		 !muser->watch.called);
	muser->watch.defer_sync = TRUE;
	p_array_init(&muser->watch.covered, user->pool, covered_count + 1);
	if (covered_count > 0)
		array_append(&muser->watch.covered, covered, covered_count);
	p_array_init(&muser->watch.fss, user->pool, 2);
}

static void mirror_delivery_fss_close(struct mirror_delivery_watch *watch)
{
	struct mirror_delivery_fs *fs;

	if (!array_is_created(&watch->fss))
		return;
	array_foreach_modifiable(&watch->fss, fs)
		i_close_fd(&fs->fd);
	array_clear(&watch->fss);
}

bool mirror_user_unwatch_delivery(struct mail_user *user)
{
	struct mirror_user *muser = MIRROR_USER_CONTEXT(user);
	bool called;

	if (muser == NULL)
		return FALSE;
	called = muser->watch.called;
	mirror_delivery_fss_close(&muser->watch);
	i_zero(&muser->watch);
	return called;
}

enum mirror_readonly_mode mirror_user_get_readonly(struct mail_user *user)
{
	struct mirror_user *muser = MIRROR_USER_CONTEXT(user);

	return muser == NULL ? MIRROR_READONLY_NONE : muser->readonly;
}

static struct mirror_delivery_fs *
mirror_delivery_fs_find(ARRAY_TYPE(mirror_delivery_fs) *fss, dev_t dev)
{
	struct mirror_delivery_fs *fs;

	array_foreach_modifiable(fss, fs) {
		if (fs->dev == dev)
			return fs;
	}
	return NULL;
}

/* Before the delivery's first write into box: the filesystems of the
   directories its saves and commits write to (mail, control, index, the
   mail root for mdbox's files, attachments), whether it is written
   without syncs, and descriptors to sync them by. */
static enum mirror_box_sync
mirror_box_sync_init(struct mirror_delivery_watch *watch, struct mailbox *box)
{
	static const enum mailbox_list_path_type types[] = {
		MAILBOX_LIST_PATH_TYPE_MAILBOX,
		MAILBOX_LIST_PATH_TYPE_CONTROL,
		MAILBOX_LIST_PATH_TYPE_INDEX,
	};
	ARRAY_TYPE(const_string) paths;
	ARRAY_TYPE(mirror_delivery_fs) found;
	struct mirror_delivery_fs *fs, *old;
	const char *path, *opened, *open_error, *error = NULL;
	struct stat st;
	unsigned int i;
	bool covered = TRUE;

	if (watch->since_usecs == 0)
		watch->since_usecs = mirror_monotonic_usecs();
	t_array_init(&paths, 8);
	if (mailbox_list_get_root_path(box->list, MAILBOX_LIST_PATH_TYPE_DIR,
				       &path))
		array_push_back(&paths, &path);
	for (i = 0; i < N_ELEMENTS(types); i++) {
		switch (mailbox_get_path_to(box, types[i], &path)) {
		case 1:
			array_push_back(&paths, &path);
			break;
		case 0:
			break;
		default:
			error = mailbox_get_last_internal_error(box, NULL);
			break;
		}
	}
	path = box->storage->set->mail_attachment_dir;
	if (path != NULL && path[0] == '/')
		array_push_back(&paths, &path);

	t_array_init(&found, 4);
	array_foreach_elem(&paths, path) {
		if (error != NULL)
			break;
		/* one descriptor per filesystem (they are usually all on
		   one) */
		if (stat(path, &st) == 0 &&
		    mirror_delivery_fs_find(&found, st.st_dev) != NULL)
			continue;
		fs = array_append_space(&found);
		fs->fd = -1;
		if (mirror_fs_open(path, NULL, NULL, &fs->fd, &fs->dev,
				   &opened, &open_error, &error) < 0)
			break;
		fs->path = p_strdup(box->storage->user->pool, path);
		if (!mirror_dev_find(&watch->covered, fs->dev))
			covered = FALSE;
	}
	if (error != NULL) {
		e_debug(box->event, "mirror: Synced as usual: %s", error);
		array_foreach_modifiable(&found, fs)
			i_close_fd(&fs->fd);
		return MIRROR_BOX_SYNC_NORMAL;
	}
	array_foreach_modifiable(&found, fs) {
		old = mirror_delivery_fs_find(&watch->fss, fs->dev);
		if (old != NULL) {
			old->deferred = old->deferred || covered;
			i_close_fd(&fs->fd);
			continue;
		}
		fs->deferred = covered;
		array_push_back(&watch->fss, fs);
	}
	return covered ? MIRROR_BOX_SYNC_DEFER : MIRROR_BOX_SYNC_PROBE;
}

/* How the watched delivery's writes into box are synced now: without
   syncs (until the end of the first commit) only in a storage that syncs
   as Dovecot's default does (with mail_fsync=always, e.g. on NFS, it
   syncs itself), and on filesystems the committed callback can have
   synced. */
static enum mirror_box_sync mirror_box_sync_get(struct mailbox *box)
{
	struct mirror_user *muser = MIRROR_USER_CONTEXT(box->storage->user);
	struct mirror_mailbox *mbox = MIRROR_CONTEXT_REQUIRE(box);

	if (muser == NULL || !muser->watch.defer_sync ||
	    muser->watch.called ||
	    box->storage->set->parsed_fsync_mode != FSYNC_MODE_OPTIMIZED)
		return MIRROR_BOX_SYNC_NORMAL;
	if (mbox->sync == MIRROR_BOX_SYNC_UNKNOWN) T_BEGIN {
		mbox->sync = mirror_box_sync_init(&muser->watch, box);
	} T_END;
	return mbox->sync;
}

/* Switch box's storage to mail_fsync=never while the delivery writes. */
static const struct mail_storage_settings *
mirror_box_nosync_begin(struct mailbox *box)
{
	struct mirror_mailbox *mbox = MIRROR_CONTEXT_REQUIRE(box);
	const struct mail_storage_settings *set = box->storage->set;

	if (mbox->nosync_set == NULL) {
		mbox->nosync_set = p_memdup(box->pool, set, sizeof(*set));
		mbox->nosync_set->parsed_fsync_mode = FSYNC_MODE_NEVER;
	}
	box->storage->set = mbox->nosync_set;
	return set;
}

static int
mirror_save_begin(struct mail_save_context *ctx, struct istream *input)
{
	struct mailbox *box = ctx->transaction->box;
	struct mirror_mailbox *mbox = MIRROR_CONTEXT_REQUIRE(box);

	/* before it writes */
	(void)mirror_box_sync_get(box);
	return mbox->module_ctx.super.save_begin(ctx, input);
}

static int mirror_save_finish(struct mail_save_context *ctx)
{
	struct mailbox *box = ctx->transaction->box;
	struct mirror_mailbox *mbox = MIRROR_CONTEXT_REQUIRE(box);
	const struct mail_storage_settings *set;
	int ret;

	if (mirror_box_sync_get(box) != MIRROR_BOX_SYNC_DEFER)
		return mbox->module_ctx.super.save_finish(ctx);
	set = mirror_box_nosync_begin(box);
	ret = mbox->module_ctx.super.save_finish(ctx);
	box->storage->set = set;
	return ret;
}

static int mirror_copy(struct mail_save_context *ctx, struct mail *mail)
{
	struct mailbox *box = ctx->transaction->box;
	struct mirror_mailbox *mbox = MIRROR_CONTEXT_REQUIRE(box);
	const struct mail_storage_settings *set;
	int ret;

	if (mirror_box_sync_get(box) != MIRROR_BOX_SYNC_DEFER)
		return mbox->module_ctx.super.copy(ctx, mail);
	set = mirror_box_nosync_begin(box);
	ret = mbox->module_ctx.super.copy(ctx, mail);
	box->storage->set = set;
	return ret;
}

/* The delivery's first commit is over and the committed callback didn't
   sync what it wrote without syncs: sync it here, through descriptors
   opened before those writes. */
static int
mirror_delivery_fss_sync(struct mirror_delivery_watch *watch,
			 struct mailbox *box, const char **error_r)
{
	const struct mirror_delivery_fs *fs;
	int ret = 0;

	array_foreach(&watch->fss, fs) {
		if (!fs->deferred)
			continue;
		if (syncfs(fs->fd) < 0) {
			if (ret == 0) {
				*error_r = t_strdup_printf(
					"syncfs(%s) failed: %m", fs->path);
			}
			ret = -1;
		} else {
			e_debug(box->event, "mirror: Synced the delivery "
				"(syncfs(%s))", fs->path);
		}
	}
	return ret;
}

/* After the first commit: the committed callback, told what the delivery
   wrote, and the delivery's own sync if it didn't have it synced.
   Returns ret, or -1 if that sync failed. */
static int
mirror_delivery_committed(struct mirror_delivery_watch *watch,
			  struct mailbox *box, int ret)
{
	struct mirror_delivery_sync sync;
	const struct mirror_delivery_fs *fs;
	ARRAY(dev_t) devs;
	const char *error = NULL;
	bool synced = FALSE;

	i_zero(&sync);
	t_array_init(&devs, 4);
	if (watch->defer_sync) {
		array_foreach(&watch->fss, fs) {
			array_push_back(&devs, &fs->dev);
			sync.deferred = sync.deferred || fs->deferred;
		}
		sync.devs = array_get(&devs, &sync.count);
		/* with nothing deferred only whether they can be synced is
		   asked: not whether a sync would see errors of the past */
		sync.since_usecs = sync.deferred ? watch->since_usecs :
			LLONG_MAX;
	}
	if (watch->committed != NULL)
		synced = watch->committed(watch->context, ret == 0, &sync);
	/* nothing is kept after a failed callback */
	/* (also after a failed commit: Sieve's later commits may keep what
	   it wrote) */
	if (sync.deferred && !synced && !watch->failed &&
	    mirror_delivery_fss_sync(watch, box, &error) < 0) {
		/* not durable: the sender sends it again, and the
		   delivery's later commits fail too */
		if (ret == 0) {
			mailbox_set_critical(box, "mirror: Can't sync what "
					     "the delivery wrote: %s", error);
			ret = -1;
		} else {
			/* the commit's own error stays */
			e_error(box->event, "mirror: Can't sync what the "
				"delivery wrote: %s", error);
		}
		watch->failed = TRUE;
		watch->error = p_strdup(box->storage->user->pool,
			"Can't sync what the delivery wrote");
	}
	mirror_delivery_fss_close(watch);
	return ret;
}

static int
mirror_transaction_commit(struct mailbox_transaction_context *t,
			  struct mail_transaction_commit_changes *changes_r)
{
	struct mailbox *box = t->box;
	struct mirror_mailbox *mbox = MIRROR_CONTEXT_REQUIRE(box);
	struct mirror_user *muser = MIRROR_USER_CONTEXT(box->storage->user);
	struct mirror_delivery_watch *watch = &muser->watch;
	const struct mail_storage_settings *set;
	const char *error;
	bool first, defer;
	int ret;

	if (watch->callback == NULL || t->save_count == 0)
		return mbox->module_ctx.super.transaction_commit(t, changes_r);

	first = !watch->called;
	defer = first && mirror_box_sync_get(box) == MIRROR_BOX_SYNC_DEFER;
	if (first) {
		watch->called = TRUE;
		if (watch->callback(watch->context, &error) < 0) {
			watch->failed = TRUE;
			watch->error = p_strdup(box->storage->user->pool,
						error);
		}
	}
	if (watch->failed) {
		/* Keep nothing: the sender retries the whole delivery. */
		mail_storage_set_error(box->storage, MAIL_ERROR_TEMP,
				       watch->error);
		mbox->module_ctx.super.transaction_rollback(t);
		ret = -1;
	} else if (defer) {
		set = mirror_box_nosync_begin(box);
		ret = mbox->module_ctx.super.transaction_commit(t, changes_r);
		box->storage->set = set;
	} else {
		ret = mbox->module_ctx.super.transaction_commit(t, changes_r);
	}
	if (first) T_BEGIN {
		ret = mirror_delivery_committed(watch, box, ret);
	} T_END;
	return ret;
}

static struct event *mirror_user_event(struct mail_user *user)
{
	return event_create_passthrough(user->event)->
		add_category(&event_category_mirror)->
		append_log_prefix("mirror: ")->event();
}

bool mirror_user_access_logged(struct mail_user *user)
{
	struct mirror_user *muser = MIRROR_USER_CONTEXT(user);

	return muser != NULL && muser->access_logged;
}

/* Returns 1 if user is the storage of a read-only mirror, 0 if not, -1 if
   the registry can't tell; storage_r says whether it is a mirror's
   storage at all. */
static int
mirror_user_readonly_lookup(struct mail_user *user, const char *dict_uri,
			    bool *storage_r, const char **error_r)
{
	struct registry *reg;
	ARRAY_TYPE(mirror_def) defs;
	const struct mirror_def *def;
	int ret;

	if (registry_init(dict_uri, user->set->base_dir, user->event,
				 &reg, error_r) < 0)
		return -1;
	t_array_init(&defs, 4);
	ret = mirror_registry_storage_lookup(reg, user->username,
					     pool_datastack_create(), &defs,
					     error_r);
	registry_deinit(&reg);
	*storage_r = ret > 0 && array_count(&defs) > 0;
	if (ret <= 0)
		return ret;
	array_foreach(&defs, def) {
		if (def->readonly)
			return 1;
	}
	return 0;
}

static void mirror_mail_user_created(struct mail_user *user)
{
	struct mirror_user *muser;
	enum mirror_readonly_mode mode = MIRROR_READONLY_NONE;
	const char *dict_uri, *error;
	bool storage = FALSE;
	int ret;

	muser = p_new(user->pool, struct mirror_user, 1);
	muser->module_ctx.super = *user->vlast;
	user->vlast = &muser->module_ctx.super;
	MODULE_CONTEXT_SET(user, mirror_user_module, muser);

	/* Only the clients' own services are restricted: LMTP saves the
	   mirror copies, doveadm administers and expires them. */
	if (strcmp(user->service, "imap") == 0)
		mode = MIRROR_READONLY_REFUSE;
	else if (strcmp(user->service, "pop3") == 0)
		mode = MIRROR_READONLY_IGNORE;
	if (mode == MIRROR_READONLY_NONE)
		return;
	/* a user whose userdb says so (a bag user, which reads its bag in
	   an emergency: the bag service alone removes mail) */
	if (mail_user_plugin_getenv_bool(user, "mirror_readonly")) {
		muser->readonly = mode;
		e_debug(mirror_user_event(user), "mirror_readonly: read-only");
		return;
	}
	dict_uri = mail_user_plugin_getenv(user, "mirror_dict");
	if (dict_uri == NULL || *dict_uri == '\0')
		return;

	ret = mirror_user_readonly_lookup(user, dict_uri, &storage, &error);
	muser->access_logged = storage;
	if (ret < 0) {
		/* fail closed: a read-only storage must not get in writable */
		error = t_strdup_printf("Can't tell whether the user is a "
					"read-only mirror storage: %s", error);
		user->error = p_strconcat(user->pool, "mirror: ", error, NULL);
		e_error(mirror_user_event(user), "%s", error);
	} else if (ret > 0) {
		muser->readonly = mode;
		e_debug(mirror_user_event(user), "Read-only mirror storage: "
			"only \\Seen can be changed");
	}
}

static void mirror_mailbox_allocated(struct mailbox *box)
{
	struct mirror_user *muser = MIRROR_USER_CONTEXT(box->storage->user);
	struct mailbox_vfuncs *v = box->vlast;
	struct mirror_mailbox *mbox;

	/* Only deliveries are watched. Mirror copies are saved with
	   MAILBOX_FLAG_SAVEONLY and never come here, so a copy can never
	   trigger another copy. */
	if (muser == NULL || (box->flags & MAILBOX_FLAG_POST_SESSION) == 0)
		return;

	mbox = p_new(box->pool, struct mirror_mailbox, 1);
	mbox->module_ctx.super = *v;
	box->vlast = &mbox->module_ctx.super;
	v->transaction_commit = mirror_transaction_commit;
	v->save_begin = mirror_save_begin;
	v->save_finish = mirror_save_finish;
	v->copy = mirror_copy;
	MODULE_CONTEXT_SET_SELF(box, mirror_storage_module, &mbox->module_ctx);
}

static struct mail_storage_hooks mirror_mail_storage_hooks = {
	.mail_user_created = mirror_mail_user_created,
	.mailbox_allocated = mirror_mailbox_allocated,
};

void mirror_plugin_init(struct module *module)
{
	mail_storage_hooks_add(module, &mirror_mail_storage_hooks);
	mirror_readonly_hooks_add(module);
	mirror_access_hooks_add(module);
	mirror_search_hooks_add(module);
}

void mirror_plugin_deinit(void)
{
	mirror_search_hooks_remove();
	mirror_access_hooks_remove();
	mirror_readonly_hooks_remove();
	mail_storage_hooks_remove(&mirror_mail_storage_hooks);
}
