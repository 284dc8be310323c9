/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* Witnessed chain heads.

   doveadm mirror witness-key [-f]: make the server's ed25519 witness key
   (libsodium): its 32-byte seed, in hex, in the file mirror_witness_key
   (mode 0600), and the public key in <that file>.pub.pem (PEM, as openssl
   reads it).

   doveadm mirror witness [-n]: a statement of every mirror's chain head
   (its record count and last link), signed with that key, mailed to
   mirror_witness_address through mirror_witness_sendmail (Dovecot's
   smtp-submit, as LDA sends with sendmail_path). Someone who keeps the
   mail can later show that a chain was rewritten: `doveadm mirror verify
   --head LINK ID` finds no record with the link they hold. The nightly
   scan (doveadm mirror expire) sends one too when mirror_witness_address
   is set. -n prints the statement and sends nothing.

   The mail's body is the statement, then the signature:

     dovecot-mirror witness statement 1
     host: mail.example.com
     time: 1796312402 2026-12-03T15:40:02Z
     mirror 1 audit@example.com records 120 head 52b0584...
     ...
     -----BEGIN ED25519 SIGNATURE-----
     <base64 of the 64-byte signature of the lines above, LF-terminated>
     -----END ED25519 SIGNATURE-----
*/

#include "lib.h"
#include "array.h"
#include "str.h"
#include "str-sanitize.h"
#include "hex-binary.h"
#include "base64.h"
#include "hostpid.h"
#include "time-util.h"
#include "ostream.h"
#include "write-full.h"
#include "smtp-address.h"
#include "smtp-submit.h"
#include "message-date.h"
#include "mail-storage-service.h"
#include "doveadm.h"
#include "doveadm-cmd.h"
#include "doveadm-print.h"
#include "doveadm-settings.h"
#include "mirror-def.h"
#include "mirror-registry.h"
#include "mirror-chain.h"
#include "mirror-privileges.h"
#include "doveadm-mirror.h"

#include <sysexits.h>
#include <fcntl.h>
#include <unistd.h>
#include <sodium.h>
#include <sys/stat.h>

#define WITNESS_KEY_DEFAULT "/etc/dovecot/dovecot-mirror-witness.key"
#define WITNESS_SENDMAIL_DEFAULT "/usr/sbin/sendmail"
#define WITNESS_TIMEOUT_SECS 30
#define WITNESS_SIG_BEGIN "-----BEGIN ED25519 SIGNATURE-----"
#define WITNESS_SIG_END "-----END ED25519 SIGNATURE-----"
/* DER of an ed25519 SubjectPublicKeyInfo up to the key */
static const unsigned char witness_spki_prefix[] = {
	0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00
};

static const char *witness_key_path(void)
{
	const char *path = doveadm_plugin_getenv("mirror_witness_key");

	return path == NULL || *path == '\0' ? WITNESS_KEY_DEFAULT : path;
}

/* The secret key, from its seed in path. 0, or -1 with error_r. */
static int
witness_key_read(const char *path,
		 unsigned char pk_r[crypto_sign_PUBLICKEYBYTES],
		 unsigned char sk_r[crypto_sign_SECRETKEYBYTES],
		 const char **error_r)
{
	char hex[crypto_sign_SEEDBYTES * 2 + 2];
	unsigned char seed[crypto_sign_SEEDBYTES];
	struct stat st;
	buffer_t buf;
	ssize_t ret;
	int fd;

	fd = open(path, O_RDONLY | O_NOFOLLOW);
	if (fd == -1) {
		*error_r = t_strdup_printf("open(%s) failed: %m (make the key "
					   "with doveadm mirror witness-key)",
					   path);
		return -1;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) ||
	    (st.st_mode & 0077) != 0) {
		*error_r = t_strdup_printf("%s is not a regular file that only "
					   "its owner may read", path);
		i_close_fd(&fd);
		return -1;
	}
	ret = read(fd, hex, sizeof(hex));
	i_close_fd(&fd);
	buffer_create_from_data(&buf, seed, sizeof(seed));
	if (ret < (ssize_t)sizeof(seed) * 2 ||
	    (ret > (ssize_t)sizeof(seed) * 2 && hex[sizeof(seed) * 2] != '\n') ||
	    (hex[sizeof(seed) * 2] = '\0',
	     hex_to_binary(hex, &buf) < 0)) {
		*error_r = t_strdup_printf("%s is not a witness key (64 hex "
					   "digits)", path);
		sodium_memzero(hex, sizeof(hex));
		sodium_memzero(seed, sizeof(seed));
		return -1;
	}
	if (sodium_init() < 0)
		i_fatal("mirror: sodium_init() failed");
	crypto_sign_seed_keypair(pk_r, sk_r, seed);
	sodium_memzero(seed, sizeof(seed));
	sodium_memzero(hex, sizeof(hex));
	return 0;
}

static const char *witness_public_pem(const unsigned char *pk)
{
	buffer_t *der = t_buffer_create(64);
	string_t *str = t_str_new(128);

	buffer_append(der, witness_spki_prefix, sizeof(witness_spki_prefix));
	buffer_append(der, pk, crypto_sign_PUBLICKEYBYTES);
	str_append(str, "-----BEGIN PUBLIC KEY-----\n");
	base64_encode(der->data, der->used, str);
	str_append(str, "\n-----END PUBLIC KEY-----\n");
	return str_c(str);
}

/* Write data as a new file at path, whole or not at all: a temporary
   file renamed into place, over an old one only with force. */
static int witness_write_new(const char *path, const char *data, mode_t mode,
			     bool force, const char **error_r)
{
	const char *temp = t_strconcat(path, ".tmp", NULL);
	struct stat st;
	int fd;

	if (!force && lstat(path, &st) == 0) {
		*error_r = t_strdup_printf("%s exists (-f replaces the key)",
					   path);
		return -1;
	}
	if (unlink(temp) < 0 && errno != ENOENT) {
		*error_r = t_strdup_printf("unlink(%s) failed: %m", temp);
		return -1;
	}
	fd = open(temp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode);
	if (fd == -1) {
		*error_r = t_strdup_printf("open(%s) failed: %m", temp);
		return -1;
	}
	if (write_full(fd, data, strlen(data)) < 0 || fsync(fd) < 0) {
		*error_r = t_strdup_printf("write(%s) failed: %m", temp);
		i_close_fd(&fd);
		i_unlink(temp);
		return -1;
	}
	if (close(fd) < 0 || rename(temp, path) < 0) {
		*error_r = t_strdup_printf("Writing %s failed: %m", path);
		i_unlink_if_exists(temp);
		return -1;
	}
	return 0;
}

static void cmd_mirror_witness_key(struct doveadm_cmd_context *cctx)
{
	const char *path = witness_key_path(), *pub_path, *error;
	unsigned char seed[crypto_sign_SEEDBYTES];
	unsigned char pk[crypto_sign_PUBLICKEYBYTES];
	unsigned char sk[crypto_sign_SECRETKEYBYTES];
	char hex[sizeof(seed) * 2 + 2];
	bool force = FALSE;

	(void)doveadm_cmd_param_bool(cctx, "force", &force);
	if (sodium_init() < 0)
		i_fatal("mirror: sodium_init() failed");
	randombytes_buf(seed, sizeof(seed));
	crypto_sign_seed_keypair(pk, sk, seed);
	sodium_memzero(sk, sizeof(sk));
	sodium_bin2hex(hex, sizeof(hex) - 1, seed, sizeof(seed));
	sodium_memzero(seed, sizeof(seed));
	hex[sizeof(hex) - 2] = '\n';
	hex[sizeof(hex) - 1] = '\0';
	pub_path = t_strconcat(path, ".pub.pem", NULL);
	if (witness_write_new(path, hex, 0600, force, &error) < 0) {
		sodium_memzero(hex, sizeof(hex));
		doveadm_mirror_fail(EX_CANTCREAT, error);
		return;
	}
	sodium_memzero(hex, sizeof(hex));
	if (witness_write_new(pub_path, witness_public_pem(pk), 0644, TRUE,
			      &error) < 0) {
		doveadm_mirror_fail(EX_CANTCREAT, error);
		return;
	}
	doveadm_print_init(DOVEADM_PRINT_TYPE_TABLE);
	doveadm_print_header_simple("key");
	doveadm_print_header_simple("public_key");
	doveadm_print_header_simple("public_key_pem");
	doveadm_print(path);
	doveadm_print(binary_to_hex(pk, sizeof(pk)));
	doveadm_print(pub_path);
}

/* The head of one mirror's chain, as its storage user. 0, or -1 with
   error_r. */
static int witness_head(struct mail_storage_service_ctx *service,
			const struct mirror_def *def,
			struct mirror_chain_record *rec_r, const char **error_r)
{
	struct doveadm_mirror_inbox inbox;
	struct mirror_privileges privs;
	const char *path, *error;
	int ret;

	i_zero(rec_r);
	mirror_privileges_get(pool_datastack_create(), &privs);
	ret = doveadm_mirror_inbox_open(service, def->storage, &inbox,
					error_r);
	if (ret > 0 &&
	    (doveadm_mirror_chain_path(inbox.box, def->id, &path,
				       error_r) < 0 ||
	     mirror_chain_read_head(path, rec_r, error_r) < 0))
		ret = -1;
	doveadm_mirror_inbox_close(&inbox);
	if (mirror_privileges_set(&privs, &error) < 0)
		i_fatal("%s", error);
	return ret > 0 ? 0 : -1;
}

/* Append one line per mirror to statement: its head, or why it couldn't
   be read ("mirror ID STORAGE unreadable REASON"), so that one broken
   storage doesn't keep the others from being witnessed. Returns the
   number of mirrors whose head couldn't be read, or -1 with error_r if
   the registry can't be. */
static int witness_heads(string_t *statement, unsigned int *count_r,
			 const char **error_r)
{
	ARRAY_TYPE(mirror_def) defs;
	const struct mirror_def *def;
	struct registry *reg;
	struct mail_storage_service_ctx *service;
	struct mirror_chain_record rec;
	const char *error;
	int failed = 0;

	*count_r = 0;
	if ((reg = doveadm_mirror_registry_open()) == NULL) {
		*error_r = "The registry can't be read";
		return -1;
	}
	t_array_init(&defs, 64);
	if (mirror_registry_list_all(reg, pool_datastack_create(), &defs,
				     error_r) < 0) {
		registry_deinit(&reg);
		return -1;
	}
	registry_deinit(&reg);

	service = doveadm_mirror_storage_service_init(NULL);
	array_foreach(&defs, def) T_BEGIN {
		if (witness_head(service, def, &rec, &error) < 0) {
			i_error("mirror witness: Mirror %u: %s", def->id,
				error);
			str_printfa(statement, "mirror %u %s unreadable %s\n",
				    def->id, def->storage,
				    str_sanitize(error, 200));
			failed++;
		} else {
			str_printfa(statement, "mirror %u %s records %"PRIu64
				    " head %s\n", def->id, def->storage,
				    rec.seq, binary_to_hex(rec.link,
							   sizeof(rec.link)));
			(*count_r)++;
		}
	} T_END;
	mail_storage_service_deinit(&service);
	return failed;
}

static int witness_send(const char *address, const char *body,
			const char **error_r)
{
	struct smtp_submit_settings set;
	struct smtp_submit_input input;
	struct smtp_address *rcpt;
	struct smtp_submit *subm;
	struct ostream *output;
	const char *sendmail, *error;
	int ret;

	if (smtp_address_parse_path(pool_datastack_create(), address,
				    SMTP_ADDRESS_PARSE_FLAG_BRACKETS_OPTIONAL,
				    &rcpt, &error) < 0 ||
	    smtp_address_isnull(rcpt)) {
		*error_r = t_strdup_printf("Invalid mirror_witness_address "
					   "'%s'", str_sanitize(address, 80));
		return -1;
	}
	sendmail = doveadm_plugin_getenv("mirror_witness_sendmail");
	i_zero(&set);
	set.hostname = my_hostdomain();
	set.sendmail_path = sendmail == NULL || *sendmail == '\0' ?
		WITNESS_SENDMAIL_DEFAULT : sendmail;
	set.submission_timeout = WITNESS_TIMEOUT_SECS;
	set.mail_debug = doveadm_debug;
	i_zero(&input);
	input.allow_root = TRUE;
	subm = smtp_submit_init_simple(&input, &set, NULL);
	smtp_submit_add_rcpt(subm, rcpt);
	output = smtp_submit_send(subm);
	o_stream_nsend_str(output, t_strdup_printf(
		"From: Mail Mirror witness <MAILER-DAEMON@%s>\n"
		"To: <%s>\n"
		"Subject: Mail Mirror chain heads of %s\n"
		"Date: %s\n"
		"Message-ID: <witness.%ld.%s@%s>\n"
		"MIME-Version: 1.0\n"
		"Content-Type: text/plain; charset=utf-8\n"
		"Content-Transfer-Encoding: 8bit\n"
		"Auto-Submitted: auto-generated\n"
		"\n", my_hostdomain(), smtp_address_encode(rcpt),
		my_hostdomain(), message_date_create(ioloop_time),
		(long)ioloop_time, my_pid, my_hostdomain()));
	o_stream_nsend_str(output, body);
	ret = smtp_submit_run(subm, &error);
	smtp_submit_deinit(&subm);
	if (ret <= 0) {
		*error_r = t_strdup_printf("Sending to %s failed: %s",
					   smtp_address_encode(rcpt), error);
		return -1;
	}
	return 0;
}

int doveadm_mirror_witness(bool dry_run, const char **error_r)
{
	const char *address = doveadm_plugin_getenv("mirror_witness_address");
	unsigned char pk[crypto_sign_PUBLICKEYBYTES];
	unsigned char sk[crypto_sign_SECRETKEYBYTES];
	unsigned char sig[crypto_sign_BYTES];
	time_t now;
	string_t *statement = t_str_new(1024), *body;
	unsigned int count;
	int failed, ret;

	if (!dry_run && (address == NULL || *address == '\0')) {
		*error_r = "mirror_witness_address is not set";
		return -1;
	}
	now = time(NULL);
	str_printfa(statement, "dovecot-mirror witness statement 1\n"
		    "host: %s\ntime: %ld %s\n", my_hostdomain(), (long)now,
		    t_strfgmtime("%Y-%m-%dT%H:%M:%SZ", now));
	/* the key first: without it nothing is opened */
	if (witness_key_read(witness_key_path(), pk, sk, error_r) < 0)
		return -1;
	if ((failed = witness_heads(statement, &count, error_r)) < 0) {
		sodium_memzero(sk, sizeof(sk));
		return -1;
	}
	crypto_sign_detached(sig, NULL, str_data(statement),
			     str_len(statement), sk);
	sodium_memzero(sk, sizeof(sk));
	body = t_str_new(str_len(statement) + 256);
	str_append_str(body, statement);
	str_append(body, WITNESS_SIG_BEGIN"\n");
	base64_encode(sig, sizeof(sig), body);
	str_append(body, "\n"WITNESS_SIG_END"\n");
	if (dry_run) {
		doveadm_print_init(DOVEADM_PRINT_TYPE_FLOW);
		doveadm_print_header("statement", "statement",
				     DOVEADM_PRINT_HEADER_FLAG_HIDE_TITLE);
		doveadm_print(str_c(body));
		if (failed > 0) {
			*error_r = t_strdup_printf("The heads of %d mirrors "
				"couldn't be read", failed);
			return -1;
		}
		return 0;
	}
	ret = witness_send(address, str_c(body), error_r);
	if (ret == 0) {
		i_info("mirror witness: the heads of %u mirrors were sent to "
		       "%s", count, str_sanitize(address, 80));
	}
	if (ret == 0 && failed > 0) {
		*error_r = t_strdup_printf("The heads of %d mirrors couldn't "
					   "be read: the statement says so",
					   failed);
		ret = -1;
	}
	return ret;
}

static void cmd_mirror_witness(struct doveadm_cmd_context *cctx)
{
	const char *error;
	bool dry_run = FALSE;

	(void)doveadm_cmd_param_bool(cctx, "dry-run", &dry_run);
	if (doveadm_mirror_witness(dry_run, &error) < 0)
		doveadm_mirror_fail(EX_TEMPFAIL, error);
}

static struct doveadm_cmd_ver2 doveadm_mirror_witness_commands[] = {
{
	.name = "mirror witness-key",
	.cmd = cmd_mirror_witness_key,
	.usage = "[-f]",
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_PARAM('f', "force", CMD_PARAM_BOOL, 0)
DOVEADM_CMD_PARAMS_END
},
{
	.name = "mirror witness",
	.cmd = cmd_mirror_witness,
	.usage = "[-n]",
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_PARAM('n', "dry-run", CMD_PARAM_BOOL, 0)
DOVEADM_CMD_PARAMS_END
},
};

void doveadm_mirror_witness_register(void)
{
	unsigned int i;

	for (i = 0; i < N_ELEMENTS(doveadm_mirror_witness_commands); i++)
		doveadm_cmd_register_ver2(&doveadm_mirror_witness_commands[i]);
}
