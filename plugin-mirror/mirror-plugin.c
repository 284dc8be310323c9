/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* The mirror mail plugin: watches deliveries for the LMTP plugin
   (mirror-plugin.h), marks the users whose sessions are read-only
   (mirror-readonly.c) and those whose access is logged
   (mirror-access-log.c). */

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

#define MIRROR_USER_CONTEXT(obj) \
	MODULE_CONTEXT(obj, mirror_user_module)
#define MIRROR_CONTEXT_REQUIRE(obj) \
	MODULE_CONTEXT_REQUIRE(obj, mirror_storage_module)

struct mirror_delivery_watch {
	mirror_delivery_callback_t *callback;
	mirror_delivery_committed_callback_t *committed;
	void *context;
	const char *error;
	bool called:1;
	bool failed:1;
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

static int
mirror_transaction_commit(struct mailbox_transaction_context *t,
			  struct mail_transaction_commit_changes *changes_r)
{
	struct mailbox *box = t->box;
	union mailbox_module_context *mbox = MIRROR_CONTEXT_REQUIRE(box);
	struct mirror_user *muser = MIRROR_USER_CONTEXT(box->storage->user);
	struct mirror_delivery_watch *watch = &muser->watch;
	const char *error;
	bool first;
	int ret;

	if (watch->callback == NULL || t->save_count == 0)
		return mbox->super.transaction_commit(t, changes_r);

	first = !watch->called;
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
		mbox->super.transaction_rollback(t);
		ret = -1;
	} else {
		ret = mbox->super.transaction_commit(t, changes_r);
	}
	if (first && watch->committed != NULL)
		watch->committed(watch->context, ret == 0);
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
	union mailbox_module_context *mbox;

	/* Only deliveries are watched. Mirror copies are saved with
	   MAILBOX_FLAG_SAVEONLY and never come here, so a copy can never
	   trigger another copy. */
	if (muser == NULL || (box->flags & MAILBOX_FLAG_POST_SESSION) == 0)
		return;

	mbox = p_new(box->pool, union mailbox_module_context, 1);
	mbox->super = *v;
	box->vlast = &mbox->super;
	v->transaction_commit = mirror_transaction_commit;
	MODULE_CONTEXT_SET_SELF(box, mirror_storage_module, mbox);
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
