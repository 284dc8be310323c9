/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* Read-only mirror storages and bags: the IMAP and POP3 sessions of such
   a user can read, search and set \Seen, and nothing else
   (mirror-readonly.h). */

#include "lib.h"
#include "module-dir.h"
#include "mail-user.h"
#include "mail-storage-private.h"
#include "mail-storage-hooks.h"
#include "mirror-plugin.h"
#include "mirror-readonly.h"
#include "mirror-event.h"

#define MIRROR_READONLY_CONTEXT(obj) \
	MODULE_CONTEXT(obj, mirror_readonly_storage_module)
#define MIRROR_READONLY_CONTEXT_REQUIRE(obj) \
	MODULE_CONTEXT_REQUIRE(obj, mirror_readonly_storage_module)
#define MIRROR_READONLY_MAIL_CONTEXT(obj) \
	MODULE_CONTEXT_REQUIRE(obj, mirror_readonly_mail_module)

struct mirror_readonly_mailbox {
	union mailbox_module_context module_ctx;
	enum mirror_readonly_mode mode;
};

/* Set on a transaction that tried a forbidden change: its commit rolls
   back and fails with this error. */
struct mirror_readonly_transaction {
	union mailbox_transaction_module_context module_ctx;
	enum mail_error error;
};

static MODULE_CONTEXT_DEFINE_INIT(mirror_readonly_storage_module,
				  &mail_storage_module_register);
static MODULE_CONTEXT_DEFINE_INIT(mirror_readonly_mail_module,
				  &mail_module_register);

static struct mirror_readonly_transaction mirror_readonly_denied_perm = {
	.error = MAIL_ERROR_PERM,
};
/* IMAP answers EXPUNGE failing with MAIL_ERROR_PERM with "OK Expunge
   ignored"; NOTPOSSIBLE makes it a NO [CANNOT] like the other refusals. */
static struct mirror_readonly_transaction mirror_readonly_denied_expunge = {
	.error = MAIL_ERROR_NOTPOSSIBLE,
};

static void
mirror_readonly_log(struct mailbox *box, const char *action, const char *what)
{
	e_debug(event_create_passthrough(box->event)->
		add_category(&event_category_mirror)->
		append_log_prefix("mirror: ")->event(),
		"%s %s: read-only mirror storage", action, what);
}

static int mirror_readonly_fail(struct mailbox *box, const char *what)
{
	mirror_readonly_log(box, "Refused", what);
	mail_storage_set_error(box->storage, MAIL_ERROR_PERM,
			       MIRROR_READONLY_ERROR);
	return -1;
}

/* A forbidden change through a mail vfunc, which can't fail. Over IMAP the
   transaction is refused (its commit fails) and TRUE is returned; over POP3
   the change is ignored and FALSE is returned. */
static bool
mirror_readonly_deny(struct mail *mail,
		     struct mirror_readonly_transaction *deny, const char *what)
{
	struct mailbox_transaction_context *t = mail->transaction;
	struct mirror_readonly_mailbox *rbox =
		MIRROR_READONLY_CONTEXT_REQUIRE(mail->box);

	if (rbox->mode == MIRROR_READONLY_IGNORE) {
		mirror_readonly_log(mail->box, "Ignored", what);
		return FALSE;
	}
	if (MIRROR_READONLY_CONTEXT(t) == NULL) {
		mirror_readonly_log(mail->box, "Refused", what);
		MODULE_CONTEXT_SET(t, mirror_readonly_storage_module, deny);
	}
	return TRUE;
}

static void
mirror_readonly_mail_update_flags(struct mail *_mail,
				  enum modify_type modify_type,
				  enum mail_flags flags)
{
	struct mail_private *mail = (struct mail_private *)_mail;
	union mail_module_context *rmail = MIRROR_READONLY_MAIL_CONTEXT(mail);
	enum mail_flags changed = flags;

	if (modify_type == MODIFY_REPLACE) {
		changed = (flags ^ mail_get_flags(_mail)) &
			MAIL_FLAGS_NONRECENT;
	}
	if ((changed & ENUM_NEGATE(MAIL_SEEN)) != 0) {
		if (mirror_readonly_deny(_mail, &mirror_readonly_denied_perm,
					 "flag change"))
			return;
		/* POP3: keep the \Seen part of the change */
		if (modify_type == MODIFY_REPLACE) {
			modify_type = (flags & MAIL_SEEN) != 0 ?
				MODIFY_ADD : MODIFY_REMOVE;
			flags = MAIL_SEEN;
		} else if ((flags &= MAIL_SEEN) == 0) {
			return;
		}
	}
	rmail->super.update_flags(_mail, modify_type, flags);
}

static void
mirror_readonly_mail_update_keywords(struct mail *_mail,
				     enum modify_type modify_type,
				     struct mail_keywords *keywords)
{
	struct mail_private *mail = (struct mail_private *)_mail;
	union mail_module_context *rmail = MIRROR_READONLY_MAIL_CONTEXT(mail);

	/* STORE FLAGS (\Seen) replaces the keywords with none: that changes
	   only a mail that has some */
	if ((keywords != NULL && keywords->count > 0) ||
	    (modify_type == MODIFY_REPLACE &&
	     *mail_get_keywords(_mail) != NULL)) {
		(void)mirror_readonly_deny(_mail, &mirror_readonly_denied_perm,
					   "keyword change");
		return;
	}
	rmail->super.update_keywords(_mail, modify_type, keywords);
}

static void mirror_readonly_mail_expunge(struct mail *mail)
{
	(void)mirror_readonly_deny(mail, &mirror_readonly_denied_expunge,
				   "expunge");
}

static void mirror_readonly_mail_allocated(struct mail *_mail)
{
	struct mail_private *mail = (struct mail_private *)_mail;
	struct mail_vfuncs *v = mail->vlast;
	union mail_module_context *rmail;

	if (MIRROR_READONLY_CONTEXT(_mail->box) == NULL)
		return;

	rmail = p_new(mail->pool, union mail_module_context, 1);
	rmail->super = *v;
	mail->vlast = &rmail->super;
	v->update_flags = mirror_readonly_mail_update_flags;
	v->update_keywords = mirror_readonly_mail_update_keywords;
	v->expunge = mirror_readonly_mail_expunge;
	MODULE_CONTEXT_SET_SELF(mail, mirror_readonly_mail_module, rmail);
}

static int
mirror_readonly_transaction_commit(struct mailbox_transaction_context *t,
				   struct mail_transaction_commit_changes *changes_r)
{
	struct mailbox *box = t->box;
	struct mirror_readonly_mailbox *rbox =
		MIRROR_READONLY_CONTEXT_REQUIRE(box);
	struct mirror_readonly_transaction *denied =
		MIRROR_READONLY_CONTEXT(t);

	if (denied == NULL)
		return rbox->module_ctx.super.transaction_commit(t, changes_r);

	/* refused as a whole: no \Seen either */
	rbox->module_ctx.super.transaction_rollback(t);
	mail_storage_set_error(box->storage, denied->error,
			       MIRROR_READONLY_ERROR);
	return -1;
}

static int
mirror_readonly_save_begin(struct mail_save_context *ctx,
			   struct istream *input ATTR_UNUSED)
{
	return mirror_readonly_fail(ctx->transaction->box, "save");
}

static int
mirror_readonly_copy(struct mail_save_context *ctx,
		     struct mail *mail ATTR_UNUSED)
{
	struct mailbox *box = ctx->transaction->box;

	/* the copy vfunc owns ctx */
	mailbox_save_cancel(&ctx);
	return mirror_readonly_fail(box, "copy");
}

static int
mirror_readonly_create_box(struct mailbox *box,
			   const struct mailbox_update *update, bool directory)
{
	struct mirror_readonly_mailbox *rbox =
		MIRROR_READONLY_CONTEXT_REQUIRE(box);

	/* The INBOX and the mailboxes the configuration creates are created
	   when first opened: allow that, it changes no mail. */
	if (!mailbox_is_autocreated(box))
		return mirror_readonly_fail(box, "create");
	return rbox->module_ctx.super.create_box(box, update, directory);
}

static int
mirror_readonly_update_box(struct mailbox *box,
			   const struct mailbox_update *update ATTR_UNUSED)
{
	return mirror_readonly_fail(box, "mailbox update");
}

static int mirror_readonly_delete_box(struct mailbox *box)
{
	return mirror_readonly_fail(box, "delete");
}

static int
mirror_readonly_rename_box(struct mailbox *src,
			   struct mailbox *dest ATTR_UNUSED)
{
	return mirror_readonly_fail(src, "rename");
}

static int mirror_readonly_set_subscribed(struct mailbox *box, bool set)
{
	struct mirror_readonly_mailbox *rbox =
		MIRROR_READONLY_CONTEXT_REQUIRE(box);

	/* autocreate subscribes the mailboxes configured so */
	if (!set || !mailbox_is_autosubscribed(box))
		return mirror_readonly_fail(box, "subscription change");
	return rbox->module_ctx.super.set_subscribed(box, set);
}

static int
mirror_readonly_attribute_set(struct mailbox_transaction_context *t,
			      enum mail_attribute_type type_flags ATTR_UNUSED,
			      const char *key ATTR_UNUSED,
			      const struct mail_attribute_value *value ATTR_UNUSED)
{
	return mirror_readonly_fail(t->box, "metadata change");
}

static int
mirror_readonly_get_status(struct mailbox *box,
			   enum mailbox_status_items items,
			   struct mailbox_status *status_r)
{
	struct mirror_readonly_mailbox *rbox =
		MIRROR_READONLY_CONTEXT_REQUIRE(box);

	if (rbox->module_ctx.super.get_status(box, items, status_r) < 0)
		return -1;
	if ((items & STATUS_PERMANENT_FLAGS) != 0) {
		/* tell IMAP clients up front (PERMANENTFLAGS (\Seen)) */
		status_r->permanent_flags &= MAIL_SEEN;
		status_r->permanent_keywords = FALSE;
		status_r->allow_new_keywords = FALSE;
	}
	return 0;
}

static void mirror_readonly_mailbox_allocated(struct mailbox *box)
{
	enum mirror_readonly_mode mode =
		mirror_user_get_readonly(box->storage->user);
	struct mailbox_vfuncs *v = box->vlast;
	struct mirror_readonly_mailbox *rbox;

	if (mode == MIRROR_READONLY_NONE)
		return;

	rbox = p_new(box->pool, struct mirror_readonly_mailbox, 1);
	rbox->mode = mode;
	rbox->module_ctx.super = *v;
	box->vlast = &rbox->module_ctx.super;
	v->get_status = mirror_readonly_get_status;
	v->create_box = mirror_readonly_create_box;
	v->update_box = mirror_readonly_update_box;
	v->delete_box = mirror_readonly_delete_box;
	v->rename_box = mirror_readonly_rename_box;
	v->set_subscribed = mirror_readonly_set_subscribed;
	v->attribute_set = mirror_readonly_attribute_set;
	v->save_begin = mirror_readonly_save_begin;
	v->copy = mirror_readonly_copy;
	v->transaction_commit = mirror_readonly_transaction_commit;
	MODULE_CONTEXT_SET(box, mirror_readonly_storage_module, rbox);
}

/* A hooks struct of its own: one hook call must add at most one layer of
   vfuncs, and the delivery watch wraps mailboxes too. */
static struct mail_storage_hooks mirror_readonly_mail_storage_hooks = {
	.mailbox_allocated = mirror_readonly_mailbox_allocated,
	.mail_allocated = mirror_readonly_mail_allocated,
};

void mirror_readonly_hooks_add(struct module *module)
{
	mail_storage_hooks_add(module, &mirror_readonly_mail_storage_hooks);
}

void mirror_readonly_hooks_remove(void)
{
	mail_storage_hooks_remove(&mirror_readonly_mail_storage_hooks);
}
