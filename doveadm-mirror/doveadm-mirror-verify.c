/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* doveadm mirror verify [--reconcile] ID: check a mirror's hash chain,
   check every copy it records against the storage's INBOX, and compare
   the copies accounted for (records and unrecorded copies) with the
   registry's copy counter. A crash after a copy's commit and before it was
   counted leaves the counter short: --reconcile raises it. Counters are
   never lowered: a copy whose chain record failed and that expired since
   was counted rightly and is accounted for nowhere. */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "str-sanitize.h"
#include "strnum.h"
#include "sleep.h"
#include "hex-binary.h"
#include "hash-method.h"
#include "sort.h"
#include "istream.h"
#include "istream-crlf.h"
#include "master-service.h"
#include "mail-storage-service.h"
#include "mail-storage.h"
#include "doveadm.h"
#include "doveadm-cmd.h"
#include "doveadm-print.h"
#include "doveadm-settings.h"
#include "mirror-registry.h"
#include "mirror-chain.h"
#include "mirror-privileges.h"
#include "doveadm-mirror.h"

#include <sysexits.h>

/* the most X-Mirror-Id headers that start a copy (one per mirror of its
   storage); a copy with more is not looked at further */
#define MIRROR_VERIFY_MAX_ID_HEADERS 1000
/* How often, and how long apart, the counter is read again while
   mirror-writer moves copies from its journal to the registry (a count
   takes milliseconds) */
#define MIRROR_VERIFY_JOURNAL_TRIES 200
#define MIRROR_VERIFY_JOURNAL_WAIT_MSECS 10

struct mirror_verify_suspect {
	const struct mirror_chain_record *rec;
	/* its UID holds another message (found: its hash), rather than
	   none */
	bool altered;
	unsigned char found[MIRROR_CHAIN_HASH_SIZE];
	/* the mailbox's UIDVALIDITY, if it isn't the record's */
	uint32_t new_uid_validity;
	/* found under this UID */
	uint32_t renumbered_uid;
};

struct mirror_verify {
	unsigned int mirror_id;
	const char *storage;

	struct mail_storage_service_ctx *service;
	struct doveadm_mirror_inbox inbox;

	ARRAY_TYPE(mirror_chain_record) records;
	/* (uidvalidity << 32 | uid) of each expire record, sorted */
	ARRAY_TYPE(uint64_t) expired;
	unsigned int present, expired_count, missing, altered, unrecorded;
	unsigned int renumbered;
	const char *broken;
	/* the records whose copy is missing or altered at its UID: each
	   may be an unrecorded copy found under another UID (renumbered) */
	ARRAY(struct mirror_verify_suspect) suspects;

	bool reconcile;
	/* --head: a link someone else keeps (a witnessed head), and the
	   record that has it (0: none does) */
	bool have_witness;
	unsigned char witness[MIRROR_CHAIN_HASH_SIZE];
	uint64_t witness_seq;
	/* the registry's copy counter (after --reconcile raised it), if it
	   could be read */
	uint64_t counted;
	bool counted_known;
};

/* Find the mirror: its storage user. Returns FALSE (with the command
   failed) if it can't. */
static bool mirror_verify_lookup(struct mirror_verify *ctx)
{
	struct registry *reg;
	struct mirror_def def;
	const char *error;
	int ret;

	if ((reg = doveadm_mirror_registry_open()) == NULL)
		return FALSE;
	ret = mirror_registry_get_def(reg, ctx->mirror_id,
				      pool_datastack_create(), &def, &error);
	registry_deinit(&reg);
	if (ret <= 0) {
		doveadm_mirror_fail(ret == 0 ? DOVEADM_EX_NOTFOUND :
				   EX_TEMPFAIL, ret == 0 ?
				   t_strdup_printf("Unknown mirror id %u",
						   ctx->mirror_id) : error);
		return FALSE;
	}
	ctx->storage = def.storage;
	return TRUE;
}

/* Set up the storage user and open its INBOX. */
static bool mirror_verify_open(struct mirror_verify *ctx)
{
	const char *error;
	int ret;

	ret = doveadm_mirror_inbox_open(ctx->service, ctx->storage,
					&ctx->inbox, &error);
	if (ret <= 0) {
		doveadm_mirror_fail(ret == 0 ? EX_NOUSER : EX_TEMPFAIL,
				    error);
		return FALSE;
	}
	return TRUE;
}

static int mirror_verify_read_chain(struct mirror_verify *ctx)
{
	const char *path, *error;

	if (doveadm_mirror_chain_path(ctx->inbox.box, ctx->mirror_id, &path,
				      &error) < 0 ||
	    mirror_chain_read(path, ctx->mirror_id, &ctx->records,
			      &ctx->broken, &error) < 0) {
		doveadm_mirror_fail(EX_TEMPFAIL, error);
		return -1;
	}
	if (ctx->broken != NULL) {
		i_error("Mirror %u: chain %s is broken: %s", ctx->mirror_id,
			path, ctx->broken);
	}
	mirror_chain_expired_keys(&ctx->records, &ctx->expired);
	return 0;
}

/* A message that can't be read fails the command (75). */
static void mirror_verify_read_failed(struct mirror_verify *ctx, uint32_t uid,
				      const char *error)
{
	doveadm_mirror_fail(EX_TEMPFAIL, t_strdup_printf(
		"Mirror %u: Failed to read UID %u: %s", ctx->mirror_id, uid,
		error));
}

/* Check one copy record. Returns 0, or -1 on a temporary failure. */
static int
mirror_verify_copy(struct mirror_verify *ctx, struct mail *mail,
		   uint32_t uid_validity,
		   const struct mirror_chain_record *rec)
{
	struct mirror_verify_suspect *suspect;
	unsigned char digest[MIRROR_CHAIN_HASH_SIZE];
	enum mail_error mail_error;
	const char *error;
	uint64_t key;

	key = mirror_chain_uid_key(rec->uid_validity, rec->uid);
	if (array_bsearch(&ctx->expired, &key, uint64_cmp) != NULL) {
		ctx->expired_count++;
		return 0;
	}
	suspect = array_append_space(&ctx->suspects);
	suspect->rec = rec;
	if (rec->uid_validity != uid_validity) {
		suspect->new_uid_validity = uid_validity;
		return 0;
	}
	if (!mail_set_uid(mail, rec->uid))
		return 0;
	if (doveadm_mirror_mail_hash(mail, -1, digest, &error) < 0) {
		(void)mailbox_get_last_error(mail->box, &mail_error);
		if (mail->expunged || mail_error == MAIL_ERROR_EXPUNGED)
			return 0;
		mirror_verify_read_failed(ctx, rec->uid, error);
		return -1;
	}
	if (memcmp(digest, rec->content_hash, sizeof(digest)) != 0) {
		suspect->altered = TRUE;
		memcpy(suspect->found, digest, sizeof(digest));
		return 0;
	}
	array_pop_back(&ctx->suspects);
	ctx->present++;
	return 0;
}

/* Whether mail is a copy for this mirror: a copy starts with its
   X-Mirror-Id headers, one per mirror it serves, before any other (a
   header of that name further down, e.g. below LMTP's Return-Path, is
   the message's own). 1 if it is, 0 if not, -1 on error. */
static int
mirror_verify_is_copy(struct mirror_verify *ctx, struct mail *mail,
		      const char **error_r)
{
	struct istream *input;
	const char *line, *value, *id = dec2str(ctx->mirror_id);
	unsigned int lines = 0;

	if (mail_get_hdr_stream(mail, NULL, &input) < 0) {
		*error_r = mailbox_get_last_internal_error(mail->box, NULL);
		return -1;
	}
	/* at most one header per mirror: a storage serves only so many */
	while (lines++ < MIRROR_VERIFY_MAX_ID_HEADERS &&
	       (line = i_stream_read_next_line(input)) != NULL) {
		if (strncasecmp(line, "X-Mirror-Id:", 12) != 0)
			break;
		value = t_str_trim(line + 12, " \t\r");
		if (strcmp(value, id) == 0)
			return 1;
	}
	if (input->stream_errno != 0) {
		*error_r = i_stream_get_error(input);
		return -1;
	}
	return 0;
}

/* Whether mail, a copy no record covers, is the copy of a record that
   didn't find it at its own UID: the mailbox renumbered it (maildir
   renumbers messages when it repairs a dovecot-uidlist that a crash left
   broken; a mailbox rebuilt gets a new UIDVALIDITY). 1 if it is, 0 if
   not, -1 on error. */
static int mirror_verify_renumbered(struct mirror_verify *ctx,
				    struct mail *mail, const char **error_r)
{
	struct mirror_verify_suspect *suspect;
	unsigned char digest[MIRROR_CHAIN_HASH_SIZE];

	if (doveadm_mirror_mail_hash(mail, -1, digest, error_r) < 0)
		return -1;
	array_foreach_modifiable(&ctx->suspects, suspect) {
		if (suspect->renumbered_uid == 0 &&
		    memcmp(digest, suspect->rec->content_hash,
			   sizeof(digest)) == 0) {
			suspect->renumbered_uid = mail->uid;
			return 1;
		}
	}
	return 0;
}

/* Count and log what the suspects turned out to be. A renumbered copy
   whose old UID holds another copy of this mirror: that one is
   unrecorded. */
static int mirror_verify_suspects(struct mirror_verify *ctx, struct mail *mail)
{
	const struct mirror_verify_suspect *suspect;
	const struct mirror_chain_record *rec;
	const char *error;
	int ret;

	array_foreach(&ctx->suspects, suspect) {
		rec = suspect->rec;
		if (suspect->renumbered_uid != 0) {
			ctx->renumbered++;
			i_info("Mirror %u: the copy recorded as UID %u is UID "
			       "%u now (renumbered by the mailbox)",
			       ctx->mirror_id, rec->uid,
			       suspect->renumbered_uid);
			if (!suspect->altered)
				continue;
			/* what is at its old UID is not its copy */
			if (!mail_set_uid(mail, rec->uid))
				continue;
			T_BEGIN {
				ret = mirror_verify_is_copy(ctx, mail, &error);
				if (ret < 0 && !mail->expunged)
					mirror_verify_read_failed(ctx, rec->uid,
								  error);
			} T_END;
			if (ret < 0 && !mail->expunged)
				return -1;
			if (ret > 0) {
				ctx->unrecorded++;
				i_error("Mirror %u: UID %u is a copy that the "
					"chain doesn't record",
					ctx->mirror_id, rec->uid);
			}
		} else if (suspect->altered) {
			ctx->altered++;
			i_error("Mirror %u: UID %u is altered: its content "
				"hash is %s, the chain recorded %s",
				ctx->mirror_id, rec->uid,
				binary_to_hex(suspect->found,
					      MIRROR_CHAIN_HASH_SIZE),
				binary_to_hex(rec->content_hash,
					      MIRROR_CHAIN_HASH_SIZE));
		} else if (suspect->new_uid_validity != 0) {
			ctx->missing++;
			i_error("Mirror %u: UID %u is missing: the mailbox's "
				"UIDVALIDITY changed from %u to %u",
				ctx->mirror_id, rec->uid, rec->uid_validity,
				suspect->new_uid_validity);
		} else {
			ctx->missing++;
			i_error("Mirror %u: UID %u is missing",
				ctx->mirror_id, rec->uid);
		}
	}
	return 0;
}

/* The copies for this mirror in the INBOX that no record covers: made,
   but their record was never appended (LMTP was killed between the
   commit and the append, or the append failed), unless they are the
   copies of records that didn't find them at their UIDs. */
static int mirror_verify_unrecorded(struct mirror_verify *ctx,
				    struct mail *mail, uint32_t uid_validity)
{
	ARRAY(uint64_t) recorded;
	const struct mirror_chain_record *rec;
	struct mailbox_status status;
	const char *error;
	uint64_t key;
	uint32_t seq;
	int ret;

	t_array_init(&recorded, array_count(&ctx->records) + 1);
	array_foreach(&ctx->records, rec) {
		key = mirror_chain_uid_key(rec->uid_validity, rec->uid);
		array_push_back(&recorded, &key);
	}
	array_sort(&recorded, uint64_cmp);
	mailbox_get_open_status(mail->box, STATUS_MESSAGES, &status);
	for (seq = 1; seq <= status.messages; seq++) {
		mail_set_seq(mail, seq);
		key = mirror_chain_uid_key(uid_validity, mail->uid);
		if (array_bsearch(&recorded, &key, uint64_cmp) != NULL)
			continue;
		T_BEGIN {
			ret = mirror_verify_is_copy(ctx, mail, &error);
			if (ret < 0 && !mail->expunged) {
				mirror_verify_read_failed(ctx, mail->uid,
							  error);
			} else if (ret > 0) {
				ret = mirror_verify_renumbered(ctx, mail,
							       &error);
				if (ret < 0 && !mail->expunged) {
					mirror_verify_read_failed(ctx,
						mail->uid, error);
				} else if (ret == 0) {
					ctx->unrecorded++;
					i_error("Mirror %u: UID %u is a copy "
						"that the chain doesn't record",
						ctx->mirror_id, mail->uid);
				}
			}
		} T_END;
		if (ret < 0 && !mail->expunged)
			return -1;
	}
	return 0;
}

static int mirror_verify_mails(struct mirror_verify *ctx)
{
	struct mailbox_transaction_context *trans;
	const struct mirror_chain_record *rec;
	struct mailbox_status status;
	struct mail *mail;
	int ret = 0;

	mailbox_get_open_status(ctx->inbox.box, STATUS_UIDVALIDITY, &status);
	trans = mailbox_transaction_begin(ctx->inbox.box, 0, "mirror verify");
	mail = mail_alloc(trans, 0, NULL);
	array_foreach(&ctx->records, rec) {
		if (rec->type != MIRROR_CHAIN_RECORD_COPY)
			continue;
		T_BEGIN {
			ret = mirror_verify_copy(ctx, mail, status.uidvalidity,
						 rec);
		} T_END;
		if (ret < 0)
			break;
	}
	if (ret == 0)
		ret = mirror_verify_unrecorded(ctx, mail, status.uidvalidity);
	if (ret == 0)
		ret = mirror_verify_suspects(ctx, mail);
	mail_free(&mail);
	(void)mailbox_transaction_commit(&trans);
	return ret;
}

static void mirror_verify_print(struct mirror_verify *ctx)
{
	const struct mirror_chain_record *last;
	unsigned char zero[MIRROR_CHAIN_HASH_SIZE];
	const unsigned char *head = zero;

	memset(zero, 0, sizeof(zero));
	if (array_count(&ctx->records) > 0) {
		last = array_back(&ctx->records);
		head = last->link;
	}
	doveadm_print_init(DOVEADM_PRINT_TYPE_TABLE);
	doveadm_print_header_simple("id");
	doveadm_print_header_simple("storage");
	doveadm_print_header_simple("records");
	doveadm_print_header_simple("present");
	doveadm_print_header_simple("expired");
	doveadm_print_header_simple("missing");
	doveadm_print_header_simple("altered");
	doveadm_print_header_simple("unrecorded");
	doveadm_print_header_simple("renumbered");
	doveadm_print_header_simple("counted");
	doveadm_print_header_simple("chain");
	doveadm_print_header_simple("head");
	doveadm_print_header_simple("witnessed");
	doveadm_print_num(ctx->mirror_id);
	doveadm_print(ctx->storage);
	doveadm_print_num(array_count(&ctx->records));
	doveadm_print_num(ctx->present);
	doveadm_print_num(ctx->expired_count);
	doveadm_print_num(ctx->missing);
	doveadm_print_num(ctx->altered);
	doveadm_print_num(ctx->unrecorded);
	doveadm_print_num(ctx->renumbered);
	doveadm_print(ctx->counted_known ? dec2str(ctx->counted) : "");
	doveadm_print(ctx->broken == NULL ? "ok" : "broken");
	doveadm_print(binary_to_hex(head, MIRROR_CHAIN_HASH_SIZE));
	doveadm_print(!ctx->have_witness ? "" : ctx->witness_seq == 0 ? "no" :
		      dec2str(ctx->witness_seq));
}

/* The record whose link is the witnessed head, among those before the
   chain's first break. */
static void mirror_verify_witness(struct mirror_verify *ctx)
{
	const struct mirror_chain_record *rec, *prev = NULL;
	const char *error;

	array_foreach(&ctx->records, rec) {
		if (!mirror_chain_record_follows(ctx->mirror_id, prev, rec,
						 &error))
			break;
		if (memcmp(rec->link, ctx->witness, sizeof(ctx->witness)) == 0) {
			ctx->witness_seq = rec->seq;
			return;
		}
		prev = rec;
	}
	i_error("Mirror %u: the witnessed head %s is not in the chain: the "
		"chain was rewritten or cut short since, or the head is "
		"another mirror's", ctx->mirror_id,
		binary_to_hex(ctx->witness, sizeof(ctx->witness)));
}

/* The copies the chain and the storage account for: one per copy record,
   and the unrecorded ones. */
static uint64_t mirror_verify_accounted(const struct mirror_verify *ctx)
{
	const struct mirror_chain_record *rec;
	uint64_t count = ctx->unrecorded;

	array_foreach(&ctx->records, rec) {
		if (rec->type == MIRROR_CHAIN_RECORD_COPY)
			count++;
	}
	return count;
}

/* Read the copy counter (after the chain: a copy whose record was read
   has been counted by now, unless it is between its record and its count
   at this very moment) and raise it with --reconcile if it is short. So a
   counter is reconciled exactly when no copy is in flight, as right after
   a crash; one in flight may be counted twice. Returns FALSE (with the
   command failed) if it can't. */
static bool mirror_verify_counter(struct mirror_verify *ctx)
{
	struct registry *reg;
	uint64_t accounted = mirror_verify_accounted(ctx);
	unsigned int uncounted, failures, uncounted2, failures2, tries;
	const char *error;
	bool ok = TRUE, journal_known, settled;

	if ((reg = doveadm_mirror_registry_open()) == NULL)
		return FALSE;
	/* mirror-writer's copies not counted yet are not short: the journal
	   first, then the registry; and the journal again, until no count
	   moved from one to the other in between (then a count would be
	   seen twice). If they don't settle, seen twice rather than
	   missed. */
	for (tries = 0;; tries++) {
		journal_known = doveadm_mirror_uncounted_settled(
			ctx->mirror_id, &uncounted, &failures, &settled);
		if (mirror_registry_copies_get(reg, ctx->mirror_id,
					       &ctx->counted, &error) < 0) {
			doveadm_mirror_fail(EX_TEMPFAIL, error);
			registry_deinit(&reg);
			return FALSE;
		}
		if (!journal_known || tries == MIRROR_VERIFY_JOURNAL_TRIES)
			break;
		if (settled) {
			(void)doveadm_mirror_uncounted_settled(ctx->mirror_id,
				&uncounted2, &failures2, &settled);
			if (settled && uncounted2 == uncounted &&
			    failures2 == failures)
				break;
		}
		i_sleep_msecs(MIRROR_VERIFY_JOURNAL_WAIT_MSECS);
	}
	ctx->counted += uncounted;
	ctx->counted_known = TRUE;
	if (ctx->counted < accounted && !ctx->reconcile) {
		i_warning("Mirror %u: its copy counter (%"PRIu64") is below "
			  "the %"PRIu64" copies its chain and storage account "
			  "for (a crash before they were counted): "
			  "doveadm mirror verify --reconcile %u raises it",
			  ctx->mirror_id, ctx->counted, accounted,
			  ctx->mirror_id);
	} else if (ctx->counted < accounted && !journal_known) {
		/* the writer may count them yet: raising the counter could
		   count them twice */
		doveadm_mirror_fail(EX_TEMPFAIL, t_strdup_printf(
			"Mirror %u: the copy counter is not raised, because "
			"the copies mirror-writer has yet to count can't be "
			"read (run as root)", ctx->mirror_id));
		ok = FALSE;
	} else if (ctx->counted < accounted) {
		if (mirror_registry_status_add_copies(reg, ctx->mirror_id,
				accounted - ctx->counted, &error) < 0) {
			doveadm_mirror_fail(EX_TEMPFAIL, t_strdup_printf(
				"Mirror %u: Raising the copy counter failed: "
				"%s", ctx->mirror_id, error));
			ok = FALSE;
		} else {
			i_info("Mirror %u: copy counter raised from %"PRIu64
			       " to %"PRIu64, ctx->mirror_id, ctx->counted,
			       accounted);
			ctx->counted = accounted;
		}
	}
	registry_deinit(&reg);
	return ok;
}

static void mirror_verify_run(struct mirror_verify *ctx)
{
	struct mirror_privileges privs;
	const char *error;
	bool ok;

	mirror_privileges_get(pool_datastack_create(), &privs);
	ctx->service = doveadm_mirror_storage_service_init(NULL);
	ok = mirror_verify_open(ctx) &&
		mirror_verify_read_chain(ctx) == 0 &&
		mirror_verify_mails(ctx) == 0;
	doveadm_mirror_inbox_close(&ctx->inbox);
	if (mirror_privileges_set(&privs, &error) < 0)
		i_fatal("%s", error);
	mail_storage_service_deinit(&ctx->service);

	if (!ok)
		return;
	/* a counter that can't be read or raised (75) doesn't hide what
	   the chain and the storage say, and a data error (65) wins */
	(void)mirror_verify_counter(ctx);
	if (ctx->have_witness)
		mirror_verify_witness(ctx);
	mirror_verify_print(ctx);
	if (ctx->broken != NULL || ctx->missing > 0 || ctx->altered > 0 ||
	    ctx->unrecorded > 0 ||
	    (ctx->have_witness && ctx->witness_seq == 0))
		doveadm_exit_code = EX_DATAERR;
}

static void cmd_mirror_verify(struct doveadm_cmd_context *cctx)
{
	struct mirror_verify ctx;
	const char *id_str, *head_str;

	if (!doveadm_mirror_param_str(cctx, "id", &id_str)) {
		doveadm_mirror_fail(EX_USAGE,
				   "mirror verify: Usage: mirror verify "
				   "[--reconcile] [--head HEX] ID");
		return;
	}
	i_zero(&ctx);
	(void)doveadm_cmd_param_bool(cctx, "reconcile", &ctx.reconcile);
	if (doveadm_mirror_param_str(cctx, "head", &head_str)) {
		buffer_t buf;

		buffer_create_from_data(&buf, ctx.witness,
					sizeof(ctx.witness));
		if (strlen(head_str) != MIRROR_CHAIN_HASH_SIZE * 2 ||
		    hex_to_binary(head_str, &buf) < 0) {
			doveadm_mirror_fail(EX_USAGE, t_strdup_printf(
				"Invalid --head '%s': expected a link, 64 "
				"hex digits", str_sanitize(head_str, 70)));
			return;
		}
		ctx.have_witness = TRUE;
	}
	if (str_to_uint(id_str, &ctx.mirror_id) < 0 || ctx.mirror_id == 0) {
		doveadm_mirror_fail(EX_USAGE, t_strdup_printf(
			"Invalid mirror id '%s'", str_sanitize(id_str, 20)));
		return;
	}
	if (!mirror_verify_lookup(&ctx))
		return;
	i_array_init(&ctx.records, 64);
	i_array_init(&ctx.expired, 16);
	i_array_init(&ctx.suspects, 8);
	mirror_verify_run(&ctx);
	array_free(&ctx.suspects);
	array_free(&ctx.expired);
	array_free(&ctx.records);
}

static struct doveadm_cmd_ver2 doveadm_mirror_verify_cmd = {
	.name = "mirror verify",
	.cmd = cmd_mirror_verify,
	.usage = "[--reconcile] [--head <link>] <id>",
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_PARAM('\0', "reconcile", CMD_PARAM_BOOL, 0)
DOVEADM_CMD_PARAM('\0', "head", CMD_PARAM_STR, 0)
DOVEADM_CMD_PARAM('\0', "id", CMD_PARAM_STR, CMD_PARAM_FLAG_POSITIONAL)
DOVEADM_CMD_PARAMS_END
};

void doveadm_mirror_verify_register(void)
{
	doveadm_cmd_register_ver2(&doveadm_mirror_verify_cmd);
}
