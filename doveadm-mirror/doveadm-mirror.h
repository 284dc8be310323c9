#ifndef DOVEADM_MIRROR_H
#define DOVEADM_MIRROR_H

/* What the doveadm mirror and doveadm bag commands share
   (doveadm-mirror.c), and the groups of commands the module registers. */

#include "mirror-chain.h"
#include "mirror-count-journal.h"

struct registry;
struct mirror_def;
struct mail_storage_service_ctx;
struct mail_storage_service_user;
struct mail_user;
struct mailbox;
struct mail;
struct setting_parser_info;

struct doveadm_cmd_context;

/* Log error on stderr and set doveadm's exit code. */
void doveadm_mirror_fail(int exit_code, const char *error);

/* doveadm_cmd_param_str(), but a parameter that the doveadm HTTP API was
   given as JSON null (set, with no value) is not given. */
bool doveadm_mirror_param_str(const struct doveadm_cmd_context *cctx,
			      const char *name, const char **value_r);
/* The UNIX time parameter name (-T): a string of digits on the command
   line, a JSON number or string over the HTTP API. Returns 1 and the time,
   0 if it is not given, -1 if it is not a positive UNIX time (the command
   fails with EX_USAGE). */
int doveadm_mirror_param_time(const struct doveadm_cmd_context *cctx,
			      const char *name, time_t *time_r);
/* Parse a mirror id, or fail the command (EX_USAGE) and return FALSE. */
bool doveadm_mirror_parse_id(const char *id_str, unsigned int *id_r);
/* Find mirror id (its definition allocated from the data stack), or fail
   the command (68 if there is no such mirror, EX_TEMPFAIL if the registry
   can't be read) and return FALSE. */
bool doveadm_mirror_get(struct registry *reg, unsigned int id,
			struct mirror_def *def_r);
/* Open the registry of mirror_dict, or fail the command (EX_CONFIG if it
   is not set, EX_TEMPFAIL if it can't be opened) and return NULL. */
struct registry *doveadm_mirror_registry_open(void);
/* The same, whether or not the registry has its marker: for mirror init
   and mirror check. */
struct registry *doveadm_mirror_registry_open_unchecked(void);
/* The registry, with its write lock (registry-lock.h) held until
   registry_deinit(): for the commands that change it. */
struct registry *doveadm_mirror_registry_open_locked(void);

/* The copies and failures that this host's mirror-writer made and has
   not counted in the registry yet (its journal in base_dir, see
   mirror-count-journal.h), appended to pending (from the data stack).
   Read it before the registry's counters: a count moving from one to the
   other in between is then seen twice, never missed. Returns FALSE
   (with a warning, unless the journal is root's and this isn't) if it
   can't be read: then what it holds is unknown. */
bool doveadm_mirror_uncounted_read(ARRAY_TYPE(mirror_count_pending) *pending);
/* The same for mirror id alone. */
bool doveadm_mirror_uncounted(unsigned int id, unsigned int *copies_r,
			      unsigned int *failures_r);
/* The same, and settled_r is FALSE while mirror-writer is counting some
   of them (they may be in the registry already). */
bool doveadm_mirror_uncounted_settled(unsigned int id, unsigned int *copies_r,
				      unsigned int *failures_r,
				      bool *settled_r);
/* What entry p (may be NULL) adds to the counters: what waits and what
   is being counted. */
void doveadm_mirror_uncounted_sum(const struct mirror_count_pending *p,
				  unsigned int *copies_r,
				  unsigned int *failures_r);

/* A storage service for opening mirror storage users from a command, with
   a temporary privilege drop (restore the identity afterwards with
   mirror_privileges_set()); free it with mail_storage_service_deinit(). */
struct mail_storage_service_ctx *
doveadm_mirror_storage_service_init(const struct setting_parser_info *set_roots[]);

/* A user's INBOX, opened from a command */
struct doveadm_mirror_inbox {
	struct mail_storage_service_user *service_user;
	struct mail_user *user;
	struct mailbox *box;
};
/* Open (and sync) the INBOX of username with service: 1, 0 if there is
   no such user, -1 on error (error_r says why in both cases). Close it
   with doveadm_mirror_inbox_close() either way, then restore the identity
   the command had (mirror_privileges_set()). */
int doveadm_mirror_inbox_open(struct mail_storage_service_ctx *service,
			      const char *username,
			      struct doveadm_mirror_inbox *inbox_r,
			      const char **error_r);
void doveadm_mirror_inbox_close(struct doveadm_mirror_inbox *inbox);
/* The path of mirror_id's hash chain (mirror-chain.h) in the control
   directory of an open INBOX. 0, or -1 with error_r. */
int doveadm_mirror_chain_path(struct mailbox *box, unsigned int mirror_id,
			      const char **path_r, const char **error_r);

/* The content hash of mail as a chain records it (mirror-chain.h: the
   message with line endings normalized to LF), writing those bytes to
   out_fd too unless it is -1. 0, or -1 with error_r (mail->expunged is
   set if the message is gone). */
int doveadm_mirror_mail_hash(struct mail *mail, int out_fd,
			     unsigned char digest_r[MIRROR_CHAIN_HASH_SIZE],
			     const char **error_r);

enum doveadm_mirror_password_scheme {
	/* for users that log in with PLAIN or LOGIN */
	DOVEADM_MIRROR_PASSWORD_ARGON2ID,
	/* for users that must be able to use CRAM-MD5 (ATRN identities):
	   the HMAC-MD5 states, which are as good as the password for
	   CRAM-MD5 but don't reveal it */
	DOVEADM_MIRROR_PASSWORD_CRAM_MD5,
};

/* A new random password (144 bits from libsodium, 24 base64url
   characters) and the hash that is stored instead of it. The password is
   allocated from the data stack: wipe it with sodium_memzero() once
   shown. -1 fails the command. */
int doveadm_mirror_password_new(enum doveadm_mirror_password_scheme scheme,
				char **password_r, const char **hash_r);
/* recipient_delimiter, which LMTP strips details of recipients with. */
const char *doveadm_mirror_recipient_delimiter(void);
/* Returns 1 if the userdb knows user, 0 if not, -1 if it can't tell. */
int doveadm_mirror_user_exists(const char *user, const char **error_r);
/* Make a changed password effective at once (best effort). */
void doveadm_mirror_auth_cache_flush(const char *user);
/* Delete the home of username, which holds its mail with the shipped
   configuration (mail_location under ~). It runs in a child process
   that becomes the user, so that nothing is deleted as root and this
   process (perhaps a long-lived doveadm server) keeps its identity.
   Errors are logged. */
int doveadm_mirror_purge_storage(const char *username);


/* Whether the service level of def's domain allows another mirror; if
   not, the command has failed. */
bool doveadm_mirror_limit_check(struct registry *reg,
				const struct mirror_def *def);

/* Sign the heads of every mirror's chain with the witness key and mail
   them to mirror_witness_address (doveadm-mirror-witness.c); dry_run
   prints the statement instead. 0, or -1 with error_r. */
int doveadm_mirror_witness(bool dry_run, const char **error_r);

/* The groups of commands: doveadm mirror init, check, add|list|set|
   password|remove, account ..., verify, hold|release, export|verify-export,
   witness-key|witness, access, schedule, expire;
   doveadm bag add|list|show|remove|password, recipient ..., flush,
   usage. */
void doveadm_mirror_init_register(void);
void doveadm_mirror_check_register(void);
void doveadm_mirror_cmds_register(void);
void doveadm_mirror_account_register(void);
void doveadm_mirror_verify_register(void);
void doveadm_mirror_hold_register(void);
void doveadm_mirror_export_register(void);
void doveadm_mirror_witness_register(void);
void doveadm_mirror_access_register(void);
void doveadm_mirror_schedule_register(void);
void doveadm_mirror_expire_register(void);
void doveadm_bag_register(void);
void doveadm_bag_recipient_register(void);
void doveadm_bag_flush_register(void);
void doveadm_bag_usage_register(void);

#endif
