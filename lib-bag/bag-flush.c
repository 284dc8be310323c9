/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* The flush of a bag to its customer's MTA: every held message, with its
   envelope, over one SMTP session; a 250 expunges it, a 5xx bounces it
   with a DSN, a 4xx keeps it (bag-flush.h). */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "str-sanitize.h"
#include "ioloop.h"
#include "istream.h"
#include "istream-concat.h"
#include "seq-range-array.h"
#include "ostream.h"
#include "time-util.h"
#include "strescape.h"
#include "write-full.h"
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
#include "bag-smtp-client.h"
#include "bag-dsn.h"
#include "bag-fault.h"
#include "bag-flush.h"

#include <unistd.h>

/* Expunges are applied (files removed) this often during a long flush */
#define BAG_FLUSH_SYNC_INTERVAL 500
/* replies are bounded by the client's reply parser too */
#define BAG_FLUSH_MAX_INPUT_BUFFER (64 * 1024)

struct event_category event_category_bag = {
	.name = "bag",
};

static const struct bag_flush_policy bag_flush_no_policy;

/* a message whose sender has been told that it waits */
#define BAG_FLUSH_KEYWORD_WARNED "$BagDelayWarned"

enum bag_flush_rcpt_state {
	BAG_FLUSH_RCPT_DEFERRED = 0,
	BAG_FLUSH_RCPT_DELIVERED,
	BAG_FLUSH_RCPT_FAILED,
};

struct bag_flush_ctx {
	struct bag_store *store;
	struct bag_smtp_client *client;
	const char *remote_mta;
	/* never NULL (bag_flush_no_policy) */
	const struct bag_flush_policy *policy;
	/* why a message wasn't sent at all (bag_flush_give_up()) */
	const char *why;
	struct event *event;
	struct bag_flush_result *result;
	/* why the flush stops (the result gets it when the flush ends: it
	   is set in data stack frames of its own) */
	char *error;
	unsigned int unsynced;
	/* the copies stored again for their waiting recipients: not tried
	   again in the same flush */
	ARRAY_TYPE(seq_range) resaved;
};

/* One message during its delivery */
struct bag_flush_mail {
	struct mail *mail;
	struct bag_envelope env;
	/* where the message proper starts, after the envelope lines */
	uoff_t body_offset;
	enum bag_flush_rcpt_state *states;
	/* the reply that decided each recipient (NULL: nothing was sent) */
	const struct smtp_reply **replies;
	/* a failed recipient's retry period ran out */
	bool *expired;
	time_t saved;
	/* a delay notification went out for it */
	bool warned;
};

static void ATTR_FORMAT(2, 3)
bag_flush_set_error(struct bag_flush_ctx *ctx, const char *fmt, ...)
{
	va_list args;

	va_start(args, fmt);
	i_free(ctx->error);
	ctx->error = i_strdup_vprintf(fmt, args);
	va_end(args);
}

static struct istream *
bag_flush_body(struct bag_flush_mail *fmail)
{
	struct istream *input;

	if (mail_get_stream(fmail->mail, NULL, NULL, &input) < 0)
		return NULL;
	return i_stream_create_range(input, fmail->body_offset, UOFF_T_MAX);
}

static const char *bag_flush_mail_error(struct mail *mail)
{
	return mailbox_get_last_internal_error(mail->box, NULL);
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

/* Tell the sender which recipients were refused (action FAILED: the
   FAILED ones) or still wait (DELAYED: the DEFERRED ones). Returns 0
   when that is done (or not wanted), -1 when the notification couldn't
   be sent. */
static int
bag_flush_notify(struct bag_flush_ctx *ctx, struct bag_flush_mail *fmail,
		 enum bag_dsn_action action)
{
	const struct smtp_submit_settings *set = ctx->store->submit_set;
	enum bag_flush_rcpt_state state = action == BAG_DSN_ACTION_FAILED ?
		BAG_FLUSH_RCPT_FAILED : BAG_FLUSH_RCPT_DEFERRED;
	ARRAY(struct bag_dsn_recipient) rcpts;
	const struct bag_envelope_rcpt *erpct;
	const struct smtp_reply *reply;
	struct bag_dsn_recipient *drcpt;
	struct smtp_submit_input input;
	struct smtp_submit *submit;
	struct bag_dsn dsn;
	struct istream *body;
	struct ostream *output;
	const char *error;
	unsigned int i;
	int ret;

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
				ctx->policy->retry_period;
		} else if (fmail->expired[i]) {
			/* delivery time expired */
			drcpt->status = "4.4.7";
		} else {
			drcpt->status = bag_flush_reply_status(reply);
		}
		drcpt->remote_mta = reply == NULL ? NULL : ctx->remote_mta;
		if (reply != NULL)
			drcpt->diagnostic = smtp_reply_log(reply);
		else
			drcpt->local_diagnostic = ctx->why;
		drcpt->last_attempt = ioloop_time;
	}
	if (array_count(&rcpts) == 0)
		return 0;
	if ((body = bag_flush_body(fmail)) == NULL) {
		e_error(ctx->event, "Can't read UID %u for its notification: "
			"%s", fmail->mail->uid,
			bag_flush_mail_error(fmail->mail));
		return -1;
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
	input.event_parent = ctx->event;
	/* from the null sender: a notification is never bounced */
	submit = smtp_submit_init_simple(&input, set, NULL);
	smtp_submit_add_rcpt(submit, fmail->env.mail_from);
	output = smtp_submit_send(submit);
	if (bag_dsn_write(&dsn, output, &error) < 0) {
		e_error(ctx->event, "Can't write the notification of UID %u: "
			"%s", fmail->mail->uid, error);
		ret = -1;
	} else {
		ret = smtp_submit_run(submit, &error);
		if (ret <= 0) {
			e_error(ctx->event, "Sending the notification of UID "
				"%u to %s failed: %s", fmail->mail->uid,
				smtp_address_encode(fmail->env.mail_from),
				error);
		}
	}
	smtp_submit_deinit(&submit);
	i_stream_unref(&body);
	/* a permanent failure (the sender's address is refused) is not
	   worth keeping the recipients for */
	return ret < 0 ? -1 : 0;
}

static bool bag_flush_mail_warned(struct mail *mail)
{
	const char *const *keywords = mail_get_keywords(mail);

	return keywords != NULL &&
		str_array_find(keywords, BAG_FLUSH_KEYWORD_WARNED);
}

/* Mark mail, or the copy save_ctx saves, as having been warned about. */
static void
bag_flush_set_warned(struct mailbox *box, struct mail *mail,
		     struct mail_save_context *save_ctx)
{
	static const char *const names[] = { BAG_FLUSH_KEYWORD_WARNED, NULL };
	struct mail_keywords *kw;

	if (mailbox_keywords_create(box, names, &kw) < 0)
		return;
	if (save_ctx != NULL)
		mailbox_save_set_flags(save_ctx, 0, kw);
	else
		mail_update_keywords(mail, MODIFY_ADD, kw);
	mailbox_keywords_unref(&kw);
}

/* Store the message again with only its waiting recipients. */
static int
bag_flush_resave(struct bag_flush_ctx *ctx, struct bag_flush_mail *fmail)
{
	struct mailbox *box = ctx->store->box;
	ARRAY(struct bag_envelope_rcpt) waiting;
	struct mailbox_transaction_context *trans;
	struct mail_transaction_commit_changes changes;
	struct mail_save_context *save_ctx;
	struct istream *inputs[3], *input;
	string_t *hdr = t_str_new(512);
	time_t save_date, received;
	unsigned int i;
	bool failed = FALSE;

	t_array_init(&waiting, 4);
	for (i = 0; i < array_count(&fmail->env.rcpts); i++) {
		if (fmail->states[i] == BAG_FLUSH_RCPT_DEFERRED)
			array_push_back(&waiting,
					array_idx(&fmail->env.rcpts, i));
	}
	bag_envelope_write(hdr, fmail->env.mail_from, &fmail->env.mail_params,
			   array_front(&waiting), array_count(&waiting));
	if ((inputs[1] = bag_flush_body(fmail)) == NULL) {
		e_error(ctx->event, "Can't read UID %u: %s", fmail->mail->uid,
			bag_flush_mail_error(fmail->mail));
		return -1;
	}
	inputs[0] = i_stream_create_from_data(str_data(hdr), str_len(hdr));
	inputs[2] = NULL;
	input = i_stream_create_concat(inputs);
	i_stream_unref(&inputs[0]);
	i_stream_unref(&inputs[1]);

	trans = mailbox_transaction_begin(box,
					  MAILBOX_TRANSACTION_FLAG_EXTERNAL |
					  MAILBOX_TRANSACTION_FLAG_ASSIGN_UIDS,
					  "bag resave");
	save_ctx = mailbox_save_alloc(trans);
	/* it keeps its age: it arrived when the original did */
	if (mail_get_save_date(fmail->mail, &save_date) >= 0)
		mailbox_save_set_save_date(save_ctx, save_date);
	if (mail_get_received_date(fmail->mail, &received) == 0)
		mailbox_save_set_received_date(save_ctx, received, 0);
	if (fmail->warned)
		bag_flush_set_warned(box, NULL, save_ctx);
	if (mailbox_save_begin(&save_ctx, input) < 0)
		failed = TRUE;
	else {
		do {
			if (mailbox_save_continue(save_ctx) < 0) {
				failed = TRUE;
				break;
			}
		} while (i_stream_read(input) > 0);
		if (!failed && input->stream_errno != 0)
			failed = TRUE;
		if (failed)
			mailbox_save_cancel(&save_ctx);
		else if (mailbox_save_finish(&save_ctx) < 0)
			failed = TRUE;
	}
	if (failed || mailbox_transaction_commit_get_changes(&trans,
							      &changes) < 0) {
		e_error(ctx->event, "Storing the rest of UID %u failed: %s",
			fmail->mail->uid, input->stream_errno != 0 ?
			i_stream_get_error(input) :
			mailbox_get_last_internal_error(box, NULL));
		if (trans != NULL)
			mailbox_transaction_rollback(&trans);
		i_stream_unref(&input);
		return -1;
	}
	seq_range_array_merge(&ctx->resaved, &changes.saved_uids);
	pool_unref(&changes.pool);
	i_stream_unref(&input);
	return 0;
}

/* Decide each recipient from the replies. */
static void
bag_flush_classify(struct bag_flush_mail *fmail,
		   const struct bag_smtp_send_result *res)
{
	unsigned int i, count = array_count(&fmail->env.rcpts);
	const struct smtp_reply *reply;

	for (i = 0; i < count; i++) {
		if (res->mail_reply.status / 100 != 2)
			reply = &res->mail_reply;
		else if (res->rcpt_replies[i].status / 100 != 2)
			reply = &res->rcpt_replies[i];
		else
			reply = &res->data_reply;
		fmail->replies[i] = reply;
		switch (reply->status / 100) {
		case 2:
			fmail->states[i] = BAG_FLUSH_RCPT_DELIVERED;
			break;
		case 5:
			fmail->states[i] = BAG_FLUSH_RCPT_FAILED;
			break;
		default:
			/* 4xx, or DATA never sent */
			fmail->states[i] = BAG_FLUSH_RCPT_DEFERRED;
			break;
		}
	}
}

/* With every recipient's state known: give up on what waited too long,
   tell the senders, and remove the message, store the rest of it again,
   or keep it. */
static void bag_flush_settle(struct bag_flush_ctx *ctx,
			     struct bag_flush_mail *fmail)
{
	const struct bag_flush_policy *policy = ctx->policy;
	struct bag_flush_result *result = ctx->result;
	unsigned int i, count = array_count(&fmail->env.rcpts);
	unsigned int waiting = 0, delivered = 0, failed = 0;
	bool warned = bag_flush_mail_warned(fmail->mail);

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
		if (fmail->states[i] == BAG_FLUSH_RCPT_FAILED)
			failed++;
	}
	if (failed > 0 &&
	    bag_flush_notify(ctx, fmail, BAG_DSN_ACTION_FAILED) < 0) {
		/* unannounced refusals stay: the next flush tries again */
		for (i = 0; i < count; i++) {
			if (fmail->states[i] == BAG_FLUSH_RCPT_FAILED)
				fmail->states[i] = BAG_FLUSH_RCPT_DEFERRED;
		}
		failed = 0;
	} else if (failed > 0) {
		BAG_FAULT("after-dsn");
	}
	for (i = 0; i < count; i++) {
		if (fmail->states[i] == BAG_FLUSH_RCPT_DEFERRED)
			waiting++;
		else if (fmail->states[i] == BAG_FLUSH_RCPT_DELIVERED)
			delivered++;
	}
	if (waiting > 0 && !warned && policy->warn_before != 0 &&
	    fmail->saved < policy->warn_before &&
	    bag_flush_notify(ctx, fmail, BAG_DSN_ACTION_DELAYED) == 0)
		fmail->warned = TRUE;
	result->bounced += failed;
	e_debug(ctx->event, "UID %u: %u of %u recipients delivered, %u "
		"refused, %u waiting", fmail->mail->uid, delivered, count,
		failed, waiting);
	if (waiting == count) {
		if (fmail->warned) {
			bag_flush_set_warned(fmail->mail->box, fmail->mail,
					     NULL);
		}
		result->deferred++;
		return;
	}
	fmail->warned = fmail->warned || warned;
	if (waiting > 0) {
		if (bag_flush_resave(ctx, fmail) < 0) {
			/* keep the original: at worst it is sent again */
			result->deferred++;
			return;
		}
		BAG_FAULT("after-resave");
		result->deferred++;
	} else if (delivered > 0) {
		result->delivered++;
	}
	mail_expunge(fmail->mail);
}

/* Deliver one message (envelope and replies from pool); without a
   client, only settle it (bag_flush_give_up()). Returns 1 if it is done
   with (removed, kept or skipped), -1 if the connection failed. */
static int
bag_flush_one_from(struct bag_flush_ctx *ctx, struct mail *mail, pool_t pool)
{
	struct bag_flush_result *result = ctx->result;
	struct bag_flush_mail fmail;
	struct bag_smtp_send_result res;
	const struct smtp_address **addrs;
	const struct smtp_params_rcpt **params;
	const struct bag_envelope_rcpt *rcpt;
	struct istream *input, *body;
	unsigned int i, count;
	const char *error;
	int ret;

	io_loop_time_refresh();
	i_zero(&fmail);
	fmail.mail = mail;
	if (mail_get_stream(mail, NULL, NULL, &input) < 0) {
		if (mail->expunged)
			return 1;
		e_error(ctx->event, "Can't read UID %u: %s", mail->uid,
			bag_flush_mail_error(mail));
		result->broken++;
		return 1;
	}
	if (bag_envelope_read(input, pool, &fmail.env, &error) < 0) {
		/* kept for the administrator: nothing is lost */
		e_error(ctx->event, "UID %u kept: %s", mail->uid, error);
		result->broken++;
		return 1;
	}
	if (mail_get_save_date(mail, &fmail.saved) < 0)
		fmail.saved = ioloop_time;
	fmail.body_offset = input->v_offset;
	count = array_count(&fmail.env.rcpts);
	addrs = t_new(const struct smtp_address *, count);
	params = t_new(const struct smtp_params_rcpt *, count);
	fmail.states = t_new(enum bag_flush_rcpt_state, count);
	fmail.replies = t_new(const struct smtp_reply *, count);
	fmail.expired = t_new(bool, count);
	for (i = 0; i < count; i++) {
		rcpt = array_idx(&fmail.env.rcpts, i);
		addrs[i] = rcpt->addr;
		params[i] = &rcpt->params;
	}
	if (ctx->client != NULL) {
		body = i_stream_create_range(input, fmail.body_offset,
					     UOFF_T_MAX);
		ret = bag_smtp_client_send(ctx->client, pool,
					   fmail.env.mail_from,
					   &fmail.env.mail_params, addrs,
					   params, count, body, &res, &error);
		i_stream_unref(&body);
		if (ret < 0) {
			bag_flush_set_error(ctx, "UID %u: %s", mail->uid,
					    error);
			return -1;
		}
		bag_flush_classify(&fmail, &res);
	}
	bag_flush_settle(ctx, &fmail);
	return 1;
}

static int bag_flush_one(struct bag_flush_ctx *ctx, struct mail *mail)
{
	/* not the data stack: the client allocates in frames of its own */
	pool_t pool = pool_alloconly_create("bag flush message", 2048);
	int ret;

	ret = bag_flush_one_from(ctx, mail, pool);
	pool_unref(&pool);
	return ret;
}

static int
bag_flush_commit(struct bag_flush_ctx *ctx,
		 struct mailbox_transaction_context **trans, bool sync)
{
	struct mailbox *box = ctx->store->box;

	if (mailbox_transaction_commit(trans) < 0 ||
	    (sync && mailbox_sync(box, 0) < 0)) {
		bag_flush_set_error(ctx, "Removing delivered mail failed: %s",
			mailbox_get_last_internal_error(box, NULL));
		return -1;
	}
	return 0;
}

/* One pass over the messages with a UID above *next_uid (the ones that
   arrived since the previous pass). Returns 1 if there were some, 0 if
   not, -1 if the flush must stop. */
static int bag_flush_pass(struct bag_flush_ctx *ctx, uint32_t *next_uid)
{
	struct mailbox *box = ctx->store->box;
	struct mailbox_transaction_context *trans;
	struct mail *mail;
	ARRAY_TYPE(seq_range) seqs, uids;
	const struct seq_range *range;
	struct mailbox_status status;
	uint32_t seq1, seq2, uid;
	int ret = 0;

	if (mailbox_sync(box, 0) < 0) {
		bag_flush_set_error(ctx, "Syncing the bag failed: %s",
			mailbox_get_last_internal_error(box, NULL));
		return -1;
	}
	mailbox_get_open_status(box, STATUS_UIDNEXT, &status);
	if (status.uidnext <= *next_uid)
		return 0;
	/* the UIDs now: what arrives meanwhile is for the next pass */
	mailbox_get_seq_range(box, *next_uid, status.uidnext - 1, &seq1,
			      &seq2);
	*next_uid = status.uidnext;
	if (seq1 == 0)
		return 0;
	t_array_init(&seqs, 1);
	t_array_init(&uids, 1);
	seq_range_array_add_range(&seqs, seq1, seq2);
	mailbox_get_uid_range(box, &seqs, &uids);
	ret = 1;
	array_foreach(&uids, range) {
		for (uid = range->seq1; uid <= range->seq2 && ret > 0; uid++) {
			if (seq_range_exists(&ctx->resaved, uid))
				continue;
			trans = mailbox_transaction_begin(box, 0, "bag flush");
			mail = mail_alloc(trans, MAIL_FETCH_STREAM_HEADER |
					  MAIL_FETCH_STREAM_BODY, NULL);
			if (!mail_set_uid(mail, uid)) {
				mail_free(&mail);
				mailbox_transaction_rollback(&trans);
				continue;
			}
			T_BEGIN {
				ret = bag_flush_one(ctx, mail);
			} T_END;
			mail_free(&mail);
			/* the expunge (if any) is committed at once: a
			   flush cut off now doesn't send it again */
			if (++ctx->unsynced >= BAG_FLUSH_SYNC_INTERVAL)
				ctx->unsynced = 0;
			if (bag_flush_commit(ctx, &trans,
					     ctx->unsynced == 0) < 0)
				ret = -1;
			else
				BAG_FAULT("after-commit");
		}
		if (ret < 0)
			break;
	}
	return ret;
}

static int
bag_flush_run_real(struct bag_store *store, struct bag_smtp_client *client,
		   const char *remote_mta, const char *why,
		   const struct bag_flush_policy *policy,
		   struct event *event_parent,
		   struct bag_flush_result *result_r)
{
	struct bag_flush_ctx ctx;
	struct timeval start, end;
	uint32_t next_uid = 1;
	int ret;

	i_gettimeofday(&start);
	i_zero(result_r);
	result_r->remaining = UINT_MAX;
	i_zero(&ctx);
	ctx.store = store;
	ctx.client = client;
	ctx.remote_mta = remote_mta;
	ctx.why = why;
	ctx.policy = policy != NULL ? policy : &bag_flush_no_policy;
	ctx.event = event_create(event_parent);
	event_add_category(ctx.event, &event_category_bag);
	event_add_str(ctx.event, "bag_user", store->username);
	event_set_append_log_prefix(ctx.event, t_strdup_printf(
		"bag %s: ", store->username));
	ctx.result = result_r;
	i_array_init(&ctx.resaved, 8);
	/* again while mail arrives during the flush */
	while ((ret = bag_flush_pass(&ctx, &next_uid)) > 0) ;
	if (ctx.unsynced > 0 && mailbox_sync(store->box, 0) < 0) {
		bag_flush_set_error(&ctx, "Removing delivered mail failed: %s",
			mailbox_get_last_internal_error(store->box, NULL));
		ret = -1;
	} else {
		struct mailbox_status status;

		mailbox_get_open_status(store->box, STATUS_MESSAGES, &status);
		result_r->remaining = status.messages;
	}
	if (ctx.error != NULL) {
		result_r->error = t_strdup(ctx.error);
		i_free(ctx.error);
	}
	array_free(&ctx.resaved);
	event_unref(&ctx.event);
	i_gettimeofday(&end);
	result_r->usecs = timeval_diff_usecs(&end, &start);
	return ret;
}

int bag_flush_run(struct bag_store *store, struct bag_smtp_client *client,
		  const char *remote_mta,
		  const struct bag_flush_policy *policy, struct event *event,
		  struct bag_flush_result *result_r)
{
	return bag_flush_run_real(store, client, remote_mta, NULL, policy,
				  event, result_r);
}

void bag_flush_give_up(struct bag_store *store,
		       const struct bag_flush_policy *policy, const char *why,
		       struct event *event, struct bag_flush_result *result)
{
	struct bag_flush_result given_up;

	if (policy == NULL ||
	    (policy->give_up_before == 0 && policy->warn_before == 0))
		return;
	(void)bag_flush_run_real(store, NULL, NULL, why, policy, event,
				 &given_up);
	result->bounced += given_up.bounced;
	result->deferred = given_up.deferred;
	result->remaining = given_up.remaining;
}

int bag_flush_to_host(struct bag_store *store, const char *host,
		      in_port_t port, unsigned int timeout_msecs,
		      const struct bag_flush_policy *policy,
		      struct event *event, struct bag_flush_result *result_r)
{
	struct bag_smtp_client_settings set;
	struct bag_smtp_client *client;
	struct istream *input;
	struct ostream *output;
	struct smtp_reply reply;
	struct timeval start, end;
	const char *error;
	int fd, ret;

	i_gettimeofday(&start);
	i_zero(result_r);
	result_r->remaining = UINT_MAX;
	fd = bag_smtp_client_connect(host, port, timeout_msecs, &error);
	if (fd < 0) {
		result_r->error = error;
		/* nothing was sent: what waited too long goes back */
		bag_flush_give_up(store, policy, error, event, result_r);
		return -1;
	}
	input = i_stream_create_fd(fd, BAG_FLUSH_MAX_INPUT_BUFFER);
	output = o_stream_create_fd(fd, SIZE_MAX);
	i_zero(&set);
	set.my_hostname = store->submit_set->hostname;
	set.timeout_msecs = timeout_msecs;
	client = bag_smtp_client_init(fd, input, output, &set);
	ret = bag_smtp_client_start(client, &reply, &error);
	if (ret == 0) {
		result_r->error = t_strdup_printf(
			"%s:%u refused the session: %s", host, port,
			str_sanitize(smtp_reply_log(&reply), 200));
		ret = -1;
	} else if (ret < 0) {
		result_r->error = t_strdup_printf("%s:%u: %s", host, port,
						  error);
	} else {
		ret = bag_flush_run(store, client, host, policy, event,
				    result_r);
		bag_smtp_client_quit(client);
	}
	if (ret < 0) {
		bag_flush_give_up(store, policy, result_r->error, event,
				  result_r);
	}
	bag_smtp_client_deinit(&client);
	i_stream_unref(&input);
	o_stream_unref(&output);
	i_close_fd(&fd);
	i_gettimeofday(&end);
	result_r->usecs = timeval_diff_usecs(&end, &start);
	return ret;
}

void bag_flush_finished(struct registry *reg, const struct bag_def *def,
			const char *how, const struct bag_flush_result *result,
			struct event *event_parent)
{
	struct bag_status status;
	struct event_passthrough *e;
	struct event *event;

	event = event_create(event_parent);
	event_add_category(event, &event_category_bag);
	if (event_parent == NULL)
		event_set_append_log_prefix(event, "bag: ");
	e = event_create_passthrough(event)->
		set_name("bag_flush_finished")->
		add_str("domain", def->domain)->
		add_str("trigger", how)->
		add_int("delivered", result->delivered)->
		add_int("deferred", result->deferred)->
		add_int("bounced", result->bounced)->
		add_int("broken", result->broken)->
		add_int("usecs", result->usecs);
	if (result->error != NULL)
		e->add_str("error", result->error);
	e_info(e->event(), "Flush of %s (%s): %u delivered, %u waiting, %u "
	       "recipients bounced in %"PRIu64".%03"PRIu64" s%s%s",
	       def->domain, how, result->delivered, result->deferred,
	       result->bounced, result->usecs / 1000000,
	       (result->usecs / 1000) % 1000,
	       result->error == NULL ? "" : "; stopped: ",
	       result->error == NULL ? "" : result->error);

	i_zero(&status);
	status.time = ioloop_time;
	status.result = result->error == NULL ? "ok" : result->error;
	status.delivered = result->delivered;
	status.deferred = result->deferred;
	status.bounced = result->bounced;
	bag_registry_status_set(reg, def->domain, &status, event);
	if (result->remaining != UINT_MAX) {
		bag_registry_count_set(reg, def->domain, result->remaining,
				       event);
	}
	event_unref(&event);
}
