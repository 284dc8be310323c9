#ifndef MIRROR_COPY_H
#define MIRROR_COPY_H

/* Copying a delivered message into mirror storages.

   A copier belongs to one LMTP connection. It keeps every storage user it
   has opened (service user, mail user and INBOX) for the connection's
   lifetime, so that a connection delivering many messages sets up each
   storage once, not once per message.

   A copy's steps, with the fault points (fault-point.h) of test builds
   after each: saved, not committed (mirror-copy-saved); the delivery it
   mirrors committed (mirror-delivery-committed); the copy committed
   (mirror-copy-committed); its chain records appended
   (mirror-chain-appended); counted in the registry (mirror-copy-counted),
   before the caller answers. A crash between the copy's commit and its
   chain record leaves a copy that `doveadm mirror verify` reports as
   unrecorded; one before the count leaves the registry's counter short,
   which `doveadm mirror verify --reconcile` sets right. */

struct mail;
struct mail_storage_service_ctx;
struct mirror_copier;
struct registry;

struct mirror_copy_target {
	/* username of the storage that receives one copy */
	const char *storage;
	/* header lines (CRLF) that start the copy, before the mirror
	   headers, or NULL */
	const char *header;
	/* the mirrors served by this copy: one X-Mirror-Id header each */
	ARRAY_TYPE(uint) mirror_ids;
	/* the recipients that matched: one X-Envelope-To header each */
	ARRAY_TYPE(const_string) envelope_to;

	/* set by mirror_copier_prepare() (NULL if the copy was saved) and
	   mirror_copier_finish() (NULL if it was committed) */
	const char *error;
	/* set by mirror_copy_group_commit(): the copy's size with its mirror
	   headers, and its UID (0 if unknown) */
	uoff_t size;
	uint32_t uid;
};

struct mirror_copy_batch;

/* Sets of mirror ids, kept in arrays */
bool mirror_uint_array_contains(const ARRAY_TYPE(uint) *arr,
				unsigned int value);
void mirror_uint_array_add_unique(ARRAY_TYPE(uint) *arr, unsigned int value);

/* With fsync=FALSE, storages are opened with mail_fsync=never: a copy
   survives the process being killed (it is in the kernel's page cache
   before the recipient's delivery commits), but not a power loss.
   With registry != NULL, every copy made or failed is counted there per
   mirror (with the identity the copier was created with). */
struct mirror_copier *
mirror_copier_init(struct mail_storage_service_ctx *storage_service,
		   struct registry *registry,
		   struct event *event_parent, bool fsync);
void mirror_copier_deinit(struct mirror_copier **copier);
/* Open storage users with the settings of module (which settings the
   config service sends: "lda" for the mail settings) and service (whose
   protocol section applies, e.g. its mail_plugins) instead of LMTP's. */
void mirror_copier_set_service(struct mirror_copier *copier,
			       const char *module, const char *service);
/* A copier that lives longer than an LMTP connection looks each storage
   user up again (userdb) before a batch of copies, as LMTP looks up
   every recipient, at most once a second: a user removed meanwhile gets
   no more copies from a second later on. */
void mirror_copier_set_revalidate(struct mirror_copier *copier);

/* Copies made and failed are given to callback (with the copier's own
   identity) instead of being counted in the registry at once: a copier
   that makes many copies counts them in its own time. */
struct mirror_copy_result;
typedef void mirror_copier_count_callback_t(
	const struct mirror_copy_result *results, unsigned int count,
	void *context);
void mirror_copier_set_count_callback(struct mirror_copier *copier,
				      mirror_copier_count_callback_t *callback,
				      void *context);

/* Save mail, with the targets' headers prepended, into the INBOX of each
   target's storage. With all_or_nothing, the copies are committed only
   if every one of them could be saved. The caller's effective uid/gid,
   groups and ioloop context are the same on return. Each copy sends a
   mirror_copy_finished event (a child of event_parent) per mirror it
   serves. Returns 0 if every copy was committed, -1 if not (see each
   target's error; error_r is the cause of the first failure). */
int mirror_copier_copy(struct mirror_copier *copier, struct mail *mail,
		       struct mirror_copy_target *targets, unsigned int count,
		       bool all_or_nothing, struct event *event_parent,
		       const char **error_r);

/* The same in two steps, so that the copies are committed only after the
   delivery they mirror: mirror_copier_prepare() saves every copy and
   commits none (one batch per copier at a time); mirror_copier_finish()
   then commits them (commit) or rolls them back, and frees the batch.
   targets must stay valid until then. Both return 0 if every copy was
   saved (prepare) or committed (finish), -1 if not (see each target's
   error; error_r is the cause of the first failure). A rolled back batch
   logs, sends events for and counts only the copies that failed
   themselves. A batch still open when the copier is freed is rolled
   back. */
int mirror_copier_prepare(struct mirror_copier *copier, struct mail *mail,
			  struct mirror_copy_target *targets,
			  unsigned int count, bool all_or_nothing,
			  struct event *event_parent,
			  struct mirror_copy_batch **batch_r,
			  const char **error_r);
int mirror_copier_finish(struct mirror_copy_batch **batch, bool commit,
			 const char **error_r);

/* mirror_copier_copy() (never all or nothing) for copies that
   mirror-writer may have made before it died: a target whose copy is
   among the messages its storage got since "since" (by content) is not
   copied again, and its chain records are appended if they are
   missing. With fsync, the storage's filesystems are synced then (the
   writer may have died before it synced them): if that fails, the
   target's error says so. Returns as mirror_copier_copy() does: -1 if
   any target failed, such a sync included. */
int mirror_copier_copy_missing(struct mirror_copier *copier,
			       struct mail *mail, time_t since,
			       struct mirror_copy_target *targets,
			       unsigned int count, struct event *event_parent,
			       const char **error_r);

/* Send the mirror_copy_finished events (children of event_parent) of
   copies made elsewhere (by mirror-writer), and log the failed ones, as
   mirror_copier_finish() does for its own. */
void mirror_copy_targets_report(struct event *event_parent,
				const struct mirror_copy_target *targets,
				unsigned int count);

/* Group commit, for the mirror writer (mirror-writer/): the copies of
   many deliveries into one storage are saved into one transaction and
   committed together, with one chain append per mirror and one count in
   the registry for all of them. Unlike the calls above, a group sends no
   events and logs only what goes wrong in its chain append: its caller
   reports each copy (mirror-writer's clients do, in their own log). */
struct mirror_copy_group;

/* Start a group of copies into the INBOX of the storage user storage. */
struct mirror_copy_group *
mirror_copy_group_begin(struct mirror_copier *copier, const char *storage);
/* Save one copy of the message input (read from offset 0; it is read
   again if the group has to be saved again) with target's headers, and
   the received date (or (time_t)-1). target and input must stay valid
   until the group ends. Returns 0, or -1 if the copy can't be saved
   (target->error; it is not in the group).

   undecided: the copy's delivery hasn't kept the message yet. It is
   saved now only if the storage's format leaves nothing behind of a
   save that is never committed (maildir, sdbox); otherwise (mdbox) only
   the storage is opened now, and the copy is saved at the commit, unless
   it was dropped by then: a process killed in between must not leave a
   copy that an index rebuild would bring back. */
int mirror_copy_group_save(struct mirror_copy_group *group,
			   struct mirror_copy_target *target,
			   struct istream *input, time_t received_date,
			   bool undecided, struct event *event_parent);
/* Take the copy of target out of the group, because its delivery kept
   nothing: the others are saved again without it when the group is
   committed (unless it was never saved). */
void mirror_copy_group_drop(struct mirror_copy_group *group,
			    struct mirror_copy_target *target);
/* Move the copy of target, whose delivery hasn't decided yet, from one
   group into another of the same storage (as mirror_copy_group_save()
   with undecided): from's other copies don't wait for that decision.
   If it was saved in from, from's others are saved again without it.
   Returns as mirror_copy_group_save(). */
int mirror_copy_group_move(struct mirror_copy_group *from,
			   struct mirror_copy_group *to,
			   struct mirror_copy_target *target,
			   struct event *event_parent);
/* The copies in the group (not dropped, not failed). */
unsigned int mirror_copy_group_count(const struct mirror_copy_group *group);
/* Commit the group's copies in one transaction and append their chain
   records. Every target's error is NULL if its copy was committed; its
   size and uid are set; the targets aren't used after this. Returns 0, or
   -1 if some copy failed. The fault points mirror-copy-committed and
   mirror-chain-appended are reached once per group. */
int mirror_copy_group_commit(struct mirror_copy_group *group);
/* Count the committed group's copies (and its failed ones) in the
   registry, then free it (fault point mirror-copy-counted). A crash
   before it leaves a counter short, which `doveadm mirror verify
   --reconcile` raises. */
void mirror_copy_group_end(struct mirror_copy_group **group);
/* Roll back every copy of the group and free it. */
void mirror_copy_group_rollback(struct mirror_copy_group **group);

/* With fsync=TRUE, a group commit doesn't sync what it wrote (storages
   are opened with mail_fsync=never, chains appended without fdatasync):
   the caller makes the groups it committed durable at once with
   mirror_copier_sync() before it says any of them is, one syncfs() per
   filesystem instead of Dovecot's fsyncs (three or four) and the chain's
   per group. The filesystems are those of each storage's mail, index,
   control and attachment directories; a storage that is closed (which
   may write its index) is synced with the next groups, and at
   mirror_copier_deinit(). Only groups may be used with it. Call it
   before any storage is opened. */
void mirror_copier_set_deferred_sync(struct mirror_copier *copier);
/* syncfs() every filesystem that a group committed since the last call
   wrote to. Returns 0, or -1 with the first error if a sync failed or a
   storage's filesystems are not all known: what those groups committed
   may not survive a power loss. */
int mirror_copier_sync(struct mirror_copier *copier, const char **error_r);
/* Whether something waits for mirror_copier_sync(): a committed group, or
   a storage closed since the last one. */
bool mirror_copier_sync_pending(const struct mirror_copier *copier);
/* Have the next mirror_copier_sync() sync the filesystem dev too: what a
   delivery wrote since since_usecs (mirror_monotonic_usecs()) without
   syncing it. Returns FALSE if the copier can't tell that sync's errors
   for it: no open storage is on that filesystem (the copier has no
   descriptor of it), its descriptor was opened after since_usecs (an
   error before would not be reported to it), or a sync of it failed
   since (the error was reported already). */
bool mirror_copier_sync_add_dev(struct mirror_copier *copier, dev_t dev,
				long long since_usecs);
/* A descriptor to syncfs() path's filesystem by: of path, of its nearest
   existing ancestor if it isn't created yet (it will be on that
   filesystem), or if it can't be opened (e.g. search-only) of its nearest
   ancestor on the same filesystem that can. known (may be NULL) ends the
   search when it says a filesystem is synced by other means: fd_r is -1
   then. opened_r is the directory opened (or the unreadable one), and
   open_error_r why path couldn't be opened itself (NULL if it could, or
   it doesn't exist yet). Returns 1, or -1 with error_r. */
int mirror_fs_open(const char *path,
		   bool (*known)(dev_t dev, void *context), void *context,
		   int *fd_r, dev_t *dev_r, const char **opened_r,
		   const char **open_error_r, const char **error_r);
/* CLOCK_MONOTONIC in microseconds: the same clock in every process */
long long mirror_monotonic_usecs(void);

/* Sets of filesystems, by device */
ARRAY_DEFINE_TYPE(mirror_dev, dev_t);
bool mirror_dev_find(const ARRAY_TYPE(mirror_dev) *devs, dev_t dev);
/* Add dev unless it is there already */
void mirror_dev_add(ARRAY_TYPE(mirror_dev) *devs, dev_t dev);
void mirror_dev_remove(ARRAY_TYPE(mirror_dev) *devs, dev_t dev);

#endif
