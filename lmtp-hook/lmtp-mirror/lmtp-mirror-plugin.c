/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* The LMTP half of Mail Mirror. For every transaction it finds the mirrors
   whose source is a recipient's address (without a recipient detail) or
   its domain, and makes one copy of the message per mirror storage once
   the recipient's delivery has kept the message (Sieve keep/fileinto, or
   the default delivery) or forwarded it (Sieve redirect). Discarded and
   rejected messages are not copied.

   The address is the one the sender's SMTP session gave to the MTA, before
   aliases: LMTP offers DSN, so that the MTA passes it as ORCPT. ORCPT is
   the sender's word unless the MTA sets it itself (its public ports don't
   offer DSN: doc/mirror.md), so it is the key only with
   mirror_trusted_mta = yes, as the MTA's Received: line then tells when the
   message was queued. Otherwise RCPT TO is the key, and LMTP's own time
   the message's: no sender can keep a message out of its recipient's
   mirror, or put it into someone else's. */

#define _GNU_SOURCE /* memfd_create() */
#include "lib.h"
#include "array.h"
#include "str.h"
#include "safe-mkstemp.h"
#include "istream.h"
#include "ostream.h"
#include "str-sanitize.h"
#include "ioloop.h"
#include "module-dir.h"
#include "module-context.h"
#include "event-filter.h"
/* event_register_callback() is declared only here; Dovecot's own stats
   client watches events the same way */
#include "lib-event-private.h"
#include "smtp-address.h"
#include "smtp-params.h"
#include "smtp-server.h"
#include "message-date.h"
#include "mail-user.h"
#include "mail-storage.h"
#include "lda-settings.h"
#include "lmtp-common.h"
#include "lmtp-client.h"
#include "lmtp-recipient.h"
#include "mirror-address.h"
#include "mirror-registry.h"
#include "mirror-copy.h"
#include "mirror-writer-client.h"
#include "mirror-plugin.h"
#include "mirror-event.h"
#include "mirror-setting.h"
#include "lmtp-dsn.h"

#include <sys/mman.h>

#define LMTP_MIRROR_CONTEXT(obj) \
	MODULE_CONTEXT(obj, lmtp_mirror_client_module)
#define LMTP_MIRROR_CONTEXT_REQUIRE(obj) \
	MODULE_CONTEXT_REQUIRE(obj, lmtp_mirror_client_module)

/* How long a delivery waits for mirror-writer's reply */
#define LMTP_MIRROR_WRITER_TIMEOUT_MSECS (60*1000)
/* the most filesystems remembered as synced by mirror-writer */
#define LMTP_MIRROR_COVERED_DEVS_MAX 16
/* the largest message handed to mirror-writer in a memory file (LMTP's
   own LMTP_MAIL_DATA_MAX_INMEMORY_SIZE) */
#define LMTP_MIRROR_MEMORY_FILE_MAX_SIZE (1024*128)

/* Pigeonhole reports each executed Sieve action with the named event
   sieve_action_finished; a redirect carries the field redirect_target. */
#define SIEVE_REDIRECT_FILTER \
	"event=sieve_action_finished AND redirect_target=*"

enum lmtp_mirror_target_state {
	LMTP_MIRROR_TARGET_PENDING = 0,
	/* saved, committed once the delivery is */
	LMTP_MIRROR_TARGET_SAVED,
	LMTP_MIRROR_TARGET_DONE,
	LMTP_MIRROR_TARGET_FAILED,
};

struct lmtp_mirror_target {
	struct mirror_copy_target copy;
	enum lmtp_mirror_target_state state;
};

struct lmtp_mirror_rcpt {
	struct smtp_server_recipient *rcpt;
	/* indexes to lmtp_mirror_plan.targets */
	ARRAY_TYPE(uint) targets;
};

/* What one transaction mirrors, found at its first local delivery. */
struct lmtp_mirror_plan {
	struct smtp_server_transaction *trans;
	/* the message as LMTP received it: copies are made from it, never
	   from a recipient's saved mail */
	struct mail *raw_mail;
	ARRAY(struct lmtp_mirror_rcpt) rcpts;
	ARRAY(struct lmtp_mirror_target) targets;
	/* registry lookup failure: nothing can be mirrored */
	const char *error;
	/* the message in an unlinked file, for mirror-writer (-1: none) */
	int copy_fd;
};

struct lmtp_mirror_client {
	union lmtp_module_context module_ctx;
	struct client *client;
	struct event *event;

	struct registry *registry;
	struct mirror_copier *copier;
	const char *delimiters;
	bool tempfail;
	/* mirror_trusted_mta: ORCPT and the MTA's Received: are its own */
	bool trusted_mta;
	/* mirror_dsn: DSN is offered (success notifications sent) */
	bool dsn;
	/* mirror_writer: copies are made by the mirror-writer service,
	   while connected to it */
	const char *writer_path;
	struct mirror_writer_client *writer;
	/* mirror_fsync and mirror_writer_syncfs: the writer syncs with one
	   syncfs() what a delivery wrote without syncing it too */
	bool writer_syncs;

	struct lmtp_mirror_plan *plan;
};

/* One recipient's delivery while it runs. */
struct lmtp_mirror_delivery {
	struct lmtp_mirror_client *mclient;
	struct lmtp_mirror_rcpt *mrcpt;
	struct event *event;
	/* the SMTP recipient's event: Sieve's events descend from it */
	struct event *rcpt_event;
	const char *username;
	/* the copies saved for this delivery, not yet committed, with the
	   indexes of their targets (in the transaction's pool) */
	struct mirror_copy_batch *batch;
	ARRAY(struct mirror_copy_target) copies;
	ARRAY_TYPE(uint) copy_idx;
	/* the copies go to mirror-writer: handed over before the commit
	   (with tempfail), or once the delivery kept the message */
	bool via_writer;
	bool writer_deferred;
	bool forwarded;
	/* what the delivery's first commit wrote without syncing it */
	struct mirror_writer_sync sync;
};

const char *lmtp_mirror_plugin_version = DOVECOT_ABI_VERSION;
const char lmtp_mirror_plugin_binary_dependency[] = "lmtp";
const char *lmtp_mirror_plugin_dependencies[] = { "mirror", NULL };

static lmtp_client_created_func_t *next_hook_client_created;
/* LMTP delivers one recipient at a time; this is the one whose Sieve
   actions are being watched (see lmtp_mirror_event_callback()). */
static struct lmtp_mirror_delivery *lmtp_mirror_active_delivery;
static struct event_filter *lmtp_mirror_redirect_filter;
/* the first untrusted ORCPT that differed from its RCPT TO was logged */
static bool lmtp_mirror_orcpt_logged;

static MODULE_CONTEXT_DEFINE_INIT(lmtp_mirror_client_module,
				  &lmtp_module_register);

/* The address a recipient's mirrors are looked up by: ORCPT, the address
   the sender's session gave the MTA before aliases, when there is one and
   the MTA is trusted to have set it; RCPT TO otherwise. An untrusted
   ORCPT may be the sender's word: trusting it would let a sender keep a
   message out of its recipient's mirror, or put it into someone else's. */
static const struct smtp_address *
lmtp_mirror_rcpt_address(struct lmtp_mirror_client *mclient,
			 const struct smtp_server_recipient *rcpt)
{
	const struct smtp_address *orcpt = rcpt->params.orcpt.addr;

	if (orcpt == NULL || orcpt->localpart == NULL ||
	    orcpt->domain == NULL || smtp_address_equals_icase(orcpt,
							       rcpt->path))
		return rcpt->path;
	if (mclient->trusted_mta)
		return orcpt;
	if (!lmtp_mirror_orcpt_logged) {
		lmtp_mirror_orcpt_logged = TRUE;
		e_warning(mclient->event, "ORCPT <%s> of RCPT TO <%s> ignored: "
			  "a sender may have chosen it (mirror_trusted_mta=no), "
			  "so mirrors of the original recipients of aliases get "
			  "no copies (logged once; see doc/mirror.md)",
			  str_sanitize(smtp_address_encode(orcpt), 256),
			  str_sanitize(smtp_address_encode(rcpt->path), 256));
	}
	return rcpt->path;
}

/* When the message entered the mail system: the date of the Received:
   header the trusted MTA added, i.e. the one below LMTP's own. Without a
   trusted MTA that line may be the sender's, and a forged old date would
   keep the message out of every mirror: the LMTP transaction's start is
   used then, as when there is no such line. */
static time_t
lmtp_mirror_queued_time(struct lmtp_mirror_client *mclient,
			struct mail *raw_mail,
			const struct smtp_server_transaction *trans)
{
	const char *const *received, *p;
	time_t t;
	int tz;

	if (!mclient->trusted_mta ||
	    mail_get_headers(raw_mail, "Received", &received) <= 0 ||
	    received[0] == NULL || received[1] == NULL)
		return trans->timestamp.tv_sec;
	p = strrchr(received[1], ';');
	if (p == NULL ||
	    !message_date_parse((const unsigned char *)p + 1,
				strlen(p + 1), &t, &tz))
		return trans->timestamp.tv_sec;
	return t;
}

static unsigned int
lmtp_mirror_plan_target(struct lmtp_mirror_plan *plan, pool_t pool,
			const char *storage)
{
	struct lmtp_mirror_target *target;
	unsigned int i, count;

	target = array_get_modifiable(&plan->targets, &count);
	for (i = 0; i < count; i++) {
		if (strcmp(target[i].copy.storage, storage) == 0)
			return i;
	}
	target = array_append_space(&plan->targets);
	target->copy.storage = p_strdup(pool, storage);
	p_array_init(&target->copy.mirror_ids, pool, 2);
	p_array_init(&target->copy.envelope_to, pool, 2);
	return count;
}

static void
lmtp_mirror_plan_add(struct lmtp_mirror_plan *plan, pool_t pool,
		     struct lmtp_mirror_rcpt *mrcpt, const char *address,
		     const char *address_key, const struct mirror_def *def)
{
	struct lmtp_mirror_target *target;
	const char *addr;
	unsigned int idx;

	/* never copy into the mailbox of the recipient itself */
	if (strcasecmp(def->storage, address_key) == 0)
		return;
	idx = lmtp_mirror_plan_target(plan, pool, def->storage);
	target = array_idx_modifiable(&plan->targets, idx);

	mirror_uint_array_add_unique(&target->copy.mirror_ids, def->id);
	mirror_uint_array_add_unique(&mrcpt->targets, idx);
	array_foreach_elem(&target->copy.envelope_to, addr) {
		if (strcmp(addr, address) == 0)
			return;
	}
	addr = p_strdup(pool, address);
	array_push_back(&target->copy.envelope_to, &addr);
}

static int
lmtp_mirror_plan_address(struct lmtp_mirror_client *mclient,
			 struct lmtp_mirror_plan *plan, pool_t pool,
			 struct lmtp_mirror_rcpt *mrcpt,
			 const struct smtp_address *address, time_t *queued,
			 const char **error_r)
{
	ARRAY_TYPE(mirror_def) defs;
	const struct mirror_def *def;
	const char *keys[2], *encoded;
	unsigned int i;

	if (!mirror_address_keys(address->localpart, address->domain,
				 mclient->delimiters, &keys[0], &keys[1]))
		return 0;

	t_array_init(&defs, 4);
	for (i = 0; i < N_ELEMENTS(keys); i++) {
		if (mirror_registry_lookup(mclient->registry, keys[i],
					   pool_datastack_create(), &defs,
					   error_r) < 0)
			return -1;
	}
	if (array_count(&defs) == 0)
		return 0;
	/* only parsed when some mirror matches */
	if (*queued == (time_t)-1) {
		*queued = lmtp_mirror_queued_time(mclient, plan->raw_mail,
						  plan->trans);
	}
	/* header-safe: lib-smtp accepts no control characters */
	encoded = str_sanitize(smtp_address_encode(address), 512);
	array_foreach(&defs, def) {
		if (def->created > *queued) {
			/* the message was queued before this mirror existed */
			continue;
		}
		lmtp_mirror_plan_add(plan, pool, mrcpt, encoded, keys[0], def);
	}
	return 0;
}

static int
lmtp_mirror_plan_rcpt(struct lmtp_mirror_client *mclient,
		      struct lmtp_mirror_plan *plan, pool_t pool,
		      struct smtp_server_recipient *rcpt, time_t *queued,
		      const char **error_r)
{
	struct lmtp_mirror_rcpt *mrcpt;

	mrcpt = array_append_space(&plan->rcpts);
	mrcpt->rcpt = rcpt;
	p_array_init(&mrcpt->targets, pool, 2);
	return lmtp_mirror_plan_address(mclient, plan, pool, mrcpt,
					lmtp_mirror_rcpt_address(mclient, rcpt),
					queued, error_r);
}

static struct lmtp_mirror_plan *
lmtp_mirror_plan_get(struct lmtp_mirror_client *mclient,
		     struct smtp_server_transaction *trans,
		     struct mail *src_mail)
{
	struct lmtp_mirror_plan *plan = mclient->plan;
	struct smtp_server_recipient *rcpt;
	const char *error;
	time_t queued = (time_t)-1;

	if (plan != NULL && plan->trans == trans)
		return plan;

	/* The first local delivery of a transaction always gets the raw
	   message (later ones may get the first recipient's saved mail). */
	plan = p_new(trans->pool, struct lmtp_mirror_plan, 1);
	plan->trans = trans;
	plan->raw_mail = src_mail;
	plan->copy_fd = -1;
	p_array_init(&plan->rcpts, trans->pool, array_count(&trans->rcpt_to));
	p_array_init(&plan->targets, trans->pool, 2);
	mclient->plan = plan;

	array_foreach_elem(&trans->rcpt_to, rcpt) {
		T_BEGIN {
			if (plan->error == NULL &&
			    lmtp_mirror_plan_rcpt(mclient, plan, trans->pool,
						  rcpt, &queued, &error) < 0)
				plan->error = p_strdup(trans->pool, error);
		} T_END;
	}
	if (plan->error != NULL) {
		/* once for a run of failures, not for every message */
		if (registry_failure_begin()) {
			e_error(mclient->event, "Can't look up mirrors: %s "
				"(until it can, deliveries follow "
				"mirror_failure=%s; logged once)", plan->error,
				mclient->tempfail ? "tempfail" : "accept");
		}
		array_clear(&plan->rcpts);
		array_clear(&plan->targets);
	} else if (registry_failure_end()) {
		e_info(mclient->event, "Mirrors can be looked up again");
	}
	return plan;
}

static struct lmtp_mirror_rcpt *
lmtp_mirror_plan_find_rcpt(struct lmtp_mirror_plan *plan,
			   const struct smtp_server_recipient *rcpt)
{
	struct lmtp_mirror_rcpt *mrcpt;

	array_foreach_modifiable(&plan->rcpts, mrcpt) {
		if (mrcpt->rcpt == rcpt)
			return array_count(&mrcpt->targets) > 0 ? mrcpt : NULL;
	}
	return NULL;
}

/* A file for the message, unlinked. Up to the size LMTP keeps a message
   in memory, a memory file: no directory entry to create and remove on
   the disk of mail_temp_dir for every delivery. */
static int
lmtp_mirror_plan_tempfile(struct lmtp_mirror_client *mclient,
			  struct istream *input, const char **error_r)
{
	string_t *path;
	uoff_t size;
	int fd;

#ifdef MFD_CLOEXEC
	/* where memory files can't be made (an old kernel, a seccomp
	   filter), the file in mail_temp_dir serves */
	if (i_stream_get_size(input, TRUE, &size) > 0 &&
	    size <= LMTP_MIRROR_MEMORY_FILE_MAX_SIZE &&
	    (fd = memfd_create("mirror-copy", MFD_CLOEXEC)) != -1)
		return fd;
#else
	(void)input;
	(void)size;
#endif
	path = t_str_new(128);
	mail_user_set_get_temp_prefix(path,
				      mclient->client->raw_mail_user->set);
	fd = safe_mkstemp_hostpid(path, 0600, (uid_t)-1, (gid_t)-1);
	if (fd == -1) {
		*error_r = t_strdup_printf("safe_mkstemp(%s) failed: %m",
					   str_c(path));
		return -1;
	}
	i_unlink(str_c(path));
	return fd;
}

/* The message for mirror-writer: a file of its own, whose descriptor goes
   over the writer's socket. */
static int
lmtp_mirror_plan_fd(struct lmtp_mirror_client *mclient,
		    struct lmtp_mirror_plan *plan, const char **error_r)
{
	struct istream *input;
	struct ostream *output;
	int fd;

	if (plan->copy_fd != -1)
		return plan->copy_fd;
	if (mail_get_stream(plan->raw_mail, NULL, NULL, &input) < 0) {
		*error_r = t_strdup_printf("Failed to read the message: %s",
			mailbox_get_last_internal_error(plan->raw_mail->box,
							NULL));
		return -1;
	}
	if ((fd = lmtp_mirror_plan_tempfile(mclient, input, error_r)) == -1)
		return -1;
	i_stream_seek(input, 0);
	output = o_stream_create_fd(fd, 0);
	if (o_stream_send_istream(output, input) !=
	    OSTREAM_SEND_ISTREAM_RESULT_FINISHED ||
	    o_stream_finish(output) < 0) {
		*error_r = t_strdup_printf("Failed to copy the message to "
			"a temporary file: %s", input->stream_errno != 0 ?
			i_stream_get_error(input) : o_stream_get_error(output));
		o_stream_destroy(&output);
		i_close_fd(&fd);
		return -1;
	}
	o_stream_destroy(&output);
	plan->copy_fd = fd;
	return fd;
}

/* Connect while the process is still itself (root, before a delivery
   drops privileges): the writer's socket is for LMTP alone. */
static void lmtp_mirror_writer_connect(struct lmtp_mirror_client *mclient)
{
	const char *error;

	if (mirror_writer_client_connect(mclient->writer_path,
					 LMTP_MIRROR_WRITER_TIMEOUT_MSECS,
					 &mclient->writer, &error) < 0) {
		e_error(mclient->event, "Can't reach mirror-writer (%s): "
			"copies are made in the LMTP process", error);
	}
}

/* After a failure: the connection's later copies are made in the LMTP
   process. */
static void lmtp_mirror_writer_close(struct lmtp_mirror_client *mclient)
{
	mirror_writer_client_deinit(&mclient->writer);
}

/* lmtp_mirror_writer_send() couldn't write the message for the writer
   (which stays) */
#define LMTP_MIRROR_WRITER_NO_FILE -3

enum lmtp_mirror_writer_send {
	/* SAVE, and wait for the saves */
	LMTP_MIRROR_WRITER_SEND_SAVE,
	/* PREPARE: wait for nothing */
	LMTP_MIRROR_WRITER_SEND_PREPARE,
	/* SAVE and COMMIT (the delivery kept the message), and wait for
	   the commit */
	LMTP_MIRROR_WRITER_SEND_COMMIT,
};

/* Send the delivery's copies to mirror-writer. Returns 0; -1 if the
   writer can't be used (some copies may be committed, none will be any
   more; logged); -2 if it didn't answer in time (it may still commit
   them; error_r, logged only for SAVE); or LMTP_MIRROR_WRITER_NO_FILE
   (logged). After -1 and -2 the connection is closed. */
static int
lmtp_mirror_writer_send(struct lmtp_mirror_delivery *delivery,
			enum lmtp_mirror_writer_send send,
			const char **error_r)
{
	bool commit = send == LMTP_MIRROR_WRITER_SEND_COMMIT;
	struct lmtp_mirror_client *mclient = delivery->mclient;
	struct lmtp_mirror_plan *plan = mclient->plan;
	time_t received;
	const char *error = NULL;
	int fd, ret;

	if (mclient->writer == NULL) {
		/* gone since the delivery began */
		e_error(delivery->event, "mirror: mirror-writer went away: "
			"copying in the LMTP process");
		return -1;
	}
	if ((fd = lmtp_mirror_plan_fd(mclient, plan, &error)) == -1) {
		e_error(delivery->event, "mirror: %s: copying in the LMTP "
			"process", error);
		return LMTP_MIRROR_WRITER_NO_FILE;
	}
	if (mail_get_received_date(plan->raw_mail, &received) < 0)
		received = (time_t)-1;
	if (send == LMTP_MIRROR_WRITER_SEND_PREPARE) {
		ret = mirror_writer_client_prepare(mclient->writer, fd,
				received,
				array_front_modifiable(&delivery->copies),
				array_count(&delivery->copies), &error);
	} else {
		ret = mirror_writer_client_save(mclient->writer, fd, received,
				array_front_modifiable(&delivery->copies),
				array_count(&delivery->copies), commit,
				&delivery->sync, &error);
	}
	if (ret == -1 || (ret == -2 && !commit)) {
		/* (nothing is committed without COMMIT) */
		e_error(delivery->event, "mirror: %s: copying in the LMTP "
			"process", error);
	}
	if (ret < 0)
		lmtp_mirror_writer_close(mclient);
	*error_r = error;
	return ret;
}

/* Hand the delivery's copies to mirror-writer, when the delivery is
   about to commit (before_commit) or has kept the message already (a
   Sieve redirect). With wait (tempfail: a copy that can't be saved
   fails the delivery), they are sent now and saved before the
   delivery's commit. Otherwise, before a commit, they are sent now
   without waiting (PREPARE), so that the writer saves them while the
   delivery commits, where a save that is never committed leaves nothing
   behind, and opens their storages; lmtp_mirror_writer_finish() then
   commits or drops them. After the delivery they are sent with their
   commit. Returns 0, or -1 if the writer can't be used: the caller
   copies in this process then. */
static int
lmtp_mirror_writer_save(struct lmtp_mirror_delivery *delivery, bool wait,
			bool before_commit)
{
	struct lmtp_mirror_client *mclient = delivery->mclient;
	const char *error;

	if (mclient->writer == NULL ||
	    array_count(&delivery->copies) > MIRROR_WRITER_MAX_TARGETS)
		return -1;
	if (wait) {
		if (lmtp_mirror_writer_send(delivery,
				LMTP_MIRROR_WRITER_SEND_SAVE, &error) < 0)
			return -1;
	} else if (before_commit) {
		if (lmtp_mirror_writer_send(delivery,
				LMTP_MIRROR_WRITER_SEND_PREPARE, &error) < 0)
			return -1;
	} else {
		delivery->writer_deferred = TRUE;
	}
	delivery->via_writer = TRUE;
	return 0;
}

/* The delivery's commit is over: tell mirror-writer, and wait for the
   copies if it kept the message. */
static void
lmtp_mirror_writer_finish(struct lmtp_mirror_delivery *delivery, bool kept)
{
	struct lmtp_mirror_client *mclient = delivery->mclient;
	struct mirror_copy_target *copies =
		array_front_modifiable(&delivery->copies);
	unsigned int i, count = array_count(&delivery->copies);
	const char *error;
	int ret;

	delivery->via_writer = FALSE;
	if (!kept) {
		if (!delivery->writer_deferred)
			mirror_writer_client_abort(mclient->writer);
		for (i = 0; i < count; i++) {
			copies[i].error = "Not copied, because the delivery "
				"kept nothing";
		}
		return;
	}
	if (delivery->writer_deferred) {
		ret = lmtp_mirror_writer_send(delivery,
				LMTP_MIRROR_WRITER_SEND_COMMIT, &error);
	}
	else {
		ret = mirror_writer_client_commit(mclient->writer, copies,
						  count, &delivery->sync,
						  &error);
		if (ret == -1) {
			e_error(delivery->event, "mirror: %s: copying in "
				"the LMTP process", error);
		}
		if (ret < 0)
			lmtp_mirror_writer_close(mclient);
	}
	if (ret == -1 || ret == LMTP_MIRROR_WRITER_NO_FILE) {
		/* The writer died (what it committed before is in the
		   storages, and nothing more will be), or never got them */
		(void)mirror_copier_copy_missing(mclient->copier,
			mclient->plan->raw_mail,
			mclient->plan->trans->timestamp.tv_sec, copies, count,
			delivery->event, &error);
		return;
	}
	if (ret < 0) {
		/* It may still commit them: copying here could make a
		   copy twice. Each is logged and counted as failed. */
		error = t_strdup_printf("%s: whether the copy is made is "
					"unknown", error);
		for (i = 0; i < count; i++)
			copies[i].error = error;
	}
	mirror_copy_targets_report(delivery->event, copies, count);
}

/* Save the copies the delivery is responsible for: those of its targets
   that no earlier recipient of the transaction has made. They are
   committed, or rolled back, by lmtp_mirror_copy_finish() once the
   delivery's own commit is over. */
static int
lmtp_mirror_copy_prepare(struct lmtp_mirror_delivery *delivery,
			 bool can_tempfail, const char **error_r)
{
	struct lmtp_mirror_client *mclient = delivery->mclient;
	struct lmtp_mirror_plan *plan = mclient->plan;
	pool_t pool = plan->trans->pool;
	struct lmtp_mirror_target *target;
	const struct mirror_copy_target *copy;
	const char *error = NULL, *copy_error;
	unsigned int idx, i;
	bool tempfail = mclient->tempfail && can_tempfail;
	int ret = 0;

	i_assert(delivery->batch == NULL);
	p_array_init(&delivery->copies, pool, 4);
	p_array_init(&delivery->copy_idx, pool, 4);
	array_foreach_elem(&delivery->mrcpt->targets, idx) {
		target = array_idx_modifiable(&plan->targets, idx);
		if (strcmp(target->copy.storage, delivery->username) == 0)
			continue;
		switch (target->state) {
		case LMTP_MIRROR_TARGET_PENDING:
			array_push_back(&delivery->copies, &target->copy);
			array_push_back(&delivery->copy_idx, &idx);
			break;
		case LMTP_MIRROR_TARGET_SAVED:
			i_unreached();
		case LMTP_MIRROR_TARGET_DONE:
			break;
		case LMTP_MIRROR_TARGET_FAILED:
			/* the copy failed for an earlier recipient: retrying
			   now would leave a second copy after the retry */
			error = target->copy.error;
			ret = -1;
			break;
		}
	}
	if (array_count(&delivery->copies) == 0)
		;
	else if (lmtp_mirror_writer_save(delivery, tempfail,
					 can_tempfail) == 0) {
		array_foreach(&delivery->copies, copy) {
			if (copy->error != NULL) {
				error = copy->error;
				ret = -1;
			}
		}
	} else if (mirror_copier_prepare(mclient->copier, plan->raw_mail,
				array_front_modifiable(&delivery->copies),
				array_count(&delivery->copies), tempfail,
				delivery->event, &delivery->batch,
				&copy_error) < 0) {
		error = copy_error;
		ret = -1;
	}
	for (i = 0; i < array_count(&delivery->copies); i++) {
		copy = array_idx(&delivery->copies, i);
		idx = *array_idx(&delivery->copy_idx, i);
		target = array_idx_modifiable(&plan->targets, idx);
		if (copy->error == NULL)
			target->state = LMTP_MIRROR_TARGET_SAVED;
		else {
			target->copy.error = p_strdup(pool, copy->error);
			target->state = LMTP_MIRROR_TARGET_FAILED;
		}
	}
	if (ret < 0 && tempfail) {
		*error_r = t_strdup_printf("Mirror copy failed: %s", error);
		return -1;
	}
	return 0;
}

/* The delivery's commit is over: commit the copies it saved if it kept
   the message, else roll them back (another recipient of the transaction
   may make them). */
static void
lmtp_mirror_copy_finish(struct lmtp_mirror_delivery *delivery, bool kept)
{
	struct lmtp_mirror_plan *plan = delivery->mclient->plan;
	struct lmtp_mirror_target *target;
	const struct mirror_copy_target *copy;
	const char *error;
	unsigned int idx, i;

	if (delivery->via_writer)
		lmtp_mirror_writer_finish(delivery, kept);
	else if (delivery->batch != NULL)
		(void)mirror_copier_finish(&delivery->batch, kept, &error);
	else
		return;
	for (i = 0; i < array_count(&delivery->copies); i++) {
		copy = array_idx(&delivery->copies, i);
		idx = *array_idx(&delivery->copy_idx, i);
		target = array_idx_modifiable(&plan->targets, idx);
		if (target->state != LMTP_MIRROR_TARGET_SAVED)
			continue;
		if (copy->error == NULL) {
			target->copy.error = NULL;
			target->state = LMTP_MIRROR_TARGET_DONE;
		} else if (!kept) {
			target->state = LMTP_MIRROR_TARGET_PENDING;
		} else {
			target->copy.error =
				p_strdup(plan->trans->pool, copy->error);
			target->state = LMTP_MIRROR_TARGET_FAILED;
		}
	}
}

static int lmtp_mirror_delivery_kept(void *context, const char **error_r)
{
	struct lmtp_mirror_delivery *delivery = context;
	int ret;

	/* watched only for a success notification's action */
	if (delivery->mrcpt == NULL)
		return 0;
	T_BEGIN {
		ret = lmtp_mirror_copy_prepare(delivery, TRUE, error_r);
		if (ret < 0)
			*error_r = p_strdup(delivery->mclient->plan->trans->pool,
					    *error_r);
	} T_END;
	return ret;
}

/* The filesystems that mirror-writer synced for a delivery: later
   deliveries to them leave their syncs to it (mirror-plugin.h) */
static ARRAY_TYPE(mirror_dev) lmtp_mirror_covered_devs;

static void lmtp_mirror_covered_update(const struct mirror_writer_sync *sync)
{
	unsigned int i;

	for (i = 0; i < sync->count; i++) {
		if (!sync->synced)
			mirror_dev_remove(&lmtp_mirror_covered_devs,
					  sync->devs[i]);
		else if (array_count(&lmtp_mirror_covered_devs) <
			 LMTP_MIRROR_COVERED_DEVS_MAX)
			mirror_dev_add(&lmtp_mirror_covered_devs,
				       sync->devs[i]);
	}
}

static bool
lmtp_mirror_delivery_committed(void *context, bool kept,
			       const struct mirror_delivery_sync *sync)
{
	struct lmtp_mirror_delivery *delivery = context;

	i_zero(&delivery->sync);
	delivery->sync.devs = sync->devs;
	delivery->sync.count = sync->count;
	delivery->sync.since_usecs = sync->since_usecs;
	T_BEGIN {
		lmtp_mirror_copy_finish(delivery, kept);
	} T_END;
	if (delivery->sync.answered)
		lmtp_mirror_covered_update(&delivery->sync);
	if (sync->deferred && delivery->sync.synced) {
		e_debug(delivery->event, "mirror: mirror-writer synced the "
			"delivery with its copies");
	}
	delivery->sync.devs = NULL;
	return delivery->sync.synced;
}

/* Whether the delivery hands copies to a writer that syncs them with
   syncfs(): that sync can make the delivery's own writes durable too,
   so they are not synced one by one before it (mirror-plugin.h). */
static bool lmtp_mirror_delivery_defers_sync(struct lmtp_mirror_delivery *delivery)
{
	struct lmtp_mirror_client *mclient = delivery->mclient;
	struct lmtp_mirror_plan *plan = mclient->plan;
	const struct lmtp_mirror_target *target;
	unsigned int idx;

	if (!mclient->writer_syncs || mclient->writer == NULL ||
	    delivery->mrcpt == NULL || plan->error != NULL)
		return FALSE;
	array_foreach_elem(&delivery->mrcpt->targets, idx) {
		target = array_idx(&plan->targets, idx);
		if (target->state == LMTP_MIRROR_TARGET_PENDING &&
		    strcmp(target->copy.storage, delivery->username) != 0)
			return TRUE;
	}
	return FALSE;
}

static bool
lmtp_mirror_event_callback(struct event *event,
			   enum event_callback_type type,
			   struct failure_context *ctx,
			   const char *fmt ATTR_UNUSED,
			   va_list args ATTR_UNUSED)
{
	struct event *parent;

	if (type != EVENT_CALLBACK_TYPE_SEND ||
	    lmtp_mirror_active_delivery == NULL ||
	    !event_filter_match(lmtp_mirror_redirect_filter, event, ctx))
		return TRUE;
	/* only the recipient being delivered */
	for (parent = event; parent != NULL;
	     parent = event_get_parent(parent)) {
		if (parent == lmtp_mirror_active_delivery->rcpt_event) {
			lmtp_mirror_active_delivery->forwarded = TRUE;
			break;
		}
	}
	return TRUE;
}

static int
lmtp_mirror_local_deliver(struct client *client, struct lmtp_recipient *lrcpt,
			  struct smtp_server_cmd_ctx *cmd,
			  struct smtp_server_transaction *trans,
			  struct lmtp_local_deliver_context *lldctx)
{
	struct lmtp_mirror_client *mclient = LMTP_MIRROR_CONTEXT_REQUIRE(client);
	struct lmtp_mirror_plan *plan;
	struct lmtp_mirror_delivery delivery;
	const char *error;
	bool watching, kept;
	int ret;

	plan = lmtp_mirror_plan_get(mclient, trans, lldctx->src_mail);
	if (plan->error != NULL && mclient->tempfail) {
		smtp_server_recipient_reply(lrcpt->rcpt, 451, "4.3.0",
					    "Temporary internal error");
		return -1;
	}

	i_zero(&delivery);
	delivery.mclient = mclient;
	delivery.mrcpt = lmtp_mirror_plan_find_rcpt(plan, lrcpt->rcpt);
	delivery.username = lldctx->rcpt_user->username;
	delivery.event = lldctx->rcpt_user->event;
	delivery.rcpt_event = lrcpt->rcpt->event;

	/* every delivery is watched: whether it kept the message, and a
	   Sieve redirect, decide a success notification's action too */
	watching = mirror_user_watch_delivery(lldctx->rcpt_user,
					      lmtp_mirror_delivery_kept,
					      lmtp_mirror_delivery_committed,
					      &delivery);
	if (watching && lmtp_mirror_delivery_defers_sync(&delivery)) {
		mirror_user_defer_delivery_sync(lldctx->rcpt_user,
			array_count(&lmtp_mirror_covered_devs) == 0 ? NULL :
			array_front(&lmtp_mirror_covered_devs),
			array_count(&lmtp_mirror_covered_devs));
	}
	i_assert(lmtp_mirror_active_delivery == NULL);
	lmtp_mirror_active_delivery = &delivery;

	ret = mclient->module_ctx.super.local_deliver(client, lrcpt, cmd,
						      trans, lldctx);

	lmtp_mirror_active_delivery = NULL;
	kept = mirror_user_unwatch_delivery(lldctx->rcpt_user);
	/* the mirror plugin's committed callback ended the batch that its
	   delivery callback started */
	i_assert(delivery.batch == NULL && !delivery.via_writer);
	if (ret == 0 && delivery.mrcpt != NULL && !kept &&
	    (delivery.forwarded || !watching)) {
		/* Forwarded without a local copy (or the mirror mail
		   plugin isn't enabled for the user, so keeping can't be
		   told from discarding). The reply is already given:
		   a failure can only be logged. */
		T_BEGIN {
			(void)lmtp_mirror_copy_prepare(&delivery, FALSE,
						       &error);
			lmtp_mirror_copy_finish(&delivery, TRUE);
		} T_END;
	}
	if (ret == 0 && mclient->dsn) {
		/* a discarded message is "delivered" too: the recipient's
		   filtering is not the sender's business */
		lmtp_dsn_success(trans, lrcpt->rcpt, lldctx,
				 delivery.forwarded && !kept ?
				 BAG_DSN_ACTION_RELAYED :
				 BAG_DSN_ACTION_DELIVERED, mclient->event);
	}
	return ret;
}

static void
lmtp_mirror_trans_free(struct client *client,
		       struct smtp_server_transaction *trans)
{
	struct lmtp_mirror_client *mclient = LMTP_MIRROR_CONTEXT_REQUIRE(client);

	if (mclient->plan != NULL && mclient->plan->trans == trans) {
		i_close_fd(&mclient->plan->copy_fd);
		mclient->plan = NULL;
	}
	mclient->module_ctx.super.trans_free(client, trans);
}

static void lmtp_mirror_client_destroy(struct client *client)
{
	struct lmtp_mirror_client *mclient = LMTP_MIRROR_CONTEXT_REQUIRE(client);

	lmtp_mirror_writer_close(mclient);
	mirror_copier_deinit(&mclient->copier);
	registry_deinit(&mclient->registry);
	event_unref(&mclient->event);
	mclient->module_ctx.super.destroy(client);
}

static void lmtp_mirror_client_created(struct client **_client)
{
	struct client *client = *_client;
	struct mail_user *set_user = client->raw_mail_user;
	struct lmtp_mirror_client *mclient;
	struct registry *registry;
	const char *dict_uri, *policy, *error;
	struct event *event;

	if (next_hook_client_created != NULL)
		next_hook_client_created(_client);

	event = event_create(client->event);
	event_add_category(event, &event_category_mirror);
	event_set_append_log_prefix(event, "mirror: ");

	/* Mirroring is off unless the registry is configured. */
	dict_uri = mail_user_plugin_getenv(set_user, "mirror_dict");
	if (dict_uri == NULL || *dict_uri == '\0') {
		e_debug(event, "mirror_dict not set: mirroring disabled");
		event_unref(&event);
		return;
	}
	if (registry_init(dict_uri, base_dir, event, &registry,
				 &error) < 0) {
		e_error(event, "%s: mirroring disabled", error);
		event_unref(&event);
		return;
	}

	mclient = p_new(client->pool, struct lmtp_mirror_client, 1);
	mclient->client = client;
	mclient->event = event;
	mclient->registry = registry;
	mclient->copier = mirror_copier_init(storage_service, registry,
		client->event,
		mirror_setting_bool(set_user, event, "mirror_fsync", TRUE));
	mclient->delimiters =
		p_strdup(client->pool,
			 client->unexpanded_lda_set->recipient_delimiter);
	mclient->trusted_mta = mirror_setting_bool(set_user, event,
						   "mirror_trusted_mta", FALSE);
	mclient->dsn = mirror_setting_bool(set_user, event, "mirror_dsn",
					   TRUE);
	if (mclient->dsn)
		lmtp_dsn_offer(client);
	if (mirror_setting_bool(set_user, event, "mirror_writer", FALSE)) {
		mclient->writer_path = p_strconcat(client->pool, base_dir,
			"/"MIRROR_WRITER_SOCKET_NAME, NULL);
		lmtp_mirror_writer_connect(mclient);
		mclient->writer_syncs =
			mirror_setting_bool(set_user, event, "mirror_fsync",
					    TRUE) &&
			mirror_setting_bool(set_user, event,
					    "mirror_writer_syncfs", TRUE);
	}

	policy = mail_user_plugin_getenv(set_user, "mirror_failure");
	if (policy == NULL || *policy == '\0' ||
	    strcmp(policy, "accept") == 0)
		mclient->tempfail = FALSE;
	else if (strcmp(policy, "tempfail") == 0)
		mclient->tempfail = TRUE;
	else {
		/* fail safe: mail waits at the MTA, no copy is lost */
		e_error(event, "Invalid mirror_failure=%s "
			"(expected accept or tempfail): using tempfail",
			str_sanitize(policy, 40));
		mclient->tempfail = TRUE;
	}

	mclient->module_ctx.super = client->v;
	client->v.local_deliver = lmtp_mirror_local_deliver;
	client->v.trans_free = lmtp_mirror_trans_free;
	client->v.destroy = lmtp_mirror_client_destroy;
	MODULE_CONTEXT_SET(client, lmtp_mirror_client_module, mclient);
}

void lmtp_mirror_plugin_init(struct module *module);
void lmtp_mirror_plugin_deinit(void);

void lmtp_mirror_plugin_init(struct module *module ATTR_UNUSED)
{
	const char *error;

	i_array_init(&lmtp_mirror_covered_devs, 4);
	lmtp_mirror_redirect_filter = event_filter_create();
	if (event_filter_parse(SIEVE_REDIRECT_FILTER,
			       lmtp_mirror_redirect_filter, &error) < 0)
		i_panic("event_filter_parse(%s) failed: %s",
			SIEVE_REDIRECT_FILTER, error);
	next_hook_client_created =
		lmtp_client_created_hook_set(lmtp_mirror_client_created);
	event_register_callback(lmtp_mirror_event_callback);
}

void lmtp_mirror_plugin_deinit(void)
{
	array_free(&lmtp_mirror_covered_devs);
	event_unregister_callback(lmtp_mirror_event_callback);
	event_filter_unref(&lmtp_mirror_redirect_filter);
	lmtp_client_created_hook_set(next_hook_client_created);
}
