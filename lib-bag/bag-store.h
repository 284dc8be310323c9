#ifndef BAG_STORE_H
#define BAG_STORE_H

/* A bag on disk: the INBOX of the domain's bag user, opened through a mail
   storage service, and the lock that lets one flush of the domain run at
   a time. */

struct event;
struct file_lock;
struct mail_storage_service_ctx;
struct setting_parser_info;

/* The settings a storage service that opens bags must read (its
   set_roots): how notifications are sent. */
extern const struct setting_parser_info *bag_store_set_roots[];

struct bag_store {
	char *username;
	/* the bag user's submission settings (hostname, submission_host,
	   sendmail_path), for delivery status notifications */
	const struct smtp_submit_settings *submit_set;
	struct mail_storage_service_user *service_user;
	struct mail_user *user;
	struct mailbox *box;
	struct file_lock *lock;
};

struct bag_store_status {
	unsigned int messages;
	/* physical size; only with bag_store_get_status(with_size) */
	uoff_t bytes;
	/* save date of the oldest message, 0 if empty */
	time_t oldest;
};

/* Set up the bag user (as the storage service's flags say: with a
   temporary privilege drop in doveadm, as the service's own user in the
   bag service) and open its INBOX, synced unless sync is FALSE (the
   message count is then what the index last saw: everything LMTP saved,
   read without visiting the mailbox). The storage service must have been
   initialized with bag_store_set_roots. service_name is the mail
   session's service ("doveadm", "bag"). */
int bag_store_open(struct mail_storage_service_ctx *storage_service,
		   const char *username, const char *service_name,
		   bool sync, struct event *event_parent,
		   struct bag_store **store_r, const char **error_r);
void bag_store_close(struct bag_store **store);

/* Take the domain's flush lock (a lock file in the bag user's home)
   without waiting. Returns 1 if taken (held until bag_store_unlock() or
   close), 0 if another process holds it (or this one does, for another
   flush or session), -1 on error. */
int bag_store_lock(struct bag_store *store, const char **error_r);
void bag_store_unlock(struct bag_store *store);

/* A flush was asked for while another process held the lock: the holder
   sees the request (request) and takes it (take: 1 if there was one,
   0 if not, -1 on error) before it lets the lock go. */
int bag_store_flush_request(struct bag_store *store, const char **error_r);
int bag_store_flush_request_take(struct bag_store *store,
				 const char **error_r);

/* The INBOX's state now. Reading the size visits every message. */
int bag_store_get_status(struct bag_store *store, bool with_size,
			 struct bag_store_status *status_r,
			 const char **error_r);

#endif
