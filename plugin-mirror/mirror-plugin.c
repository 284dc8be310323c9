/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

#include "lib.h"
#include "module-dir.h"
#include "mail-user.h"
#include "mail-storage-private.h"
#include "mail-storage-hooks.h"
#include "mirror-plugin.h"

#define MIRROR_USER_CONTEXT(obj) \
	MODULE_CONTEXT(obj, mirror_user_module)
#define MIRROR_CONTEXT_REQUIRE(obj) \
	MODULE_CONTEXT_REQUIRE(obj, mirror_storage_module)

struct mirror_delivery_watch {
	mirror_delivery_callback_t *callback;
	void *context;
	const char *error;
	bool called:1;
	bool failed:1;
};

struct mirror_user {
	union mail_user_module_context module_ctx;
	struct mirror_delivery_watch watch;
};

const char *mirror_plugin_version = DOVECOT_ABI_VERSION;

static MODULE_CONTEXT_DEFINE_INIT(mirror_user_module,
				  &mail_user_module_register);
static MODULE_CONTEXT_DEFINE_INIT(mirror_storage_module,
				  &mail_storage_module_register);

bool mirror_user_watch_delivery(struct mail_user *user,
				mirror_delivery_callback_t *callback,
				void *context)
{
	struct mirror_user *muser = MIRROR_USER_CONTEXT(user);

	if (muser == NULL)
		return FALSE;
	i_assert(muser->watch.callback == NULL);
	i_zero(&muser->watch);
	muser->watch.callback = callback;
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

static int
mirror_transaction_commit(struct mailbox_transaction_context *t,
			  struct mail_transaction_commit_changes *changes_r)
{
	struct mailbox *box = t->box;
	union mailbox_module_context *mbox = MIRROR_CONTEXT_REQUIRE(box);
	struct mirror_user *muser = MIRROR_USER_CONTEXT(box->storage->user);
	struct mirror_delivery_watch *watch = &muser->watch;
	const char *error;

	if (watch->callback == NULL || t->save_count == 0)
		return mbox->super.transaction_commit(t, changes_r);

	if (!watch->called) {
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
		return -1;
	}
	return mbox->super.transaction_commit(t, changes_r);
}

static void mirror_mail_user_created(struct mail_user *user)
{
	struct mirror_user *muser;

	muser = p_new(user->pool, struct mirror_user, 1);
	muser->module_ctx.super = *user->vlast;
	user->vlast = &muser->module_ctx.super;
	MODULE_CONTEXT_SET(user, mirror_user_module, muser);
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
}

void mirror_plugin_deinit(void)
{
	mail_storage_hooks_remove(&mirror_mail_storage_hooks);
}
