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
#include "mirror-readonly.h"
#include "mirror-access-log.h"
#include "mirror-search.h"
#include "mirror-plugin.h"
#include "mirror-event.h"

#include <unistd.h>
#include <fcntl.h>
#include <sys/stat.h>

#define MIRROR_USER_CONTEXT(obj) \
	MODULE_CONTEXT(obj, mirror_user_module)
#define MIRROR_CONTEXT_REQUIRE(obj) \
	MODULE_CONTEXT_REQUIRE(obj, mirror_storage_module)

/* A filesystem a deferred-sync delivery wrote to, and a directory on it */
struct mirror_unsynced_fs {
	dev_t dev;
	const char *path;
};

struct mirror_delivery_watch {
	mirror_delivery_callback_t *callback;
	mirror_delivery_committed_callback_t *committed;
	void *context;
	const char *error;
	/* mirror_user_defer_delivery_sync(): what was written unsynced */
	ARRAY(struct mirror_unsynced_fs) unsynced;
	/* a directory written to whose filesystem is unknown */
	const char *unsynced_error;
	bool called:1;
	bool failed:1;
	bool defer_sync:1;
};

struct mirror_mailbox {
	union mailbox_module_context module_ctx;
	/* the storage's settings with mail_fsync=never (deferred sync) */
	struct mail_storage_settings *nosync_set;
	/* its directories are in the watch's unsynced */
	bool unsynced_added;
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

void mirror_user_defer_delivery_sync(struct mail_user *user)
{
	struct mirror_user *muser = MIRROR_USER_CONTEXT(user);

	i_assert(muser != NULL && muser->watch.callback != NULL &&
		 !muser->watch.called);
	muser->watch.defer_sync = TRUE;
	p_array_init(&muser->watch.unsynced, user->pool, 2);
}

bool mirror_user_unwatch_delivery(struct mail_user *user)
{
	struct mirror_user *muser = MIRROR_USER_CONTEXT(user);
	bool called;

	if (muser == NULL)
		return FALSE;
	called = muser->watch.called;
	i_zero(&muser->watch);
	return called;
}

enum mirror_readonly_mode mirror_user_get_readonly(struct mail_user *user)
{
	struct mirror_user *muser = MIRROR_USER_CONTEXT(user);

	return muser == NULL ? MIRROR_READONLY_NONE : muser->readonly;
}

static void
mirror_unsynced_add_path(struct mirror_delivery_watch *watch, pool_t pool,
			 const char *path)
{
	const struct mirror_unsynced_fs *fs;
	struct mirror_unsynced_fs *new_fs;
	struct stat st;
	const char *p;

	/* a directory not created (e.g. a control directory that is the
	   mailbox's own): its nearest existing ancestor */
	while (stat(path, &st) < 0) {
		if (errno != ENOENT || (p = strrchr(path, '/')) == NULL ||
		    path[1] == '\0') {
			if (watch->unsynced_error == NULL) {
				watch->unsynced_error = p_strdup_printf(pool,
					"stat(%s) failed: %m", path);
			}
			return;
		}
		path = p == path ? "/" : t_strdup_until(path, p);
	}
	array_foreach(&watch->unsynced, fs) {
		if (fs->dev == st.st_dev)
			return;
	}
	new_fs = array_append_space(&watch->unsynced);
	new_fs->dev = st.st_dev;
	new_fs->path = p_strdup(pool, path);
}

/* The directories that the mailbox's saves and commits write to. */
static void
mirror_unsynced_add_box(struct mirror_delivery_watch *watch,
			struct mailbox *box)
{
	static const enum mailbox_list_path_type types[] = {
		MAILBOX_LIST_PATH_TYPE_MAILBOX,
		MAILBOX_LIST_PATH_TYPE_CONTROL,
		MAILBOX_LIST_PATH_TYPE_INDEX,
	};
	struct mirror_mailbox *mbox = MIRROR_CONTEXT_REQUIRE(box);
	pool_t pool = box->storage->user->pool;
	const char *path;
	unsigned int i;

	if (mbox->unsynced_added)
		return;
	mbox->unsynced_added = TRUE;
	/* mdbox keeps the mail files under the root, not the mailbox */
	if (mailbox_list_get_root_path(box->list, MAILBOX_LIST_PATH_TYPE_DIR,
				       &path))
		mirror_unsynced_add_path(watch, pool, path);
	for (i = 0; i < N_ELEMENTS(types); i++) {
		if (mailbox_get_path_to(box, types[i], &path) > 0)
			mirror_unsynced_add_path(watch, pool, path);
	}
	path = box->storage->set->mail_attachment_dir;
	if (path != NULL && path[0] == '/')
		mirror_unsynced_add_path(watch, pool, path);
}

/* Whether the delivery's writes into box skip their syncs now: before the
   end of the first commit, in a storage that syncs only as Dovecot's
   default does (with mail_fsync=always, e.g. on NFS, it syncs itself). */
static bool mirror_box_defers_sync(struct mailbox *box)
{
	struct mirror_user *muser = MIRROR_USER_CONTEXT(box->storage->user);

	return muser != NULL && muser->watch.defer_sync &&
		!muser->watch.called &&
		box->storage->set->parsed_fsync_mode == FSYNC_MODE_OPTIMIZED;
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

static void
mirror_box_nosync_end(struct mailbox *box,
		      const struct mail_storage_settings *set)
{
	struct mirror_user *muser = MIRROR_USER_CONTEXT(box->storage->user);

	box->storage->set = set;
	T_BEGIN {
		mirror_unsynced_add_box(&muser->watch, box);
	} T_END;
}

static int mirror_save_finish(struct mail_save_context *ctx)
{
	struct mailbox *box = ctx->transaction->box;
	struct mirror_mailbox *mbox = MIRROR_CONTEXT_REQUIRE(box);
	const struct mail_storage_settings *set;
	int ret;

	if (!mirror_box_defers_sync(box))
		return mbox->module_ctx.super.save_finish(ctx);
	set = mirror_box_nosync_begin(box);
	ret = mbox->module_ctx.super.save_finish(ctx);
	mirror_box_nosync_end(box, set);
	return ret;
}

static int mirror_copy(struct mail_save_context *ctx, struct mail *mail)
{
	struct mailbox *box = ctx->transaction->box;
	struct mirror_mailbox *mbox = MIRROR_CONTEXT_REQUIRE(box);
	const struct mail_storage_settings *set;
	int ret;

	if (!mirror_box_defers_sync(box))
		return mbox->module_ctx.super.copy(ctx, mail);
	set = mirror_box_nosync_begin(box);
	ret = mbox->module_ctx.super.copy(ctx, mail);
	mirror_box_nosync_end(box, set);
	return ret;
}

/* The delivery's first commit is over and the committed callback didn't
   sync what its deferred syncs left unsynced: sync it here. */
static int
mirror_unsynced_sync(struct mirror_delivery_watch *watch, const char **error_r)
{
	const struct mirror_unsynced_fs *fs;
	int fd, ret = 0;

	if (watch->unsynced_error != NULL) {
		*error_r = watch->unsynced_error;
		ret = -1;
	}
	array_foreach(&watch->unsynced, fs) {
		fd = open(fs->path, O_RDONLY | O_CLOEXEC);
		if (fd == -1 || syncfs(fd) < 0) {
			if (ret == 0) {
				*error_r = t_strdup_printf("%s(%s) failed: %m",
					fd == -1 ? "open" : "syncfs",
					fs->path);
			}
			ret = -1;
		}
		i_close_fd(&fd);
	}
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
	const struct mail_storage_settings *set = NULL;
	const struct mirror_unsynced_fs *fs;
	const char *error;
	bool first, defer, synced = FALSE;
	int ret;

	if (watch->callback == NULL || t->save_count == 0)
		return mbox->module_ctx.super.transaction_commit(t, changes_r);

	first = !watch->called;
	defer = first && mirror_box_defers_sync(box);
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
		/* (watch->called is set: its saves are over) */
		set = mirror_box_nosync_begin(box);
		ret = mbox->module_ctx.super.transaction_commit(t, changes_r);
		mirror_box_nosync_end(box, set);
	} else {
		ret = mbox->module_ctx.super.transaction_commit(t, changes_r);
	}
	if (!first)
		return ret;
	if (watch->committed != NULL) {
		const struct mirror_unsynced_fs *fss = NULL;
		unsigned int i, count = 0;
		dev_t *devs = NULL;

		if (watch->defer_sync)
			fss = array_get(&watch->unsynced, &count);
		if (count > 0)
			devs = t_new(dev_t, count);
		for (i = 0; i < count; i++)
			devs[i] = fss[i].dev;
		synced = watch->committed(watch->context, ret == 0,
					  devs, count);
	}
	if (!watch->defer_sync || synced ||
	    (array_count(&watch->unsynced) == 0 &&
	     watch->unsynced_error == NULL))
		return ret;
	T_BEGIN {
		if (mirror_unsynced_sync(watch, &error) < 0) {
			/* kept, but not durable: the sender retries */
			mailbox_set_critical(box, "mirror: Can't sync what "
				"the delivery wrote: %s", error);
			ret = -1;
		} else {
			array_foreach(&watch->unsynced, fs) {
				e_debug(box->event, "mirror: Synced "
					"the delivery (syncfs(%s))",
					fs->path);
			}
		}
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
