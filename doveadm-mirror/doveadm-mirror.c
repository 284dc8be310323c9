/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* The doveadm module of the suite (lib20_doveadm_mirror_plugin.so):
   registers the doveadm mirror and doveadm bag commands, which live in a
   file per group, and has what they share: errors and exit codes, the
   registry, a storage service, userdb lookups, new passwords and the
   deletion of a storage's mail. */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "str-sanitize.h"
#include "write-full.h"
#include "hash-method.h"
#include "istream-crlf.h"
#include "istream.h"
#include "strnum.h"
#include "ioloop.h"
#include "master-service.h"
#include "mail-storage-service.h"
#include "mail-namespace.h"
#include "mail-storage-private.h" /* mailbox_get_path_to() */
#include "settings-parser.h"
#include "master-service-settings.h"
#include "doveadm.h"
#include "doveadm-cmd.h"
#include "doveadm-print.h"
#include "doveadm-settings.h"
#include "doveadm-util.h"
#include "auth-master.h"
#include "unlink-directory.h"
#include "hex-binary.h"
#include "hmac.h"
#include "hmac-cram-md5.h"
#include "md5.h"
#include "safe-memset.h"
#include "registry.h"
#include "registry-lock.h"
#include "mirror-chain.h"
#include "mirror-registry.h"
#include "doveadm-mirror.h"

#include <sysexits.h>
#include <sys/wait.h>
#include <grp.h>
#include <unistd.h>
#include <sodium.h>

#define DOVEADM_MIRROR_AUTH_TIMEOUT_MSECS (30*1000)
/* how long a command that changes the registry waits for its lock */
#define DOVEADM_MIRROR_LOCK_TIMEOUT_MSECS (30*1000)
/* Random bytes in a generated password: 144 bits, 24 base64url chars. */
#define DOVEADM_MIRROR_PASSWORD_BYTES 18

const char *doveadm_mirror_plugin_version = DOVECOT_ABI_VERSION;

void doveadm_mirror_plugin_init(struct module *module);
void doveadm_mirror_plugin_deinit(void);

void doveadm_mirror_fail(int exit_code, const char *error)
{
	i_error("%s", error);
	doveadm_exit_code = exit_code;
}

bool doveadm_mirror_parse_id(const char *id_str, unsigned int *id_r)
{
	if (str_to_uint(id_str, id_r) < 0 || *id_r == 0) {
		doveadm_mirror_fail(EX_USAGE, t_strdup_printf(
			"Invalid mirror id '%s'", str_sanitize(id_str, 20)));
		return FALSE;
	}
	return TRUE;
}

bool doveadm_mirror_get(struct registry *reg, unsigned int id,
			struct mirror_def *def_r)
{
	const char *error;
	int ret;

	ret = mirror_registry_get_def(reg, id, pool_datastack_create(), def_r,
				      &error);
	if (ret <= 0) {
		doveadm_mirror_fail(ret == 0 ? DOVEADM_EX_NOTFOUND :
				    EX_TEMPFAIL, ret == 0 ?
				    t_strdup_printf("Unknown mirror id %u", id) :
				    error);
		return FALSE;
	}
	return TRUE;
}

bool doveadm_mirror_param_str(const struct doveadm_cmd_context *cctx,
			      const char *name, const char **value_r)
{
	const char *value;

	if (!doveadm_cmd_param_str(cctx, name, &value) || value == NULL)
		return FALSE;
	*value_r = value;
	return TRUE;
}

int doveadm_mirror_param_time(const struct doveadm_cmd_context *cctx,
			      const char *name, time_t *time_r)
{
	const char *value;

	if (!doveadm_mirror_param_str(cctx, name, &value))
		return 0;
	if (str_to_time(value, time_r) < 0 || *time_r <= 0) {
		doveadm_mirror_fail(EX_USAGE, t_strdup_printf(
			"Invalid %s '%s': expected a UNIX time",
			strcmp(name, "time") == 0 ? "-T" :
			t_strconcat("--", name, NULL),
			str_sanitize(value, 30)));
		return -1;
	}
	return 1;
}

static struct registry *doveadm_mirror_registry_open_as(bool unchecked)
{
	struct registry *reg;
	const char *uri, *error;
	int ret;

	uri = doveadm_plugin_getenv("mirror_dict");
	if (uri == NULL || *uri == '\0') {
		doveadm_mirror_fail(EX_CONFIG,
			"mirror_dict is not set: mirroring is not configured");
		return NULL;
	}
	ret = unchecked ?
		registry_init_unchecked(uri, doveadm_settings->base_dir, NULL,
					&reg, &error) :
		registry_init(uri, doveadm_settings->base_dir, NULL,
			      &reg, &error);
	if (ret < 0) {
		doveadm_mirror_fail(EX_TEMPFAIL, error);
		return NULL;
	}
	return reg;
}

bool doveadm_mirror_uncounted_read(ARRAY_TYPE(mirror_count_pending) *pending)
{
	const char *error;

	if (mirror_count_journal_read(doveadm_settings->base_dir, pending,
				      &error) < 0) {
		/* only root reads it */
		if (errno != EACCES)
			i_warning("Copies not counted yet are left out: %s",
				  error);
		return FALSE;
	}
	return TRUE;
}

bool doveadm_mirror_uncounted(unsigned int id, unsigned int *copies_r,
			      unsigned int *failures_r)
{
	bool settled;

	return doveadm_mirror_uncounted_settled(id, copies_r, failures_r,
						&settled);
}

bool doveadm_mirror_uncounted_settled(unsigned int id, unsigned int *copies_r,
				      unsigned int *failures_r,
				      bool *settled_r)
{
	ARRAY_TYPE(mirror_count_pending) pending;
	const struct mirror_count_pending *p;
	bool ret;

	t_array_init(&pending, 8);
	ret = doveadm_mirror_uncounted_read(&pending);
	p = mirror_count_pending_find(&pending, id);
	doveadm_mirror_uncounted_sum(p, copies_r, failures_r);
	*settled_r = p == NULL ||
		(p->flushing_copies == 0 && p->flushing_failures == 0);
	return ret;
}

void doveadm_mirror_uncounted_sum(const struct mirror_count_pending *p,
				  unsigned int *copies_r,
				  unsigned int *failures_r)
{
	/* being counted now: maybe in the registry already, seen twice for
	   a moment rather than missed */
	*copies_r = p == NULL ? 0 : p->copies + p->flushing_copies;
	*failures_r = p == NULL ? 0 : p->failures + p->flushing_failures;
}

struct registry *doveadm_mirror_registry_open(void)
{
	return doveadm_mirror_registry_open_as(FALSE);
}

struct registry *doveadm_mirror_registry_open_unchecked(void)
{
	return doveadm_mirror_registry_open_as(TRUE);
}

struct registry *doveadm_mirror_registry_open_locked(void)
{
	struct registry *reg;
	const char *error;

	if ((reg = doveadm_mirror_registry_open()) == NULL)
		return NULL;
	if (registry_lock(reg, DOVEADM_MIRROR_LOCK_TIMEOUT_MSECS,
			  &error) < 0) {
		doveadm_mirror_fail(EX_TEMPFAIL, error);
		registry_deinit(&reg);
		return NULL;
	}
	return reg;
}

struct mail_storage_service_ctx *
doveadm_mirror_storage_service_init(const struct setting_parser_info *set_roots[])
{
	enum mail_storage_service_flags flags =
		MAIL_STORAGE_SERVICE_FLAG_USERDB_LOOKUP |
		MAIL_STORAGE_SERVICE_FLAG_TEMP_PRIV_DROP |
		MAIL_STORAGE_SERVICE_FLAG_NO_LOG_INIT;

	if (doveadm_debug)
		flags |= MAIL_STORAGE_SERVICE_FLAG_DEBUG;
	return mail_storage_service_init(master_service, set_roots, flags);
}

int doveadm_mirror_inbox_open(struct mail_storage_service_ctx *service,
			      const char *username,
			      struct doveadm_mirror_inbox *inbox_r,
			      const char **error_r)
{
	struct mail_storage_service_input input;
	struct mail_namespace *ns;
	const char *error;
	int ret;

	i_zero(inbox_r);
	i_zero(&input);
	input.module = "mail";
	input.service = "doveadm";
	input.username = username;
	ret = mail_storage_service_lookup(service, &input,
					  &inbox_r->service_user, &error);
	if (ret <= 0) {
		*error_r = ret == 0 ?
			t_strdup_printf("User %s doesn't exist",
					str_sanitize(username, 80)) :
			t_strdup_printf("User %s lookup failed: %s",
					str_sanitize(username, 80), error);
		return ret;
	}
	if (mail_storage_service_next(service, inbox_r->service_user,
				      &inbox_r->user, &error) < 0) {
		*error_r = t_strdup_printf("Failed to initialize user %s: %s",
					   username, error);
		return -1;
	}
	ns = mail_namespace_find_inbox(inbox_r->user->namespaces);
	inbox_r->box = mailbox_alloc(ns->list, "INBOX", 0);
	if (mailbox_open(inbox_r->box) < 0 ||
	    mailbox_sync(inbox_r->box, 0) < 0) {
		*error_r = t_strdup_printf("Failed to open INBOX of user %s: %s",
			username,
			mailbox_get_last_internal_error(inbox_r->box, NULL));
		return -1;
	}
	return 1;
}

void doveadm_mirror_inbox_close(struct doveadm_mirror_inbox *inbox)
{
	if (inbox->box != NULL)
		mailbox_free(&inbox->box);
	if (inbox->user != NULL)
		mail_user_deinit(&inbox->user);
	if (inbox->service_user != NULL)
		mail_storage_service_user_unref(&inbox->service_user);
}

int doveadm_mirror_mail_hash(struct mail *mail, int out_fd,
			     unsigned char digest_r[MIRROR_CHAIN_HASH_SIZE],
			     const char **error_r)
{
	const struct hash_method *meth = &mirror_chain_hash_method;
	struct istream *input, *lf_input;
	const unsigned char *data;
	size_t size;
	void *hash_ctx;
	int ret = 0;

	if (mail_get_stream(mail, NULL, NULL, &input) < 0) {
		*error_r = mailbox_get_last_internal_error(mail->box, NULL);
		return -1;
	}
	hash_ctx = i_malloc(meth->context_size);
	meth->init(hash_ctx);
	lf_input = i_stream_create_lf(input);
	while (ret == 0 && i_stream_read_more(lf_input, &data, &size) > 0) {
		meth->loop(hash_ctx, data, size);
		if (out_fd != -1 && write_full(out_fd, data, size) < 0) {
			*error_r = t_strdup_printf("write() failed: %m");
			ret = -1;
		}
		i_stream_skip(lf_input, size);
	}
	if (ret == 0 && lf_input->stream_errno != 0) {
		*error_r = t_strdup_printf("read(%s) failed: %s",
					   i_stream_get_name(lf_input),
					   i_stream_get_error(lf_input));
		ret = -1;
	}
	meth->result(hash_ctx, digest_r);
	i_stream_unref(&lf_input);
	i_free(hash_ctx);
	return ret;
}

int doveadm_mirror_chain_path(struct mailbox *box, unsigned int mirror_id,
			      const char **path_r, const char **error_r)
{
	const char *dir;
	int ret;

	ret = mailbox_get_path_to(box, MAILBOX_LIST_PATH_TYPE_CONTROL, &dir);
	if (ret <= 0) {
		*error_r = ret == 0 ?
			"The storage's INBOX has no control directory" :
			mailbox_get_last_internal_error(box, NULL);
		return -1;
	}
	*path_r = t_strdup_printf("%s/%s", dir,
				  mirror_chain_file_name(mirror_id));
	return 0;
}

/* Look user up in the userdb. Returns 1 with its fields (from the data
   stack), 0 if there is no such user, -1 if it can't be checked. */
static int
doveadm_mirror_userdb_lookup(const char *user, const char *const **fields_r,
			     const char **error_r)
{
	struct auth_master_connection *conn;
	struct auth_user_info info;
	const char *username, *const *fields;
	pool_t pool;
	int ret;

	i_zero(&info);
	info.service = "doveadm";
	conn = auth_master_init(doveadm_settings->auth_socket_path,
				AUTH_MASTER_FLAG_NO_IDLE_TIMEOUT);
	auth_master_set_timeout(conn, DOVEADM_MIRROR_AUTH_TIMEOUT_MSECS);
	/* the lookup runs an ioloop: not from the data stack */
	pool = pool_alloconly_create("doveadm mirror userdb", 1024);
	ret = auth_master_user_lookup(conn, user, &info, pool,
				      &username, &fields);
	if (ret < 0) {
		*error_r = fields != NULL && fields[0] != NULL ?
			t_strdup_printf("userdb lookup failed: %s", fields[0]) :
			"userdb lookup failed (is Dovecot running?)";
	} else if (ret > 0) {
		*fields_r = (const char *const *)
			p_strarray_dup(pool_datastack_create(), fields);
	}
	auth_master_deinit(&conn);
	pool_unref(&pool);
	return ret;
}

int doveadm_mirror_user_exists(const char *user, const char **error_r)
{
	const char *const *fields;

	return doveadm_mirror_userdb_lookup(user, &fields, error_r);
}

/* The one delivery setting the commands need, read as LMTP reads it */
struct doveadm_mirror_delivery_settings {
	const char *recipient_delimiter;
};

static const struct setting_define doveadm_mirror_delivery_setting_defines[] = {
	SETTING_DEFINE_STRUCT_STR("recipient_delimiter", recipient_delimiter,
				  struct doveadm_mirror_delivery_settings),
	SETTING_DEFINE_LIST_END
};

static const struct doveadm_mirror_delivery_settings
doveadm_mirror_delivery_default_settings = {
	.recipient_delimiter = "+",
};

static const struct setting_parser_info
doveadm_mirror_delivery_setting_parser_info = {
	.module_name = "doveadm-mirror",
	.defines = doveadm_mirror_delivery_setting_defines,
	.defaults = &doveadm_mirror_delivery_default_settings,
	.type_offset = SIZE_MAX,
	.struct_size = sizeof(struct doveadm_mirror_delivery_settings),
	.parent_offset = SIZE_MAX,
};

const char *doveadm_mirror_recipient_delimiter(void)
{
	static const struct setting_parser_info *set_roots[] = {
		&doveadm_mirror_delivery_setting_parser_info,
		NULL
	};
	struct mail_storage_service_ctx *service;
	const struct doveadm_mirror_delivery_settings *set;
	const char *delimiter;
	void **sets;

	service = doveadm_mirror_storage_service_init(set_roots);
	mail_storage_service_init_settings(service, NULL);
	/* the mail user's settings first, then the roots */
	sets = master_service_settings_get_others(master_service);
	set = sets[1];
	delimiter = t_strdup(set->recipient_delimiter);
	mail_storage_service_deinit(&service);
	return delimiter;
}

void doveadm_mirror_auth_cache_flush(const char *user)
{
	struct auth_master_connection *conn;
	const char *users[] = { user, NULL };
	unsigned int count;

	/* without an auth cache there is nothing to flush; a failure only
	   delays the change until the cache entry expires */
	/* as doveadm auth cache flush: only auth-master may flush */
	conn = auth_master_init(t_strconcat(doveadm_settings->base_dir,
					    "/auth-master", NULL), 0);
	auth_master_set_timeout(conn, DOVEADM_MIRROR_AUTH_TIMEOUT_MSECS);
	if (auth_master_cache_flush(conn, users, &count) < 0) {
		i_warning("Couldn't flush the auth cache for %s: "
			  "the change is seen when the cache entry expires",
			  user);
	}
	auth_master_deinit(&conn);
}

/* Dovecot's {CRAM-MD5} scheme: the HMAC-MD5 inner and outer states of
   the password, in hex (what auth's cram_md5_generate() computes). */
static const char *doveadm_mirror_cram_md5(const char *password)
{
	struct hmac_context ctx;
	unsigned char context[CRAM_MD5_CONTEXTLEN];
	const char *hex;

	hmac_init(&ctx, (const unsigned char *)password, strlen(password),
		  &hash_method_md5);
	hmac_md5_get_cram_context(&ctx, context);
	hex = binary_to_hex(context, sizeof(context));
	safe_memset(&ctx, 0, sizeof(ctx));
	sodium_memzero(context, sizeof(context));
	return t_strconcat("{CRAM-MD5}", hex, NULL);
}

int doveadm_mirror_password_new(enum doveadm_mirror_password_scheme scheme,
				char **password_r, const char **hash_r)
{
	unsigned char raw[DOVEADM_MIRROR_PASSWORD_BYTES];
	size_t b64_len = sodium_base64_ENCODED_LEN(sizeof(raw),
		sodium_base64_VARIANT_URLSAFE_NO_PADDING);
	char *password = t_malloc0(b64_len);
	char hash[crypto_pwhash_argon2id_STRBYTES];

	/* here, not when the module is loaded: doveadm pw registers
	   Dovecot's {ARGON2ID} schemes with a sodium_init() that must be
	   the process's first, and the module is loaded into it too */
	if (sodium_init() < 0)
		i_fatal("sodium_init() failed");
	randombytes_buf(raw, sizeof(raw));
	sodium_bin2base64(password, b64_len, raw, sizeof(raw),
			  sodium_base64_VARIANT_URLSAFE_NO_PADDING);
	sodium_memzero(raw, sizeof(raw));
	if (scheme == DOVEADM_MIRROR_PASSWORD_CRAM_MD5) {
		*password_r = password;
		*hash_r = doveadm_mirror_cram_md5(password);
		return 0;
	}
	/* the parameters of Dovecot's own {ARGON2ID} scheme */
	if (crypto_pwhash_argon2id_str(hash, password, strlen(password),
			crypto_pwhash_argon2id_OPSLIMIT_INTERACTIVE,
			crypto_pwhash_argon2id_MEMLIMIT_INTERACTIVE) < 0) {
		sodium_memzero(password, b64_len);
		doveadm_mirror_fail(EX_TEMPFAIL,
				    "Hashing the password failed: out of memory");
		return -1;
	}
	*password_r = password;
	*hash_r = t_strconcat("{ARGON2ID}", hash, NULL);
	return 0;
}

/* The home, uid and gid of username from the userdb. */
static int
doveadm_mirror_user_home(const char *username, const char **home_r,
			 uid_t *uid_r, gid_t *gid_r, const char **error_r)
{
	const char *const *fields, *value;
	unsigned int num;
	int ret;

	*home_r = NULL;
	*uid_r = (uid_t)-1;
	*gid_r = (gid_t)-1;
	ret = doveadm_mirror_userdb_lookup(username, &fields, error_r);
	if (ret <= 0) {
		if (ret == 0)
			*error_r = "no such user";
		return -1;
	}
	for (; *fields != NULL; fields++) {
		if (str_begins(*fields, "home="))
			*home_r = *fields + 5;
		else if (str_begins(*fields, "uid=") &&
			 str_to_uint(*fields + 4, &num) == 0)
			*uid_r = num;
		else if (str_begins(*fields, "gid=") &&
			 str_to_uint(*fields + 4, &num) == 0)
			*gid_r = num;
	}
	value = *home_r;
	if (value == NULL || value[0] != '/' ||
	    strchr(value + 1, '/') == NULL) {
		*error_r = t_strdup_printf(
			"its home '%s' is not a directory of its own",
			value == NULL ? "" : str_sanitize(value, 200));
		return -1;
	}
	return 0;
}

int doveadm_mirror_purge_storage(const char *username)
{
	const char *home, *error;
	uid_t uid;
	gid_t gid;
	pid_t pid;
	int status;

	if (doveadm_mirror_user_home(username, &home, &uid, &gid,
				     &error) < 0) {
		i_error("Can't purge %s: %s", username, error);
		return -1;
	}
	pid = fork();
	if (pid < 0) {
		i_error("fork() failed: %m");
		return -1;
	}
	if (pid == 0) {
		if (geteuid() == 0) {
			if (gid == (gid_t)-1 || uid == (uid_t)-1 || uid == 0) {
				i_error("Can't purge %s: no uid/gid of its "
					"own in the userdb", username);
				_exit(EX_CONFIG);
			}
			if (setgroups(0, NULL) < 0 || setgid(gid) < 0 ||
			    setuid(uid) < 0) {
				i_error("Can't purge %s: can't become "
					"uid %ld: %m", username, (long)uid);
				_exit(EX_TEMPFAIL);
			}
		}
		/* unlink_directory() returns to the current directory, which
		   the user may not be allowed to open */
		if (chdir("/") < 0) {
			i_error("Can't purge %s: chdir(/) failed: %m",
				username);
			_exit(EX_TEMPFAIL);
		}
		if (unlink_directory(home, UNLINK_DIRECTORY_FLAG_RMDIR,
				     &error) < 0 && errno != ENOENT) {
			i_error("Can't purge %s: %s", username, error);
			_exit(EX_TEMPFAIL);
		}
		_exit(0);
	}
	while (waitpid(pid, &status, 0) < 0) {
		if (errno != EINTR) {
			i_error("waitpid() failed: %m");
			return -1;
		}
	}
	if (WIFSIGNALED(status)) {
		i_error("Purging %s: child process killed by signal %d",
			username, WTERMSIG(status));
		return -1;
	}
	return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

void doveadm_mirror_plugin_init(struct module *module ATTR_UNUSED)
{
	doveadm_mirror_init_register();
	doveadm_mirror_check_register();
	doveadm_mirror_cmds_register();
	doveadm_mirror_account_register();
	doveadm_mirror_verify_register();
	doveadm_mirror_hold_register();
	doveadm_mirror_export_register();
	doveadm_mirror_witness_register();
	doveadm_mirror_access_register();
	doveadm_mirror_schedule_register();
	doveadm_mirror_expire_register();
	doveadm_bag_register();
	doveadm_bag_recipient_register();
	doveadm_bag_flush_register();
	doveadm_bag_usage_register();
}

void doveadm_mirror_plugin_deinit(void)
{
}
