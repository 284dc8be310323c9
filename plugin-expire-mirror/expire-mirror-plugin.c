/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* expire_mirror: keeps the expire index of mirror storages.

   The index (registry key expire/<storage>) holds the oldest save date in
   the INBOX of each mirror storage, so that the expiry scan opens only the
   storages that have something to remove, as Dovecot's old expire plugin
   did for all mailboxes. This plugin keeps it right wherever a storage's
   INBOX changes: mirror copies saved by LMTP, mail saved or copied in by
   its user, and expunges by the user, by POP3 or by doveadm. The scan
   itself sets expire_mirror_index=no for the users it opens, and writes
   the index itself.

   The plugin sorts after mirror (lib20): mirror's read-only checks see a
   refused save or expunge first, and never pass it down to this plugin.

   A failure to read or write the index is logged and never fails the
   user's operation: the worst it does is delay an expiry until the index
   is rebuilt (doveadm mirror expire --rebuild-index). An index entry that
   is older than the truth only costs the scan a visit. */

#include "lib.h"
#include "array.h"
#include "ioloop.h"
#include "seq-range-array.h"
#include "module-dir.h"
#include "mail-user.h"
#include "mail-namespace.h"
#include "mail-storage-private.h"
#include "mail-storage-hooks.h"
#include "mirror-registry.h"
#include "mirror-expire-index.h"
#include "mirror-event.h"

#define EXPIRE_MIRROR_USER_CONTEXT(obj) \
	MODULE_CONTEXT(obj, expire_mirror_user_module)
#define EXPIRE_MIRROR_USER_CONTEXT_REQUIRE(obj) \
	MODULE_CONTEXT_REQUIRE(obj, expire_mirror_user_module)
#define EXPIRE_MIRROR_CONTEXT(obj) \
	MODULE_CONTEXT(obj, expire_mirror_storage_module)
#define EXPIRE_MIRROR_CONTEXT_REQUIRE(obj) \
	MODULE_CONTEXT_REQUIRE(obj, expire_mirror_storage_module)
#define EXPIRE_MIRROR_MAIL_CONTEXT_REQUIRE(obj) \
	MODULE_CONTEXT_REQUIRE(obj, expire_mirror_mail_module)

enum expire_mirror_storage_state {
	/* not looked up yet: looked up at the first change of INBOX */
	EXPIRE_MIRROR_STORAGE_UNKNOWN = 0,
	EXPIRE_MIRROR_STORAGE_NO,
	EXPIRE_MIRROR_STORAGE_YES,
};

struct expire_mirror_user {
	union mail_user_module_context module_ctx;
	struct event *event;
	const char *dict_uri;
	struct registry *registry;

	enum expire_mirror_storage_state storage;
	/* What the index is known to hold: the oldest save date, 0 for no
	   entry. Valid only if oldest_known. */
	time_t oldest;
	/* The entry as this session last read or wrote it (0: none), and
	   when: a save in the same second trusts it without a lookup, and
	   to_verify checks it a second later against the earliest of those
	   saves (unverified). mirror-writer commits many batches a second
	   into a storage it keeps open. */
	time_t recent_oldest, recent_at, unverified;
	struct timeout *to_verify;
	/* Whether the user is a storage is looked up after a delivery's
	   commit without waiting (expire_mirror_saved_later()): LMTP hands
	   the delivery's copies to mirror-writer meanwhile. The
	   earliest save date committed before the answer was used (0:
	   none), and the timeout that uses it back in the ioloop. */
	time_t pending_saved;
	struct timeout *to_pending;
	bool lookup_pending:1;
	bool oldest_known:1;
	/* An index write failed: no more tries in this session, so that an
	   unwritable registry costs each copy nothing and logs one error. */
	bool failed:1;
};

/* How long after reading the index a later transaction's save trusts
   what it read: its save is checked against the index that much later */
#define EXPIRE_MIRROR_RECHECK_SECS 1

/* How much later than the index a message's save date may be when the
   index was set from the delivery of that message */
#define EXPIRE_MIRROR_SAVE_MARGIN_SECS 60

struct expire_mirror_transaction {
	union mailbox_transaction_module_context module_ctx;
	/* the earliest save date of the mails saved or copied in */
	time_t min_saved;
	/* the earliest save date of the mails expunged, and their UIDs */
	time_t min_expunged;
	ARRAY_TYPE(seq_range) expunged_uids;
	bool saved:1;
	bool expunged:1;
};

const char *expire_mirror_plugin_version = DOVECOT_ABI_VERSION;

void expire_mirror_plugin_init(struct module *module);
void expire_mirror_plugin_deinit(void);

/* shared with the suite's other plugins by name */

static MODULE_CONTEXT_DEFINE_INIT(expire_mirror_user_module,
				  &mail_user_module_register);
static MODULE_CONTEXT_DEFINE_INIT(expire_mirror_storage_module,
				  &mail_storage_module_register);
static MODULE_CONTEXT_DEFINE_INIT(expire_mirror_mail_module,
				  &mail_module_register);

static int expire_mirror_registry(struct mail_user *user,
				  struct expire_mirror_user *euser,
				  const char **error_r)
{
	if (euser->registry != NULL)
		return 0;
	return registry_init(euser->dict_uri, user->set->base_dir,
			     euser->event, &euser->registry, error_r);
}

/* The answer to whether the user is a storage: 1, 0, or -1 with error. */
static void
expire_mirror_storage_answer(struct expire_mirror_user *euser, int ret,
			     const char *error)
{
	if (ret < 0) {
		/* try again at the next change; logged once for a run of
		   failures, not for every message */
		if (registry_failure_begin()) {
			e_error(euser->event, "Can't tell whether the user is "
				"a mirror storage, its expire index is not "
				"updated: %s (logged once)", error);
		}
		return;
	}
	if (registry_failure_end()) {
		e_info(euser->event, "Mirror storages can be told again: "
		       "their expire index is updated");
	}
	euser->storage = ret > 0 ? EXPIRE_MIRROR_STORAGE_YES :
		EXPIRE_MIRROR_STORAGE_NO;
	if (ret > 0)
		e_debug(euser->event, "Mirror storage: keeping its expire index");
}

/* Returns TRUE if user is a mirror storage, looking it up the first time. */
static bool expire_mirror_is_storage(struct mail_user *user,
				     struct expire_mirror_user *euser)
{
	ARRAY_TYPE(mirror_def) defs;
	const char *error;
	int ret;

	if (euser->storage != EXPIRE_MIRROR_STORAGE_UNKNOWN)
		return euser->storage == EXPIRE_MIRROR_STORAGE_YES;

	if (expire_mirror_registry(user, euser, &error) < 0)
		ret = -1;
	else {
		t_array_init(&defs, 4);
		ret = mirror_registry_storage_lookup(euser->registry,
						     user->username,
						     pool_datastack_create(),
						     &defs, &error);
	}
	expire_mirror_storage_answer(euser, ret, error);
	return ret > 0;
}

static int expire_mirror_oldest(struct mail_user *user,
				struct expire_mirror_user *euser,
				const char **error_r)
{
	if (euser->oldest_known)
		return 0;
	if (mirror_registry_expire_get(euser->registry, user->username,
				       &euser->oldest, error_r) < 0)
		return -1;
	euser->oldest_known = TRUE;
	euser->recent_oldest = euser->oldest;
	euser->recent_at = ioloop_time;
	return 0;
}

static void expire_mirror_set(struct mail_user *user,
			      struct expire_mirror_user *euser, time_t oldest)
{
	const char *error;

	if (mirror_registry_expire_set(euser->registry, user->username,
				       oldest, &error) < 0) {
		euser->oldest_known = FALSE;
		euser->failed = TRUE;
		e_error(euser->event, "Expire index update failed (no more "
			"tries in this session): %s", error);
		return;
	}
	euser->oldest = oldest;
	euser->oldest_known = TRUE;
	euser->recent_oldest = oldest;
	euser->recent_at = ioloop_time;
	e_debug(euser->event, "Expire index set to %ld", (long)oldest);
}

/* Make the index hold save_date or an earlier one. */
static void
expire_mirror_lower(struct mail_user *user, struct expire_mirror_user *euser,
		    time_t save_date)
{
	const char *error;

	if (expire_mirror_oldest(user, euser, &error) < 0) {
		e_error(euser->event, "Expire index lookup failed: %s", error);
		return;
	}
	if (euser->oldest != 0 && euser->oldest <= save_date)
		return;
	expire_mirror_set(user, euser, save_date);
}

/* The earliest save date of INBOX's mails other than the UIDs just
   expunged. Returns 1 with it, 0 if there are none, -1 on error. */
static int
expire_mirror_find_oldest(struct mailbox *box,
			  const ARRAY_TYPE(seq_range) *expunged_uids,
			  time_t *oldest_r, const char **error_r)
{
	struct mailbox_transaction_context *t;
	struct mailbox_status status;
	struct mail *mail;
	time_t date, oldest = 0;
	uint32_t seq;
	int ret = 0;

	mailbox_get_open_status(box, STATUS_MESSAGES, &status);
	t = mailbox_transaction_begin(box, 0, "expire_mirror oldest");
	mail = mail_alloc(t, MAIL_FETCH_SAVE_DATE, NULL);
	for (seq = 1; seq <= status.messages; seq++) {
		mail_set_seq(mail, seq);
		if (seq_range_exists(expunged_uids, mail->uid))
			continue;
		if (mail_get_save_date(mail, &date) < 0) {
			if (mail->expunged)
				continue;
			*error_r = t_strdup(
				mailbox_get_last_internal_error(box, NULL));
			ret = -1;
			break;
		}
		/* a save date of 0 would read as "no entry" */
		if (date <= 0)
			date = 1;
		if (oldest == 0 || date < oldest)
			oldest = date;
	}
	mail_free(&mail);
	(void)mailbox_transaction_commit(&t);
	if (ret < 0)
		return -1;
	*oldest_r = oldest;
	return oldest == 0 ? 0 : 1;
}

/* The earliest save date of the storage's INBOX as it is now, opened
   apart from any that this session has open. */
static int
expire_mirror_inbox_oldest(struct mail_user *user, time_t *oldest_r,
			   const char **error_r)
{
	struct mail_namespace *ns;
	struct mailbox *box;
	ARRAY_TYPE(seq_range) none;
	int ret;

	ns = mail_namespace_find_inbox(user->namespaces);
	box = mailbox_alloc(ns->list, "INBOX", MAILBOX_FLAG_IGNORE_ACLS);
	if (mailbox_open(box) < 0 || mailbox_sync(box, 0) < 0) {
		*error_r = t_strdup(mailbox_get_last_internal_error(box, NULL));
		ret = -1;
	} else {
		t_array_init(&none, 1);
		ret = expire_mirror_find_oldest(box, &none, oldest_r, error_r);
	}
	mailbox_free(&box);
	return ret;
}

static void expire_mirror_verify(struct mail_user *user);

/* The index couldn't be read: check the saves since save_date again
   later. */
static void
expire_mirror_verify_later(struct mail_user *user,
			   struct expire_mirror_user *euser, time_t save_date,
			   const char *error)
{
	e_error(euser->event, "Expire index lookup failed (trying again in "
		"%d s): %s", EXPIRE_MIRROR_RECHECK_SECS, error);
	euser->unverified = save_date;
	euser->to_verify = timeout_add(EXPIRE_MIRROR_RECHECK_SECS * 1000,
				       expire_mirror_verify, user);
}

static void expire_mirror_verify(struct mail_user *user)
{
	struct expire_mirror_user *euser =
		EXPIRE_MIRROR_USER_CONTEXT_REQUIRE(user);
	time_t save_date = euser->unverified, oldest;
	time_t read_value;
	const char *error;
	int ret;

	timeout_remove(&euser->to_verify);
	if (euser->failed) {
		euser->unverified = 0;
		return;
	}
	/* the scan, or an expunge elsewhere, may have raised or removed
	   the entry since it was read */
	euser->oldest_known = FALSE;
	if (expire_mirror_oldest(user, euser, &error) < 0) {
		if (user->deinitializing) {
			e_error(euser->event, "Expire index lookup failed, "
				"mail saved since %ld may not be in it: %s",
				(long)save_date, error);
			euser->unverified = 0;
			return;
		}
		expire_mirror_verify_later(user, euser, save_date, error);
		return;
	}
	euser->unverified = 0;
	if (euser->oldest != 0 && euser->oldest <= save_date)
		return;
	if (user->deinitializing) {
		/* no mailbox is opened now */
		expire_mirror_set(user, euser, save_date);
		return;
	}
	/* Removed or raised: the scan or an expunge elsewhere may have
	   taken those saves' mail with it, so the entry is set from what
	   the storage holds (none: no entry), not from the saves. */
	read_value = euser->oldest;
	ret = expire_mirror_inbox_oldest(user, &oldest, &error);
	if (ret < 0) {
		e_error(euser->event, "Can't recompute the expire index, "
			"setting it to %ld: %s", (long)save_date, error);
		expire_mirror_set(user, euser, save_date);
		return;
	}
	/* A save elsewhere while the INBOX was read lowered or set the
	   entry for mail this reading may not have seen (or a scan set it):
	   that value stands, never one from before it. */
	euser->oldest_known = FALSE;
	if (expire_mirror_oldest(user, euser, &error) < 0) {
		expire_mirror_verify_later(user, euser, save_date, error);
		return;
	}
	if (euser->oldest == read_value && oldest != read_value)
		expire_mirror_set(user, euser, oldest);
}

static void
expire_mirror_saved(struct mail_user *user, struct expire_mirror_user *euser,
		    time_t save_date)
{
	/* most copies are younger than what the index holds: no write */
	if (euser->oldest_known && euser->oldest != 0 &&
	    euser->oldest <= save_date)
		return;
	if (!euser->oldest_known && euser->recent_oldest != 0 &&
	    euser->recent_oldest <= save_date && !user->deinitializing) {
		/* the clock, not the ioloop's: a process may save many
		   times without returning to its ioloop */
		io_loop_time_refresh();
		if (ioloop_time <
		    euser->recent_at + EXPIRE_MIRROR_RECHECK_SECS) {
			/* read in this second: trusted now, checked later */
			if (euser->unverified == 0 ||
			    save_date < euser->unverified)
				euser->unverified = save_date;
			if (euser->to_verify == NULL) {
				euser->to_verify = timeout_add(
					EXPIRE_MIRROR_RECHECK_SECS * 1000,
					expire_mirror_verify, user);
			}
			return;
		}
	}
	expire_mirror_lower(user, euser, save_date);
}

static void
expire_mirror_storage_lookup_callback(int ret, const char *error,
				      struct mail_user *user)
{
	struct expire_mirror_user *euser =
		EXPIRE_MIRROR_USER_CONTEXT_REQUIRE(user);

	/* only the answer: the index is read and written by what uses the
	   saves (never inside the dict's own wait for this answer) */
	euser->lookup_pending = FALSE;
	expire_mirror_storage_answer(euser, ret, error);
}

/* Use the save date that waited for the answer to whether the user is a
   storage, waiting for the answer if it isn't in yet. */
static void expire_mirror_saved_pending(struct mail_user *user)
{
	struct expire_mirror_user *euser =
		EXPIRE_MIRROR_USER_CONTEXT_REQUIRE(user);
	time_t save_date;

	timeout_remove(&euser->to_pending);
	if (euser->lookup_pending)
		registry_wait(euser->registry);
	i_assert(!euser->lookup_pending);
	save_date = euser->pending_saved;
	euser->pending_saved = 0;
	if (save_date == 0 || euser->failed ||
	    euser->storage != EXPIRE_MIRROR_STORAGE_YES)
		return;
	euser->oldest_known = FALSE;
	T_BEGIN {
		expire_mirror_saved(user, euser, save_date);
	} T_END;
}

/* A delivery (LMTP, LDA: a mailbox opened for one) saved mail, and
   whether the user is a storage isn't known yet: it is looked up without
   waiting, and the save date used once the process is back in its ioloop
   or the user is deinitialized, which Dovecot does before it answers the
   delivery. In LMTP that is after the delivery's copies were handed to
   mirror-writer (the mirror plugin's commit ends after this one), so that
   the lookup's round trip runs while the writer commits them, not before.
   Other sessions (mirror-writer's copies, IMAP) may answer before they
   are back in the ioloop: they wait, so that what they answered for is
   in the index. */
static void
expire_mirror_saved_later(struct mail_user *user,
			  struct expire_mirror_user *euser, time_t save_date)
{
	const char *error;

	if (euser->pending_saved == 0 || save_date < euser->pending_saved)
		euser->pending_saved = save_date;
	if (euser->to_pending == NULL) {
		euser->to_pending = timeout_add_short(0,
			expire_mirror_saved_pending, user);
	}
	if (euser->lookup_pending)
		return;
	if (expire_mirror_registry(user, euser, &error) < 0) {
		expire_mirror_storage_answer(euser, -1, error);
		return;
	}
	euser->lookup_pending = TRUE;
	mirror_registry_storage_lookup_async(euser->registry, user->username,
		expire_mirror_storage_lookup_callback, user);
}

static void
expire_mirror_expunged(struct mailbox *box, struct expire_mirror_user *euser,
		       const struct expire_mirror_transaction *et)
{
	struct mail_user *user = box->storage->user;
	const char *error;
	time_t oldest;
	int ret;

	if (expire_mirror_oldest(user, euser, &error) < 0) {
		e_error(euser->event, "Expire index lookup failed: %s", error);
		return;
	}
	/* Mail younger than the oldest went: the oldest stays. A delivery
	   sets the index from LMTP's clock as its save begins, which the
	   save date the storage reports (a maildir file's ctime) may pass
	   by a second or, under load, more: only mail saved later than
	   that margin is surely not the oldest. An unset entry with mail
	   left is recomputed too. */
	if (euser->oldest != 0 &&
	    et->min_expunged > euser->oldest + EXPIRE_MIRROR_SAVE_MARGIN_SECS)
		return;
	ret = expire_mirror_find_oldest(box, &et->expunged_uids, &oldest,
					&error);
	if (ret < 0) {
		e_error(euser->event, "Can't recompute the expire index: %s",
			error);
		return;
	}
	if (oldest != euser->oldest)
		expire_mirror_set(user, euser, oldest);
}

static struct mailbox_transaction_context *
expire_mirror_transaction_begin(struct mailbox *box,
				enum mailbox_transaction_flags flags,
				const char *reason)
{
	union mailbox_module_context *mbox = EXPIRE_MIRROR_CONTEXT_REQUIRE(box);
	struct mailbox_transaction_context *t;
	struct expire_mirror_transaction *et;

	t = mbox->super.transaction_begin(box, flags, reason);
	et = i_new(struct expire_mirror_transaction, 1);
	MODULE_CONTEXT_SET(t, expire_mirror_storage_module, et);
	return t;
}

static void expire_mirror_transaction_free(struct expire_mirror_transaction *et)
{
	if (array_is_created(&et->expunged_uids))
		array_free(&et->expunged_uids);
	i_free(et);
}

/* A commit of box saved or expunged mail. */
static void
expire_mirror_committed(struct mailbox *box, struct expire_mirror_user *euser,
			const struct expire_mirror_transaction *et)
{
	struct mail_user *user = box->storage->user;

	if (et->saved && !et->expunged &&
	    (box->flags & MAILBOX_FLAG_POST_SESSION) != 0 &&
	    euser->storage == EXPIRE_MIRROR_STORAGE_UNKNOWN) {
		expire_mirror_saved_later(user, euser, et->min_saved);
		return;
	}
	/* the saves that waited for the lookup come first */
	if (euser->to_pending != NULL)
		expire_mirror_saved_pending(user);
	if (!expire_mirror_is_storage(user, euser))
		return;
	/* The scan, or an expunge elsewhere, may have changed the index
	   since it was read, even while this transaction was open
	   (mirror-writer and a cached LMTP connection keep a storage open
	   for long): read it again after every commit, unless a save may
	   trust what was read in this second (expire_mirror_saved()). */
	euser->oldest_known = FALSE;
	if (et->saved)
		expire_mirror_saved(user, euser, et->min_saved);
	if (et->expunged)
		expire_mirror_expunged(box, euser, et);
}

static int
expire_mirror_transaction_commit(struct mailbox_transaction_context *t,
				 struct mail_transaction_commit_changes *changes_r)
{
	struct mailbox *box = t->box;
	union mailbox_module_context *mbox = EXPIRE_MIRROR_CONTEXT_REQUIRE(box);
	struct expire_mirror_transaction *et =
		EXPIRE_MIRROR_CONTEXT_REQUIRE(t);
	struct mail_user *user = box->storage->user;
	struct expire_mirror_user *euser =
		EXPIRE_MIRROR_USER_CONTEXT_REQUIRE(user);
	int ret;

	ret = mbox->super.transaction_commit(t, changes_r);
	if (ret == 0 && (et->saved || et->expunged) && !euser->failed) T_BEGIN {
		expire_mirror_committed(box, euser, et);
	} T_END;
	expire_mirror_transaction_free(et);
	return ret;
}

static void
expire_mirror_transaction_rollback(struct mailbox_transaction_context *t)
{
	union mailbox_module_context *mbox =
		EXPIRE_MIRROR_CONTEXT_REQUIRE(t->box);
	struct expire_mirror_transaction *et =
		EXPIRE_MIRROR_CONTEXT_REQUIRE(t);

	mbox->super.transaction_rollback(t);
	expire_mirror_transaction_free(et);
}

static void expire_mirror_note_save(struct mail_save_context *ctx)
{
	struct expire_mirror_transaction *et =
		EXPIRE_MIRROR_CONTEXT_REQUIRE(ctx->transaction);
	/* A save date given by the saver (dsync, import) is kept; otherwise
	   the storage uses the ioloop's time, or for maildir without a cached
	   date the file's ctime, which is never earlier. */
	time_t date = ctx->data.save_date != (time_t)-1 ?
		ctx->data.save_date : ioloop_time;

	if (date <= 0)
		date = 1;
	if (!et->saved || date < et->min_saved)
		et->min_saved = date;
	et->saved = TRUE;
}

static int expire_mirror_save_finish(struct mail_save_context *ctx)
{
	struct mailbox *box = ctx->transaction->box;
	union mailbox_module_context *mbox = EXPIRE_MIRROR_CONTEXT_REQUIRE(box);

	expire_mirror_note_save(ctx);
	return mbox->super.save_finish(ctx);
}

static int expire_mirror_copy(struct mail_save_context *ctx, struct mail *mail)
{
	struct mailbox *box = ctx->transaction->box;
	union mailbox_module_context *mbox = EXPIRE_MIRROR_CONTEXT_REQUIRE(box);

	expire_mirror_note_save(ctx);
	return mbox->super.copy(ctx, mail);
}

static void expire_mirror_mail_expunge(struct mail *_mail)
{
	struct mail_private *mail = (struct mail_private *)_mail;
	union mail_module_context *email =
		EXPIRE_MIRROR_MAIL_CONTEXT_REQUIRE(mail);
	struct expire_mirror_transaction *et =
		EXPIRE_MIRROR_CONTEXT_REQUIRE(_mail->transaction);
	time_t date;

	/* an unknown save date counts as the oldest: recompute */
	if (mail_get_save_date(_mail, &date) < 0)
		date = 0;
	if (!et->expunged || date < et->min_expunged)
		et->min_expunged = date;
	if (!array_is_created(&et->expunged_uids))
		i_array_init(&et->expunged_uids, 16);
	seq_range_array_add(&et->expunged_uids, _mail->uid);
	et->expunged = TRUE;
	email->super.expunge(_mail);
}

static void expire_mirror_mail_allocated(struct mail *_mail)
{
	struct mail_private *mail = (struct mail_private *)_mail;
	struct mail_vfuncs *v = mail->vlast;
	union mail_module_context *email;

	if (EXPIRE_MIRROR_CONTEXT(_mail->transaction) == NULL)
		return;
	email = p_new(mail->pool, union mail_module_context, 1);
	email->super = *v;
	mail->vlast = &email->super;
	v->expunge = expire_mirror_mail_expunge;
	MODULE_CONTEXT_SET_SELF(mail, expire_mirror_mail_module, email);
}

static void expire_mirror_mailbox_allocated(struct mailbox *box)
{
	struct expire_mirror_user *euser =
		EXPIRE_MIRROR_USER_CONTEXT(box->storage->user);
	struct mailbox_vfuncs *v = box->vlast;
	union mailbox_module_context *mbox;

	/* only the user's own INBOX receives mirror copies */
	if (euser == NULL || !box->inbox_user ||
	    euser->storage == EXPIRE_MIRROR_STORAGE_NO)
		return;

	mbox = p_new(box->pool, union mailbox_module_context, 1);
	mbox->super = *v;
	box->vlast = &mbox->super;
	v->transaction_begin = expire_mirror_transaction_begin;
	v->transaction_commit = expire_mirror_transaction_commit;
	v->transaction_rollback = expire_mirror_transaction_rollback;
	v->save_finish = expire_mirror_save_finish;
	v->copy = expire_mirror_copy;
	MODULE_CONTEXT_SET_SELF(box, expire_mirror_storage_module, mbox);
}

static void expire_mirror_user_deinit(struct mail_user *user)
{
	struct expire_mirror_user *euser =
		EXPIRE_MIRROR_USER_CONTEXT_REQUIRE(user);

	if (euser->to_pending != NULL)
		expire_mirror_saved_pending(user);
	if (euser->to_verify != NULL)
		expire_mirror_verify(user);
	registry_deinit(&euser->registry);
	event_unref(&euser->event);
	euser->module_ctx.super.deinit(user);
}

static void expire_mirror_mail_user_created(struct mail_user *user)
{
	struct mail_user_vfuncs *v = user->vlast;
	struct expire_mirror_user *euser;
	const char *dict_uri, *value;

	dict_uri = mail_user_plugin_getenv(user, "mirror_dict");
	if (dict_uri == NULL || *dict_uri == '\0')
		return;
	/* the expiry scan keeps the index of the storages it opens */
	value = mail_user_plugin_getenv(user, "expire_mirror_index");
	if (value != NULL && strcmp(value, "no") == 0)
		return;

	euser = p_new(user->pool, struct expire_mirror_user, 1);
	euser->module_ctx.super = *v;
	user->vlast = &euser->module_ctx.super;
	v->deinit = expire_mirror_user_deinit;
	euser->dict_uri = p_strdup(user->pool, dict_uri);
	euser->event = event_create(user->event);
	event_add_category(euser->event, &event_category_mirror);
	event_set_append_log_prefix(euser->event, "expire_mirror: ");
	MODULE_CONTEXT_SET(user, expire_mirror_user_module, euser);
}

static struct mail_storage_hooks expire_mirror_mail_storage_hooks = {
	.mail_user_created = expire_mirror_mail_user_created,
	.mailbox_allocated = expire_mirror_mailbox_allocated,
	.mail_allocated = expire_mirror_mail_allocated,
};

void expire_mirror_plugin_init(struct module *module)
{
	mail_storage_hooks_add(module, &expire_mirror_mail_storage_hooks);
}

void expire_mirror_plugin_deinit(void)
{
	mail_storage_hooks_remove(&expire_mirror_mail_storage_hooks);
}
