/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* The expiry scan (see mirror-expire.h). */

#include "lib.h"
#include "array.h"
#include "hash.h"
#include "ioloop.h"
#include "str.h"
#include "str-sanitize.h"
#include "strnum.h"
#include "istream.h"
#include "time-util.h"
#include "mail-storage-service.h"
#include "mail-namespace.h"
#include "mail-storage-private.h" /* mailbox_get_path_to() */
#include "mirror-registry.h"
#include "mirror-chain.h"
#include "mirror-privileges.h"
#include "mirror-expire.h"
#include "mirror-expire-reclaim.h"
#include "mirror-expire-index.h"
#include "mirror-event.h"
#include "mirror-setting.h"


/* shared with the suite's other plugins by name */

struct mirror_expire_storage {
	const char *name;
	/* largest Days to Mirror of its mirrors */
	unsigned int days;
	ARRAY_TYPE(uint) mirror_ids;
	/* its mirrors that are on legal hold */
	ARRAY_TYPE(uint) held_ids;
	/* the index entry: the oldest save date, 0 if none */
	time_t indexed;
};

/* A copy recorded in a mirror's chain */
struct mirror_expire_copy {
	uint32_t uid;
	/* an expire record follows the copy record */
	bool expired;
	unsigned char content_hash[MIRROR_CHAIN_HASH_SIZE];
};

/* One mirror's chain during a visit */
struct mirror_expire_chain {
	unsigned int mirror_id;
	const char *path;
	/* copies, sorted by UID */
	ARRAY(struct mirror_expire_copy) copies;
	ARRAY_TYPE(mirror_chain_record) appends;
};

struct mirror_expire_scan {
	pool_t pool;
	const struct mirror_expire_settings *set;
	struct mail_storage_service_ctx *service;
	struct event *event;
	struct registry *registry;
	struct mirror_privileges privs;

	ARRAY(struct mirror_expire_storage *) storages;
	HASH_TABLE(const char *, struct mirror_expire_storage *) storage_hash;
};

/* The state of one storage's visit */
struct mirror_expire_visit {
	struct mirror_expire_scan *scan;
	struct mirror_expire_storage *storage;
	struct mirror_expire_storage_result *res;

	struct mail_storage_service_user *service_user;
	struct mail_user *user;
	struct mailbox *box;
	uint32_t uid_validity;
	bool fsync;
	/* mirror_expire_reclaim_processes of the storage user */
	unsigned int reclaim_processes;
	ARRAY(struct mirror_expire_chain) chains;
};

/* Undo the storage service's temporary privilege drop. */
static void mirror_expire_privileges_restore(const struct mirror_privileges *p)
{
	const char *error;

	if (mirror_privileges_set(p, &error) < 0)
		i_fatal("%s", error);
}

static int mirror_expire_copy_cmp(const struct mirror_expire_copy *c1,
				  const struct mirror_expire_copy *c2)
{
	return c1->uid < c2->uid ? -1 : (c1->uid > c2->uid ? 1 : 0);
}

/* Group the mirrors by storage and read the expire index. */
static int mirror_expire_load(struct mirror_expire_scan *scan,
			      const char **error_r)
{
	ARRAY_TYPE(mirror_def) defs;
	ARRAY_TYPE(mirror_expire_entry) entries;
	const struct mirror_def *def;
	const struct mirror_expire_entry *entry;
	struct mirror_expire_storage *storage;
	const char *key, **keys;
	unsigned int nkeys = 0;

	p_array_init(&defs, scan->pool, 64);
	if (mirror_registry_list_all(scan->registry, scan->pool, &defs,
				     error_r) < 0)
		return -1;
	p_array_init(&scan->storages, scan->pool, array_count(&defs) + 1);
	hash_table_create(&scan->storage_hash, scan->pool,
			  array_count(&defs) + 1, str_hash, strcmp);
	array_foreach(&defs, def) {
		key = p_strdup(scan->pool, mirror_expire_storage_key(def->storage));
		storage = hash_table_lookup(scan->storage_hash, key);
		if (storage == NULL) {
			storage = p_new(scan->pool,
					struct mirror_expire_storage, 1);
			storage->name = def->storage;
			p_array_init(&storage->mirror_ids, scan->pool, 2);
			p_array_init(&storage->held_ids, scan->pool, 1);
			hash_table_insert(scan->storage_hash, key, storage);
			array_push_back(&scan->storages, &storage);
		}
		storage->days = I_MAX(storage->days, def->days);
		array_push_back(&storage->mirror_ids, &def->id);
		if (def->hold_since != 0)
			array_push_back(&storage->held_ids, &def->id);
	}

	keys = t_new(const char *, array_count(&scan->storages) + 1);
	array_foreach_elem(&scan->storages, storage)
		keys[nkeys++] = mirror_expire_storage_key(storage->name);
	p_array_init(&entries, scan->pool, array_count(&defs) + 1);
	if (mirror_registry_expire_list(scan->registry, scan->pool, keys,
					nkeys, &entries, error_r) < 0)
		return -1;
	array_foreach(&entries, entry) {
		storage = hash_table_lookup(scan->storage_hash,
					    entry->storage_key);
		/* an entry of a storage no mirror uses any more is left:
		   it costs nothing and is right if a mirror comes back */
		if (storage != NULL)
			storage->indexed = entry->oldest;
	}
	return 0;
}

/* Read the holds of a storage's mirrors again, right before it is opened:
   a hold made while the scan runs stops it too. If they can't be read,
   those the scan started with stand. */
static void mirror_expire_refresh_holds(struct mirror_expire_scan *scan,
					struct mirror_expire_storage *storage)
{
	ARRAY_TYPE(mirror_def) defs;
	const struct mirror_def *def;
	const char *error;

	t_array_init(&defs, 4);
	if (mirror_registry_storage_lookup(scan->registry, storage->name,
					   pool_datastack_create(), &defs,
					   &error) < 0) {
		e_warning(scan->event, "Storage %s: Can't read its mirrors' "
			  "holds again: %s", str_sanitize(storage->name, 80),
			  error);
		return;
	}
	array_foreach(&defs, def) {
		unsigned int id;
		bool known = FALSE;

		if (def->hold_since == 0)
			continue;
		array_foreach_elem(&storage->held_ids, id) {
			if (id == def->id)
				known = TRUE;
		}
		if (!known)
			array_push_back(&storage->held_ids, &def->id);
	}
}

static bool mirror_expire_is_due(struct mirror_expire_scan *scan,
				 const struct mirror_expire_storage *storage)
{
	if (scan->set->rebuild_index)
		return TRUE;
	/* no entry: an empty INBOX (or a lost index: --rebuild-index) */
	return storage->indexed != 0 &&
		storage->indexed < mirror_expire_cutoff(scan->set->now,
							storage->days);
}

static int mirror_expire_visit_open(struct mirror_expire_visit *visit,
				    const char **error_r)
{
	struct mail_storage_service_input input;
	struct mailbox_status status;
	struct mail_namespace *ns;
	const char *username = visit->storage->name, *value, *error;
	int ret;

	i_zero(&input);
	input.module = "mail";
	input.service = "doveadm";
	input.username = username;
	input.event_parent = visit->scan->event;
	ret = mail_storage_service_lookup(visit->scan->service, &input,
					  &visit->service_user, &error);
	if (ret <= 0) {
		*error_r = ret == 0 ?
			t_strdup_printf("Storage user %s doesn't exist",
					str_sanitize(username, 80)) :
			t_strdup_printf("Storage user %s lookup failed: %s",
					username, error);
		return -1;
	}
	/* this scan keeps the index itself (see expire-mirror-plugin.c) */
	if (mail_storage_service_user_set_setting(visit->service_user,
			"plugin/expire_mirror_index", "no", &error) <= 0)
		i_panic("mirror expire: Can't set expire_mirror_index: %s",
			error);
	if (mail_storage_service_next(visit->scan->service,
				      visit->service_user, &visit->user,
				      &error) < 0) {
		*error_r = t_strdup_printf(
			"Failed to initialize storage user %s: %s",
			username, error);
		return -1;
	}
	visit->fsync = mirror_setting_bool(visit->user, visit->scan->event,
					   "mirror_fsync", TRUE);
	value = mail_user_plugin_getenv(visit->user,
					"mirror_expire_reclaim_processes");
	if (value == NULL) {
		/* its name until 0.1.0 */
		value = mail_user_plugin_getenv(visit->user,
			"mirror_expire_free_processes");
		if (value != NULL) {
			e_warning(visit->scan->event,
				  "mirror_expire_free_processes is now called "
				  "mirror_expire_reclaim_processes");
		}
	}
	visit->reclaim_processes = MIRROR_EXPIRE_RECLAIM_DEFAULT_PROCESSES;
	if (value != NULL && *value != '\0' &&
	    (str_to_uint(value, &visit->reclaim_processes) < 0 ||
	     visit->reclaim_processes > MIRROR_EXPIRE_RECLAIM_MAX_PROCESSES)) {
		*error_r = t_strdup_printf(
			"Invalid mirror_expire_reclaim_processes '%s': "
			"not a number of 0..16", str_sanitize(value, 40));
		return -1;
	}

	ns = mail_namespace_find_inbox(visit->user->namespaces);
	visit->box = mailbox_alloc(ns->list, "INBOX",
				   MAILBOX_FLAG_IGNORE_ACLS);
	if (mailbox_open(visit->box) < 0 || mailbox_sync(visit->box, 0) < 0) {
		*error_r = t_strdup_printf(
			"Failed to open INBOX of storage user %s: %s",
			username,
			mailbox_get_last_internal_error(visit->box, NULL));
		return -1;
	}
	mailbox_get_open_status(visit->box, STATUS_UIDVALIDITY, &status);
	visit->uid_validity = status.uidvalidity;
	return 0;
}

static void mirror_expire_visit_close(struct mirror_expire_visit *visit)
{
	if (visit->box != NULL)
		mailbox_free(&visit->box);
	if (visit->user != NULL)
		mail_user_deinit(&visit->user);
	if (visit->service_user != NULL)
		mail_storage_service_user_unref(&visit->service_user);
}

/* Read the chain of each mirror of the storage: which UIDs it recorded as
   copies and not yet as expired. */
static int mirror_expire_read_chains(struct mirror_expire_visit *visit,
				     const char **error_r)
{
	ARRAY_TYPE(mirror_chain_record) records;
	const struct mirror_chain_record *rec;
	struct mirror_expire_chain *chain;
	struct mirror_expire_copy copy, *found;
	const char *dir, *broken, *error;
	unsigned int id;
	int ret;

	ret = mailbox_get_path_to(visit->box, MAILBOX_LIST_PATH_TYPE_CONTROL,
				  &dir);
	if (ret <= 0) {
		*error_r = ret == 0 ?
			"The storage's INBOX has no control directory" :
			mailbox_get_last_internal_error(visit->box, NULL);
		return -1;
	}
	t_array_init(&visit->chains, array_count(&visit->storage->mirror_ids));
	i_array_init(&records, 1024);
	array_foreach_elem(&visit->storage->mirror_ids, id) {
		chain = array_append_space(&visit->chains);
		chain->mirror_id = id;
		chain->path = t_strdup_printf("%s/%s", dir,
					      mirror_chain_file_name(id));
		t_array_init(&chain->appends, 16);
		array_clear(&records);
		if (mirror_chain_read(chain->path, id, &records, &broken,
				      &error) < 0) {
			*error_r = error;
			array_free(&records);
			return -1;
		}
		/* A broken chain is reported by verify. Its appends fail
		   too when its last record is broken; the copies are
		   expired all the same. */
		if (broken != NULL) {
			e_warning(visit->scan->event, "Mirror %u: chain %s "
				  "is broken: %s", id, chain->path, broken);
		}
		i_array_init(&chain->copies, array_count(&records) + 1);
		array_foreach(&records, rec) {
			if (rec->uid_validity != visit->uid_validity ||
			    rec->type != MIRROR_CHAIN_RECORD_COPY)
				continue;
			i_zero(&copy);
			copy.uid = rec->uid;
			memcpy(copy.content_hash, rec->content_hash,
			       sizeof(copy.content_hash));
			array_push_back(&chain->copies, &copy);
		}
		array_sort(&chain->copies, mirror_expire_copy_cmp);
		/* mark the copies expired already (marking, not deleting:
		   a long-lived chain has as many expire records as copies) */
		array_foreach(&records, rec) {
			if (rec->uid_validity != visit->uid_validity ||
			    rec->type != MIRROR_CHAIN_RECORD_EXPIRE)
				continue;
			copy.uid = rec->uid;
			found = array_bsearch(&chain->copies, &copy,
					mirror_expire_copy_cmp);
			if (found != NULL)
				found->expired = TRUE;
		}
	}
	array_free(&records);
	return 0;
}

static void mirror_expire_chains_free(struct mirror_expire_visit *visit)
{
	struct mirror_expire_chain *chain;

	if (!array_is_created(&visit->chains))
		return;
	array_foreach_modifiable(&visit->chains, chain) {
		if (array_is_created(&chain->copies))
			array_free(&chain->copies);
	}
}

/* Queue an expire record in every chain that recorded the copy uid. */
static void mirror_expire_record(struct mirror_expire_visit *visit,
				 uint32_t uid)
{
	struct mirror_expire_chain *chain;
	struct mirror_chain_record *rec;
	struct mirror_expire_copy key;
	const struct mirror_expire_copy *copy;

	key.uid = uid;
	array_foreach_modifiable(&visit->chains, chain) {
		copy = array_bsearch(&chain->copies, &key,
				     mirror_expire_copy_cmp);
		if (copy == NULL || copy->expired)
			continue;
		rec = array_append_space(&chain->appends);
		rec->type = MIRROR_CHAIN_RECORD_EXPIRE;
		rec->time = ioloop_time < 0 ? 0 : (uint64_t)ioloop_time;
		rec->uid_validity = visit->uid_validity;
		rec->uid = uid;
		memcpy(rec->content_hash, copy->content_hash,
		       sizeof(rec->content_hash));
	}
}

/* Storages with fewer messages to remove than this free them in the scan
   (forking isn't worth it) */
#define MIRROR_EXPIRE_RECLAIM_MIN_MESSAGES 64

/* A message the scan removes */
struct mirror_expire_due {
	uint32_t uid;
	uoff_t size;
};
ARRAY_DEFINE_TYPE(mirror_expire_due, struct mirror_expire_due);

/* Expire records for the due messages in the chains that recorded them.
   The records go before the expunges: a record of a copy that a failed
   commit left in place is harmless (verify counts it as expired, the next
   scan removes it), while a removed copy with no record would fail
   verify. */
static int
mirror_expire_append_records(struct mirror_expire_visit *visit,
			     const ARRAY_TYPE(mirror_expire_due) *due,
			     const char **error_r)
{
	struct mirror_expire_chain *chain;
	const struct mirror_expire_due *d;
	const char *error;

	array_foreach(due, d)
		mirror_expire_record(visit, d->uid);
	array_foreach_modifiable(&visit->chains, chain) {
		if (array_count(&chain->appends) == 0)
			continue;
		if (mirror_chain_append_records(chain->path, chain->mirror_id,
				array_front_modifiable(&chain->appends),
				array_count(&chain->appends), visit->fsync,
				&error) < 0) {
			*error_r = t_strdup_printf(
				"Mirror %u: chain append failed, nothing "
				"removed: %s", chain->mirror_id, error);
			return -1;
		}
	}
	return 0;
}

/* Hold the message's file open while Dovecot unlinks its name. Only
   maildir and sdbox unlink a file per message; for mdbox the descriptor
   is of a shared file, and holding it costs nothing. */
static void mirror_expire_hold_file(struct mail *mail,
				    struct mirror_expire_reclaim *reclaim)
{
	struct istream *input;
	int fd;

	if (mail_get_stream(mail, NULL, NULL, &input) < 0)
		return;
	fd = i_stream_get_fd(input);
	if (fd != -1 && (fd = dup(fd)) != -1)
		mirror_expire_reclaim_hold(reclaim, fd);
}

/* Expunge due[0..count-1] in one transaction and sync (which unlinks the
   files), then hand the held files to the workers. */
static int
mirror_expire_remove_batch(struct mirror_expire_visit *visit,
			   const struct mirror_expire_due *due,
			   unsigned int count,
			   struct mirror_expire_reclaim *reclaim,
			   const char **error_r)
{
	struct mailbox_transaction_context *trans;
	struct mail *mail;
	unsigned int i;

	trans = mailbox_transaction_begin(visit->box, 0, "mirror expire");
	mail = mail_alloc(trans, 0, NULL);
	for (i = 0; i < count; i++) {
		/* gone already: expunged by someone else meanwhile */
		if (!mail_set_uid(mail, due[i].uid))
			continue;
		if (reclaim != NULL)
			mirror_expire_hold_file(mail, reclaim);
		mail_expunge(mail);
		visit->res->removed++;
		visit->res->bytes += due[i].size;
	}
	mail_free(&mail);
	if (mailbox_transaction_commit(&trans) < 0 ||
	    mailbox_sync(visit->box, 0) < 0) {
		*error_r = t_strdup_printf("Expunging failed: %s",
			mailbox_get_last_internal_error(visit->box, NULL));
		return -1;
	}
	if (reclaim != NULL)
		mirror_expire_reclaim_flush(reclaim);
	return 0;
}

/* mdbox's expunge only drops the messages' references: their bytes stay
   in mail files shared with other messages until the storage is purged
   (doveadm purge). The scan purges what it removed, so that an expired
   copy is gone from the disk, as in maildir and sdbox (where purging
   does nothing). */
static int mirror_expire_purge(struct mirror_expire_visit *visit,
			       const char **error_r)
{
	struct mail_storage *storage = mailbox_get_storage(visit->box);

	if (mail_storage_purge(storage) < 0) {
		*error_r = t_strdup_printf("Removed, but purging the mail "
			"files failed (the copies' bytes are still on disk "
			"until doveadm purge): %s",
			mail_storage_get_last_internal_error(storage, NULL));
		return -1;
	}
	return 0;
}

static int
mirror_expire_remove(struct mirror_expire_visit *visit,
		     const ARRAY_TYPE(mirror_expire_due) *due,
		     const char **error_r)
{
	struct mirror_expire_reclaim *reclaim = NULL;
	const struct mirror_expire_due *d;
	unsigned int i, count, batch;
	int ret = 0;

	if (mirror_expire_append_records(visit, due, error_r) < 0)
		return -1;
	d = array_get(due, &count);
	if (count >= MIRROR_EXPIRE_RECLAIM_MIN_MESSAGES) {
		reclaim = mirror_expire_reclaim_init(visit->reclaim_processes,
						     visit->scan->event);
	}
	/* without workers, Dovecot's unlink() frees each file */
	batch = reclaim == NULL ? count :
		mirror_expire_reclaim_batch(reclaim);
	for (i = 0; i < count && ret == 0; i += batch) T_BEGIN {
		ret = mirror_expire_remove_batch(visit, d + i,
						 I_MIN(batch, count - i),
						 reclaim, error_r);
	} T_END_PASS_STR_IF(ret < 0, error_r);
	if (reclaim != NULL)
		mirror_expire_reclaim_deinit(&reclaim);
	if (ret == 0)
		ret = mirror_expire_purge(visit, error_r);
	return ret;
}

/* Find what is due (and the oldest message kept), then remove it, unless
   this is a dry run or a rebuild. */
static int mirror_expire_mails(struct mirror_expire_visit *visit,
			       const char **error_r)
{
	const struct mirror_expire_settings *set = visit->scan->set;
	struct mailbox_transaction_context *trans;
	struct mailbox_status status;
	struct mail *mail;
	ARRAY_TYPE(mirror_expire_due) due;
	struct mirror_expire_due *d;
	time_t cutoff, date;
	uoff_t size;
	uint32_t seq;
	int ret = 0;

	cutoff = mirror_expire_cutoff(set->now, visit->storage->days);
	mailbox_get_open_status(visit->box, STATUS_MESSAGES, &status);
	i_array_init(&due, 256);
	trans = mailbox_transaction_begin(visit->box, 0, "mirror expire");
	mail = mail_alloc(trans, MAIL_FETCH_SAVE_DATE, NULL);
	for (seq = 1; seq <= status.messages; seq++) {
		mail_set_seq(mail, seq);
		if (mail_get_save_date(mail, &date) < 0) {
			if (mail->expunged)
				continue;
			*error_r = t_strdup_printf(
				"Can't read the save date of UID %u: %s",
				mail->uid, mailbox_get_last_internal_error(
					visit->box, NULL));
			ret = -1;
			break;
		}
		if (set->rebuild_index || date >= cutoff) {
			/* a save date of 0 would read as "no entry" */
			if (date <= 0)
				date = 1;
			if (visit->res->oldest_kept == 0 ||
			    date < visit->res->oldest_kept)
				visit->res->oldest_kept = date;
			continue;
		}
		if (mail_get_physical_size(mail, &size) < 0) {
			if (mail->expunged)
				continue;
			*error_r = t_strdup_printf(
				"Can't read the size of UID %u: %s",
				mail->uid, mailbox_get_last_internal_error(
					visit->box, NULL));
			ret = -1;
			break;
		}
		d = array_append_space(&due);
		d->uid = mail->uid;
		d->size = size;
	}
	mail_free(&mail);
	/* the save dates looked up may have been cached: keep them for
	   the next scan, unless this is a dry run */
	if (ret < 0 || set->dry_run)
		mailbox_transaction_rollback(&trans);
	else if (mailbox_transaction_commit(&trans) < 0) {
		*error_r = t_strdup_printf("Can't read the mailbox: %s",
			mailbox_get_last_internal_error(visit->box, NULL));
		ret = -1;
	}
	if (ret == 0 && set->dry_run) {
		const struct mirror_expire_due *dd;

		array_foreach(&due, dd) {
			visit->res->removed++;
			visit->res->bytes += dd->size;
		}
	} else if (ret == 0 && array_count(&due) > 0)
		ret = mirror_expire_remove(visit, &due, error_r);
	array_free(&due);
	return ret;
}

static const char *mirror_expire_ids_str(const ARRAY_TYPE(uint) *ids)
{
	string_t *str = t_str_new(32);
	unsigned int id;

	array_foreach_elem(ids, id) {
		if (str_len(str) > 0)
			str_append_c(str, ' ');
		str_printfa(str, "%u", id);
	}
	return str_c(str);
}

static void mirror_expire_visit(struct mirror_expire_scan *scan,
				struct mirror_expire_storage *storage,
				struct mirror_expire_storage_result *res)
{
	struct mirror_expire_visit visit;
	const char *error;
	int ret;

	i_zero(&visit);
	visit.scan = scan;
	visit.storage = storage;
	visit.res = res;

	ret = mirror_expire_visit_open(&visit, &error);
	if (ret == 0 && !scan->set->dry_run && !scan->set->rebuild_index)
		ret = mirror_expire_read_chains(&visit, &error);
	if (ret == 0)
		ret = mirror_expire_mails(&visit, &error);
	mirror_expire_chains_free(&visit);
	mirror_expire_visit_close(&visit);
	/* the registry is used with the scan's own identity */
	mirror_expire_privileges_restore(&scan->privs);
	if (ret < 0) {
		res->error = error;
		return;
	}
	if (scan->set->dry_run || res->oldest_kept == storage->indexed)
		return;
	if (mirror_registry_expire_set(scan->registry, storage->name,
				       res->oldest_kept, &error) < 0) {
		res->error = t_strdup_printf("Expire index update failed: %s",
					     error);
		return;
	}
	storage->indexed = res->oldest_kept;
}

int mirror_expire_storage_oldest(struct mail_storage_service_ctx *service,
				 struct event *event_parent,
				 const char *storage, time_t *oldest_r,
				 const char **error_r)
{
	struct mirror_expire_settings set;
	struct mirror_expire_scan scan;
	struct mirror_expire_storage st;
	struct mirror_expire_storage_result res;
	struct mirror_expire_visit visit;
	int ret;

	/* a visit of the scan's --rebuild-index, without the index update */
	i_zero(&set);
	set.now = time(NULL);
	set.rebuild_index = TRUE;
	i_zero(&scan);
	scan.pool = pool_alloconly_create("mirror expire storage", 1024);
	scan.set = &set;
	scan.service = service;
	scan.event = event_create(event_parent);
	event_add_category(scan.event, &event_category_mirror);
	event_set_append_log_prefix(scan.event, "mirror expire: ");
	mirror_privileges_get(scan.pool, &scan.privs);
	i_zero(&st);
	st.name = storage;
	i_zero(&res);
	res.storage = storage;
	i_zero(&visit);
	visit.scan = &scan;
	visit.storage = &st;
	visit.res = &res;

	ret = mirror_expire_visit_open(&visit, error_r);
	if (ret == 0)
		ret = mirror_expire_mails(&visit, error_r);
	mirror_expire_visit_close(&visit);
	mirror_expire_privileges_restore(&scan.privs);
	*oldest_r = res.oldest_kept;
	event_unref(&scan.event);
	pool_unref(&scan.pool);
	return ret;
}

static void
mirror_expire_finished(struct mirror_expire_scan *scan,
		       const struct mirror_expire_result *result)
{
	struct event_passthrough *e;

	e = event_create_passthrough(scan->event)->
		set_name(MIRROR_EXPIRE_EVENT_FINISHED)->
		add_int("storages", result->storages)->
		add_int("visited", result->visited)->
		add_int("failed", result->failed)->
		add_int("held", result->held)->
		add_int("removed", result->removed)->
		add_int("bytes", result->bytes)->
		add_int("usecs", result->usecs)->
		add_str("dry_run", scan->set->dry_run ? "yes" : "no")->
		add_str("rebuild_index", scan->set->rebuild_index ?
			"yes" : "no");
	e_info(e->event(), "%s finished: %u storages, %u visited, %u failed, "
	       "%u held, %u messages (%"PRIu64" bytes) %s in %lld.%03lld s",
	       scan->set->rebuild_index ? "Index rebuild" : "Expiry scan",
	       result->storages, result->visited, result->failed,
	       result->held,
	       result->removed, result->bytes,
	       scan->set->dry_run ? "due" : "removed",
	       result->usecs / 1000000, (result->usecs / 1000) % 1000);
}

int mirror_expire_run(const struct mirror_expire_settings *set,
		      struct mail_storage_service_ctx *service,
		      struct event *event_parent,
		      mirror_expire_storage_callback_t *callback,
		      void *context, struct mirror_expire_result *result_r,
		      const char **error_r)
{
	struct mirror_expire_scan scan;
	struct mirror_expire_storage *storage;
	struct mirror_expire_storage_result res;
	struct timeval start, end;
	const char *error;
	int ret = 0;

	i_zero(result_r);
	i_gettimeofday(&start);
	i_zero(&scan);
	scan.pool = pool_alloconly_create("mirror expire scan", 4096);
	scan.set = set;
	scan.service = service;
	scan.event = event_create(event_parent);
	event_add_category(scan.event, &event_category_mirror);
	event_set_forced_debug(scan.event, set->debug);
	event_set_append_log_prefix(scan.event, "mirror expire: ");
	mirror_privileges_get(scan.pool, &scan.privs);

	if (registry_init(set->dict_uri, set->base_dir, scan.event,
				 &scan.registry, error_r) < 0 ||
	    mirror_expire_load(&scan, error_r) < 0)
		ret = -1;
	else {
		result_r->storages = array_count(&scan.storages);
		array_foreach_elem(&scan.storages, storage) {
			if (!mirror_expire_is_due(&scan, storage))
				continue;
			T_BEGIN {
				i_zero(&res);
				res.storage = storage->name;
				res.mirror_ids = mirror_expire_ids_str(
					&storage->mirror_ids);
				res.days = storage->days;
				if (!set->rebuild_index)
					mirror_expire_refresh_holds(&scan,
								    storage);
				if (array_count(&storage->held_ids) > 0 &&
				    !set->rebuild_index) {
					res.held_ids = mirror_expire_ids_str(
						&storage->held_ids);
					result_r->held++;
					e_info(scan.event, "Storage %s is due, "
					       "but on legal hold (mirror %s): "
					       "nothing removed",
					       str_sanitize(storage->name, 80),
					       res.held_ids);
				} else {
					mirror_expire_visit(&scan, storage,
							    &res);
					result_r->visited++;
				}
				if (res.error != NULL) {
					result_r->failed++;
					e_error(scan.event, "Storage %s: %s",
						str_sanitize(storage->name, 80),
						res.error);
				}
				result_r->removed += res.removed;
				result_r->bytes += res.bytes;
				callback(&res, context);
			} T_END;
		}
		if (result_r->failed > 0) {
			*error_r = t_strdup_printf(
				"%u of %u storages visited failed",
				result_r->failed, result_r->visited);
			ret = -1;
		} else if (!set->dry_run && !set->rebuild_index &&
			   mirror_registry_expire_set_last_run(scan.registry,
				time(NULL), &error) < 0) {
			*error_r = t_strdup_printf(
				"Can't record the scan's time: %s", error);
			ret = -1;
		}
	}
	registry_deinit(&scan.registry);
	i_gettimeofday(&end);
	result_r->usecs = timeval_diff_usecs(&end, &start);
	if (array_is_created(&scan.storages))
		mirror_expire_finished(&scan, result_r);
	if (hash_table_is_created(scan.storage_hash))
		hash_table_destroy(&scan.storage_hash);
	event_unref(&scan.event);
	pool_unref(&scan.pool);
	return ret;
}
