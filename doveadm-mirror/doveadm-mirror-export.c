/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* doveadm mirror export [-s SINCE] [-u UNTIL] -o DIR ID: write the copies
   a mirror's chain records (those made in [SINCE, UNTIL]) as files, with
   the chain and a manifest that ties each file to its record, for someone
   who must be able to check them without the server.
   doveadm mirror verify-export DIR: check such a directory.

   DIR (made by export, mode 0700; it must not exist) holds

     manifest.json   what was exported (below)
     chain           the mirror's chain as it was: records 1 to N
     messages/       one file per copy, UIDVALIDITY-UID.eml: the message
                     as the chain hashed it (line endings LF), so that its
                     BLAKE2b-256 is the record's content hash

   The manifest: {"format": "dovecot-mirror-export/1", "mirror_id",
   "storage", "exported", "since", "until" (UNIX times, 0: unbounded),
   "chain": {"file", "records", "head"}, "messages": [{"file", "seq",
   "time", "uidvalidity", "uid", "content_hash"}], "not_exported":
   [{"seq", "uid", "reason": "expired", "missing" or "altered"}]}.

   verify-export recomputes every link of the chain from the first record
   to the head the manifest names, checks every file's hash against its
   record, and reports a file added, removed or changed, a manifest entry
   that its record doesn't match, and a copy of the period that is
   neither exported nor accounted for. scripts/mirror-verify-export does
   the same with Python's standard library only, for an auditor without
   Dovecot. */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "str-sanitize.h"
#include "hex-binary.h"
#include "hash-method.h"
#include "write-full.h"
#include "sort.h"
#include "mail-storage-service.h"
#include "mail-storage.h"
#include "doveadm.h"
#include "doveadm-cmd.h"
#include "doveadm-print.h"
#include "mirror-def.h"
#include "mirror-registry.h"
#include "mirror-chain.h"
#include "mirror-privileges.h"
#include "doveadm-mirror.h"

#include <sysexits.h>
#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/stat.h>
#include <time.h>
#include <json-c/json.h>

#define EXPORT_FORMAT "dovecot-mirror-export/1"
#define EXPORT_MANIFEST "manifest.json"
#define EXPORT_CHAIN "chain"
#define EXPORT_MESSAGES "messages"
/* a manifest larger than this is not read (about 250 bytes a copy) */
#define EXPORT_MANIFEST_MAX_SIZE (64*1024*1024)

struct mirror_export {
	unsigned int mirror_id;
	const char *dir;
	time_t since, until;

	struct mirror_privileges admin, storage;
	struct json_object *messages, *not_exported;
	unsigned int exported, expired, missing, altered;
};

static bool export_in_period(const struct mirror_chain_record *rec,
			     time_t since, time_t until)
{
	return (since == 0 || rec->time >= (uint64_t)since) &&
		(until == 0 || rec->time <= (uint64_t)until);
}

static const char *export_file_name(const struct mirror_chain_record *rec)
{
	return t_strdup_printf(EXPORT_MESSAGES"/%u-%u.eml",
			       rec->uid_validity, rec->uid);
}

static void export_as(const struct mirror_privileges *privs)
{
	const char *error;

	if (mirror_privileges_set(privs, &error) < 0)
		i_fatal("%s", error);
}

static void
export_not_exported(struct mirror_export *ctx,
		    const struct mirror_chain_record *rec, const char *reason)
{
	struct json_object *obj = json_object_new_object();

	json_object_object_add(obj, "seq", json_object_new_int64(rec->seq));
	json_object_object_add(obj, "uid", json_object_new_int64(rec->uid));
	json_object_object_add(obj, "reason", json_object_new_string(reason));
	json_object_array_add(ctx->not_exported, obj);
}

/* Write one copy's file. 1 if it was exported, 0 if it is missing or
   altered (no file is left), -1 on error. */
static int
export_copy(struct mirror_export *ctx, struct mail *mail,
	    const struct mirror_chain_record *rec, const char **error_r)
{
	unsigned char digest[MIRROR_CHAIN_HASH_SIZE];
	struct json_object *obj;
	const char *name = export_file_name(rec);
	const char *path = t_strconcat(ctx->dir, "/", name, NULL);
	const char *error;
	int fd, ret;

	if (!mail_set_uid(mail, rec->uid)) {
		ctx->missing++;
		export_not_exported(ctx, rec, "missing");
		return 0;
	}
	/* the file is the administrator's, the mail the storage user's */
	export_as(&ctx->admin);
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
	if (fd == -1) {
		*error_r = t_strdup_printf("open(%s) failed: %m", path);
		export_as(&ctx->storage);
		return -1;
	}
	export_as(&ctx->storage);
	ret = doveadm_mirror_mail_hash(mail, fd, digest, &error);
	if (close(fd) < 0 && ret == 0) {
		error = t_strdup_printf("close(%s) failed: %m", path);
		ret = -1;
	}
	if (ret == 0 &&
	    memcmp(digest, rec->content_hash, sizeof(digest)) == 0) {
		obj = json_object_new_object();
		json_object_object_add(obj, "file",
				       json_object_new_string(name));
		json_object_object_add(obj, "seq",
				       json_object_new_int64(rec->seq));
		json_object_object_add(obj, "time",
				       json_object_new_int64(rec->time));
		json_object_object_add(obj, "uidvalidity",
				       json_object_new_int64(rec->uid_validity));
		json_object_object_add(obj, "uid",
				       json_object_new_int64(rec->uid));
		json_object_object_add(obj, "content_hash",
			json_object_new_string(binary_to_hex(
				rec->content_hash, MIRROR_CHAIN_HASH_SIZE)));
		json_object_array_add(ctx->messages, obj);
		ctx->exported++;
		return 1;
	}
	export_as(&ctx->admin);
	i_unlink(path);
	export_as(&ctx->storage);
	if (ret == 0 || mail->expunged) {
		if (ret == 0) {
			ctx->altered++;
			i_error("Mirror %u: UID %u is altered: not exported",
				ctx->mirror_id, rec->uid);
		} else {
			ctx->missing++;
		}
		export_not_exported(ctx, rec, ret == 0 ? "altered" :
				    "missing");
		return 0;
	}
	*error_r = t_strdup_printf("Failed to read UID %u: %s", rec->uid,
				   error);
	return -1;
}

/* Export the copies of records made in the period, as the storage user. */
static int
export_copies(struct mirror_export *ctx, struct mailbox *box,
	      const ARRAY_TYPE(mirror_chain_record) *records,
	      const char **error_r)
{
	const struct mirror_chain_record *rec;
	struct mailbox_transaction_context *trans;
	struct mailbox_status status;
	struct mail *mail;
	ARRAY_TYPE(uint64_t) expired;
	uint64_t key;
	int ret = 0;

	t_array_init(&expired, 16);
	mirror_chain_expired_keys(records, &expired);

	mailbox_get_open_status(box, STATUS_UIDVALIDITY, &status);
	trans = mailbox_transaction_begin(box, 0, "mirror export");
	mail = mail_alloc(trans, 0, NULL);
	array_foreach(records, rec) {
		if (rec->type != MIRROR_CHAIN_RECORD_COPY ||
		    !export_in_period(rec, ctx->since, ctx->until))
			continue;
		key = mirror_chain_uid_key(rec->uid_validity, rec->uid);
		if (array_bsearch(&expired, &key, uint64_cmp) != NULL) {
			ctx->expired++;
			export_not_exported(ctx, rec, "expired");
		} else if (rec->uid_validity != status.uidvalidity) {
			ctx->missing++;
			export_not_exported(ctx, rec, "missing");
		} else T_BEGIN {
			ret = export_copy(ctx, mail, rec, error_r);
			if (ret < 0)
				*error_r = p_strdup(default_pool, *error_r);
		} T_END;
		if (ret < 0)
			break;
	}
	mail_free(&mail);
	(void)mailbox_transaction_commit(&trans);
	if (ret < 0) {
		char *error = (char *)*error_r;

		*error_r = t_strdup(error);
		i_free(error);
		return -1;
	}
	return 0;
}

static int export_write_file(const char *path, const void *data, size_t size,
			     const char **error_r)
{
	int fd;

	fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
	if (fd == -1) {
		*error_r = t_strdup_printf("open(%s) failed: %m", path);
		return -1;
	}
	if (write_full(fd, data, size) < 0 || fsync(fd) < 0) {
		*error_r = t_strdup_printf("write(%s) failed: %m", path);
		i_close_fd(&fd);
		return -1;
	}
	if (close(fd) < 0) {
		*error_r = t_strdup_printf("close(%s) failed: %m", path);
		return -1;
	}
	return 0;
}

/* The chain file and the manifest, as the administrator. */
static int
export_finish(struct mirror_export *ctx, const char *storage,
	      const ARRAY_TYPE(mirror_chain_record) *records,
	      const char **head_r, const char **error_r)
{
	const struct mirror_chain_record *rec;
	struct json_object *manifest, *chain;
	unsigned char zero[MIRROR_CHAIN_HASH_SIZE];
	const unsigned char *head = zero;
	string_t *str = t_str_new(128 * (array_count(records) + 1));
	const char *json;
	int ret;

	memset(zero, 0, sizeof(zero));
	array_foreach(records, rec)
		mirror_chain_record_format(str, rec);
	if (array_count(records) > 0) {
		rec = array_back(records);
		head = rec->link;
	}
	*head_r = binary_to_hex(head, MIRROR_CHAIN_HASH_SIZE);
	if (export_write_file(t_strconcat(ctx->dir, "/"EXPORT_CHAIN, NULL),
			      str_data(str), str_len(str), error_r) < 0)
		return -1;

	manifest = json_object_new_object();
	json_object_object_add(manifest, "format",
			       json_object_new_string(EXPORT_FORMAT));
	json_object_object_add(manifest, "mirror_id",
			       json_object_new_int64(ctx->mirror_id));
	json_object_object_add(manifest, "storage",
			       json_object_new_string(storage));
	json_object_object_add(manifest, "exported",
			       json_object_new_int64(time(NULL)));
	json_object_object_add(manifest, "since",
			       json_object_new_int64(ctx->since));
	json_object_object_add(manifest, "until",
			       json_object_new_int64(ctx->until));
	chain = json_object_new_object();
	json_object_object_add(chain, "file",
			       json_object_new_string(EXPORT_CHAIN));
	json_object_object_add(chain, "records",
			       json_object_new_int64(array_count(records)));
	json_object_object_add(chain, "head",
			       json_object_new_string(*head_r));
	json_object_object_add(manifest, "chain", chain);
	json_object_object_add(manifest, "messages",
			       json_object_get(ctx->messages));
	json_object_object_add(manifest, "not_exported",
			       json_object_get(ctx->not_exported));
	json = json_object_to_json_string_ext(manifest,
		JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE);
	ret = export_write_file(t_strconcat(ctx->dir, "/"EXPORT_MANIFEST, NULL),
				json, strlen(json), error_r);
	json_object_put(manifest);
	return ret;
}

static void export_run(struct mirror_export *ctx, const struct mirror_def *def)
{
	struct mail_storage_service_ctx *service;
	struct doveadm_mirror_inbox inbox;
	ARRAY_TYPE(mirror_chain_record) records;
	const char *path, *broken = NULL, *head, *error = NULL;
	int ret;

	i_array_init(&records, 64);
	mirror_privileges_get(pool_datastack_create(), &ctx->admin);
	service = doveadm_mirror_storage_service_init(NULL);
	ret = doveadm_mirror_inbox_open(service, def->storage, &inbox, &error);
	if (ret > 0) {
		mirror_privileges_get(pool_datastack_create(), &ctx->storage);
		if (doveadm_mirror_chain_path(inbox.box, ctx->mirror_id,
					      &path, &error) < 0 ||
		    mirror_chain_read(path, ctx->mirror_id, &records,
				      &broken, &error) < 0)
			ret = -1;
		else if (broken == NULL &&
			 export_copies(ctx, inbox.box, &records, &error) < 0)
			ret = -1;
	}
	doveadm_mirror_inbox_close(&inbox);
	export_as(&ctx->admin);
	mail_storage_service_deinit(&service);

	if (ret <= 0) {
		doveadm_mirror_fail(ret == 0 ? EX_NOUSER : EX_TEMPFAIL,
				    t_strdup_printf("Mirror %u: %s",
						    ctx->mirror_id, error));
	} else if (broken != NULL) {
		doveadm_mirror_fail(EX_DATAERR, t_strdup_printf(
			"Mirror %u: its chain is broken (%s): nothing "
			"exported; doveadm mirror verify %u says more",
			ctx->mirror_id, broken, ctx->mirror_id));
	} else if (export_finish(ctx, def->storage, &records, &head,
				 &error) < 0) {
		doveadm_mirror_fail(EX_CANTCREAT, error);
	} else {
		doveadm_print_init(DOVEADM_PRINT_TYPE_TABLE);
		doveadm_print_header_simple("id");
		doveadm_print_header_simple("storage");
		doveadm_print_header_simple("exported");
		doveadm_print_header_simple("expired");
		doveadm_print_header_simple("missing");
		doveadm_print_header_simple("altered");
		doveadm_print_header_simple("head");
		doveadm_print_num(ctx->mirror_id);
		doveadm_print(def->storage);
		doveadm_print_num(ctx->exported);
		doveadm_print_num(ctx->expired);
		doveadm_print_num(ctx->missing);
		doveadm_print_num(ctx->altered);
		doveadm_print(head);
		if (ctx->missing > 0 || ctx->altered > 0)
			doveadm_exit_code = EX_DATAERR;
	}
	array_free(&records);
}

static void cmd_mirror_export(struct doveadm_cmd_context *cctx)
{
	struct mirror_export ctx;
	struct registry *reg;
	struct mirror_def def;
	const char *id_str;
	bool found;

	i_zero(&ctx);
	if (!doveadm_mirror_param_str(cctx, "id", &id_str) ||
	    !doveadm_mirror_param_str(cctx, "output", &ctx.dir)) {
		doveadm_mirror_fail(EX_USAGE, "mirror export: Usage: mirror "
			"export [-s SINCE] [-u UNTIL] -o DIR ID");
		return;
	}
	if (!doveadm_mirror_parse_id(id_str, &ctx.mirror_id) ||
	    doveadm_mirror_param_time(cctx, "since", &ctx.since) < 0 ||
	    doveadm_mirror_param_time(cctx, "until", &ctx.until) < 0)
		return;
	if (ctx.until != 0 && ctx.since > ctx.until) {
		doveadm_mirror_fail(EX_USAGE, "--since is after --until");
		return;
	}
	if ((reg = doveadm_mirror_registry_open()) == NULL)
		return;
	found = doveadm_mirror_get(reg, ctx.mirror_id, &def);
	registry_deinit(&reg);
	if (!found)
		return;
	/* a new directory, only for whoever exports: it holds mail */
	if (mkdir(ctx.dir, 0700) < 0) {
		doveadm_mirror_fail(EX_CANTCREAT, t_strdup_printf(
			"mkdir(%s) failed: %m%s", ctx.dir, errno == EEXIST ?
			" (export into a new directory)" : ""));
		return;
	}
	if (mkdir(t_strconcat(ctx.dir, "/"EXPORT_MESSAGES, NULL), 0700) < 0) {
		doveadm_mirror_fail(EX_CANTCREAT, t_strdup_printf(
			"mkdir(%s/"EXPORT_MESSAGES") failed: %m", ctx.dir));
		return;
	}
	ctx.messages = json_object_new_array();
	ctx.not_exported = json_object_new_array();
	export_run(&ctx, &def);
	json_object_put(ctx.messages);
	json_object_put(ctx.not_exported);
}

/* verify-export */

struct export_check {
	pool_t pool;
	const char *dir;
	unsigned int mirror_id;
	time_t since, until;
	ARRAY_TYPE(mirror_chain_record) records;
	/* seqs the manifest accounts for (exported or not), sorted */
	ARRAY(uint64_t) accounted;
	ARRAY_TYPE(const_string) files;

	unsigned int messages, added, removed, changed, mismatched, omitted;
	/* copies the export names as not exported because they were
	   missing or altered in the storage */
	unsigned int withheld;
	const char *broken;
};

static void export_problem(struct export_check *check, unsigned int *counter,
			   const char *msg)
{
	(*counter)++;
	i_error("%s: %s", check->dir, msg);
}

static int
export_json_uint(struct json_object *obj, const char *name, uint64_t max,
		 uint64_t *value_r)
{
	struct json_object *field;
	int64_t num;

	if (!json_object_object_get_ex(obj, name, &field) ||
	    !json_object_is_type(field, json_type_int))
		return -1;
	num = json_object_get_int64(field);
	if (num < 0 || (uint64_t)num > max)
		return -1;
	*value_r = (uint64_t)num;
	return 0;
}

static const char *
export_json_str(struct json_object *obj, const char *name)
{
	struct json_object *field;

	if (!json_object_object_get_ex(obj, name, &field) ||
	    !json_object_is_type(field, json_type_string))
		return NULL;
	return json_object_get_string(field);
}

/* The file's hash, as export wrote it. 1, 0 if it doesn't exist, -1. */
static int
export_hash_file(const char *path, unsigned char digest_r[MIRROR_CHAIN_HASH_SIZE],
		 const char **error_r)
{
	const struct hash_method *meth = &mirror_chain_hash_method;
	unsigned char buf[IO_BLOCK_SIZE];
	struct stat st;
	void *hash_ctx;
	ssize_t ret;
	int fd;

	/* a symlink, a FIFO, a directory: not the file export wrote */
	fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK);
	if (fd == -1) {
		if (errno == ENOENT || errno == ELOOP)
			return 0;
		*error_r = t_strdup_printf("open(%s) failed: %m", path);
		return -1;
	}
	if (fstat(fd, &st) < 0) {
		*error_r = t_strdup_printf("fstat(%s) failed: %m", path);
		i_close_fd(&fd);
		return -1;
	}
	if (!S_ISREG(st.st_mode)) {
		i_close_fd(&fd);
		return 0;
	}
	hash_ctx = t_malloc0(meth->context_size);
	meth->init(hash_ctx);
	while ((ret = read(fd, buf, sizeof(buf))) > 0)
		meth->loop(hash_ctx, buf, ret);
	if (ret < 0)
		*error_r = t_strdup_printf("read(%s) failed: %m", path);
	i_close_fd(&fd);
	meth->result(hash_ctx, digest_r);
	return ret < 0 ? -1 : 1;
}

/* One manifest entry of an exported copy. -1 on a read error. */
static int export_check_message(struct export_check *check,
				struct json_object *obj, const char **error_r)
{
	const struct mirror_chain_record *rec = NULL;
	unsigned char digest[MIRROR_CHAIN_HASH_SIZE];
	uint64_t seq, time, uid_validity, uid;
	const char *file, *hash, *expected;
	int ret;

	check->messages++;
	file = export_json_str(obj, "file");
	hash = export_json_str(obj, "content_hash");
	if (file == NULL || hash == NULL ||
	    export_json_uint(obj, "seq", UINT64_MAX, &seq) < 0 ||
	    export_json_uint(obj, "time", UINT64_MAX, &time) < 0 ||
	    export_json_uint(obj, "uidvalidity", UINT32_MAX,
			     &uid_validity) < 0 ||
	    export_json_uint(obj, "uid", UINT32_MAX, &uid) < 0) {
		export_problem(check, &check->mismatched,
			       "a manifest entry is malformed");
		return 0;
	}
	if (seq >= 1 && seq <= array_count(&check->records))
		rec = array_idx(&check->records, seq - 1);
	if (rec == NULL || rec->type != MIRROR_CHAIN_RECORD_COPY ||
	    rec->time != time || rec->uid_validity != uid_validity ||
	    rec->uid != uid ||
	    strcmp(hash, binary_to_hex(rec->content_hash,
				       MIRROR_CHAIN_HASH_SIZE)) != 0) {
		export_problem(check, &check->mismatched, t_strdup_printf(
			"%s: its manifest entry doesn't match chain record "
			"%"PRIu64, str_sanitize(file, 80), seq));
		return 0;
	}
	array_push_back(&check->accounted, &seq);
	expected = export_file_name(rec);
	if (strcmp(file, expected) != 0) {
		export_problem(check, &check->mismatched, t_strdup_printf(
			"%s: record %"PRIu64"'s file is %s",
			str_sanitize(file, 80), seq, expected));
		return 0;
	}
	expected = p_strdup(check->pool, expected);
	array_push_back(&check->files, &expected);
	ret = export_hash_file(t_strconcat(check->dir, "/", file, NULL),
			       digest, error_r);
	if (ret < 0)
		return -1;
	if (ret == 0) {
		export_problem(check, &check->removed, t_strdup_printf(
			"%s is removed", file));
	} else if (memcmp(digest, rec->content_hash, sizeof(digest)) != 0) {
		export_problem(check, &check->changed, t_strdup_printf(
			"%s is changed: its hash is %s, record %"PRIu64
			" says %s", file, binary_to_hex(digest, sizeof(digest)),
			seq, hash));
	}
	return 0;
}

/* Files in messages/ that no entry names. */
static int export_check_added(struct export_check *check,
			      const char **error_r)
{
	const char *dir = t_strconcat(check->dir, "/"EXPORT_MESSAGES, NULL);
	const char *name;
	struct stat st;
	struct dirent *d;
	DIR *dirp;

	array_sort(&check->files, i_strcmp_p);
	if (lstat(dir, &st) == 0 && !S_ISDIR(st.st_mode)) {
		*error_r = t_strdup_printf("%s is not a directory", dir);
		return -1;
	}
	dirp = opendir(dir);
	if (dirp == NULL) {
		*error_r = t_strdup_printf("opendir(%s) failed: %m", dir);
		return -1;
	}
	while ((d = readdir(dirp)) != NULL) {
		if (strcmp(d->d_name, ".") == 0 || strcmp(d->d_name, "..") == 0)
			continue;
		name = t_strconcat(EXPORT_MESSAGES"/", d->d_name, NULL);
		if (array_bsearch(&check->files, &name, i_strcmp_p) == NULL) {
			export_problem(check, &check->added, t_strdup_printf(
				"%s is added", str_sanitize(name, 80)));
		}
	}
	(void)closedir(dirp);
	return 0;
}

/* Every copy of the period is exported, or accounted for with a reason
   (an expired one by its expire record). */
static void export_check_complete(struct export_check *check,
				  struct json_object *not_exported)
{
	const struct mirror_chain_record *rec;
	struct json_object *obj;
	const char *reason;
	ARRAY_TYPE(uint64_t) expired_keys;
	uint64_t seq, key;
	size_t i, count = json_object_array_length(not_exported);
	bool expired;

	t_array_init(&expired_keys, 64);
	mirror_chain_expired_keys(&check->records, &expired_keys);
	for (i = 0; i < count; i++) {
		obj = json_object_array_get_idx(not_exported, i);
		reason = export_json_str(obj, "reason");
		if (export_json_uint(obj, "seq", UINT64_MAX, &seq) < 0 ||
		    reason == NULL || seq == 0 ||
		    seq > array_count(&check->records)) {
			export_problem(check, &check->mismatched,
				       "a not_exported entry is malformed");
			continue;
		}
		rec = array_idx(&check->records, seq - 1);
		key = mirror_chain_uid_key(rec->uid_validity, rec->uid);
		expired = array_bsearch(&expired_keys, &key,
					uint64_cmp) != NULL;
		if (rec->type != MIRROR_CHAIN_RECORD_COPY ||
		    (strcmp(reason, "expired") == 0 && !expired) ||
		    (strcmp(reason, "expired") != 0 &&
		     strcmp(reason, "missing") != 0 &&
		     strcmp(reason, "altered") != 0)) {
			export_problem(check, &check->mismatched,
				t_strdup_printf("record %"PRIu64" is not "
						"exported, and not for the "
						"reason given", seq));
			continue;
		}
		array_push_back(&check->accounted, &seq);
		if (strcmp(reason, "expired") != 0) {
			/* accounted for, but the export is not whole */
			export_problem(check, &check->withheld,
				t_strdup_printf("the copy of record %"PRIu64
						" (UID %u) is not exported: "
						"it was %s", seq, rec->uid,
						reason));
		}
	}
	array_sort(&check->accounted, uint64_cmp);
	array_foreach(&check->records, rec) {
		if (rec->type != MIRROR_CHAIN_RECORD_COPY ||
		    !export_in_period(rec, check->since, check->until))
			continue;
		if (array_bsearch(&check->accounted, &rec->seq,
				  uint64_cmp) == NULL) {
			export_problem(check, &check->omitted, t_strdup_printf(
				"the copy of record %"PRIu64" (UID %u) is "
				"omitted", rec->seq, rec->uid));
		}
	}
}

static int export_read_manifest(const char *path, string_t *dest,
				const char **error_r)
{
	unsigned char buf[IO_BLOCK_SIZE];
	struct stat st;
	ssize_t ret;
	int fd;

	fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK);
	if (fd == -1) {
		*error_r = t_strdup_printf("open(%s) failed: %m", path);
		return -1;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		*error_r = t_strdup_printf("%s is not a regular file", path);
		i_close_fd(&fd);
		return -1;
	}
	while ((ret = read(fd, buf, sizeof(buf))) > 0) {
		if (str_len(dest) + ret > EXPORT_MANIFEST_MAX_SIZE) {
			*error_r = t_strdup_printf("%s is too large", path);
			i_close_fd(&fd);
			return -1;
		}
		str_append_data(dest, buf, ret);
	}
	if (ret < 0)
		*error_r = t_strdup_printf("read(%s) failed: %m", path);
	i_close_fd(&fd);
	return ret < 0 ? -1 : 0;
}

/* The manifest's header and the chain it names. FALSE (the command
   failed) if the export can't be read at all. */
static bool
export_check_chain(struct export_check *check, struct json_object *manifest,
		   const char **head_r)
{
	struct json_object *chain;
	const char *format, *head, *path, *error;
	struct stat st;
	uint64_t num, records;
	unsigned char zero[MIRROR_CHAIN_HASH_SIZE];
	const unsigned char *last = zero;

	memset(zero, 0, sizeof(zero));
	format = export_json_str(manifest, "format");
	if (format == NULL || strcmp(format, EXPORT_FORMAT) != 0 ||
	    export_json_uint(manifest, "mirror_id", UINT_MAX, &num) < 0 ||
	    num == 0 ||
	    !json_object_object_get_ex(manifest, "chain", &chain) ||
	    export_json_uint(chain, "records", UINT64_MAX, &records) < 0 ||
	    (head = export_json_str(chain, "head")) == NULL) {
		doveadm_mirror_fail(EX_NOINPUT, t_strdup_printf(
			"%s: not a mirror export ("EXPORT_FORMAT")",
			check->dir));
		return FALSE;
	}
	check->mirror_id = (unsigned int)num;
	if (export_json_uint(manifest, "since", INT64_MAX, &num) < 0 ||
	    (check->since = (time_t)num,
	     export_json_uint(manifest, "until", INT64_MAX, &num) < 0)) {
		doveadm_mirror_fail(EX_NOINPUT, t_strdup_printf(
			"%s: not a mirror export ("EXPORT_FORMAT")",
			check->dir));
		return FALSE;
	}
	check->until = (time_t)num;
	path = t_strconcat(check->dir, "/"EXPORT_CHAIN, NULL);
	if (lstat(path, &st) == 0 && !S_ISREG(st.st_mode)) {
		doveadm_mirror_fail(EX_NOINPUT, t_strdup_printf(
			"%s is not a regular file", path));
		return FALSE;
	}
	if (mirror_chain_read(path, check->mirror_id, &check->records,
			      &check->broken, &error) < 0) {
		doveadm_mirror_fail(EX_NOINPUT, error);
		return FALSE;
	}
	if (array_count(&check->records) > 0) {
		const struct mirror_chain_record *rec =
			array_back(&check->records);

		last = rec->link;
	}
	*head_r = binary_to_hex(last, MIRROR_CHAIN_HASH_SIZE);
	if (check->broken == NULL && records != array_count(&check->records)) {
		check->broken = t_strdup_printf(
			"it has %u records, the manifest says %"PRIu64,
			array_count(&check->records), records);
	}
	if (check->broken == NULL && strcmp(*head_r, head) != 0) {
		check->broken = t_strdup_printf(
			"its head is %s, the manifest says %s", *head_r,
			str_sanitize(head, 80));
	}
	if (check->broken != NULL)
		i_error("%s: the chain is broken: %s", check->dir,
			check->broken);
	return TRUE;
}

static void cmd_mirror_verify_export(struct doveadm_cmd_context *cctx)
{
	struct export_check check;
	struct json_object *manifest, *messages, *not_exported;
	struct json_tokener *tok;
	const char *path, *head = "", *error;
	string_t *data;
	size_t i, count, end;
	bool ok = TRUE, trailing;
	int ret;

	i_zero(&check);
	if (!doveadm_mirror_param_str(cctx, "dir", &check.dir)) {
		doveadm_mirror_fail(EX_USAGE, "mirror verify-export: Usage: "
				    "mirror verify-export DIR");
		return;
	}
	path = t_strconcat(check.dir, "/"EXPORT_MANIFEST, NULL);
	data = str_new(default_pool, 4096);
	if (export_read_manifest(path, data, &error) < 0) {
		doveadm_mirror_fail(EX_NOINPUT, error);
		str_free(&data);
		return;
	}
	tok = json_tokener_new();
	manifest = json_tokener_parse_ex(tok, str_c(data), str_len(data));
	/* nothing but white space after it, as JSON parsers require */
	end = manifest == NULL ? 0 : json_tokener_get_parse_end(tok);
	while (end < str_len(data) &&
	       strchr(" \t\r\n", str_c(data)[end]) != NULL)
		end++;
	trailing = end != str_len(data);
	str_free(&data);
	if (manifest == NULL || trailing ||
	    !json_object_is_type(manifest, json_type_object) ||
	    !json_object_object_get_ex(manifest, "messages", &messages) ||
	    !json_object_is_type(messages, json_type_array) ||
	    !json_object_object_get_ex(manifest, "not_exported",
				       &not_exported) ||
	    !json_object_is_type(not_exported, json_type_array)) {
		doveadm_mirror_fail(EX_NOINPUT, t_strdup_printf(
			"%s: not a mirror export ("EXPORT_FORMAT")",
			check.dir));
		json_tokener_free(tok);
		if (manifest != NULL)
			json_object_put(manifest);
		return;
	}
	json_tokener_free(tok);
	check.pool = pool_alloconly_create("mirror verify-export", 1024);
	i_array_init(&check.records, 64);
	i_array_init(&check.accounted, 64);
	i_array_init(&check.files, 64);
	if (!export_check_chain(&check, manifest, &head))
		ok = FALSE;
	count = ok ? json_object_array_length(messages) : 0;
	for (i = 0; i < count && ok; i++) T_BEGIN {
		ret = export_check_message(&check,
				json_object_array_get_idx(messages, i),
				&error);
		if (ret < 0) {
			doveadm_mirror_fail(EX_NOINPUT, error);
			ok = FALSE;
		}
	} T_END;
	if (ok && export_check_added(&check, &error) < 0) {
		doveadm_mirror_fail(EX_NOINPUT, error);
		ok = FALSE;
	}
	if (ok) {
		export_check_complete(&check, not_exported);
		doveadm_print_init(DOVEADM_PRINT_TYPE_TABLE);
		doveadm_print_header_simple("id");
		doveadm_print_header_simple("messages");
		doveadm_print_header_simple("added");
		doveadm_print_header_simple("removed");
		doveadm_print_header_simple("changed");
		doveadm_print_header_simple("mismatched");
		doveadm_print_header_simple("omitted");
		doveadm_print_header_simple("withheld");
		doveadm_print_header_simple("chain");
		doveadm_print_header_simple("head");
		doveadm_print_num(check.mirror_id);
		doveadm_print_num(check.messages);
		doveadm_print_num(check.added);
		doveadm_print_num(check.removed);
		doveadm_print_num(check.changed);
		doveadm_print_num(check.mismatched);
		doveadm_print_num(check.omitted);
		doveadm_print_num(check.withheld);
		doveadm_print(check.broken == NULL ? "ok" : "broken");
		doveadm_print(head);
		if (check.broken != NULL || check.added > 0 ||
		    check.removed > 0 || check.changed > 0 ||
		    check.mismatched > 0 || check.omitted > 0 ||
		    check.withheld > 0)
			doveadm_exit_code = EX_DATAERR;
	}
	array_free(&check.records);
	array_free(&check.accounted);
	array_free(&check.files);
	pool_unref(&check.pool);
	json_object_put(manifest);
}

static struct doveadm_cmd_ver2 doveadm_mirror_export_commands[] = {
{
	.name = "mirror export",
	.cmd = cmd_mirror_export,
	.usage = "[-s <since>] [-u <until>] -o <dir> <id>",
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_PARAM('s', "since", CMD_PARAM_STR, 0)
DOVEADM_CMD_PARAM('u', "until", CMD_PARAM_STR, 0)
DOVEADM_CMD_PARAM('o', "output", CMD_PARAM_STR, 0)
DOVEADM_CMD_PARAM('\0', "id", CMD_PARAM_STR, CMD_PARAM_FLAG_POSITIONAL)
DOVEADM_CMD_PARAMS_END
},
{
	.name = "mirror verify-export",
	.cmd = cmd_mirror_verify_export,
	.usage = "<dir>",
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_PARAM('\0', "dir", CMD_PARAM_STR, CMD_PARAM_FLAG_POSITIONAL)
DOVEADM_CMD_PARAMS_END
},
};

void doveadm_mirror_export_register(void)
{
	unsigned int i;

	for (i = 0; i < N_ELEMENTS(doveadm_mirror_export_commands); i++)
		doveadm_cmd_register_ver2(&doveadm_mirror_export_commands[i]);
}
