/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* The bag on disk: the INBOX of the bag user, opened as that user, with
   the lock that lets one flush of a domain run at a time and the mark
   that asks a running flush to look again (bag-store.h). */

#include "lib.h"
#include "array.h"
#include "str-sanitize.h"
#include "file-lock.h"
#include "settings-parser.h"
#include "smtp-submit-settings.h"
#include "mail-user.h"
#include "mail-namespace.h"
#include "mail-storage.h"
#include "mail-storage-service.h"
#include "bag-store.h"

#include <fcntl.h>
#include <unistd.h>

#define BAG_STORE_LOCK_FILE "dovecot-bag.lock"
#define BAG_STORE_REQUEST_FILE "dovecot-bag.flush-requested"

/* The locks this process holds: fcntl() locks are the process's, so a
   process that runs several flushes (or ATRN sessions) at once must not
   take one twice. */
static ARRAY(char *) bag_store_locked_paths;

static bool bag_store_lock_held(const char *path)
{
	char *held;

	if (!array_is_created(&bag_store_locked_paths))
		return FALSE;
	array_foreach_elem(&bag_store_locked_paths, held) {
		if (strcmp(held, path) == 0)
			return TRUE;
	}
	return FALSE;
}

static void bag_store_lock_forget(const char *path)
{
	char **held;
	unsigned int i, count;

	held = array_get_modifiable(&bag_store_locked_paths, &count);
	for (i = 0; i < count; i++) {
		if (strcmp(held[i], path) == 0) {
			i_free(held[i]);
			array_delete(&bag_store_locked_paths, i, 1);
			break;
		}
	}
	if (array_count(&bag_store_locked_paths) == 0)
		array_free(&bag_store_locked_paths);
}

const struct setting_parser_info *bag_store_set_roots[] = {
	&smtp_submit_setting_parser_info,
	NULL
};

int bag_store_open(struct mail_storage_service_ctx *storage_service,
		   const char *username, const char *service_name,
		   bool sync, struct event *event_parent,
		   struct bag_store **store_r, const char **error_r)
{
	struct mail_storage_service_input input;
	struct smtp_submit_settings *submit_set;
	struct mail_namespace *ns;
	struct bag_store *store;
	void **sets;
	const char *error;
	int ret;

	*store_r = NULL;
	store = i_new(struct bag_store, 1);
	store->username = i_strdup(username);
	i_zero(&input);
	/* the config service sends a module's settings and its
	   dependencies': LDA's are the mail settings and the submission
	   settings that notifications need */
	input.module = "lda";
	input.service = service_name;
	input.username = username;
	input.event_parent = event_parent;
	ret = mail_storage_service_lookup(storage_service, &input,
					  &store->service_user, &error);
	if (ret <= 0) {
		*error_r = ret == 0 ?
			t_strdup_printf("Bag user %s doesn't exist",
					str_sanitize(username, 80)) :
			t_strdup_printf("Bag user %s lookup failed: %s",
					username, error);
		bag_store_close(&store);
		return -1;
	}
	if (mail_storage_service_next(storage_service, store->service_user,
				      &store->user, &error) < 0) {
		*error_r = t_strdup_printf(
			"Failed to initialize bag user %s: %s", username,
			error);
		bag_store_close(&store);
		return -1;
	}
	sets = mail_storage_service_user_get_set(store->service_user);
	submit_set = sets[1];
	if (settings_var_expand(&smtp_submit_setting_parser_info, submit_set,
				store->user->pool,
				mail_user_var_expand_table(store->user),
				&error) <= 0) {
		*error_r = t_strdup_printf("Failed to expand settings: %s",
					   error);
		bag_store_close(&store);
		return -1;
	}
	store->submit_set = submit_set;

	ns = mail_namespace_find_inbox(store->user->namespaces);
	store->box = mailbox_alloc(ns->list, "INBOX",
				   MAILBOX_FLAG_IGNORE_ACLS);
	if (mailbox_open(store->box) < 0 ||
	    (sync && mailbox_sync(store->box, 0) < 0)) {
		*error_r = t_strdup_printf(
			"Failed to open the bag of %s: %s", username,
			mailbox_get_last_internal_error(store->box, NULL));
		bag_store_close(&store);
		return -1;
	}
	*store_r = store;
	return 0;
}

void bag_store_unlock(struct bag_store *store)
{
	if (store->lock == NULL)
		return;
	bag_store_lock_forget(file_lock_get_path(store->lock));
	file_lock_free(&store->lock);
}

void bag_store_close(struct bag_store **_store)
{
	struct bag_store *store = *_store;

	if (store == NULL)
		return;
	*_store = NULL;
	bag_store_unlock(store);
	if (store->box != NULL)
		mailbox_free(&store->box);
	if (store->user != NULL)
		mail_user_deinit(&store->user);
	if (store->service_user != NULL)
		mail_storage_service_user_unref(&store->service_user);
	i_free(store->username);
	i_free(store);
}

static int
bag_store_path(struct bag_store *store, const char *name,
	       const char **path_r, const char **error_r)
{
	const char *home;

	if (mail_user_get_home(store->user, &home) <= 0) {
		*error_r = t_strdup_printf("Bag user %s has no home",
					   store->username);
		return -1;
	}
	*path_r = t_strconcat(home, "/", name, NULL);
	return 0;
}

int bag_store_flush_request(struct bag_store *store, const char **error_r)
{
	const char *path;
	int fd;

	if (bag_store_path(store, BAG_STORE_REQUEST_FILE, &path, error_r) < 0)
		return -1;
	fd = open(path, O_WRONLY | O_CREAT, 0600);
	if (fd == -1) {
		*error_r = t_strdup_printf("open(%s) failed: %m", path);
		return -1;
	}
	i_close_fd(&fd);
	return 0;
}

int bag_store_flush_request_take(struct bag_store *store,
				 const char **error_r)
{
	const char *path;

	if (bag_store_path(store, BAG_STORE_REQUEST_FILE, &path, error_r) < 0)
		return -1;
	if (unlink(path) == 0)
		return 1;
	if (errno == ENOENT)
		return 0;
	*error_r = t_strdup_printf("unlink(%s) failed: %m", path);
	return -1;
}

int bag_store_lock(struct bag_store *store, const char **error_r)
{
	struct file_lock_settings lock_set = {
		.lock_method = FILE_LOCK_METHOD_FCNTL,
		.close_on_free = TRUE,
	};
	const char *path, *error;
	char *held;
	int fd, ret;

	i_assert(store->lock == NULL);
	if (bag_store_path(store, BAG_STORE_LOCK_FILE, &path, error_r) < 0)
		return -1;
	if (bag_store_lock_held(path))
		return 0;
	fd = open(path, O_RDWR | O_CREAT, 0600);
	if (fd == -1) {
		*error_r = t_strdup_printf("open(%s) failed: %m", path);
		return -1;
	}
	ret = file_try_lock(fd, path, F_WRLCK, &lock_set, &store->lock,
			    &error);
	if (ret <= 0) {
		i_close_fd(&fd);
		if (ret < 0)
			*error_r = error;
		return ret;
	}
	if (!array_is_created(&bag_store_locked_paths))
		i_array_init(&bag_store_locked_paths, 4);
	held = i_strdup(path);
	array_push_back(&bag_store_locked_paths, &held);
	return 1;
}

int bag_store_get_status(struct bag_store *store, bool with_size,
			 struct bag_store_status *status_r,
			 const char **error_r)
{
	struct mailbox_status status;
	struct mailbox_metadata metadata;
	struct mailbox_transaction_context *trans;
	struct mail *mail;
	time_t date;

	i_zero(status_r);
	mailbox_get_open_status(store->box, STATUS_MESSAGES, &status);
	status_r->messages = status.messages;
	if (status.messages == 0)
		return 0;
	if (with_size) {
		if (mailbox_get_metadata(store->box,
					 MAILBOX_METADATA_PHYSICAL_SIZE,
					 &metadata) < 0) {
			*error_r = t_strdup_printf(
				"Can't read the size of the bag of %s: %s",
				store->username,
				mailbox_get_last_internal_error(store->box,
								NULL));
			return -1;
		}
		status_r->bytes = metadata.physical_size;
		/* the size lookup may sync the view: a flush may have
		   expunged everything meanwhile */
		mailbox_get_open_status(store->box, STATUS_MESSAGES, &status);
		status_r->messages = status.messages;
		if (status.messages == 0) {
			status_r->bytes = 0;
			return 0;
		}
	}
	/* messages are appended in arrival order: the first is the oldest */
	trans = mailbox_transaction_begin(store->box, 0, "bag status");
	mail = mail_alloc(trans, MAIL_FETCH_SAVE_DATE, NULL);
	mail_set_seq(mail, 1);
	if (mail_get_save_date(mail, &date) >= 0)
		status_r->oldest = date;
	mail_free(&mail);
	mailbox_transaction_rollback(&trans);
	return 0;
}
