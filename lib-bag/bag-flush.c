/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* The flush of a bag to its customer's MTA, in the ioloop (bag-flush.h):
   every held message, with its envelope, one after the other over one
   SMTP session; a 250 expunges it, a 5xx bounces it with a DSN, a 4xx
   keeps it, with the journal saying which recipients are done.

   One message at a time is in flight: with several, a kill could leave
   more than one accepted message unrecorded. For each message:

     read its envelope, skip the recipients the journal says are done
     send it (or, without a session, only apply the policy)
     settle it:
       refusals with notifications wanted:
         journal: the done recipients, "notifying"   (after-record)
         send the notification                       (after-dsn)
         journal: "notified" (or "undone" if it failed)
       recipients still waiting, others done now:
         journal: the done recipients                (after-record)
       a delay notice (backup bags): keyword $BagDelayWarned committed
         first, then the notice (at most one, ever)
       nobody waits: expunge, commit                 (after-commit)

   The names in parentheses are the fault points (fault-point.h) right
   after each step. */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "str-sanitize.h"
#include "ioloop.h"
#include "istream.h"
#include "ostream.h"
#include "time-util.h"
#include "seq-range-array.h"
#include "smtp-address.h"
#include "smtp-reply.h"
#include "smtp-reply-parser.h"
#include "smtp-submit.h"
#include "mail-storage.h"
#include "mail-user.h"
#include "mirror-registry.h"
#include "bag-registry.h"
#include "bag-envelope.h"
#include "bag-store.h"
#include "bag-journal.h"
#include "bag-smtp-sender.h"
#include "bag-smtp-relay.h"
#include "bag-dsn.h"
#include "fault-point.h"
#include "bag-flush.h"

/* Expunges are applied (files removed) this often during a long flush */
#define BAG_FLUSH_SYNC_INTERVAL 500
/* the longest a removal waits to be taken off the bag's counter */
#define BAG_FLUSH_COUNT_INTERVAL_MSECS 100
/* a message whose sender has been told that it waits */
#define BAG_FLUSH_KEYWORD_WARNED "$BagDelayWarned"

struct event_category event_category_bag = {
	.name = "bag",
};

enum bag_flush_rcpt_state {
	BAG_FLUSH_RCPT_DEFERRED = 0,
	BAG_FLUSH_RCPT_DELIVERED,
	BAG_FLUSH_RCPT_FAILED,
	/* done in an earlier flush (the journal says) */
	BAG_FLUSH_RCPT_DONE_BEFORE,
};

/* One message during its delivery */
struct bag_flush_mail {
	pool_t pool;
	struct mailbox_transaction_context *trans;
	struct mail *mail;
	const char *guid;
	struct bag_envelope env;
	/* where the message proper starts, after the envelope lines */
	uoff_t body_offset;
	/* per recipient of the envelope */
	enum bag_flush_rcpt_state *states;
	/* the reply that decided each recipient (NULL: no reply) */
	const struct smtp_reply **replies;
	/* a failed recipient's retry period ran out */
	bool *expired;
	/* the recipients sent to: their numbers in the envelope */
	unsigned int *sent_idx;
	unsigned int sent_count;
	/* recipients the journal says took it in an earlier flush */
	unsigned int delivered_before;
	time_t saved;
	/* a delay notification went out for it, ever */
	bool warned;
	/* the failed recipients' notification is recorded in the journal */
	bool notifying;
};

struct bag_flush {
	pool_t pool;
	struct bag_store *store;
	struct bag_smtp_sender *sender;
	struct bag_flush_settings set;
	struct bag_flush_policy policy;
	/* why no message is sent (sender NULL) */
	const char *why;
	struct event *event;
	struct bag_journal *journal;

	bag_flush_callback_t *callback;
	void *context;
	struct bag_flush_result result;
	/* why the flush stops */
	char *error;

	/* removals not yet taken off the registry's counter, and when it
	   was last written */
	unsigned int count_pending;
	struct timeval count_written;

	uint32_t next_uid;
	/* this pass's UIDs still to do */
	ARRAY_TYPE(seq_range) uids;
	unsigned int unsynced;
	bool in_pass;

	struct bag_flush_mail *cur;
	/* the notification being sent */
	struct smtp_submit *submit;
	void (*notify_callback)(struct bag_flush *flush, int ret);
	int notify_ret;
	struct timeout *to_notified;
	struct timeout *to_next;
	bool sending, stopping, finished;
};

static void bag_flush_next(struct bag_flush *flush);
static void bag_flush_settle_done(struct bag_flush *flush);

static void ATTR_FORMAT(2, 3)
bag_flush_set_error(struct bag_flush *flush, const char *fmt, ...)
{
	va_list args;

	va_start(args, fmt);
	if (flush->error == NULL)
		flush->error = i_strdup_vprintf(fmt, args);
	va_end(args);
}

static const char *bag_flush_mail_error(struct mail *mail)
{
	return mailbox_get_last_internal_error(mail->box, NULL);
}

static struct istream *bag_flush_body(struct bag_flush_mail *fmail)
{
	struct istream *input;

	if (mail_get_stream(fmail->mail, NULL, NULL, &input) < 0)
		return NULL;
	return i_stream_create_range(input, fmail->body_offset, UOFF_T_MAX);
}

/* The enhanced status of a reply, or a default for its class. A server
   that doesn't announce ENHANCEDSTATUSCODES may still give one. */
static const char *bag_flush_reply_status(const struct smtp_reply *reply)
{
	struct smtp_reply_enhanced_code code;
	const char *pos;

	if (smtp_reply_has_enhanced_code(reply))
		return smtp_reply_get_enh_code(reply);
	if (reply->text_lines != NULL && reply->text_lines[0] != NULL &&
	    smtp_reply_parse_enhanced_code(reply->text_lines[0], &code,
					   &pos) &&
	    code.x == reply->status / 100 && (*pos == ' ' || *pos == '\0'))
		return t_strdup_printf("%u.%u.%u", code.x, code.y, code.z);
	return reply->status / 100 == 5 ? "5.0.0" : "4.0.0";
}

static void bag_flush_mail_free(struct bag_flush_mail **_fmail)
{
	struct bag_flush_mail *fmail = *_fmail;

	if (fmail == NULL)
		return;
	*_fmail = NULL;
	if (fmail->mail != NULL)
		mail_free(&fmail->mail);
	if (fmail->trans != NULL)
		mailbox_transaction_rollback(&fmail->trans);
	pool_unref(&fmail->pool);
}

/*
 * Notifications
 */

typedef void bag_flush_notify_callback_t(struct bag_flush *flush, int ret);

static void bag_flush_notify_finish(struct bag_flush *flush)
{
	bag_flush_notify_callback_t *callback = flush->notify_callback;

	timeout_remove(&flush->to_notified);
	smtp_submit_deinit(&flush->submit);
	flush->notify_callback = NULL;
	callback(flush, flush->notify_ret);
}

static void
bag_flush_notify_done(const struct smtp_submit_result *result,
		      struct bag_flush *flush)
{
	struct bag_flush_mail *fmail = flush->cur;

	if (result->status <= 0) {
		e_error(flush->event, "Sending the notification of UID %u to "
			"%s failed: %s", fmail->mail->uid,
			smtp_address_encode(fmail->env.mail_from),
			result->error);
	}
	/* a permanent failure (the sender's address is refused) is not
	   worth keeping the recipients for */
	flush->notify_ret = result->status >= 0 ? 0 : -1;
	/* the submission is freed out of its own callback */
	flush->to_notified = timeout_add_short(0, bag_flush_notify_finish,
					       flush);
}

/* Tell the sender which recipients were refused (action FAILED: the
   FAILED ones) or still wait (DELAYED: the DEFERRED ones). callback gets
   0 when that is done (or not wanted: then at once, returning FALSE),
   -1 when the notification couldn't be sent. Returns TRUE if one is
   being sent. */
static bool
bag_flush_notify(struct bag_flush *flush, enum bag_dsn_action action,
		 bag_flush_notify_callback_t *callback)
{
	struct bag_flush_mail *fmail = flush->cur;
	const struct smtp_submit_settings *set = flush->store->submit_set;
	enum bag_flush_rcpt_state state = action == BAG_DSN_ACTION_FAILED ?
		BAG_FLUSH_RCPT_FAILED : BAG_FLUSH_RCPT_DEFERRED;
	ARRAY(struct bag_dsn_recipient) rcpts;
	const struct bag_envelope_rcpt *erpct;
	const struct smtp_reply *reply;
	struct bag_dsn_recipient *drcpt;
	struct smtp_submit_input input;
	struct bag_dsn dsn;
	struct istream *body;
	struct ostream *output;
	const char *error;
	unsigned int i;

	t_array_init(&rcpts, 4);
	for (i = 0; i < array_count(&fmail->env.rcpts); i++) {
		erpct = array_idx(&fmail->env.rcpts, i);
		reply = fmail->replies[i];
		if (fmail->states[i] != state ||
		    !bag_dsn_wanted(fmail->env.mail_from, &erpct->params,
				    action))
			continue;
		drcpt = array_append_space(&rcpts);
		drcpt->rcpt = erpct->addr;
		drcpt->params = &erpct->params;
		drcpt->action = action;
		if (action == BAG_DSN_ACTION_DELAYED) {
			drcpt->status = reply == NULL ? "4.4.1" :
				bag_flush_reply_status(reply);
			drcpt->will_retry_until = fmail->saved +
				flush->policy.retry_period;
		} else if (fmail->expired[i]) {
			/* delivery time expired */
			drcpt->status = "4.4.7";
		} else {
			drcpt->status = bag_flush_reply_status(reply);
		}
		if (reply != NULL && smtp_reply_is_remote(reply)) {
			drcpt->remote_mta = flush->set.remote_mta;
			drcpt->diagnostic = smtp_reply_log(reply);
		} else {
			drcpt->local_diagnostic = flush->why != NULL ?
				flush->why : flush->error;
		}
		drcpt->last_attempt = ioloop_time;
	}
	if (array_count(&rcpts) == 0)
		return FALSE;

	if ((body = bag_flush_body(fmail)) == NULL) {
		e_error(flush->event, "Can't read UID %u for its "
			"notification: %s", fmail->mail->uid,
			bag_flush_mail_error(fmail->mail));
		/* as if the submission failed */
		callback(flush, -1);
		return TRUE;
	}
	i_zero(&dsn);
	dsn.reporting_mta = set->hostname;
	dsn.from_address = t_strconcat("MAILER-DAEMON@", set->hostname, NULL);
	dsn.return_path = fmail->env.mail_from;
	dsn.mail_params = &fmail->env.mail_params;
	dsn.arrival_date = fmail->saved;
	dsn.rcpts = array_front(&rcpts);
	dsn.rcpt_count = array_count(&rcpts);
	dsn.message = body;

	i_zero(&input);
	input.event_parent = flush->event;
	/* from the null sender: a notification is never bounced */
	flush->submit = smtp_submit_init_simple(&input, set, NULL);
	smtp_submit_add_rcpt(flush->submit, fmail->env.mail_from);
	output = smtp_submit_send(flush->submit);
	if (bag_dsn_write(&dsn, output, &error) < 0) {
		e_error(flush->event, "Can't write the notification of UID "
			"%u: %s", fmail->mail->uid, error);
		smtp_submit_deinit(&flush->submit);
		i_stream_unref(&body);
		callback(flush, -1);
		return TRUE;
	}
	i_stream_unref(&body);
	flush->notify_callback = callback;
	smtp_submit_run_async(flush->submit, bag_flush_notify_done, flush);
	return TRUE;
}

/*
 * Settling a message
 */

static int
bag_flush_journal(struct bag_flush *flush, struct bag_flush_mail *fmail,
		  bool notifying)
{
	ARRAY(unsigned int) idxs;
	ARRAY(enum bag_journal_state) states;
	enum bag_journal_state jstate;
	const char *error;
	unsigned int i, count = array_count(&fmail->env.rcpts);

	t_array_init(&idxs, count);
	t_array_init(&states, count);
	for (i = 0; i < count; i++) {
		switch (fmail->states[i]) {
		case BAG_FLUSH_RCPT_DELIVERED:
			jstate = BAG_JOURNAL_DELIVERED;
			break;
		case BAG_FLUSH_RCPT_FAILED:
			jstate = notifying ? BAG_JOURNAL_NOTIFYING :
				BAG_JOURNAL_FAILED;
			break;
		default:
			continue;
		}
		array_push_back(&idxs, &i);
		array_push_back(&states, &jstate);
	}
	if (array_count(&idxs) == 0)
		return 0;
	if (bag_journal_append(flush->journal, fmail->guid,
			       array_front(&idxs), array_front(&states),
			       array_count(&idxs), &error) < 0) {
		e_error(flush->event, "Can't record the recipients of UID %u "
			"that are done: %s", fmail->mail->uid, error);
		return -1;
	}
	return 0;
}

/* The failed recipients' notification went (ret 0) or not (-1). */
static void bag_flush_notified(struct bag_flush *flush, int ret)
{
	struct bag_flush_mail *fmail = flush->cur;
	ARRAY(unsigned int) idxs;
	ARRAY(enum bag_journal_state) states;
	enum bag_journal_state jstate = ret == 0 ? BAG_JOURNAL_NOTIFIED :
		BAG_JOURNAL_UNDONE;
	unsigned int i, count = array_count(&fmail->env.rcpts);
	const char *error;

	flush->sending = FALSE;
	FAULT_POINT("after-dsn");
	T_BEGIN {
		t_array_init(&idxs, count);
		t_array_init(&states, count);
		for (i = 0; i < count; i++) {
			if (fmail->states[i] != BAG_FLUSH_RCPT_FAILED)
				continue;
			array_push_back(&idxs, &i);
			array_push_back(&states, &jstate);
			if (ret < 0) {
				/* unannounced refusals stay: the next flush
				   tries again */
				fmail->states[i] = BAG_FLUSH_RCPT_DEFERRED;
			}
		}
		if (bag_journal_append(flush->journal, fmail->guid,
				       array_front(&idxs),
				       array_front(&states),
				       array_count(&idxs), &error) < 0) {
			/* "notifying" stays: never notified twice */
			e_error(flush->event, "Can't record the notification "
				"of UID %u: %s", fmail->mail->uid, error);
		}
	} T_END;
	bag_flush_settle_done(flush);
}

static bool bag_flush_mail_warned(struct mail *mail)
{
	const char *const *keywords = mail_get_keywords(mail);

	return keywords != NULL &&
		str_array_find(keywords, BAG_FLUSH_KEYWORD_WARNED);
}

static void bag_flush_warned(struct bag_flush *flush, int ret ATTR_UNUSED)
{
	flush->sending = FALSE;
	bag_flush_settle_done(flush);
}

/* A delay notice is due: mark the message first (at most one notice,
   even if the flush dies sending it), then send it. Returns TRUE if it
   is being sent. */
static bool bag_flush_warn(struct bag_flush *flush)
{
	static const char *const names[] = { BAG_FLUSH_KEYWORD_WARNED, NULL };
	struct bag_flush_mail *fmail = flush->cur;
	struct mailbox *box = flush->store->box;
	struct mailbox_transaction_context *trans;
	struct mail_keywords *kw;
	struct mail *mail;
	bool ok = FALSE;

	trans = mailbox_transaction_begin(box, 0, "bag delay notice");
	mail = mail_alloc(trans, 0, NULL);
	if (mail_set_uid(mail, fmail->mail->uid) &&
	    mailbox_keywords_create(box, names, &kw) == 0) {
		mail_update_keywords(mail, MODIFY_ADD, kw);
		mailbox_keywords_unref(&kw);
		ok = TRUE;
	}
	mail_free(&mail);
	if (!ok || mailbox_transaction_commit(&trans) < 0) {
		if (trans != NULL)
			mailbox_transaction_rollback(&trans);
		e_error(flush->event, "Can't mark UID %u as warned about: %s",
			fmail->mail->uid, mailbox_get_last_internal_error(
				box, NULL));
		return FALSE;
	}
	fmail->warned = TRUE;
	flush->sending = TRUE;
	if (!bag_flush_notify(flush, BAG_DSN_ACTION_DELAYED,
			      bag_flush_warned)) {
		flush->sending = FALSE;
		return FALSE;
	}
	return TRUE;
}

/* A message left the bag: ETRN's count follows, so that it is right also
   after a killed flush. A registry write per message would slow a fast
   flush down several times (the file dict rewrites its file for each), so
   the removals are written at most every BAG_FLUSH_COUNT_INTERVAL_MSECS:
   a flush killed while its customer answers faster than that leaves the
   count that many messages high (the next flush sets it right). */
static void bag_flush_count_sub(struct bag_flush *flush)
{
	struct timeval now;
	long long diff;

	if (flush->set.reg == NULL)
		return;
	flush->count_pending++;
	i_gettimeofday(&now);
	diff = timeval_diff_msecs(&now, &flush->count_written);
	if (flush->count_written.tv_sec != 0 &&
	    diff < BAG_FLUSH_COUNT_INTERVAL_MSECS)
		return;
	bag_registry_count_sub(flush->set.reg, flush->set.domain,
			       flush->count_pending, flush->event);
	flush->count_pending = 0;
	flush->count_written = now;
}

/* Every recipient's state is known and the refusals are announced: warn
   about a long wait, and remove the message or keep it. */
static void bag_flush_settle_done(struct bag_flush *flush)
{
	struct bag_flush_mail *fmail = flush->cur;
	struct bag_flush_result *result = &flush->result;
	const struct bag_flush_policy *policy = &flush->policy;
	unsigned int i, count = array_count(&fmail->env.rcpts);
	unsigned int waiting = 0, delivered = 0, done_now = 0;

	for (i = 0; i < count; i++) {
		switch (fmail->states[i]) {
		case BAG_FLUSH_RCPT_DEFERRED:
			waiting++;
			break;
		case BAG_FLUSH_RCPT_DELIVERED:
			delivered++;
			done_now++;
			break;
		case BAG_FLUSH_RCPT_FAILED:
			done_now++;
			break;
		case BAG_FLUSH_RCPT_DONE_BEFORE:
			break;
		}
	}
	if (waiting > 0 && !fmail->warned && policy->warn_before != 0 &&
	    fmail->saved < policy->warn_before && flush->sending == FALSE) {
		if (bag_flush_warn(flush))
			return;
	}

	e_debug(flush->event, "UID %u: %u of %u recipients delivered now, "
		"%u waiting", fmail->mail->uid, delivered, count, waiting);
	if (waiting > 0) {
		/* the done ones are recorded unless the notification did
		   it */
		if (done_now > 0 && !fmail->notifying) {
			if (bag_flush_journal(flush, fmail, FALSE) < 0) {
				bag_flush_set_error(flush, "Can't record the "
					"recipients of UID %u that are done",
					fmail->mail->uid);
			} else {
				FAULT_POINT("after-record");
			}
		}
		result->deferred++;
	} else {
		mail_expunge(fmail->mail);
		if (delivered + fmail->delivered_before > 0)
			result->delivered++;
		mail_free(&fmail->mail);
		if (++flush->unsynced >= BAG_FLUSH_SYNC_INTERVAL)
			flush->unsynced = 0;
		if (mailbox_transaction_commit(&fmail->trans) < 0 ||
		    (flush->unsynced == 0 &&
		     mailbox_sync(flush->store->box, 0) < 0)) {
			bag_flush_set_error(flush, "Removing delivered mail "
				"failed: %s", mailbox_get_last_internal_error(
					flush->store->box, NULL));
		} else {
			bag_flush_count_sub(flush);
			FAULT_POINT("after-commit");
		}
	}
	bag_flush_mail_free(&flush->cur);
	bag_flush_next(flush);
}

/* With every recipient's state known: give up on what waited too long,
   and announce the refusals (in the journal first), then
   bag_flush_settle_done(). */
static void bag_flush_settle(struct bag_flush *flush)
{
	struct bag_flush_mail *fmail = flush->cur;
	const struct bag_flush_policy *policy = &flush->policy;
	unsigned int i, count = array_count(&fmail->env.rcpts);
	unsigned int failed = 0, notify = 0;
	const struct bag_envelope_rcpt *rcpt;

	if (policy->give_up_before != 0 &&
	    fmail->saved < policy->give_up_before) {
		for (i = 0; i < count; i++) {
			if (fmail->states[i] != BAG_FLUSH_RCPT_DEFERRED)
				continue;
			fmail->states[i] = BAG_FLUSH_RCPT_FAILED;
			fmail->expired[i] = TRUE;
		}
	}
	for (i = 0; i < count; i++) {
		if (fmail->states[i] != BAG_FLUSH_RCPT_FAILED)
			continue;
		failed++;
		rcpt = array_idx(&fmail->env.rcpts, i);
		if (bag_dsn_wanted(fmail->env.mail_from, &rcpt->params,
				   BAG_DSN_ACTION_FAILED))
			notify++;
	}
	flush->result.bounced += failed;
	if (notify == 0) {
		bag_flush_settle_done(flush);
		return;
	}
	/* recorded before it is sent: a flush that dies sending it leaves
	   "notifying", and the next one doesn't send it again */
	if (bag_flush_journal(flush, fmail, TRUE) < 0) {
		/* can't promise once: keep them for the next flush */
		for (i = 0; i < count; i++) {
			if (fmail->states[i] == BAG_FLUSH_RCPT_FAILED)
				fmail->states[i] = BAG_FLUSH_RCPT_DEFERRED;
		}
		flush->result.bounced -= failed;
		bag_flush_set_error(flush, "Can't record the notification of "
				    "UID %u", fmail->mail->uid);
		bag_flush_settle_done(flush);
		return;
	}
	fmail->notifying = TRUE;
	FAULT_POINT("after-record");
	flush->sending = TRUE;
	if (!bag_flush_notify(flush, BAG_DSN_ACTION_FAILED,
			      bag_flush_notified))
		bag_flush_notified(flush, 0);
}

/* Decide each recipient that was sent to from the replies. */
static void
bag_flush_classify(struct bag_flush_mail *fmail,
		   const struct bag_smtp_send_result *res)
{
	const struct smtp_reply *reply;
	unsigned int i, idx;

	for (i = 0; i < fmail->sent_count; i++) {
		idx = fmail->sent_idx[i];
		if (res == NULL)
			reply = NULL;
		else if (res->mail_reply.status != 0 &&
			 !smtp_reply_is_success(&res->mail_reply))
			reply = &res->mail_reply;
		else if (res->rcpt_replies[i].status != 0)
			reply = &res->rcpt_replies[i];
		else
			reply = NULL;
		fmail->replies[idx] = reply;
		if (reply == NULL || !smtp_reply_is_remote(reply))
			fmail->states[idx] = BAG_FLUSH_RCPT_DEFERRED;
		else if (smtp_reply_is_success(reply))
			fmail->states[idx] = BAG_FLUSH_RCPT_DELIVERED;
		else if (reply->status / 100 == 5)
			fmail->states[idx] = BAG_FLUSH_RCPT_FAILED;
		else
			fmail->states[idx] = BAG_FLUSH_RCPT_DEFERRED;
	}
}

static void
bag_flush_sent(const struct bag_smtp_send_result *result, const char *error,
	       struct bag_flush *flush)
{
	struct bag_flush_mail *fmail = flush->cur;

	flush->sending = FALSE;
	i_assert(fmail != NULL);
	if (error != NULL) {
		bag_flush_set_error(flush, "UID %u: %s", fmail->mail->uid,
				    error);
		flush->stopping = TRUE;
	}
	bag_flush_classify(fmail, result);
	FAULT_POINT("after-data");
	bag_flush_settle(flush);
}

/*
 * The passes over the bag
 */

/* Read the message's envelope and what the journal knows. Returns 1 when
   it is ready to send or settle, 0 to skip it (gone, broken: counted),
   -1 when the flush must stop. */
static int
bag_flush_mail_init(struct bag_flush *flush, struct bag_flush_mail *fmail)
{
	enum bag_journal_state *jstates;
	struct istream *input;
	const char *error, *guid;
	unsigned int i, count;

	if (mail_get_stream(fmail->mail, NULL, NULL, &input) < 0) {
		if (fmail->mail->expunged)
			return 0;
		e_error(flush->event, "Can't read UID %u: %s",
			fmail->mail->uid, bag_flush_mail_error(fmail->mail));
		flush->result.broken++;
		return 0;
	}
	if (bag_envelope_read(input, fmail->pool, &fmail->env, &error) < 0) {
		/* kept for the administrator: nothing is lost */
		e_error(flush->event, "UID %u kept: %s", fmail->mail->uid,
			error);
		flush->result.broken++;
		return 0;
	}
	fmail->body_offset = input->v_offset;
	if (mail_get_special(fmail->mail, MAIL_FETCH_GUID, &guid) < 0 ||
	    *guid == '\0') {
		/* without it the journal can't know the message */
		bag_flush_set_error(flush, "Can't read the GUID of UID %u: %s",
				    fmail->mail->uid,
				    bag_flush_mail_error(fmail->mail));
		return -1;
	}
	fmail->guid = p_strdup(fmail->pool, guid);
	if (mail_get_save_date(fmail->mail, &fmail->saved) < 0)
		fmail->saved = ioloop_time;
	fmail->warned = bag_flush_mail_warned(fmail->mail);

	count = array_count(&fmail->env.rcpts);
	fmail->states = p_new(fmail->pool, enum bag_flush_rcpt_state, count);
	fmail->replies = p_new(fmail->pool, const struct smtp_reply *, count);
	fmail->expired = p_new(fmail->pool, bool, count);
	fmail->sent_idx = p_new(fmail->pool, unsigned int, count);
	if (bag_journal_lookup(flush->journal, fmail->guid, count,
			       &jstates)) {
		for (i = 0; i < count; i++) {
			if (!bag_journal_state_is_done(jstates[i]))
				continue;
			fmail->states[i] = BAG_FLUSH_RCPT_DONE_BEFORE;
			if (jstates[i] == BAG_JOURNAL_DELIVERED)
				fmail->delivered_before++;
			if (jstates[i] == BAG_JOURNAL_NOTIFYING) {
				e_warning(flush->event, "UID %u: the "
					  "notification about recipient %u "
					  "may not have been sent (a flush "
					  "died sending it): not sent again",
					  fmail->mail->uid, i + 1);
			}
		}
	}
	return 1;
}

/* Start the next message. Returns 1 if one is in flight (or settling),
   0 if the pass has no more, -1 if the flush must stop. */
static int bag_flush_pass_next(struct bag_flush *flush)
{
	struct mailbox *box = flush->store->box;
	struct bag_flush_mail *fmail;
	const struct smtp_address **addrs;
	const struct smtp_params_rcpt **params;
	const struct bag_envelope_rcpt *rcpt;
	const struct seq_range *range;
	struct istream *body;
	unsigned int i, count;
	uint32_t uid;
	pool_t pool;
	int ret;

	for (;;) {
		if (array_count(&flush->uids) == 0)
			return 0;
		range = array_front(&flush->uids);
		uid = range->seq1;
		seq_range_array_remove(&flush->uids, uid);

		pool = pool_alloconly_create("bag flush message", 2048);
		fmail = p_new(pool, struct bag_flush_mail, 1);
		fmail->pool = pool;
		fmail->trans = mailbox_transaction_begin(box, 0, "bag flush");
		fmail->mail = mail_alloc(fmail->trans,
					 MAIL_FETCH_STREAM_HEADER |
					 MAIL_FETCH_STREAM_BODY |
					 MAIL_FETCH_GUID, NULL);
		if (!mail_set_uid(fmail->mail, uid)) {
			bag_flush_mail_free(&fmail);
			continue;
		}
		io_loop_time_refresh();
		T_BEGIN {
			ret = bag_flush_mail_init(flush, fmail);
		} T_END;
		if (ret <= 0) {
			bag_flush_mail_free(&fmail);
			if (ret < 0)
				return -1;
			continue;
		}
		break;
	}
	flush->cur = fmail;

	count = array_count(&fmail->env.rcpts);
	addrs = p_new(fmail->pool, const struct smtp_address *, count);
	params = p_new(fmail->pool, const struct smtp_params_rcpt *, count);
	for (i = 0; i < count; i++) {
		if (fmail->states[i] == BAG_FLUSH_RCPT_DONE_BEFORE)
			continue;
		rcpt = array_idx(&fmail->env.rcpts, i);
		addrs[fmail->sent_count] = rcpt->addr;
		params[fmail->sent_count] = &rcpt->params;
		fmail->sent_idx[fmail->sent_count++] = i;
	}
	if (flush->sender == NULL || fmail->sent_count == 0) {
		/* nothing to send: only settle it */
		bag_flush_settle(flush);
		return 1;
	}
	body = bag_flush_body(fmail);
	if (body == NULL) {
		e_error(flush->event, "Can't read UID %u: %s",
			fmail->mail->uid, bag_flush_mail_error(fmail->mail));
		flush->result.broken++;
		bag_flush_mail_free(&flush->cur);
		return bag_flush_pass_next(flush);
	}
	flush->sending = TRUE;
	bag_smtp_sender_send(flush->sender, fmail->pool, fmail->env.mail_from,
			     &fmail->env.mail_params, addrs, params,
			     fmail->sent_count, body, bag_flush_sent, flush);
	i_stream_unref(&body);
	return 1;
}

/* A new pass over the messages that arrived since the previous one.
   Returns 1 if there are some, 0 if not, -1 on error. */
static int bag_flush_pass_start(struct bag_flush *flush)
{
	struct mailbox *box = flush->store->box;
	struct mailbox_status status;
	ARRAY_TYPE(seq_range) seqs;
	uint32_t seq1, seq2;

	if (mailbox_sync(box, 0) < 0) {
		bag_flush_set_error(flush, "Syncing the bag failed: %s",
			mailbox_get_last_internal_error(box, NULL));
		return -1;
	}
	mailbox_get_open_status(box, STATUS_UIDNEXT, &status);
	if (status.uidnext <= flush->next_uid)
		return 0;
	/* the UIDs now: what arrives meanwhile is for the next pass */
	mailbox_get_seq_range(box, flush->next_uid, status.uidnext - 1,
			      &seq1, &seq2);
	flush->next_uid = status.uidnext;
	if (seq1 == 0)
		return 0;
	array_clear(&flush->uids);
	t_array_init(&seqs, 1);
	seq_range_array_add_range(&seqs, seq1, seq2);
	mailbox_get_uid_range(box, &seqs, &flush->uids);
	return 1;
}

static void bag_flush_end(struct bag_flush *flush)
{
	struct mailbox_status status;
	const char *error;

	flush->finished = TRUE;
	if (flush->unsynced > 0 && mailbox_sync(flush->store->box, 0) < 0) {
		bag_flush_set_error(flush, "Removing delivered mail failed: %s",
			mailbox_get_last_internal_error(flush->store->box,
							NULL));
	} else {
		mailbox_get_open_status(flush->store->box, STATUS_MESSAGES,
					&status);
		flush->result.remaining = status.messages;
	}
	/* the whole bag was seen: drop what the journal knows about
	   messages that are gone. A message that couldn't be read was not
	   seen, but is still there: its records stay until a flush reads
	   every message (else its recipients would get it again, its
	   sender a second notification). */
	if (flush->error == NULL && flush->result.broken == 0 &&
	    bag_journal_count(flush->journal) > 0 &&
	    bag_journal_compact(flush->journal, &error) < 0)
		e_error(flush->event, "%s", error);
	if (flush->error != NULL)
		flush->result.error = p_strdup(flush->pool, flush->error);
}

static void bag_flush_call(struct bag_flush *flush)
{
	bag_flush_callback_t *callback = flush->callback;
	struct bag_flush_result result = flush->result;

	timeout_remove(&flush->to_next);
	flush->callback = NULL;
	T_BEGIN {
		/* the strings live in the flush's pool until it is freed,
		   after the callback */
		callback(&result, flush->context);
	} T_END;
}

static void bag_flush_free(struct bag_flush *flush)
{
	timeout_remove(&flush->to_next);
	timeout_remove(&flush->to_notified);
	if (flush->submit != NULL)
		smtp_submit_deinit(&flush->submit);
	bag_flush_mail_free(&flush->cur);
	bag_journal_close(&flush->journal);
	array_free(&flush->uids);
	event_unref(&flush->event);
	i_free(flush->error);
	pool_unref(&flush->pool);
}

static void bag_flush_finish(struct bag_flush *flush)
{
	bag_flush_end(flush);
	bag_flush_call(flush);
	bag_flush_free(flush);
}

static void bag_flush_step(struct bag_flush *flush)
{
	int ret;

	timeout_remove(&flush->to_next);
	for (;;) {
		if (flush->stopping || flush->error != NULL) {
			bag_flush_finish(flush);
			return;
		}
		T_BEGIN {
			ret = flush->in_pass ? bag_flush_pass_next(flush) : 0;
		} T_END;
		if (ret > 0)
			return;
		if (ret < 0) {
			bag_flush_finish(flush);
			return;
		}
		/* again while mail arrives during the flush */
		T_BEGIN {
			ret = bag_flush_pass_start(flush);
		} T_END;
		if (ret <= 0) {
			bag_flush_finish(flush);
			return;
		}
		flush->in_pass = TRUE;
	}
}

static void bag_flush_next(struct bag_flush *flush)
{
	/* from the ioloop, not from deep inside the last message's
	   callbacks */
	i_assert(flush->to_next == NULL);
	flush->to_next = timeout_add_short(0, bag_flush_step, flush);
}

#undef bag_flush_start
struct bag_flush *
bag_flush_start(struct bag_store *store, struct bag_smtp_sender *sender,
		const char *why, const struct bag_flush_settings *set,
		struct event *event, bag_flush_callback_t *callback,
		void *context)
{
	struct bag_flush *flush;
	const char *error;
	pool_t pool;

	pool = pool_alloconly_create("bag flush", 1024);
	flush = p_new(pool, struct bag_flush, 1);
	flush->pool = pool;
	flush->store = store;
	flush->sender = sender;
	flush->why = p_strdup(pool, why);
	flush->set = *set;
	flush->set.remote_mta = p_strdup(pool, set->remote_mta);
	flush->set.domain = p_strdup(pool, set->domain);
	if (set->policy != NULL)
		flush->policy = *set->policy;
	flush->set.policy = &flush->policy;
	flush->callback = callback;
	flush->context = context;
	flush->result.remaining = UINT_MAX;
	flush->next_uid = 1;
	i_array_init(&flush->uids, 8);
	flush->event = event_create(event);
	event_add_category(flush->event, &event_category_bag);
	event_add_str(flush->event, "bag_user", store->username);
	event_set_append_log_prefix(flush->event, t_strdup_printf(
		"bag %s: ", store->username));
	if (bag_journal_open(store, &flush->journal, &error) < 0)
		bag_flush_set_error(flush, "%s", error);
	bag_flush_next(flush);
	return flush;
}

void bag_flush_abort(struct bag_flush **_flush, const char *reason,
		     struct bag_flush_result *result_r)
{
	struct bag_flush *flush = *_flush;

	*_flush = NULL;
	i_assert(!flush->finished);
	if (flush->sending && flush->sender != NULL && flush->submit == NULL)
		bag_smtp_sender_abort(flush->sender);
	/* the message in flight (if any) stays as it is */
	bag_flush_mail_free(&flush->cur);
	bag_flush_set_error(flush, "%s", reason);
	if (flush->journal != NULL)
		bag_flush_end(flush);
	*result_r = flush->result;
	result_r->error = t_strdup(flush->error);
	bag_flush_free(flush);
}

/*
 * A flush to the customer's host
 */

struct bag_flush_host {
	pool_t pool;
	struct bag_store *store;
	struct bag_flush_host_settings set;
	struct bag_flush_policy policy;
	struct event *event;
	struct bag_smtp_relay *relay;
	struct bag_flush *flush;
	struct bag_flush_result result;
	/* why the host couldn't be reached, or refused the session */
	char *connect_error;
	/* messages in the bag when the flush started */
	unsigned int messages;
	char *tls_protocol, *tls_cipher;

	bag_flush_callback_t *callback;
	void *context;
	struct timeout *to_empty;
};

static void bag_flush_host_free(struct bag_flush_host *fhost)
{
	timeout_remove(&fhost->to_empty);
	bag_smtp_relay_destroy(&fhost->relay);
	i_free(fhost->connect_error);
	i_free(fhost->tls_protocol);
	i_free(fhost->tls_cipher);
	pool_unref(&fhost->pool);
}

static void
bag_flush_host_call(struct bag_flush_host *fhost,
		    struct bag_flush_result *result)
{
	bag_flush_callback_t *callback = fhost->callback;

	fhost->callback = NULL;
	if (fhost->tls_protocol != NULL) {
		result->tls_protocol = fhost->tls_protocol;
		result->tls_cipher = fhost->tls_cipher;
	}
	callback(result, fhost->context);
	bag_flush_host_free(fhost);
}

static void
bag_flush_host_flushed(const struct bag_flush_result *result,
		       struct bag_flush_host *fhost)
{
	struct bag_flush_result res = *result;

	fhost->flush = NULL;
	/* the session ends with QUIT */
	bag_smtp_relay_destroy(&fhost->relay);
	bag_flush_host_call(fhost, &res);
}

static void
bag_flush_host_given_up(const struct bag_flush_result *result,
			struct bag_flush_host *fhost)
{
	struct bag_flush_result res = *result;

	fhost->flush = NULL;
	/* nothing was sent: the flush stopped for the connection's sake */
	res.error = fhost->connect_error;
	bag_flush_host_call(fhost, &res);
}

static void
bag_flush_host_ready(int ret, const char *error, struct bag_flush_host *fhost)
{
	struct bag_flush_result res;
	const char *protocol, *cipher;

	if (ret > 0) {
		if (bag_smtp_relay_get_tls(fhost->relay, &protocol, &cipher)) {
			fhost->tls_protocol = i_strdup(protocol);
			fhost->tls_cipher = i_strdup(cipher);
		}
		fhost->flush = bag_flush_start(fhost->store,
			bag_smtp_relay_get_sender(fhost->relay), NULL,
			&fhost->set.flush, fhost->event,
			(bag_flush_callback_t *)bag_flush_host_flushed,
			fhost);
		return;
	}
	fhost->connect_error = i_strdup(error);
	bag_smtp_relay_destroy(&fhost->relay);
	if (fhost->policy.give_up_before != 0 ||
	    fhost->policy.warn_before != 0) {
		/* nothing can be sent: what waited too long goes back */
		fhost->flush = bag_flush_start(fhost->store, NULL,
			fhost->connect_error, &fhost->set.flush, fhost->event,
			(bag_flush_callback_t *)bag_flush_host_given_up,
			fhost);
		return;
	}
	i_zero(&res);
	res.error = fhost->connect_error;
	/* every message waits */
	res.deferred = fhost->messages;
	res.remaining = fhost->messages;
	bag_flush_host_call(fhost, &res);
}

static void bag_flush_host_empty(struct bag_flush_host *fhost)
{
	struct bag_flush_result res;

	i_zero(&res);
	res.empty = TRUE;
	bag_flush_host_call(fhost, &res);
}

#undef bag_flush_host_start
struct bag_flush_host *
bag_flush_host_start(struct bag_store *store,
		     const struct bag_flush_host_settings *set,
		     struct event *event, bag_flush_callback_t *callback,
		     void *context)
{
	struct bag_flush_host *fhost;
	struct bag_smtp_relay_settings relay_set;
	struct mailbox_status status;
	pool_t pool;

	pool = pool_alloconly_create("bag flush host", 1024);
	fhost = p_new(pool, struct bag_flush_host, 1);
	fhost->pool = pool;
	fhost->store = store;
	fhost->set = *set;
	fhost->set.host = p_strdup(pool, set->host);
	fhost->set.my_hostname = p_strdup(pool, set->my_hostname);
	fhost->set.ca_file = p_strdup(pool, set->ca_file);
	fhost->set.ca_dir = p_strdup(pool, set->ca_dir);
	fhost->set.flush.remote_mta = fhost->set.host;
	fhost->set.flush.domain = p_strdup(pool, set->flush.domain);
	if (set->flush.policy != NULL)
		fhost->policy = *set->flush.policy;
	fhost->set.flush.policy = &fhost->policy;
	fhost->event = event;
	fhost->callback = callback;
	fhost->context = context;

	mailbox_get_open_status(store->box, STATUS_MESSAGES, &status);
	fhost->messages = status.messages;
	if (status.messages == 0) {
		/* nothing to send: no session, and no word about the
		   customer's MTA */
		fhost->to_empty = timeout_add_short(0, bag_flush_host_empty,
						    fhost);
		return fhost;
	}

	i_zero(&relay_set);
	relay_set.host = fhost->set.host;
	relay_set.port = set->port;
	relay_set.my_hostname = fhost->set.my_hostname;
	relay_set.timeout_msecs = set->timeout_msecs;
	relay_set.tls = set->tls;
	relay_set.tls_last = set->tls_last;
	relay_set.ca_file = fhost->set.ca_file;
	relay_set.ca_dir = fhost->set.ca_dir;
	relay_set.event_parent = event;
	fhost->relay = bag_smtp_relay_start(&relay_set, bag_flush_host_ready,
					    fhost);
	return fhost;
}

void bag_flush_host_abort(struct bag_flush_host **_fhost, const char *reason,
			  struct bag_flush_result *result_r)
{
	struct bag_flush_host *fhost = *_fhost;

	*_fhost = NULL;
	if (fhost->flush != NULL)
		bag_flush_abort(&fhost->flush, reason, result_r);
	else {
		i_zero(result_r);
		result_r->error = t_strdup(reason);
		result_r->deferred = fhost->messages;
		result_r->remaining = fhost->messages;
	}
	if (fhost->tls_protocol != NULL) {
		result_r->tls_protocol = t_strdup(fhost->tls_protocol);
		result_r->tls_cipher = t_strdup(fhost->tls_cipher);
	}
	bag_flush_host_free(fhost);
}

/*
 * The end of a flush
 */

struct event *bag_flush_event_create(struct event *parent)
{
	struct event *event;

	event = event_create(parent);
	event_add_category(event, &event_category_bag);
	if (parent == NULL)
		event_set_append_log_prefix(event, "bag: ");
	/* its duration is from here to bag_flush_finished() */
	event_set_name(event, "bag_flush_finished");
	return event;
}

void bag_flush_finished(struct registry *reg, const struct bag_def *def,
			const char *how, const struct bag_flush_result *result,
			struct event **_event)
{
	struct event *event = *_event;
	struct bag_status status;
	struct event_passthrough *e;
	struct timeval created;
	const char *tls;
	uint64_t usecs;

	*_event = NULL;
	io_loop_time_refresh();
	event_get_create_time(event, &created);
	usecs = timeval_diff_usecs(&ioloop_timeval, &created);
	tls = result->tls_protocol == NULL ? NULL :
		t_strdup_printf("%s %s", result->tls_protocol,
				result->tls_cipher);
	e = event_create_passthrough(event)->
		set_name("bag_flush_finished")->
		add_str("domain", def->domain)->
		add_str("trigger", how)->
		add_int("delivered", result->delivered)->
		add_int("deferred", result->deferred)->
		add_int("bounced", result->bounced)->
		add_int("broken", result->broken)->
		add_int("usecs", usecs);
	if (result->error != NULL)
		e->add_str("error", result->error);
	if (result->tls_protocol != NULL) {
		e->add_str("tls_protocol", result->tls_protocol);
		e->add_str("tls_cipher", result->tls_cipher);
	}
	if (result->empty) {
		/* no session: the last flush's status stays */
		e_debug(e->event(), "Flush of %s (%s): nothing waits",
			def->domain, how);
		bag_registry_count_set(reg, def->domain, 0, event);
		event_unref(&event);
		return;
	}
	e_info(e->event(), "Flush of %s (%s): %u delivered, %u waiting, %u "
	       "recipients bounced in %"PRIu64".%03"PRIu64" s%s%s%s%s",
	       def->domain, how, result->delivered, result->deferred,
	       result->bounced, usecs / 1000000, (usecs / 1000) % 1000,
	       tls == NULL ? "" : ", TLS ", tls == NULL ? "" : tls,
	       result->error == NULL ? "" : "; stopped: ",
	       result->error == NULL ? "" : result->error);

	i_zero(&status);
	status.time = ioloop_time;
	status.result = result->error == NULL ? "ok" : result->error;
	status.delivered = result->delivered;
	status.deferred = result->deferred;
	status.bounced = result->bounced;
	status.tls = tls;
	if (tls == NULL && result->error == NULL && how != NULL &&
	    strcmp(how, "atrn") != 0)
		status.tls = "none";
	bag_registry_status_set(reg, def->domain, &status, event);
	if (result->remaining != UINT_MAX) {
		bag_registry_count_set(reg, def->domain, result->remaining,
				       event);
	}
	event_unref(&event);
}
