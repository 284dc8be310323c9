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

   With mirror_user_defer_delivery_sync(), the delivery's saves and its
   first commit don't sync what they write in storages with
   mail_fsync=optimized (Dovecot's default): the committed callback gets
   the devices of the filesystems they wrote to, to have them synced with
   something else, and returns TRUE if they were (after the commit). If
   not, the plugin syncs each of them (syncfs()) before that commit
   returns, and fails it if a sync fails. Either way nothing the delivery
   kept is acknowledged before it is as durable as Dovecot's own syncs
   would have made it: a syncfs() after the commit also covers what
   mail_fsync=optimized leaves unsynced (e.g. a maildir rename). Saves
   after the first commit sync as usual. */

struct mail_user;
struct module;

typedef int mirror_delivery_callback_t(void *context, const char **error_r);
typedef bool
mirror_delivery_committed_callback_t(void *context, bool kept,
				     const dev_t *unsynced_devs,
				     unsigned int unsynced_count);

/* Returns FALSE if the plugin is not enabled for the user. */
bool mirror_user_watch_delivery(struct mail_user *user,
				mirror_delivery_callback_t *callback,
				mirror_delivery_committed_callback_t *committed,
				void *context);
/* The watched delivery's writes are synced after its first commit (see
   above). */
void mirror_user_defer_delivery_sync(struct mail_user *user);
/* Returns TRUE if the watch's callback ran (successfully or not). */
bool mirror_user_unwatch_delivery(struct mail_user *user);

/* Whether the user's IMAP or POP3 session is a mirror storage's, whose
   access is logged (mirror-access.h). */
bool mirror_user_access_logged(struct mail_user *user);

void mirror_plugin_init(struct module *module);
void mirror_plugin_deinit(void);

#endif
