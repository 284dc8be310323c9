#ifndef MIRROR_PLUGIN_H
#define MIRROR_PLUGIN_H

/* The "mirror" mail plugin. Loaded into the users that LMTP delivers to, it
   tells the LMTP plugin when a delivery is about to keep the message: the
   callback runs once, just before the first commit of a delivery
   (MAILBOX_FLAG_POST_SESSION) transaction that saved something, whether
   the save comes from Sieve (keep, fileinto) or from the default
   delivery. Discarded or rejected messages are never committed, so the
   callback does not run for them. If it fails, the commit fails with a
   temporary error and every later delivery commit of the same watch fails
   too, so that nothing is kept that must be delivered again. Once that
   first commit is over, the committed callback says whether it kept the
   message (it runs whenever the callback did, also after its failure).

   With mirror_user_defer_delivery_sync(), the committed callback is
   told the filesystems (devices) of the mailboxes the delivery wrote to,
   and the time before its first write to them. The delivery's saves and
   its first commit into a mailbox of a storage with mail_fsync=optimized
   (Dovecot's default) whose filesystems are all "covered" don't sync
   what they write ("deferred"): the callback is to have them synced
   after the commit and return TRUE if it did. If not, the plugin syncs
   each of them (syncfs(), through a descriptor opened before the
   delivery wrote, so that it reports any writeback error since) before
   that commit returns, and fails it (and the delivery's later commits)
   if a sync fails. Either way nothing the delivery kept is acknowledged
   before it is on disk: a syncfs() after the commit also covers what
   mail_fsync=optimized leaves unsynced (e.g. a maildir rename). Other
   mailboxes sync as usual; their filesystems are reported too, so that
   the caller can learn which are covered. Saves after the first commit
   sync as usual. */

struct mail_user;
struct module;

typedef int mirror_delivery_callback_t(void *context, const char **error_r);
/* What a watched delivery wrote (mirror_user_defer_delivery_sync()) */
struct mirror_delivery_sync {
	/* the filesystems of the mailboxes it wrote to */
	const dev_t *devs;
	unsigned int count;
	/* mirror_monotonic_usecs() before its first write to them (if
	   deferred; LLONG_MAX if not) */
	long long since_usecs;
	/* some of them were written without syncs */
	bool deferred;
};

typedef bool
mirror_delivery_committed_callback_t(void *context, bool kept,
				     const struct mirror_delivery_sync *sync);

/* Returns FALSE if the plugin is not enabled for the user. */
bool mirror_user_watch_delivery(struct mail_user *user,
				mirror_delivery_callback_t *callback,
				mirror_delivery_committed_callback_t *committed,
				void *context);
/* The watched delivery's writes to covered filesystems are synced after
   its first commit (see above). */
void mirror_user_defer_delivery_sync(struct mail_user *user,
				     const dev_t *covered,
				     unsigned int covered_count);
/* Returns TRUE if the watch's callback ran (successfully or not). */
bool mirror_user_unwatch_delivery(struct mail_user *user);

/* Whether the user's IMAP or POP3 session is a mirror storage's, whose
   access is logged (mirror-access.h). */
bool mirror_user_access_logged(struct mail_user *user);

void mirror_plugin_init(struct module *module);
void mirror_plugin_deinit(void);

#endif
