/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* The copier: saves a delivered message into other users' INBOXes (mirror
   storages, bag users, POP3 boxes) as those users, keeping each storage
   open for the LMTP connection (mirror-copy.h). */

#define _GNU_SOURCE /* syncfs() */
#include "lib.h"
#include "array.h"
#include "str.h"
#include "ioloop.h"
#include "istream.h"
#include "istream-concat.h"
#include "istream-crlf.h"
#include "istream-hash.h"
#include "hash-method.h"
#include "seq-range-array.h"
#include "mail-user.h"
#include "mail-namespace.h"
#include "mail-storage-private.h" /* mailbox_get_path_to() */
#include "mail-storage.h"
#include "mail-storage-service.h"
#include "fault-point.h"
#include "mirror-registry.h"
#include "mirror-chain.h"
#include "mirror-privileges.h"
#include "mirror-copy.h"
#include "mirror-event.h"

#include <unistd.h>
#include <fcntl.h>
#include <time.h>
#include <sys/stat.h>

/* Open storages kept per connection; the least recently used goes first. */
#define MIRROR_COPIER_MAX_STORAGES 16
/* An open mailbox keeps what its commits appended to its index: the
   transaction logs it has read (up to a megabyte each before they rotate,
   two for mdbox with its map) and a record per message. A storage that
   took this many copies is closed and opened again at its next copy, so
   that the LMTP process of a long connection stays small. */
#define MIRROR_STORAGE_MAX_COPIES 256
/* A copier that revalidates (mirror-writer) looks a storage user up again
   for a batch once this many seconds have passed since the userdb last
   said it exists: a removed user gets no copies a second later, without
   a userdb round trip for each of the many batches a second. */
#define MIRROR_REVALIDATE_SECS 1

/* A filesystem that storages write to, for mirror_copier_sync(): one
   descriptor while any open storage is on it, so that syncfs() reports
   each writeback error on it once, at the first sync after it */
struct mirror_sync_fs {
	dev_t dev;
	int fd;
	/* the first directory it was opened for, for errors */
	char *path;
	/* when fd was opened, and when a syncfs() of it last failed
	   (mirror_monotonic_usecs(); 0: never): syncfs() reports a
	   writeback error to each descriptor once, and only if it was open
	   before the error */
	long long opened_usecs, failed_usecs;
};

struct mirror_storage {
	char *username;
	struct mail_storage_service_user *service_user;
	struct mail_user *user;
	struct mailbox *box;
	struct mirror_privileges privs;
	time_t last_used;
	/* when the userdb last said the user exists (revalidate) */
	time_t validated;
	/* copies since the mailbox was opened */
	unsigned int copies;
	/* groups with an open transaction in the mailbox: it stays open */
	unsigned int busy;
	/* the user's ioloop context, whose activation (also for the
	   mailbox's own timeouts) switches to the user's privileges and
	   whose deactivation back to the copier's (home_privs) */
	struct ioloop_context *ioloop_ctx;
	const struct mirror_privileges *home_privs;
	/* the filesystems of its mail, index, control and attachment
	   directories (once needed), and whether one of them is unknown */
	ARRAY_TYPE(mirror_dev) sync_devs;
	bool sync_devs_incomplete;
	/* a save never committed leaves nothing the format restores: a
	   copy may be saved before its delivery decided */
	bool early_save;
};

struct mirror_copier {
	pool_t pool;
	/* parent of the storage users' events */
	struct event *event_parent;
	bool fsync;
	/* fsync, but by mirror_copier_sync() for all groups at once */
	bool defer_sync;
	/* the filesystems the open storages are on */
	ARRAY(struct mirror_sync_fs) filesystems;
	/* those that committed groups wrote to since the last sync */
	ARRAY_TYPE(mirror_dev) sync_pending;
	/* a storage whose filesystems are not all known was written to */
	char *sync_error;
	struct mail_storage_service_ctx *storage_service;
	/* the module and service whose settings storage users get
	   (default "lmtp" and "lmtp") */
	const char *module, *service;
	/* look a cached storage user up again before it is used */
	bool revalidate;
	/* where copies are counted, with the identity the copier was created
	   with (LMTP's own, before any delivery drops privileges) */
	struct registry *registry;
	struct mirror_privileges privs;
	/* counts the copies instead of the registry, if set */
	mirror_copier_count_callback_t *count_callback;
	void *count_context;
	ARRAY(struct mirror_storage *) storages;
	/* the copies saved and not yet committed or rolled back */
	struct mirror_copy_batch *batch;
};

/* State of one target of a batch */
struct mirror_copy_state {
	/* created when the copy starts, so that its duration is the copy's */
	struct event *event;
	struct mirror_storage *storage;
	struct mailbox_transaction_context *trans;
	uoff_t size;
	/* the copy's content hash, for the mirrors' chains: computed while
	   saving (context from mirror_chain_hash_method) */
	void *hash_ctx;
	unsigned char content_hash[MIRROR_CHAIN_HASH_SIZE];
	bool hashed;
	/* why there is no copy (from the batch's pool) */
	const char *error;
	/* the copy itself failed (its save or its commit): logged, sent as
	   an event and counted, also in a batch that is rolled back */
	bool failed;
};

struct mirror_copy_batch {
	pool_t pool;
	struct mirror_copier *copier;
	struct mirror_copy_target *targets;
	struct mirror_copy_state *states;
	unsigned int count;
	bool all_or_nothing;
	/* a copy could not be saved */
	bool failed;
};

/* The caller's identity and ioloop context, put back on return */
struct mirror_copy_caller {
	struct mirror_privileges privs;
	struct ioloop_context *ctx;
};

static void mirror_copy_batch_free(struct mirror_copy_batch **_batch);

bool mirror_uint_array_contains(const ARRAY_TYPE(uint) *arr,
				unsigned int value)
{
	unsigned int v;

	array_foreach_elem(arr, v) {
		if (v == value)
			return TRUE;
	}
	return FALSE;
}

void mirror_uint_array_add_unique(ARRAY_TYPE(uint) *arr, unsigned int value)
{
	if (!mirror_uint_array_contains(arr, value))
		array_push_back(arr, &value);
}
static void
mirror_copy_batch_end(struct mirror_copy_batch *batch, bool commit);


struct mirror_copier *
mirror_copier_init(struct mail_storage_service_ctx *storage_service,
		   struct registry *registry,
		   struct event *event_parent, bool fsync)
{
	struct mirror_copier *copier;
	pool_t pool;

	pool = pool_alloconly_create("mirror copier", 1024);
	copier = p_new(pool, struct mirror_copier, 1);
	copier->pool = pool;
	copier->storage_service = storage_service;
	copier->module = copier->service = "lmtp";
	copier->event_parent = event_parent;
	copier->fsync = fsync;
	copier->registry = registry;
	mirror_privileges_get(pool, &copier->privs);
	event_ref(event_parent);
	i_array_init(&copier->storages, 4);
	i_array_init(&copier->filesystems, 4);
	i_array_init(&copier->sync_pending, 4);
	return copier;
}

/* Whether each commit and chain append syncs what it wrote itself. */
static bool mirror_copier_fsyncs(const struct mirror_copier *copier)
{
	return copier->fsync && !copier->defer_sync;
}

static int mirror_dev_idx(const ARRAY_TYPE(mirror_dev) *devs, dev_t dev)
{
	unsigned int i;

	for (i = 0; i < array_count(devs); i++) {
		if (*array_idx(devs, i) == dev)
			return (int)i;
	}
	return -1;
}

bool mirror_dev_find(const ARRAY_TYPE(mirror_dev) *devs, dev_t dev)
{
	return mirror_dev_idx(devs, dev) >= 0;
}

void mirror_dev_add(ARRAY_TYPE(mirror_dev) *devs, dev_t dev)
{
	if (!mirror_dev_find(devs, dev))
		array_push_back(devs, &dev);
}

void mirror_dev_remove(ARRAY_TYPE(mirror_dev) *devs, dev_t dev)
{
	int idx = mirror_dev_idx(devs, dev);

	if (idx >= 0)
		array_delete(devs, idx, 1);
}

static struct mirror_sync_fs *
mirror_copier_filesystem(struct mirror_copier *copier, dev_t dev)
{
	struct mirror_sync_fs *fs;

	array_foreach_modifiable(&copier->filesystems, fs) {
		if (fs->dev == dev)
			return fs;
	}
	return NULL;
}

int mirror_fs_open(const char *path,
		   bool (*known)(dev_t dev, void *context), void *context,
		   int *fd_r, dev_t *dev_r, const char **opened_r,
		   const char **open_error_r, const char **error_r)
{
	struct stat st;
	const char *p, *dir = path, *unreadable = NULL, *open_error = NULL;
	dev_t dev = 0;
	int fd;

	*open_error_r = NULL;
	/* (O_NONBLOCK: a FIFO the user put there doesn't block) */
	while ((fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY |
			  O_CLOEXEC)) < 0) {
		if (errno != ENOENT || unreadable != NULL) {
			if (unreadable == NULL) {
				unreadable = path;
				open_error = t_strdup(strerror(errno));
			}
			if (stat(path, &st) < 0) {
				*error_r = t_strdup_printf(
					"stat(%s) failed: %m: the filesystem "
					"of %s is unknown", path, unreadable);
				return -1;
			}
			if (path == unreadable)
				dev = st.st_dev;
			else if (st.st_dev != dev)
				break;
			if (known != NULL && known(dev, context)) {
				*fd_r = -1;
				*dev_r = dev;
				*opened_r = unreadable;
				*open_error_r = open_error;
				return 1;
			}
		}
		if ((p = strrchr(path, '/')) == NULL || path[1] == '\0')
			break;
		path = p == path ? "/" : t_strdup_until(path, p);
	}
	if (fd < 0) {
		if (unreadable == NULL) {
			*error_r = t_strdup_printf("open(%s) failed: %m: the "
				"filesystem of %s is unknown", path, dir);
		} else {
			*error_r = t_strdup_printf("open(%s) failed: %s, nor "
				"can a directory above it on its filesystem "
				"be opened", unreadable, open_error);
		}
		return -1;
	}
	if (fstat(fd, &st) < 0) {
		*error_r = t_strdup_printf("fstat(%s) failed: %m: the "
			"filesystem of %s is unknown", path, dir);
		i_close_fd(&fd);
		return -1;
	}
	if (unreadable != NULL && st.st_dev != dev) {
		*error_r = t_strdup_printf("open(%s) failed: %s, and %s is "
			"on another filesystem", unreadable, open_error, path);
		i_close_fd(&fd);
		return -1;
	}
	*fd_r = fd;
	*dev_r = st.st_dev;
	*opened_r = path;
	*open_error_r = unreadable == NULL ? NULL :
		t_strdup_printf("open(%s) failed: %s", unreadable, open_error);
	return 1;
}

static bool mirror_copier_fs_known(dev_t dev, void *context)
{
	struct mirror_copier *copier = context;

	return mirror_copier_filesystem(copier, dev) != NULL;
}

/* The filesystem of path, added to the copier's, its device to devs.
   Returns FALSE if it can't be found (mirror_fs_open()). */
static bool
mirror_copier_add_path(struct mirror_copier *copier,
		       ARRAY_TYPE(mirror_dev) *devs, const char *path)
{
	struct mirror_sync_fs *fs;
	const char *opened, *open_error, *error;
	dev_t dev;
	int fd;

	if (mirror_fs_open(path, mirror_copier_fs_known, copier, &fd, &dev,
			   &opened, &open_error, &error) < 0) {
		e_error(copier->event_parent, "mirror: %s: it can't be "
			"synced", error);
		return FALSE;
	}
	if (open_error != NULL) {
		e_debug(copier->event_parent, "mirror: %s: its filesystem "
			"is synced through %s", open_error,
			fd == -1 ? "another directory" : opened);
	}
	if (mirror_copier_filesystem(copier, dev) != NULL)
		i_close_fd(&fd);
	else {
		fs = array_append_space(&copier->filesystems);
		fs->dev = dev;
		fs->fd = fd;
		fs->path = i_strdup(opened);
		fs->opened_usecs = mirror_monotonic_usecs();
	}
	mirror_dev_add(devs, dev);
	return TRUE;
}

/* As the storage user: the filesystems of the storage's mail, index,
   control (chain) and attachment directories. */
static void mirror_storage_sync_devs_init(struct mirror_copier *copier,
					  struct mirror_storage *storage)
{
	static const enum mailbox_list_path_type types[] = {
		MAILBOX_LIST_PATH_TYPE_MAILBOX,
		MAILBOX_LIST_PATH_TYPE_CONTROL,
		MAILBOX_LIST_PATH_TYPE_INDEX,
	};
	const char *path;
	unsigned int i;
	bool ok = TRUE;

	if (array_is_created(&storage->sync_devs))
		return;
	i_array_init(&storage->sync_devs, 2);
	/* mdbox keeps the mail files under the root, not the mailbox */
	if (mailbox_list_get_root_path(storage->box->list,
				       MAILBOX_LIST_PATH_TYPE_DIR, &path))
		ok = mirror_copier_add_path(copier, &storage->sync_devs, path);
	for (i = 0; i < N_ELEMENTS(types); i++) {
		if (mailbox_get_path_to(storage->box, types[i], &path) > 0 &&
		    !mirror_copier_add_path(copier, &storage->sync_devs, path))
			ok = FALSE;
	}
	/* sdbox and mdbox keep attachments there (mail_fsync=never leaves
	   them unsynced too) */
	path = storage->box->storage->set->mail_attachment_dir;
	if (path != NULL && path[0] == '/' &&
	    !mirror_copier_add_path(copier, &storage->sync_devs, path))
		ok = FALSE;
	storage->sync_devs_incomplete = !ok;
}

/* A group committed into storage (or the storage is closed, which may
   write its index): its filesystems are synced next. */
static void mirror_copier_sync_add(struct mirror_copier *copier,
				   struct mirror_storage *storage)
{
	const dev_t *dev;

	mirror_storage_sync_devs_init(copier, storage);
	if (storage->sync_devs_incomplete && copier->sync_error == NULL) {
		copier->sync_error = i_strdup_printf(
			"Not all filesystems of storage %s are known: not "
			"synced", storage->username);
	}
	array_foreach(&storage->sync_devs, dev)
		mirror_dev_add(&copier->sync_pending, *dev);
}

static int
mirror_copier_syncfs(struct mirror_copier *copier,
		     const ARRAY_TYPE(mirror_dev) *devs, const char **error_r)
{
	struct mirror_sync_fs *fs;
	const dev_t *dev;
	int ret = 0;

	array_foreach(devs, dev) {
		fs = mirror_copier_filesystem(copier, *dev);
		i_assert(fs != NULL);
		if (syncfs(fs->fd) < 0) {
			fs->failed_usecs = mirror_monotonic_usecs();
			if (ret == 0) {
				*error_r = t_strdup_printf(
					"syncfs(%s) failed: %m", fs->path);
			}
			ret = -1;
		}
	}
	return ret;
}

void mirror_copier_set_deferred_sync(struct mirror_copier *copier)
{
	i_assert(array_count(&copier->storages) == 0);
	copier->defer_sync = copier->fsync;
}

/* After a sync: close the filesystems that no open storage is on, so
   that one that is unmounted isn't held busy. */
static void mirror_copier_filesystems_release(struct mirror_copier *copier)
{
	struct mirror_sync_fs *fs;
	struct mirror_storage *storage;
	unsigned int i = 0;
	bool used;

	i_assert(array_count(&copier->sync_pending) == 0);
	while (i < array_count(&copier->filesystems)) {
		fs = array_idx_modifiable(&copier->filesystems, i);
		used = FALSE;
		array_foreach_elem(&copier->storages, storage) {
			if (used)
				break;
			used = array_is_created(&storage->sync_devs) &&
				mirror_dev_find(&storage->sync_devs, fs->dev);
		}
		if (used) {
			i++;
			continue;
		}
		i_close_fd(&fs->fd);
		i_free(fs->path);
		array_delete(&copier->filesystems, i, 1);
	}
}

long long mirror_monotonic_usecs(void)
{
	struct timespec ts;

	if (clock_gettime(CLOCK_MONOTONIC, &ts) < 0)
		i_fatal("clock_gettime(CLOCK_MONOTONIC) failed: %m");
	return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

bool mirror_copier_sync_add_dev(struct mirror_copier *copier, dev_t dev,
				long long since_usecs)
{
	const struct mirror_sync_fs *fs;

	fs = mirror_copier_filesystem(copier, dev);
	if (fs == NULL || fs->opened_usecs > since_usecs ||
	    fs->failed_usecs >= since_usecs)
		return FALSE;
	mirror_dev_add(&copier->sync_pending, dev);
	return TRUE;
}

bool mirror_copier_sync_pending(const struct mirror_copier *copier)
{
	return array_count(&copier->sync_pending) > 0 ||
		copier->sync_error != NULL;
}

int mirror_copier_sync(struct mirror_copier *copier, const char **error_r)
{
	const char *error = NULL, *sync_error;
	int ret;

	ret = mirror_copier_syncfs(copier, &copier->sync_pending, &error);
	array_clear(&copier->sync_pending);
	mirror_copier_filesystems_release(copier);
	if (copier->sync_error != NULL) {
		/* a storage of those groups can't be synced: first */
		sync_error = t_strdup(copier->sync_error);
		i_free(copier->sync_error);
		error = sync_error;
		ret = -1;
	}
	*error_r = error;
	return ret;
}

static bool mirror_storage_activate(struct mirror_storage *storage,
				    const char **error_r)
{
	if (mirror_privileges_set(&storage->privs, error_r) < 0)
		return FALSE;
	mail_storage_service_io_activate_user(storage->service_user);
	return TRUE;
}

static void mirror_storage_deactivate(struct mirror_storage *storage)
{
	mail_storage_service_io_deactivate_user(storage->service_user);
}

/* The mailbox's timeouts (e.g. its mailbox list index refreshing itself
   later) fire in the ioloop with the user's context activated: they must
   run as the user too, never as the process (root in LMTP and
   mirror-writer), or they would leave files only root can write. */
static void mirror_storage_context_activate(struct mirror_storage *storage)
{
	const char *error;

	if (mirror_privileges_set(&storage->privs, &error) < 0)
		i_fatal("mirror: %s", error);
}

static void mirror_storage_context_deactivate(struct mirror_storage *storage)
{
	const char *error;

	if (mirror_privileges_set(storage->home_privs, &error) < 0)
		i_fatal("mirror: %s", error);
}

static void mirror_storage_free(struct mirror_storage **_storage)
{
	struct mirror_storage *storage = *_storage;
	const char *error;

	*_storage = NULL;
	if (storage->user != NULL) {
		/* closing the mailbox may still write its index */
		if (mirror_storage_activate(storage, &error)) {
			mailbox_free(&storage->box);
			mirror_storage_deactivate(storage);
		}
		if (storage->box != NULL)
			mailbox_free(&storage->box);
		mail_user_deinit(&storage->user);
	}
	if (storage->ioloop_ctx != NULL) {
		io_loop_context_remove_callbacks(storage->ioloop_ctx,
			mirror_storage_context_activate,
			mirror_storage_context_deactivate, storage);
		io_loop_context_unref(&storage->ioloop_ctx);
	}
	if (storage->service_user != NULL)
		mail_storage_service_user_unref(&storage->service_user);
	if (array_is_created(&storage->sync_devs))
		array_free(&storage->sync_devs);
	i_free(storage->privs.groups);
	i_free(storage->username);
	i_free(storage);
}

static void mirror_copier_forget(struct mirror_copier *copier,
				 struct mirror_storage *storage)
{
	struct mirror_storage *const *storages;
	unsigned int i, count;

	storages = array_get(&copier->storages, &count);
	for (i = 0; i < count; i++) {
		if (storages[i] == storage) {
			array_delete(&copier->storages, i, 1);
			break;
		}
	}
	/* closing it may write its index: synced with the next groups */
	if (copier->defer_sync)
		mirror_copier_sync_add(copier, storage);
	mirror_storage_free(&storage);
}

static void mirror_copier_forget_name(struct mirror_copier *copier,
				      const char *username)
{
	struct mirror_storage *storage;

	array_foreach_elem(&copier->storages, storage) {
		if (strcmp(storage->username, username) == 0) {
			if (storage->busy == 0)
				mirror_copier_forget(copier, storage);
			return;
		}
	}
}

void mirror_copier_deinit(struct mirror_copier **_copier)
{
	struct mirror_copier *copier = *_copier;
	struct mirror_storage *storage;
	struct mirror_sync_fs *fs;
	struct ioloop_context *orig_ctx;
	struct mirror_privileges orig;
	const char *error;

	if (copier == NULL)
		return;
	*_copier = NULL;

	T_BEGIN {
		mirror_privileges_get(pool_datastack_create(), &orig);
		orig_ctx = io_loop_get_current_context(current_ioloop);
		if (orig_ctx != NULL) {
			io_loop_context_ref(orig_ctx);
			io_loop_context_deactivate(orig_ctx);
		}
		if (copier->batch != NULL) {
			/* the delivery never ended: nothing is kept */
			mirror_copy_batch_end(copier->batch, FALSE);
			mirror_copy_batch_free(&copier->batch);
		}
		array_foreach_elem(&copier->storages, storage) {
			if (copier->defer_sync)
				mirror_copier_sync_add(copier, storage);
			mirror_storage_free(&storage);
		}
		if (mirror_privileges_set(&orig, &error) < 0)
			i_fatal("mirror: %s", error);
		if (orig_ctx != NULL) {
			io_loop_context_activate(orig_ctx);
			io_loop_context_unref(&orig_ctx);
		}
	} T_END;
	/* freed above */
	array_clear(&copier->storages);
	/* closing the storages may have written their indexes */
	if (copier->defer_sync && mirror_copier_sync(copier, &error) < 0)
		e_error(copier->event_parent, "mirror: %s", error);
	array_free(&copier->storages);
	array_foreach_modifiable(&copier->filesystems, fs) {
		i_close_fd(&fs->fd);
		i_free(fs->path);
	}
	array_free(&copier->filesystems);
	array_free(&copier->sync_pending);
	i_free(copier->sync_error);
	event_unref(&copier->event_parent);
	pool_unref(&copier->pool);
}

void mirror_copier_set_revalidate(struct mirror_copier *copier)
{
	copier->revalidate = TRUE;
}

void mirror_copier_set_count_callback(struct mirror_copier *copier,
				      mirror_copier_count_callback_t *callback,
				      void *context)
{
	copier->count_callback = callback;
	copier->count_context = context;
}

void mirror_copier_set_service(struct mirror_copier *copier,
			       const char *module, const char *service)
{
	copier->module = p_strdup(copier->pool, module);
	copier->service = p_strdup(copier->pool, service);
}

static struct mirror_storage *
mirror_copier_find(struct mirror_copier *copier, const char *username)
{
	struct mirror_storage *storage;

	array_foreach_elem(&copier->storages, storage) {
		if (strcmp(storage->username, username) == 0)
			return storage;
	}
	return NULL;
}

static void mirror_copier_evict(struct mirror_copier *copier)
{
	struct mirror_storage *storage, *oldest = NULL;

	if (array_count(&copier->storages) < MIRROR_COPIER_MAX_STORAGES)
		return;
	array_foreach_elem(&copier->storages, storage) {
		if (storage->busy == 0 && (oldest == NULL ||
					   storage->last_used < oldest->last_used))
			oldest = storage;
	}
	if (oldest != NULL)
		mirror_copier_forget(copier, oldest);
}

/* Look the storage user up in the userdb, with the copier's module and
   service. */
static int
mirror_copier_lookup_user(struct mirror_copier *copier, const char *username,
			  struct mail_storage_service_user **service_user_r,
			  const char **error_r)
{
	struct mail_storage_service_input input;
	const char *error;
	int ret;

	i_zero(&input);
	input.module = copier->module;
	input.service = copier->service;
	input.username = username;
	input.event_parent = copier->event_parent;
	ret = mail_storage_service_lookup(copier->storage_service, &input,
					  service_user_r, &error);
	/* it may have regained root */
	mirror_privileges_forget();
	if (ret > 0)
		return 0;
	*error_r = ret == 0 ?
		t_strdup_printf("Storage user %s doesn't exist", username) :
		t_strdup_printf("Storage user %s lookup failed: %s",
				username, error);
	return -1;
}

/* Whether a save that is never committed (its process killed before the
   commit) leaves nothing behind that the mailbox's format brings back:
   maildir writes it to tmp/ and sdbox to a .temp. file, which no index
   rebuild reads and Dovecot deletes after 36 hours. mdbox appends it to
   a shared mail file, and puts it into the mailbox when it rebuilds its
   indexes (as mbox does with what is in its file). */
static bool mirror_storage_saves_leave_nothing(struct mailbox *box)
{
	const char *name = mailbox_get_storage(box)->name;

	/* "dbox" is sdbox's old name */
	return strcmp(name, "maildir") == 0 || strcmp(name, "sdbox") == 0 ||
		strcmp(name, "dbox") == 0;
}

/* Every commit syncs the index, and a dbox sync marks each message from
   the index's first \Recent one on as recent again, one at a time.
   Nobody selects a storage over IMAP (which would move that point), so
   each commit stepped through every copy the storage had ever received.
   Copies are archived, not news: the copies from before this open are
   no longer recent, and a commit steps through those since (a storage
   is opened again after MIRROR_STORAGE_MAX_COPIES). Not with
   MAILBOX_FLAG_DROP_RECENT: that writes the header again at every
   commit, and syncs it where the storage fsyncs. */
static void mirror_storage_drop_recent(struct mirror_storage *storage)
{
	struct mailbox_status status;
	struct mailbox_update update;

	mailbox_get_open_status(storage->box, STATUS_UIDNEXT, &status);
	i_zero(&update);
	update.min_first_recent_uid = status.uidnext;
	if (mailbox_update(storage->box, &update) < 0) {
		/* the copies only cost more */
		e_warning(storage->box->event, "mirror: Can't drop the "
			  "\\Recent flags of storage %s: %s",
			  storage->username, mailbox_get_last_internal_error(
				storage->box, NULL));
	}
}

/* Set up a storage user and open its INBOX. On success the user is active,
   with its privileges. */
static int
mirror_copier_open(struct mirror_copier *copier, const char *username,
		   struct mirror_storage **storage_r, const char **error_r)
{
	struct mirror_storage *storage;
	struct mail_namespace *ns;
	const char *error;
	int ret;

	storage = i_new(struct mirror_storage, 1);
	storage->username = i_strdup(username);
	if (mirror_copier_lookup_user(copier, username,
				      &storage->service_user, error_r) < 0) {
		mirror_storage_free(&storage);
		return -1;
	}
	if (!mirror_copier_fsyncs(copier) &&
	    mail_storage_service_user_set_setting(storage->service_user,
						  "mail_fsync", "never",
						  &error) <= 0)
		i_panic("mirror: Can't set mail_fsync=never: %s", error);
	ret = mail_storage_service_next(copier->storage_service,
					storage->service_user,
					&storage->user, &error);
	/* it switched to the user's identity, or failed half-way */
	mirror_privileges_forget();
	if (ret < 0) {
		*error_r = t_strdup_printf(
			"Failed to initialize storage user %s: %s",
			username, error);
		mirror_storage_free(&storage);
		return -1;
	}
	/* remember the identity the storage service gave this user */
	T_BEGIN {
		struct mirror_privileges privs;

		mirror_privileges_get(pool_datastack_create(), &privs);
		storage->privs = privs;
		storage->privs.groups = i_new(gid_t, privs.ngroups + 1);
		memcpy(storage->privs.groups, privs.groups,
		       sizeof(gid_t) * privs.ngroups);
	} T_END;
	/* the user's context is the active one now */
	storage->home_privs = &copier->privs;
	storage->ioloop_ctx = io_loop_get_current_context(current_ioloop);
	i_assert(storage->ioloop_ctx != NULL);
	io_loop_context_ref(storage->ioloop_ctx);
	io_loop_context_add_callbacks(storage->ioloop_ctx,
				      mirror_storage_context_activate,
				      mirror_storage_context_deactivate, storage);

	ns = mail_namespace_find_inbox(storage->user->namespaces);
	storage->box = mailbox_alloc(ns->list, "INBOX", MAILBOX_FLAG_SAVEONLY);
	if (mailbox_open(storage->box) < 0) {
		*error_r = t_strdup_printf(
			"Failed to open INBOX of storage user %s: %s",
			username, mailbox_get_last_internal_error(
				storage->box, NULL));
		mirror_storage_deactivate(storage);
		mirror_storage_free(&storage);
		return -1;
	}
	mirror_storage_drop_recent(storage);
	if (copier->defer_sync)
		mirror_storage_sync_devs_init(copier, storage);
	storage->early_save = mirror_storage_saves_leave_nothing(storage->box);
	*storage_r = storage;
	return 0;
}

/* Whether the storage user still exists (userdb). */
static int
mirror_copier_lookup(struct mirror_copier *copier, const char *username,
		     const char **error_r)
{
	struct mail_storage_service_user *service_user;

	if (mirror_copier_lookup_user(copier, username, &service_user,
				      error_r) < 0)
		return -1;
	mail_storage_service_user_unref(&service_user);
	return 0;
}

/* The storage, opened if it isn't open. An open one is activated only
   with activate, a newly opened one always: active_r says which. */
static int
mirror_copier_get_storage(struct mirror_copier *copier, const char *username,
			  bool activate, struct mirror_storage **storage_r,
			  bool *active_r, const char **error_r)
{
	struct mirror_storage *storage;

	storage = mirror_copier_find(copier, username);
	if (storage != NULL && copier->revalidate &&
	    ioloop_time >= storage->validated + MIRROR_REVALIDATE_SECS) {
		if (mirror_copier_lookup(copier, username, error_r) < 0) {
			/* one that another group has open goes with that
			   group */
			if (storage->busy == 0)
				mirror_copier_forget(copier, storage);
			return -1;
		}
		storage->validated = ioloop_time;
	}
	if (storage != NULL && storage->copies >= MIRROR_STORAGE_MAX_COPIES &&
	    storage->busy == 0) {
		mirror_copier_forget(copier, storage);
		storage = NULL;
	}
	if (storage != NULL) {
		if (activate && !mirror_storage_activate(storage, error_r))
			return -1;
		*active_r = activate;
	} else {
		mirror_copier_evict(copier);
		if (mirror_copier_open(copier, username, &storage,
				       error_r) < 0)
			return -1;
		storage->validated = ioloop_time;
		array_push_back(&copier->storages, &storage);
		*active_r = TRUE;
	}
	storage->last_used = ioloop_time;
	storage->copies++;
	*storage_r = storage;
	return 0;
}

/* The storage, opened if needed, and active */
static int
mirror_copier_get(struct mirror_copier *copier, const char *username,
		  struct mirror_storage **storage_r, const char **error_r)
{
	bool active;

	return mirror_copier_get_storage(copier, username, TRUE, storage_r,
					 &active, error_r);
}

static struct istream *
mirror_copy_input(const struct mirror_copy_target *target,
		  struct istream *mail_input, uoff_t *header_size_r)
{
	struct istream *inputs[3];
	string_t *hdr = t_str_new(256);
	const char *addr;
	unsigned int id;

	if (target->header != NULL)
		str_append(hdr, target->header);
	array_foreach_elem(&target->mirror_ids, id)
		str_printfa(hdr, "X-Mirror-Id: %u\r\n", id);
	array_foreach_elem(&target->envelope_to, addr)
		str_printfa(hdr, "X-Envelope-To: %s\r\n", addr);
	*header_size_r = str_len(hdr);

	i_stream_seek(mail_input, 0);
	inputs[0] = i_stream_create_from_data(str_data(hdr), str_len(hdr));
	inputs[1] = i_stream_create_limit(mail_input, UOFF_T_MAX);
	inputs[2] = NULL;
	struct istream *input = i_stream_create_concat(inputs);
	i_stream_unref(&inputs[0]);
	i_stream_unref(&inputs[1]);
	return input;
}

/* Wrap the copy's input so that saving it computes its content hash: the
   message with line endings normalized to LF, which is what every storage
   keeps or can give back (maildir adds CRs only with mail_save_crlf). */
static struct istream *
mirror_copy_hash_input(struct mirror_copy_state *state, struct istream *input)
{
	const struct hash_method *meth = &mirror_chain_hash_method;
	struct istream *lf_input, *hash_input;

	i_assert(state->hash_ctx == NULL);
	state->hash_ctx = i_malloc(meth->context_size);
	meth->init(state->hash_ctx);
	lf_input = i_stream_create_lf(input);
	hash_input = i_stream_create_hash(lf_input, meth, state->hash_ctx);
	i_stream_unref(&lf_input);
	return hash_input;
}

/* Save one copy of mail_input (read from its start) into trans, without
   committing it. On failure the save is cancelled, and the transaction
   is left for the caller to roll back. */
static int
mirror_copy_save_input(struct mirror_copy_state *state,
		       struct mailbox_transaction_context *trans,
		       const struct mirror_copy_target *target,
		       struct istream *mail_input, time_t received_date,
		       const char **error_r)
{
	struct mailbox *box = state->storage->box;
	struct mail_save_context *save_ctx;
	struct istream *copy_input, *input;
	uoff_t header_size;
	ssize_t ret;
	bool failed = FALSE;

	copy_input = mirror_copy_input(target, mail_input, &header_size);
	i_free(state->hash_ctx);
	state->hashed = FALSE;
	input = mirror_copy_hash_input(state, copy_input);

	save_ctx = mailbox_save_alloc(trans);
	if (received_date != (time_t)-1)
		mailbox_save_set_received_date(save_ctx, received_date, 0);
	if (mailbox_save_begin(&save_ctx, input) < 0)
		failed = TRUE;
	else {
		do {
			if (mailbox_save_continue(save_ctx) < 0) {
				failed = TRUE;
				break;
			}
		} while ((ret = i_stream_read(input)) > 0);
		if (!failed && input->stream_errno != 0) {
			*error_r = t_strdup_printf(
				"Failed to read the message: %s",
				i_stream_get_error(input));
			mailbox_save_cancel(&save_ctx);
			i_stream_unref(&input);
			i_stream_unref(&copy_input);
			return -1;
		}
		if (failed)
			mailbox_save_cancel(&save_ctx);
		else if (mailbox_save_finish(&save_ctx) < 0)
			failed = TRUE;
	}
	if (!failed && input->eof) {
		/* the whole message went through the hash */
		mirror_chain_hash_method.result(state->hash_ctx,
						state->content_hash);
		state->hashed = TRUE;
	}
	/* the size of the message with its mirror headers, as given */
	state->size = copy_input->v_offset;
	i_stream_unref(&input);
	i_stream_unref(&copy_input);
	if (failed) {
		*error_r = t_strdup_printf("Saving failed: %s",
			mailbox_get_last_internal_error(box, NULL));
		return -1;
	}
	return 0;
}

/* UIDs are needed for the mirrors' chains */
static struct mailbox_transaction_context *
mirror_copy_transaction_begin(struct mirror_storage *storage)
{
	return mailbox_transaction_begin(storage->box,
		MAILBOX_TRANSACTION_FLAG_EXTERNAL |
		MAILBOX_TRANSACTION_FLAG_ASSIGN_UIDS, "mirror copy");
}

/* Save (but don't commit) one copy in a transaction of its own. */
static int
mirror_copy_save(struct mirror_copy_state *state,
		 const struct mirror_copy_target *target, struct mail *mail,
		 const char **error_r)
{
	struct istream *mail_input;
	time_t received_date;

	if (mail_get_stream(mail, NULL, NULL, &mail_input) < 0) {
		*error_r = t_strdup_printf("Failed to read the message: %s",
			mailbox_get_last_internal_error(mail->box, NULL));
		return -1;
	}
	if (mail_get_received_date(mail, &received_date) < 0)
		received_date = (time_t)-1;
	state->trans = mirror_copy_transaction_begin(state->storage);
	if (mirror_copy_save_input(state, state->trans, target, mail_input,
				   received_date, error_r) < 0) {
		mailbox_transaction_rollback(&state->trans);
		return -1;
	}
	return 0;
}

/* Append a copy record to the chain of every mirror the committed copy
   serves. The copy is committed already: a failure here is logged, and
   doesn't fail the copy. */
static void
mirror_copy_chain_append(struct mirror_copier *copier,
			 struct mirror_copy_state *state,
			 const struct mirror_copy_target *target,
			 const struct mail_transaction_commit_changes *changes)
{
	const struct seq_range *range;
	const char *dir, *path, *error = NULL;
	unsigned int id;
	int ret;

	if (!state->hashed)
		error = "The copy's content hash is unknown";
	else if (array_count(&changes->saved_uids) == 0 ||
		 changes->uid_validity == 0)
		error = "The copy's UID is unknown";
	else if ((ret = mailbox_get_path_to(state->storage->box,
					    MAILBOX_LIST_PATH_TYPE_CONTROL,
					    &dir)) <= 0) {
		error = ret == 0 ? "The storage has no control directory" :
			t_strdup_printf("Control directory unknown: %s",
				mailbox_get_last_internal_error(
					state->storage->box, NULL));
	}
	if (error != NULL) {
		array_foreach_elem(&target->mirror_ids, id) {
			e_error(state->event, "Mirror %u: chain append for "
				"the copy to %s failed: %s", id,
				target->storage, error);
		}
		return;
	}
	range = array_front(&changes->saved_uids);
	array_foreach_elem(&target->mirror_ids, id) {
		path = t_strdup_printf("%s/%s", dir,
				       mirror_chain_file_name(id));
		if (mirror_chain_append(path, id, MIRROR_CHAIN_RECORD_COPY,
					ioloop_time, changes->uid_validity,
					range->seq1, state->content_hash,
					mirror_copier_fsyncs(copier), NULL,
					&error) < 0) {
			e_error(state->event, "Mirror %u: chain append for "
				"the copy to %s failed: %s", id,
				target->storage, error);
		}
	}
}

static void
mirror_copy_finished(struct event *event,
		     const struct mirror_copy_target *target, uoff_t size)
{
	unsigned int id;

	array_foreach_elem(&target->mirror_ids, id) {
		struct event_passthrough *e =
			event_create_passthrough(event)->
			set_name("mirror_copy_finished")->
			add_int("mirror_id", id)->
			add_str("storage", target->storage)->
			add_int("size", size)->
			add_int("recipients", array_count(&target->envelope_to));
		if (target->error == NULL) {
			e_debug(e->event(), "Mirror %u: copied %"PRIuUOFF_T
				" bytes to %s", id, size, target->storage);
		} else {
			e->add_str("error", target->error);
			e_error(e->event(), "Mirror %u: copy to %s failed: %s",
				id, target->storage, target->error);
		}
	}
}

void mirror_copy_targets_report(struct event *event_parent,
				const struct mirror_copy_target *targets,
				unsigned int count)
{
	struct event *event;
	unsigned int i;

	for (i = 0; i < count; i++) {
		event = event_create(event_parent);
		event_add_category(event, &event_category_mirror);
		event_set_append_log_prefix(event, "mirror: ");
		mirror_copy_finished(event, &targets[i], targets[i].size);
		event_unref(&event);
	}
}

static void mirror_copy_caller_leave(struct mirror_copy_caller *caller)
{
	caller->ctx = io_loop_get_current_context(current_ioloop);
	if (caller->ctx != NULL) {
		io_loop_context_ref(caller->ctx);
		io_loop_context_deactivate(caller->ctx);
	}
}

static void mirror_copy_caller_return(struct mirror_copy_caller *caller)
{
	const char *error;

	/* A failed user lookup leaves the process at euid 0: always return
	   to the caller's identity. */
	if (mirror_privileges_set(&caller->privs, &error) < 0)
		i_fatal("mirror: %s", error);
	if (caller->ctx != NULL) {
		io_loop_context_activate(caller->ctx);
		io_loop_context_unref(&caller->ctx);
	}
}

/* Save every copy of the batch, committing none. */
static void
mirror_copy_batch_save(struct mirror_copy_batch *batch, struct mail *mail,
		       struct event *event_parent)
{
	struct mirror_copier *copier = batch->copier;
	struct mirror_copy_state *state;
	const char *error;
	unsigned int i;

	for (i = 0; i < batch->count; i++) {
		state = &batch->states[i];
		state->event = event_create(event_parent);
		event_add_category(state->event, &event_category_mirror);
		event_set_append_log_prefix(state->event, "mirror: ");
		if (mirror_copier_get(copier, batch->targets[i].storage,
				      &state->storage, &error) < 0) {
			state->error = p_strdup(batch->pool, error);
			state->failed = TRUE;
			batch->failed = TRUE;
			continue;
		}
		if (mirror_copy_save(state, &batch->targets[i], mail,
				     &error) < 0) {
			state->error = p_strdup(batch->pool, error);
			state->failed = TRUE;
			batch->failed = TRUE;
		}
		mirror_storage_deactivate(state->storage);
		if (state->error != NULL) {
			mirror_copier_forget(copier, state->storage);
			state->storage = NULL;
		}
	}
}

static void mirror_copy_batch_free(struct mirror_copy_batch **_batch)
{
	struct mirror_copy_batch *batch = *_batch;
	unsigned int i;

	*_batch = NULL;
	for (i = 0; i < batch->count; i++) {
		event_unref(&batch->states[i].event);
		i_free(batch->states[i].hash_ctx);
	}
	pool_unref(&batch->pool);
}

/* Commit the copies saved (commit), or roll them back. */
static void
mirror_copy_batch_end(struct mirror_copy_batch *batch, bool commit)
{
	struct mirror_copier *copier = batch->copier;
	struct mirror_copy_state *state;
	struct mail_transaction_commit_changes changes;
	const char *error;
	unsigned int i;
	bool all_failed = batch->failed && batch->all_or_nothing;

	for (i = 0; i < batch->count; i++) {
		state = &batch->states[i];
		if (state->trans == NULL)
			continue;
		if (!mirror_storage_activate(state->storage, &error)) {
			/* cannot happen: this identity was used to save */
			i_panic("mirror: %s", error);
		}
		if (!commit) {
			mailbox_transaction_rollback(&state->trans);
			state->error = "Not copied, because the delivery "
				"kept nothing";
		} else if (all_failed) {
			mailbox_transaction_rollback(&state->trans);
			state->error = "Not copied, because another "
				"mirror copy of the message failed";
		} else if (mailbox_transaction_commit_get_changes(
				&state->trans, &changes) < 0) {
			state->error = p_strdup_printf(batch->pool,
				"Commit failed: %s",
				mailbox_get_last_internal_error(
					state->storage->box, NULL));
			state->failed = TRUE;
			batch->failed = TRUE;
		} else {
			FAULT_POINT("mirror-copy-committed");
			/* still as the storage user: it owns the chain */
			mirror_copy_chain_append(copier, state,
						 &batch->targets[i], &changes);
			pool_unref(&changes.pool);
			FAULT_POINT("mirror-chain-appended");
		}
		mirror_storage_deactivate(state->storage);
		if (commit && state->error != NULL && !all_failed)
			mirror_copier_forget(copier, state->storage);
	}
}

/* One result per mirror that target's copy serves, with its error. */
static void
mirror_copy_results_add(ARRAY_TYPE(mirror_copy_result) *results,
			const struct mirror_copy_target *target,
			const char *error)
{
	struct mirror_copy_result *result;
	unsigned int id;

	array_foreach_elem(&target->mirror_ids, id) {
		result = array_append_space(results);
		result->id = id;
		result->error = error;
	}
}

/* Count results in the registry as the copier's own identity (the
   registry belongs to the mail system, not to a user); the caller's
   identity is its own to restore. */
static void
mirror_copier_count_results(struct mirror_copier *copier,
			    const ARRAY_TYPE(mirror_copy_result) *results)
{
	const char *error;

	if (copier->registry == NULL || array_count(results) == 0)
		return;
	if (mirror_privileges_set(&copier->privs, &error) < 0) {
		i_error("mirror: Can't count copies: %s", error);
		return;
	}
	if (copier->count_callback != NULL) {
		copier->count_callback(array_front(results),
				       array_count(results),
				       copier->count_context);
		return;
	}
	mirror_registry_status_update(copier->registry, array_front(results),
				      array_count(results));
}

/* Count the copies made and failed per mirror, as the copier's own
   identity: the registry belongs to the mail system, not to a user. A
   rolled back batch counts only the copies whose save failed. */
static void
mirror_copier_count(struct mirror_copier *copier,
		    const struct mirror_copy_batch *batch, bool commit)
{
	ARRAY_TYPE(mirror_copy_result) results;
	unsigned int i;

	t_array_init(&results, batch->count);
	for (i = 0; i < batch->count; i++) {
		if (commit || batch->states[i].failed) {
			mirror_copy_results_add(&results, &batch->targets[i],
						batch->states[i].error);
		}
	}
	mirror_copier_count_results(copier, &results);
}

int mirror_copier_prepare(struct mirror_copier *copier, struct mail *mail,
			  struct mirror_copy_target *targets,
			  unsigned int count, bool all_or_nothing,
			  struct event *event_parent,
			  struct mirror_copy_batch **batch_r,
			  const char **error_r)
{
	struct mirror_copy_batch *batch;
	struct mirror_copy_caller caller;
	unsigned int i;
	pool_t pool;

	i_assert(copier->batch == NULL);
	/* its commits sync what they wrote themselves */
	i_assert(!copier->defer_sync);

	pool = pool_alloconly_create("mirror copy batch", 1024);
	batch = p_new(pool, struct mirror_copy_batch, 1);
	batch->pool = pool;
	batch->copier = copier;
	batch->targets = targets;
	batch->count = count;
	batch->all_or_nothing = all_or_nothing;
	batch->states = p_new(pool, struct mirror_copy_state, count);
	copier->batch = batch;

	mirror_privileges_get(pool, &caller.privs);
	mirror_copy_caller_leave(&caller);
	mirror_copy_batch_save(batch, mail, event_parent);
	mirror_copy_caller_return(&caller);
	FAULT_POINT("mirror-copy-saved");

	*error_r = NULL;
	for (i = 0; i < count; i++) {
		targets[i].error = batch->states[i].error == NULL ? NULL :
			t_strdup(batch->states[i].error);
		if (*error_r == NULL && targets[i].error != NULL)
			*error_r = targets[i].error;
	}
	*batch_r = batch;
	return batch->failed ? -1 : 0;
}

int mirror_copier_finish(struct mirror_copy_batch **_batch, bool commit,
			 const char **error_r)
{
	struct mirror_copy_batch *batch = *_batch;
	struct mirror_copier *copier = batch->copier;
	struct mirror_copy_target *targets = batch->targets;
	struct mirror_copy_caller caller;
	unsigned int i;
	bool failed = FALSE;

	*_batch = NULL;
	i_assert(copier->batch == batch);
	copier->batch = NULL;
	if (commit)
		FAULT_POINT("mirror-delivery-committed");

	mirror_privileges_get(batch->pool, &caller.privs);
	mirror_copy_caller_leave(&caller);
	mirror_copy_batch_end(batch, commit);
	*error_r = NULL;
	for (i = 0; i < batch->count; i++) {
		struct mirror_copy_state *state = &batch->states[i];

		targets[i].error = state->error == NULL ? NULL :
			t_strdup(state->error);
		if (targets[i].error != NULL) {
			failed = TRUE;
			if (state->failed && *error_r == NULL)
				*error_r = targets[i].error;
		}
		/* in a rolled back batch only the copies that failed
		   themselves are copy failures */
		if (commit || state->failed) {
			mirror_copy_finished(state->event, &targets[i],
					     state->size);
		}
	}
	if (copier->registry != NULL)
		mirror_copier_count(copier, batch, commit);
	mirror_copy_caller_return(&caller);
	if (commit)
		FAULT_POINT("mirror-copy-counted");
	mirror_copy_batch_free(&batch);
	if (failed && *error_r == NULL) {
		/* rolled back */
		*error_r = "Not copied, because the delivery kept nothing";
	}
	return failed ? -1 : 0;
}

int mirror_copier_copy(struct mirror_copier *copier, struct mail *mail,
		       struct mirror_copy_target *targets, unsigned int count,
		       bool all_or_nothing, struct event *event_parent,
		       const char **error_r)
{
	struct mirror_copy_batch *batch;
	const char *error;
	int ret;

	ret = mirror_copier_prepare(copier, mail, targets, count,
				    all_or_nothing, event_parent, &batch,
				    error_r);
	if (mirror_copier_finish(&batch, TRUE, &error) < 0) {
		if (ret == 0)
			*error_r = error;
		ret = -1;
	}
	return ret;
}

/* Group commit (mirror-copy.h) */

struct mirror_copy_member {
	struct mirror_copy_target *target;
	struct istream *input;
	time_t received_date;
	struct mirror_copy_state state;
	/* found in the storage after a failed commit: its UID */
	uint32_t landed_uid;
	/* taken out of the group (or its save failed) */
	bool dropped;
	/* not saved yet: its delivery hasn't decided, and the storage's
	   format would keep a save that is never committed */
	bool deferred;
};

struct mirror_copy_group {
	pool_t pool;
	struct mirror_copier *copier;
	const char *storage_name;
	/* NULL until the first copy is saved, and after a failure to open */
	struct mirror_storage *storage;
	struct mailbox_transaction_context *trans;
	ARRAY(struct mirror_copy_member *) members;
	/* what mirror_copy_group_end() counts (in the group's pool) */
	ARRAY_TYPE(mirror_copy_result) results;
	time_t started;
	/* a copy left the transaction: it is saved again without it */
	bool resave;
};

static uint32_t
mirror_copy_find(struct mirror_storage *storage,
		 const unsigned char hash[MIRROR_CHAIN_HASH_SIZE], time_t since);

struct mirror_copy_group *
mirror_copy_group_begin(struct mirror_copier *copier, const char *storage)
{
	struct mirror_copy_group *group;
	pool_t pool;

	pool = pool_alloconly_create("mirror copy group", 1024);
	group = p_new(pool, struct mirror_copy_group, 1);
	group->pool = pool;
	group->copier = copier;
	group->storage_name = p_strdup(pool, storage);
	group->started = ioloop_time;
	p_array_init(&group->members, pool, 8);
	return group;
}

unsigned int mirror_copy_group_count(const struct mirror_copy_group *group)
{
	struct mirror_copy_member *member;
	unsigned int count = 0;

	array_foreach_elem(&group->members, member) {
		if (!member->dropped)
			count++;
	}
	return count;
}

static void mirror_copy_group_release(struct mirror_copy_group *group)
{
	if (group->storage != NULL) {
		i_assert(group->storage->busy > 0);
		group->storage->busy--;
		group->storage = NULL;
	}
}

/* As the storage user: save one member into the group's transaction. */
static int
mirror_copy_group_save_member(struct mirror_copy_group *group,
			      struct mirror_copy_member *member,
			      const char **error_r)
{
	if (group->trans == NULL)
		group->trans = mirror_copy_transaction_begin(group->storage);
	member->state.storage = group->storage;
	return mirror_copy_save_input(&member->state, group->trans,
				      member->target, member->input,
				      member->received_date, error_r);
}

/* Roll the transaction back and save every member that is still in the
   group again, until all of them are saved (a member whose save fails is
   dropped with its error). As the storage user. */
static void mirror_copy_group_resave(struct mirror_copy_group *group)
{
	struct mirror_copy_member *member;
	const char *error;
	bool again = TRUE;

	while (again) {
		again = FALSE;
		if (group->trans != NULL)
			mailbox_transaction_rollback(&group->trans);
		array_foreach_elem(&group->members, member) {
			if (member->dropped || member->landed_uid != 0)
				continue;
			member->deferred = FALSE;
			if (mirror_copy_group_save_member(group, member,
							  &error) < 0) {
				member->target->error =
					p_strdup(group->pool, error);
				member->state.failed = TRUE;
				member->dropped = TRUE;
				again = TRUE;
				break;
			}
		}
	}
	group->resave = FALSE;
}

/* Save the deferred members, whose deliveries kept the message, into the
   transaction. As the storage user. */
static void mirror_copy_group_save_deferred(struct mirror_copy_group *group)
{
	struct mirror_copy_member *member;
	const char *error;

	array_foreach_elem(&group->members, member) {
		if (!member->deferred || member->dropped)
			continue;
		member->deferred = FALSE;
		if (mirror_copy_group_save_member(group, member, &error) < 0) {
			member->target->error = p_strdup(group->pool, error);
			member->state.failed = TRUE;
			member->dropped = TRUE;
			/* the transaction may not take more after a failed
			   save: the others are saved again */
			group->resave = TRUE;
			break;
		}
		FAULT_POINT("mirror-copy-saved");
	}
}

/* Count one copy that failed before it was in a group's transaction. */
static void
mirror_copy_group_count_failed(struct mirror_copier *copier,
			       const struct mirror_copy_target *target)
{
	ARRAY_TYPE(mirror_copy_result) results;

	t_array_init(&results, 4);
	mirror_copy_results_add(&results, target, target->error);
	mirror_copier_count_results(copier, &results);
}

int mirror_copy_group_save(struct mirror_copy_group *group,
			   struct mirror_copy_target *target,
			   struct istream *input, time_t received_date,
			   bool undecided, struct event *event_parent)
{
	struct mirror_copier *copier = group->copier;
	struct mirror_copy_member *member;
	struct mirror_copy_caller caller;
	const char *error;
	bool active = FALSE, fetched = FALSE;
	int ret = 0;

	member = p_new(group->pool, struct mirror_copy_member, 1);
	member->target = target;
	member->input = input;
	member->received_date = received_date;
	member->state.event = event_create(event_parent);
	event_add_category(member->state.event, &event_category_mirror);
	event_set_append_log_prefix(member->state.event, "mirror: ");
	target->error = NULL;

	mirror_privileges_get(pool_datastack_create(), &caller.privs);
	mirror_copy_caller_leave(&caller);
	if (group->storage == NULL) {
		/* an open storage is activated below, if it saves now */
		fetched = TRUE;
		if (mirror_copier_get_storage(copier, group->storage_name,
					      FALSE, &group->storage, &active,
					      &error) < 0)
			ret = -1;
		else
			group->storage->busy++;
	} else {
		group->storage->last_used = ioloop_time;
		group->storage->copies++;
	}
	if (ret == 0 && undecided && !group->storage->early_save) {
		/* saved at the commit, if its delivery keeps it: nothing
		   to do as the storage's user now */
		member->deferred = TRUE;
		if (active)
			mirror_storage_deactivate(group->storage);
	} else if (ret == 0 && !active &&
		   !mirror_storage_activate(group->storage, &error)) {
		ret = -1;
		if (fetched) {
			/* as if it had failed to open */
			group->storage->busy--;
			group->storage = NULL;
		}
	} else if (ret == 0) {
		if (mirror_copy_group_save_member(group, member, &error) < 0) {
			/* the transaction may not take more after a failed
			   save: the others are saved again */
			ret = -1;
			if (group->trans != NULL)
				group->resave = TRUE;
		}
		mirror_storage_deactivate(group->storage);
	}
	if (ret < 0) {
		/* not in the group: its target may be gone before the
		   group ends */
		target->error = p_strdup(group->pool, error);
		mirror_copy_group_count_failed(copier, target);
		event_unref(&member->state.event);
		i_free(member->state.hash_ctx);
	} else {
		array_push_back(&group->members, &member);
	}
	mirror_copy_caller_return(&caller);
	if (ret == 0 && !member->deferred)
		FAULT_POINT("mirror-copy-saved");
	return ret;
}

static struct mirror_copy_member *
mirror_copy_group_find_member(struct mirror_copy_group *group,
			      const struct mirror_copy_target *target)
{
	struct mirror_copy_member *member;

	array_foreach_elem(&group->members, member) {
		if (member->target == target && !member->dropped)
			return member;
	}
	return NULL;
}

/* Take the member out of the group: the others are saved again without
   it, unless it was never saved. */
static void mirror_copy_group_leave(struct mirror_copy_group *group,
				    struct mirror_copy_member *member)
{
	member->dropped = TRUE;
	if (!member->deferred)
		group->resave = TRUE;
}

void mirror_copy_group_drop(struct mirror_copy_group *group,
			    struct mirror_copy_target *target)
{
	struct mirror_copy_member *member;

	member = mirror_copy_group_find_member(group, target);
	if (member == NULL)
		return;
	mirror_copy_group_leave(group, member);
	target->error = "Not copied, because the delivery kept nothing";
}

int mirror_copy_group_move(struct mirror_copy_group *from,
			   struct mirror_copy_group *to,
			   struct mirror_copy_target *target,
			   struct event *event_parent)
{
	struct mirror_copy_member *member;
	struct mirror_copy_target *left;

	member = mirror_copy_group_find_member(from, target);
	i_assert(member != NULL);
	mirror_copy_group_leave(from, member);
	/* what from's commit sets in its targets goes nowhere */
	left = p_new(from->pool, struct mirror_copy_target, 1);
	*left = *target;
	member->target = left;
	return mirror_copy_group_save(to, target, member->input,
				      member->received_date, TRUE,
				      event_parent);
}

/* Append the records of the committed copies, one append per mirror. */
static void
mirror_copy_group_chain_append(struct mirror_copy_group *group,
			       const struct mail_transaction_commit_changes *changes,
			       uint32_t uid_validity)
{
	struct mirror_copier *copier = group->copier;
	ARRAY(struct mirror_chain_record) recs;
	ARRAY_TYPE(uint) ids;
	struct mirror_copy_member *member;
	struct mirror_chain_record *rec;
	struct seq_range_iter iter;
	const char *dir, *path, *error = NULL;
	unsigned int n = 0, id, mid;
	uint32_t uid;
	int ret;

	if ((ret = mailbox_get_path_to(group->storage->box,
				       MAILBOX_LIST_PATH_TYPE_CONTROL,
				       &dir)) <= 0) {
		error = ret == 0 ? "The storage has no control directory" :
			t_strdup_printf("Control directory unknown: %s",
				mailbox_get_last_internal_error(
					group->storage->box, NULL));
	} else if (uid_validity == 0) {
		error = "The copies' UIDs are unknown";
	}

	/* the UIDs were assigned in the order the copies were saved */
	seq_range_array_iter_init(&iter, &changes->saved_uids);
	array_foreach_elem(&group->members, member) {
		if (member->dropped)
			continue;
		if (member->landed_uid != 0)
			uid = member->landed_uid;
		else if (!seq_range_array_iter_nth(&iter, n++, &uid))
			uid = 0;
		member->target->uid = uid;
		if (error == NULL && (uid == 0 || !member->state.hashed)) {
			array_foreach_elem(&member->target->mirror_ids, id) {
				e_error(member->state.event, "Mirror %u: chain "
					"append for the copy to %s failed: %s",
					id, group->storage_name, uid == 0 ?
					"The copy's UID is unknown" :
					"The copy's content hash is unknown");
			}
		}
	}

	t_array_init(&ids, 4);
	array_foreach_elem(&group->members, member) {
		if (member->dropped)
			continue;
		array_foreach_elem(&member->target->mirror_ids, id)
			mirror_uint_array_add_unique(&ids, id);
	}
	array_foreach_elem(&ids, mid) {
		if (error != NULL) {
			e_error(copier->event_parent, "mirror: Mirror %u: chain "
				"append for %u copies to %s failed: %s", mid,
				mirror_copy_group_count(group),
				group->storage_name, error);
			continue;
		}
		t_array_init(&recs, array_count(&group->members));
		array_foreach_elem(&group->members, member) {
			if (member->dropped || member->target->uid == 0 ||
			    !member->state.hashed ||
			    !mirror_uint_array_contains(&member->target->mirror_ids,
						 mid))
				continue;
			rec = array_append_space(&recs);
			rec->type = MIRROR_CHAIN_RECORD_COPY;
			rec->time = ioloop_time;
			rec->uid_validity = uid_validity;
			rec->uid = member->target->uid;
			memcpy(rec->content_hash, member->state.content_hash,
			       sizeof(rec->content_hash));
		}
		if (array_count(&recs) == 0)
			continue;
		path = t_strdup_printf("%s/%s", dir,
				       mirror_chain_file_name(mid));
		if (mirror_chain_append_records(path, mid,
				array_front_modifiable(&recs),
				array_count(&recs),
				mirror_copier_fsyncs(copier),
				&error) < 0) {
			e_error(copier->event_parent, "mirror: Mirror %u: "
				"chain append for %u copies to %s failed: %s",
				mid, array_count(&recs), group->storage_name,
				error);
			error = NULL;
		}
	}
}

static void mirror_copy_group_free_members(struct mirror_copy_group *group)
{
	struct mirror_copy_member *member;

	array_foreach_elem(&group->members, member) {
		event_unref(&member->state.event);
		i_free(member->state.hash_ctx);
	}
	array_clear(&group->members);
}

static void mirror_copy_group_free(struct mirror_copy_group **_group)
{
	struct mirror_copy_group *group = *_group;

	*_group = NULL;
	i_assert(group->trans == NULL);
	mirror_copy_group_release(group);
	mirror_copy_group_free_members(group);
	pool_unref(&group->pool);
}

/* Keep what the group's copies made and failed per mirror, for
   mirror_copy_group_end() to count: the targets may be gone by then. */
static void mirror_copy_group_keep_results(struct mirror_copy_group *group)
{
	struct mirror_copy_member *member;

	p_array_init(&group->results, group->pool,
		     array_count(&group->members));
	array_foreach_elem(&group->members, member) {
		if (!member->dropped || member->state.failed) {
			mirror_copy_results_add(&group->results,
				member->target, p_strdup(group->pool,
							 member->target->error));
		}
	}
}

/* As the storage user: commit the group's transaction. A failed commit
   is tried once more in the storage opened again (its mailbox may have
   been changed under the open one, e.g. its index files removed or
   rebuilt), if no other group has it open. What the failed commit left
   in the mailbox anyway is found by content and not saved again. Returns
   0 with changes_r (uid_validity 0 if nothing was left to commit), or
   -1. */
static int
mirror_copy_group_commit_trans(struct mirror_copy_group *group,
			       struct mail_transaction_commit_changes *changes_r,
			       const char **error_r)
{
	struct mirror_copier *copier = group->copier;
	struct mirror_copy_member *member;
	const char *error;

	if (mailbox_transaction_commit_get_changes(&group->trans,
						   changes_r) == 0)
		return 0;

	*error_r = p_strdup_printf(group->pool, "Commit failed: %s",
		mailbox_get_last_internal_error(group->storage->box, NULL));
	if (group->storage->busy != 1)
		return -1;
	e_warning(copier->event_parent, "mirror: %s: %s: trying again in "
		  "the storage opened again", group->storage_name, *error_r);
	mirror_storage_deactivate(group->storage);
	mirror_copy_group_release(group);
	mirror_copier_forget_name(copier, group->storage_name);
	if (mirror_copier_get(copier, group->storage_name, &group->storage,
			      &error) < 0) {
		group->storage = NULL;
		*error_r = p_strdup(group->pool, error);
		return -1;
	}
	group->storage->busy++;
	array_foreach_elem(&group->members, member) {
		if (!member->dropped && member->state.hashed) {
			member->landed_uid = mirror_copy_find(group->storage,
				member->state.content_hash, group->started);
		}
	}
	mirror_copy_group_resave(group);
	if (group->trans == NULL) {
		/* all of them landed (or failed now) */
		i_zero(changes_r);
		changes_r->pool = pool_alloconly_create("mirror no changes",
							 64);
		p_array_init(&changes_r->saved_uids, changes_r->pool, 1);
		return 0;
	}
	if (mailbox_transaction_commit_get_changes(&group->trans,
						   changes_r) == 0)
		return 0;
	*error_r = p_strdup_printf(group->pool, "Commit failed: %s",
		mailbox_get_last_internal_error(group->storage->box, NULL));
	return -1;
}

int mirror_copy_group_commit(struct mirror_copy_group *group)
{
	struct mirror_copy_member *member;
	struct mail_transaction_commit_changes changes;
	struct mirror_copy_caller caller;
	const char *error;
	bool failed = FALSE;

	mirror_privileges_get(pool_datastack_create(), &caller.privs);
	mirror_copy_caller_leave(&caller);
	if (group->storage != NULL) {
		if (!mirror_storage_activate(group->storage, &error))
			i_panic("mirror: %s", error);
		if (!group->resave)
			mirror_copy_group_save_deferred(group);
		if (group->resave)
			mirror_copy_group_resave(group);
		if (group->trans == NULL) {
			/* nothing left to commit */
		} else if (mirror_copy_group_count(group) == 0) {
			mailbox_transaction_rollback(&group->trans);
		} else if (mirror_copy_group_commit_trans(group, &changes,
							  &error) < 0) {
			array_foreach_elem(&group->members, member) {
				if (member->dropped)
					continue;
				member->target->error = error;
				member->state.failed = TRUE;
				member->dropped = TRUE;
			}
			failed = TRUE;
		} else {
			uint32_t uid_validity = changes.uid_validity;

			FAULT_POINT("mirror-copy-committed");
			if (uid_validity == 0) {
				struct mailbox_status status;

				mailbox_get_open_status(group->storage->box,
					STATUS_UIDVALIDITY, &status);
				uid_validity = status.uidvalidity;
			}
			/* still as the storage user: it owns the chains */
			mirror_copy_group_chain_append(group, &changes,
						       uid_validity);
			pool_unref(&changes.pool);
			if (group->copier->defer_sync)
				mirror_copier_sync_add(group->copier,
						       group->storage);
			FAULT_POINT("mirror-chain-appended");
		}
		if (group->storage != NULL)
			mirror_storage_deactivate(group->storage);
	}
	mirror_copy_caller_return(&caller);
	mirror_copy_group_keep_results(group);

	array_foreach_elem(&group->members, member) {
		if (member->state.failed)
			failed = TRUE;
		member->target->size = member->state.size;
	}
	if (failed && group->storage != NULL && group->storage->busy == 1) {
		/* opened again at the next copy */
		mirror_copy_group_release(group);
		mirror_copier_forget_name(group->copier, group->storage_name);
	}
	/* the members' targets may go now */
	mirror_copy_group_free_members(group);
	mirror_copy_group_release(group);
	return failed ? -1 : 0;
}

void mirror_copy_group_end(struct mirror_copy_group **_group)
{
	struct mirror_copy_group *group = *_group;
	struct mirror_copier *copier = group->copier;

	*_group = NULL;
	if (array_is_created(&group->results)) {
		struct mirror_copy_caller caller;

		mirror_privileges_get(pool_datastack_create(), &caller.privs);
		mirror_copy_caller_leave(&caller);
		mirror_copier_count_results(copier, &group->results);
		mirror_copy_caller_return(&caller);
	}
	FAULT_POINT("mirror-copy-counted");
	mirror_copy_group_free(&group);
}

void mirror_copy_group_rollback(struct mirror_copy_group **_group)
{
	struct mirror_copy_group *group = *_group;
	struct mirror_copy_caller caller;
	const char *error;

	if (group->trans != NULL) {
		mirror_privileges_get(pool_datastack_create(), &caller.privs);
		mirror_copy_caller_leave(&caller);
		if (!mirror_storage_activate(group->storage, &error))
			i_panic("mirror: %s", error);
		mailbox_transaction_rollback(&group->trans);
		mirror_storage_deactivate(group->storage);
		mirror_copy_caller_return(&caller);
	}
	mirror_copy_group_free(_group);
}

/* Copying again what mirror-writer may have made (mirror-copy.h) */

/* The content hash of a message as the chains record it: with line
   endings normalized to LF. Returns 0, or -1 if it can't be read. */
static int
mirror_copy_hash_stream(struct istream *input,
			unsigned char hash_r[MIRROR_CHAIN_HASH_SIZE])
{
	const struct hash_method *meth = &mirror_chain_hash_method;
	struct istream *lf_input;
	const unsigned char *data;
	size_t size;
	void *ctx;
	int ret;

	ctx = t_malloc_no0(meth->context_size);
	meth->init(ctx);
	lf_input = i_stream_create_lf(input);
	while ((ret = i_stream_read_more(lf_input, &data, &size)) > 0) {
		meth->loop(ctx, data, size);
		i_stream_skip(lf_input, size);
	}
	i_assert(ret == -1);
	ret = lf_input->stream_errno == 0 ? 0 : -1;
	i_stream_unref(&lf_input);
	if (ret == 0)
		meth->result(ctx, hash_r);
	return ret;
}

/* The UID of a message with this content among those the storage's INBOX
   got since "since" (newest first): 0 if there is none. */
#define MIRROR_COPY_FIND_MAX 10000
static uint32_t
mirror_copy_find(struct mirror_storage *storage,
		 const unsigned char hash[MIRROR_CHAIN_HASH_SIZE], time_t since)
{
	unsigned char mail_hash[MIRROR_CHAIN_HASH_SIZE];
	struct mailbox_transaction_context *t;
	struct mailbox_status status;
	struct istream *input;
	struct mail *mail;
	time_t save_date;
	uint32_t seq, uid = 0;

	if (mailbox_sync(storage->box, 0) < 0)
		return 0;
	mailbox_get_open_status(storage->box, STATUS_MESSAGES, &status);
	t = mailbox_transaction_begin(storage->box, 0, "mirror copy check");
	mail = mail_alloc(t, MAIL_FETCH_SAVE_DATE, NULL);
	for (seq = status.messages; seq > 0 && uid == 0 &&
	     seq + MIRROR_COPY_FIND_MAX > status.messages; seq--) {
		mail_set_seq(mail, seq);
		if (mail_get_save_date(mail, &save_date) == 0 &&
		    save_date < since)
			break;
		if (mail_get_stream(mail, NULL, NULL, &input) < 0)
			continue;
		if (mirror_copy_hash_stream(input, mail_hash) == 0 &&
		    memcmp(mail_hash, hash, sizeof(mail_hash)) == 0)
			uid = mail->uid;
	}
	mail_free(&mail);
	(void)mailbox_transaction_commit(&t);
	return uid;
}

/* As the storage user: whether the copy of target is in the storage
   already (made by a writer that died before it answered). Its chain
   records are appended where they are missing. */
static bool
mirror_copy_exists(struct mirror_copier *copier,
		   struct mirror_storage *storage,
		   const struct mirror_copy_target *target, struct mail *mail,
		   time_t since)
{
	unsigned char hash[MIRROR_CHAIN_HASH_SIZE];
	ARRAY_TYPE(mirror_chain_record) records;
	const struct mirror_chain_record *rec;
	struct mailbox_status status;
	struct istream *mail_input, *input;
	const char *dir, *path, *broken, *error;
	uoff_t header_size;
	unsigned int id;
	uint32_t uid;
	bool recorded;
	int ret;

	if (mail_get_stream(mail, NULL, NULL, &mail_input) < 0)
		return FALSE;
	input = mirror_copy_input(target, mail_input, &header_size);
	ret = mirror_copy_hash_stream(input, hash);
	i_stream_unref(&input);
	if (ret < 0 || (uid = mirror_copy_find(storage, hash, since)) == 0)
		return FALSE;
	if (mailbox_get_path_to(storage->box, MAILBOX_LIST_PATH_TYPE_CONTROL,
				&dir) <= 0)
		return TRUE;
	mailbox_get_open_status(storage->box, STATUS_UIDVALIDITY, &status);
	array_foreach_elem(&target->mirror_ids, id) {
		path = t_strdup_printf("%s/%s", dir,
				       mirror_chain_file_name(id));
		t_array_init(&records, 64);
		if (mirror_chain_read(path, id, &records, &broken,
				      &error) < 0)
			continue;
		recorded = FALSE;
		array_foreach(&records, rec) {
			if (rec->type == MIRROR_CHAIN_RECORD_COPY &&
			    rec->uid == uid &&
			    rec->uid_validity == status.uidvalidity)
				recorded = TRUE;
		}
		if (recorded)
			continue;
		if (mirror_chain_append(path, id, MIRROR_CHAIN_RECORD_COPY,
					ioloop_time, status.uidvalidity, uid,
					hash, mirror_copier_fsyncs(copier), NULL,
					&error) < 0) {
			e_error(copier->event_parent, "mirror: Mirror %u: "
				"chain append for the copy to %s failed: %s",
				id, target->storage, error);
		}
	}
	return TRUE;
}

int mirror_copier_copy_missing(struct mirror_copier *copier,
			       struct mail *mail, time_t since,
			       struct mirror_copy_target *targets,
			       unsigned int count, struct event *event_parent,
			       const char **error_r)
{
	struct mirror_copy_caller caller;
	struct mirror_storage *storage;
	ARRAY(struct mirror_copy_target) missing;
	const char *error, **sync_errors;
	unsigned int i, j;
	bool *exists;
	int ret = 0;

	exists = t_new(bool, count);
	sync_errors = t_new(const char *, count);
	mirror_privileges_get(pool_datastack_create(), &caller.privs);
	mirror_copy_caller_leave(&caller);
	for (i = 0; i < count; i++) {
		if (mirror_copier_get(copier, targets[i].storage, &storage,
				      &error) < 0)
			continue;
		exists[i] = mirror_copy_exists(copier, storage, &targets[i],
					       mail, since);
		if (exists[i] && copier->fsync) {
			/* the writer may have died before it synced it */
			mirror_storage_sync_devs_init(copier, storage);
			if (storage->sync_devs_incomplete) {
				sync_errors[i] = "Not all filesystems of the "
					"storage are known: not synced";
			} else if (mirror_copier_syncfs(copier,
					&storage->sync_devs, &error) < 0) {
				sync_errors[i] = error;
			}
		}
		mirror_storage_deactivate(storage);
	}
	mirror_copy_caller_return(&caller);

	t_array_init(&missing, count);
	for (i = 0; i < count; i++) {
		if (exists[i]) {
			e_warning(event_parent, "mirror: The copy to %s was "
				  "made by mirror-writer before it failed",
				  targets[i].storage);
			targets[i].error = NULL;
			if (sync_errors[i] != NULL) {
				/* logged and sent as failed, as the writer's
				   own are */
				targets[i].error = t_strdup_printf(
					"The copy made by mirror-writer is not "
					"synced: %s", sync_errors[i]);
				mirror_copy_targets_report(event_parent,
							   &targets[i], 1);
			}
		} else {
			array_push_back(&missing, &targets[i]);
		}
	}
	*error_r = NULL;
	ret = 0;
	if (array_count(&missing) > 0) {
		ret = mirror_copier_copy(copier, mail,
					 array_front_modifiable(&missing),
					 array_count(&missing), FALSE,
					 event_parent, error_r);
	}
	for (i = j = 0; i < count; i++) {
		if (!exists[i])
			targets[i] = *array_idx(&missing, j++);
		else if (targets[i].error != NULL && ret == 0) {
			*error_r = targets[i].error;
			ret = -1;
		}
	}
	return ret;
}
