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
};

struct mirror_copy_batch;

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

#endif
