/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* The mirror definitions in the registry: the lists by source (read on
   the delivery path) and by storage, the id index, the storage users'
   records and the copy counters. */

#include "lib.h"
#include "array.h"
#include "strnum.h"
#include "str-sanitize.h"
#include "ioloop.h"
#include "registry-dict.h"
#include "registry-json.h"
#include "registry-user.h"
#include "mirror-registry.h"
#include "mirror-registry-private.h"

const char *mirror_source_key(const char *source)
{
	return t_strconcat(MIRROR_KEY_SOURCE, registry_key_escape(source),
			   NULL);
}

const char *mirror_storage_key(const char *storage)
{
	/* usernames are compared case-insensitively, as Dovecot's usual
	   username_format=%Lu does */
	return t_strconcat(MIRROR_KEY_STORAGE,
			   registry_key_escape(t_str_lcase(storage)), NULL);
}

const char *mirror_id_key(unsigned int id)
{
	return t_strdup_printf(MIRROR_KEY_ID"%u", id);
}

const char *mirror_status_key(unsigned int id, const char *what)
{
	return t_strdup_printf(MIRROR_KEY_STATUS"%u/%s", id, what);
}

/* The value of storage's key, found: 1 if it names mirrors (appended to
   defs), 0 if none, -1 if it is broken. */
static int
mirror_registry_storage_decode(const char *storage, const char *value,
			       pool_t pool, ARRAY_TYPE(mirror_def) *defs,
			       const char **error_r)
{
	const char *error;

	if (mirror_defs_decode(value, pool, defs, &error) < 0) {
		*error_r = t_strdup_printf(
			"Broken registry data for storage %s: %s",
			str_sanitize(storage, 80), error);
		return -1;
	}
	return array_count(defs) > 0 ? 1 : 0;
}

int mirror_registry_storage_lookup(struct registry *reg,
				   const char *storage, pool_t pool,
				   ARRAY_TYPE(mirror_def) *defs,
				   const char **error_r)
{
	const char *value;
	int ret;

	ret = registry_get(reg, mirror_storage_key(storage), &value,
			   error_r);
	if (ret <= 0)
		return ret;
	return mirror_registry_storage_decode(storage, value, pool, defs,
					      error_r);
}

struct mirror_registry_storage_ctx {
	char *storage;
	mirror_registry_storage_callback_t *callback;
	void *context;
};

static void
mirror_registry_storage_lookup_callback(int ret, const char *value,
					const char *error,
					struct mirror_registry_storage_ctx *ctx)
{
	ARRAY_TYPE(mirror_def) defs;

	T_BEGIN {
		if (ret > 0) {
			t_array_init(&defs, 4);
			ret = mirror_registry_storage_decode(ctx->storage,
				value, pool_datastack_create(), &defs, &error);
		}
		ctx->callback(ret, error, ctx->context);
	} T_END;
	i_free(ctx->storage);
	i_free(ctx);
}

#undef mirror_registry_storage_lookup_async
void mirror_registry_storage_lookup_async(struct registry *reg,
	const char *storage, mirror_registry_storage_callback_t *callback,
	void *context)
{
	struct mirror_registry_storage_ctx *ctx;

	ctx = i_new(struct mirror_registry_storage_ctx, 1);
	ctx->storage = i_strdup(storage);
	ctx->callback = callback;
	ctx->context = context;
	registry_get_async(reg, mirror_storage_key(storage),
			   mirror_registry_storage_lookup_callback, ctx);
}

int mirror_registry_lookup(struct registry *reg, const char *source,
			   pool_t pool, ARRAY_TYPE(mirror_def) *defs,
			   const char **error_r)
{
	const char *key, *value, *error;
	int ret;

	key = mirror_source_key(source);
	if ((ret = registry_get(reg, key, &value, error_r)) <= 0)
		return ret;
	if (mirror_defs_decode(value, pool, defs, &error) < 0) {
		*error_r = t_strdup_printf(
			"Broken registry data for source %s: %s",
			str_sanitize(source, 80), error);
		return -1;
	}
	return array_count(defs) > 0 ? 1 : 0;
}

static int
mirror_registry_get_sources(struct registry *reg, pool_t pool,
			    ARRAY_TYPE(const_string) *sources,
			    const char **error_r)
{
	const char *value, *error;
	int ret;

	ret = registry_get(reg, MIRROR_KEY_SOURCES, &value, error_r);
	if (ret < 0)
		return -1;
	if (ret == 0) {
		/* set up by doveadm mirror init and never removed: without
		   it, mirrors would be lost without a word */
		*error_r = "Broken registry: "MIRROR_KEY_SOURCES" is missing "
			"(doveadm mirror check --repair rebuilds it)";
		return -1;
	}
	if (mirror_sources_decode(value, pool, sources, &error) < 0) {
		*error_r = t_strdup_printf(
			"Broken registry data in the source list: %s", error);
		return -1;
	}
	return 0;
}

int mirror_registry_setup(struct registry *reg, ARRAY_TYPE(const_string) *made,
			  const char **error_r)
{
	static const char *const keys[] = {
		MIRROR_KEY_SOURCES, MIRROR_KEY_NEXT_ID, MIRROR_KEY_ACCOUNTS
	};
	static const char *const empty[] = { "[]", "0", "[]" };
	struct dict_transaction_context *trans;
	const char *values[N_ELEMENTS(keys)];
	pool_t pool;
	unsigned int i;
	int ret;

	pool = pool_alloconly_create("mirror registry setup", 256);
	ret = registry_get_many(reg, pool, keys, N_ELEMENTS(keys), values,
				error_r);
	if (ret == 0) {
		trans = registry_transaction_begin(reg);
		for (i = 0; i < N_ELEMENTS(keys); i++) {
			if (values[i] != NULL)
				continue;
			dict_set(trans, keys[i], empty[i]);
			array_push_back(made, &keys[i]);
		}
		ret = registry_commit(reg, &trans, error_r);
	}
	pool_unref(&pool);
	return ret;
}

/* A new mirror id. Dovecot's dict doesn't say what value an increment
   made, so the counter is read before and after: the id is ours only
   when nothing but our increment came between (under the registry's
   lock, always; tried again otherwise). */
#define MIRROR_ALLOC_ID_ATTEMPTS 16
static int
mirror_registry_alloc_id(struct registry *reg, unsigned int *id_r,
			 const char **error_r)
{
	const char *key = MIRROR_KEY_NEXT_ID;
	const long long one = 1;
	uint64_t before, after;
	unsigned int i;
	int ret;

	for (i = 0; i < MIRROR_ALLOC_ID_ATTEMPTS; i++) {
		if ((ret = registry_get_counter(reg, key, &before,
						error_r)) < 0)
			return -1;
		if (ret == 0) {
			*error_r = "Broken registry: "MIRROR_KEY_NEXT_ID" is "
				"missing (doveadm mirror check --repair makes "
				"it again)";
			return -1;
		}
		if (registry_counters_add(reg, &key, &one, 1, error_r) < 0 ||
		    registry_get_counter(reg, key, &after, error_r) < 0)
			return -1;
		if (after == before + 1)
			break;
	}
	if (i == MIRROR_ALLOC_ID_ATTEMPTS) {
		*error_r = "Can't allocate a mirror id: the id counter keeps "
			"changing";
		return -1;
	}
	if (after == 0 || after > UINT_MAX) {
		*error_r = "Broken registry data: invalid id counter";
		return -1;
	}
	*id_r = after;
	return 0;
}

/* Set key to the JSON of defs, or unset it if there are none. */
static void
mirror_registry_set_defs(struct dict_transaction_context *trans,
			 const char *key, const ARRAY_TYPE(mirror_def) *defs)
{
	if (array_count(defs) > 0)
		dict_set(trans, key, mirror_defs_encode(defs));
	else
		dict_unset(trans, key);
}

struct json_object *mirror_storage_userdb_fields(unsigned int mirror_id)
{
	struct json_object *obj = json_object_new_object();

	json_object_object_add(obj, "mirror_storage",
			       json_object_new_string(dec2str(mirror_id)));
	return obj;
}

static void
mirror_user_record_set(struct dict_transaction_context *trans,
		       const char *user, const char *password_hash,
		       unsigned int mirror_id)
{
	registry_user_records_set(trans, user, password_hash,
				  mirror_storage_userdb_fields(mirror_id));
}

int mirror_registry_add(struct registry *reg, struct mirror_def *def,
			const char *password_hash, const char **error_r)
{
	struct dict_transaction_context *trans;
	ARRAY_TYPE(mirror_def) defs, storage_defs;
	ARRAY_TYPE(const_string) sources;
	const struct mirror_def *old;
	const char *error;
	pool_t pool = pool_datastack_create();
	int ret;

	/* Read everything that is rewritten first: broken data is reported,
	   never overwritten. */
	t_array_init(&defs, 4);
	t_array_init(&storage_defs, 4);
	t_array_init(&sources, 16);
	if (mirror_registry_lookup(reg, def->source, pool, &defs, error_r) < 0 ||
	    mirror_registry_storage_lookup(reg, def->storage, pool,
					   &storage_defs, error_r) < 0 ||
	    mirror_registry_get_sources(reg, pool, &sources, error_r) < 0)
		return -1;
	array_foreach(&defs, old) {
		if (strcasecmp(old->storage, def->storage) == 0) {
			*error_r = t_strdup_printf(
				"Mirror %u already copies %s to %s", old->id,
				def->source, def->storage);
			return 0;
		}
	}
	if (password_hash != NULL) {
		/* never take over an existing record */
		ret = registry_user_exists(reg, def->storage, error_r);
		if (ret != 0) {
			if (ret > 0) {
				*error_r = t_strdup_printf(
					"Storage user %s already exists",
					def->storage);
			}
			return ret > 0 ? 0 : -1;
		}
	}
	if (mirror_registry_alloc_id(reg, &def->id, error_r) < 0)
		return -1;
	def->created = ioloop_time;
	def->auto_storage = password_hash != NULL;
	if (!mirror_def_is_valid(def, &error)) {
		*error_r = t_strdup_printf("Invalid mirror: %s", error);
		return -1;
	}
	array_push_back(&defs, def);
	array_push_back(&storage_defs, def);

	trans = registry_transaction_begin(reg);
	dict_set(trans, mirror_source_key(def->source),
		 mirror_defs_encode(&defs));
	dict_set(trans, mirror_id_key(def->id),
		 def->source);
	dict_set(trans, mirror_storage_key(def->storage),
		 mirror_defs_encode(&storage_defs));
	if (array_lsearch(&sources, &def->source, i_strcmp_p) == NULL) {
		array_push_back(&sources, &def->source);
		dict_set(trans, MIRROR_KEY_SOURCES,
			 mirror_sources_encode(&sources));
	}
	/* the counters exist from the start, so that incrementing them
	   never races with creating them */
	dict_set(trans, t_strdup_printf(MIRROR_KEY_STATUS"%u/copies",
					def->id), "0");
	dict_set(trans, t_strdup_printf(MIRROR_KEY_STATUS"%u/failures",
					def->id), "0");
	if (password_hash != NULL) {
		mirror_user_record_set(trans, def->storage, password_hash,
				       def->id);
	}
	if (registry_commit(reg, &trans, error_r) < 0)
		return -1;
	return 1;
}

int mirror_registry_get_def(struct registry *reg, unsigned int id,
			    pool_t pool, struct mirror_def *def_r,
			    const char **error_r)
{
	ARRAY_TYPE(mirror_def) defs;
	const struct mirror_def *def;
	const char *source;
	int ret;

	ret = registry_get(reg, mirror_id_key(id),
			   &source, error_r);
	if (ret <= 0)
		return ret;
	t_array_init(&defs, 4);
	if (mirror_registry_lookup(reg, source, pool, &defs, error_r) < 0)
		return -1;
	array_foreach(&defs, def) {
		if (def->id == id) {
			*def_r = *def;
			return 1;
		}
	}
	return 0;
}

/* The list of name (a source, or a storage with by_storage) with the
   definition of id replaced by new_def, or dropped (new_def == NULL).
   Read before the transaction that writes it: no lookup may run while a
   transaction is open (Redis queues everything between MULTI and EXEC). */
static int
mirror_registry_replaced(struct registry *reg, bool by_storage,
			 const char *name, unsigned int id,
			 const struct mirror_def *new_def,
			 ARRAY_TYPE(mirror_def) *kept, const char **error_r)
{
	ARRAY_TYPE(mirror_def) defs;
	const struct mirror_def *def;
	pool_t pool = pool_datastack_create();
	int ret;

	t_array_init(&defs, 4);
	ret = by_storage ?
		mirror_registry_storage_lookup(reg, name, pool, &defs,
					       error_r) :
		mirror_registry_lookup(reg, name, pool, &defs, error_r);
	if (ret < 0)
		return -1;
	array_foreach(&defs, def) {
		if (def->id != id)
			array_push_back(kept, def);
		else if (new_def != NULL)
			array_push_back(kept, new_def);
	}
	return 0;
}

int mirror_registry_update(struct registry *reg,
			   const struct mirror_def *def, const char **error_r)
{
	struct dict_transaction_context *trans;
	ARRAY_TYPE(mirror_def) by_source, by_storage;
	const char *error;

	if (!mirror_def_is_valid(def, &error)) {
		*error_r = t_strdup_printf("Invalid mirror: %s", error);
		return -1;
	}
	t_array_init(&by_source, 4);
	t_array_init(&by_storage, 4);
	if (mirror_registry_replaced(reg, FALSE, def->source, def->id, def,
				     &by_source, error_r) < 0 ||
	    mirror_registry_replaced(reg, TRUE, def->storage, def->id, def,
				     &by_storage, error_r) < 0)
		return -1;
	trans = registry_transaction_begin(reg);
	mirror_registry_set_defs(trans, t_strconcat(MIRROR_KEY_SOURCE,
				 registry_key_escape(def->source), NULL),
				 &by_source);
	mirror_registry_set_defs(trans, mirror_storage_key(def->storage),
				 &by_storage);
	return registry_commit(reg, &trans, error_r);
}

int mirror_registry_remove(struct registry *reg, unsigned int id,
			   pool_t pool, struct mirror_def *removed_r,
			   const char **error_r)
{
	struct dict_transaction_context *trans;
	ARRAY_TYPE(mirror_def) defs, kept, kept_storage;
	ARRAY_TYPE(const_string) sources, kept_sources;
	const struct mirror_def *def;
	const char *id_key, *source_key, *source, *s;
	bool found = FALSE;
	int ret;

	id_key = mirror_id_key(id);
	if ((ret = registry_get(reg, id_key, &source, error_r)) <= 0)
		return ret;

	t_array_init(&defs, 4);
	t_array_init(&kept, 4);
	if (mirror_registry_lookup(reg, source, pool_datastack_create(),
				   &defs, error_r) < 0)
		return -1;
	array_foreach(&defs, def) {
		if (def->id != id)
			array_push_back(&kept, def);
		else {
			found = TRUE;
			*removed_r = *def;
			removed_r->source = p_strdup(pool, def->source);
			removed_r->storage = p_strdup(pool, def->storage);
		}
	}

	/* everything read first: no lookup while the transaction is open */
	t_array_init(&kept_storage, 4);
	if (found &&
	    mirror_registry_replaced(reg, TRUE, removed_r->storage, id, NULL,
				     &kept_storage, error_r) < 0)
		return -1;
	t_array_init(&kept_sources, 16);
	if (array_count(&kept) == 0) {
		t_array_init(&sources, 16);
		if (mirror_registry_get_sources(reg, pool_datastack_create(),
						&sources, error_r) < 0)
			return -1;
		array_foreach_elem(&sources, s) {
			if (strcmp(s, source) != 0)
				array_push_back(&kept_sources, &s);
		}
	}

	trans = registry_transaction_begin(reg);
	/* the id entry goes even if it was stale */
	dict_unset(trans, id_key);
	dict_unset(trans, t_strdup_printf(MIRROR_KEY_STATUS"%u/copies", id));
	dict_unset(trans, t_strdup_printf(MIRROR_KEY_STATUS"%u/failures", id));
	dict_unset(trans, t_strdup_printf(MIRROR_KEY_STATUS"%u/last-failure",
					  id));
	if (found) {
		mirror_registry_set_defs(trans,
			mirror_storage_key(removed_r->storage), &kept_storage);
	}
	source_key = t_strconcat(MIRROR_KEY_SOURCE,
				 registry_key_escape(source), NULL);
	if (array_count(&kept) > 0)
		dict_set(trans, source_key, mirror_defs_encode(&kept));
	else {
		dict_unset(trans, source_key);
		dict_set(trans, MIRROR_KEY_SOURCES,
			 mirror_sources_encode(&kept_sources));
	}
	if (registry_commit(reg, &trans, error_r) < 0)
		return -1;
	return found ? 1 : 0;
}

/* 0 if source is no longer listed, 1 (with error_r) if it is, -1 if the
   list can't be read */
static int
mirror_registry_source_listed(struct registry *reg, const char *key,
			      const char *source, const char **error_r)
{
	ARRAY_TYPE(const_string) sources;

	t_array_init(&sources, 64);
	if (mirror_registry_get_sources(reg, pool_datastack_create(),
					&sources, error_r) < 0)
		return -1;
	if (array_lsearch(&sources, &source, i_strcmp_p) == NULL)
		return 0;
	*error_r = t_strdup_printf("Broken registry: source %s is listed in "
				   MIRROR_KEY_SOURCES" but %s is missing "
				   "(doveadm mirror check)",
				   str_sanitize(source, 80),
				   str_sanitize(key, 120));
	return 1;
}

static int mirror_def_cmp(const struct mirror_def *d1,
			  const struct mirror_def *d2)
{
	if (d1->id < d2->id)
		return -1;
	return d1->id > d2->id ? 1 : 0;
}

int mirror_registry_list(struct registry *reg, const char *source,
			 pool_t pool, ARRAY_TYPE(mirror_def) *defs,
			 const char **error_r)
{
	ARRAY_TYPE(const_string) sources;
	const char *s;
	int ret;

	t_array_init(&sources, 16);
	if (source != NULL)
		array_push_back(&sources, &source);
	else if (mirror_registry_get_sources(reg, pool_datastack_create(),
					     &sources, error_r) < 0)
		return -1;
	array_foreach_elem(&sources, s) {
		ret = mirror_registry_lookup(reg, s, pool, defs, error_r);
		if (ret < 0)
			return -1;
		/* a listed source without definitions was removed while we
		   read, unless it is still listed */
		if (ret == 0 && source == NULL &&
		    mirror_registry_source_listed(reg, mirror_source_key(s), s,
						  error_r) != 0)
			return -1;
	}
	array_sort(defs, mirror_def_cmp);
	return 0;
}

/* Storage users created by the suite */

int mirror_registry_user_set(struct registry *reg, const char *user,
			     const char *password_hash, unsigned int mirror_id,
			     const char **error_r)
{
	struct dict_transaction_context *trans;

	trans = registry_transaction_begin(reg);
	mirror_user_record_set(trans, user, password_hash, mirror_id);
	return registry_commit(reg, &trans, error_r);
}

/* Copy counters */

int mirror_registry_status_add(struct registry *reg,
			       const struct mirror_status_delta *deltas,
			       unsigned int count, const char **error_r)
{
	struct dict_transaction_context *trans;
	unsigned int i;

	trans = registry_transaction_begin(reg);
	for (i = 0; i < count; i++) {
		const struct mirror_status_delta *d = &deltas[i];

		if (d->copies > 0) {
			dict_atomic_inc(trans, t_strdup_printf(
				MIRROR_KEY_STATUS"%u/copies", d->id),
				d->copies);
		}
		if (d->failures == 0)
			continue;
		dict_atomic_inc(trans, t_strdup_printf(
			MIRROR_KEY_STATUS"%u/failures", d->id), d->failures);
		if (d->last_failure != NULL) {
			dict_set(trans, t_strdup_printf(
				MIRROR_KEY_STATUS"%u/last-failure", d->id),
				t_strdup_printf("%ld %s",
					(long)d->last_failure_time,
					str_sanitize(d->last_failure, 500)));
		}
	}
	/* NOTFOUND: the mirror was removed meanwhile */
	return registry_transaction_commit(reg, &trans, error_r) < 0 ? -1 : 0;
}

void mirror_registry_status_update(struct registry *reg,
				   const struct mirror_copy_result *results,
				   unsigned int count)
{
	ARRAY(struct mirror_status_delta) deltas;
	struct mirror_status_delta *d;
	const char *error;
	unsigned int i, j;

	/* each mirror once, however many copies the batch made */
	t_array_init(&deltas, count);
	for (i = 0; i < count; i++) {
		for (j = 0; j < array_count(&deltas); j++) {
			d = array_idx_modifiable(&deltas, j);
			if (d->id == results[i].id)
				break;
		}
		if (j < array_count(&deltas))
			d = array_idx_modifiable(&deltas, j);
		else {
			d = array_append_space(&deltas);
			d->id = results[i].id;
		}
		if (results[i].error == NULL)
			d->copies++;
		else {
			d->failures++;
			d->last_failure_time = ioloop_time;
			d->last_failure = results[i].error;
		}
	}
	if (mirror_registry_status_add(reg, array_front(&deltas),
				       array_count(&deltas), &error) < 0)
		i_error("mirror: Updating the copy counters failed: %s", error);
}

int mirror_registry_copies_get(struct registry *reg, unsigned int id,
			       uint64_t *copies_r, const char **error_r)
{
	return registry_get_counter(reg, t_strdup_printf(
			MIRROR_KEY_STATUS"%u/copies", id), copies_r,
			error_r) < 0 ? -1 : 0;
}

int mirror_registry_status_add_copies(struct registry *reg, unsigned int id,
				      uint64_t count, const char **error_r)
{
	struct dict_transaction_context *trans;
	int ret;

	i_assert(count <= INT64_MAX);
	trans = registry_transaction_begin(reg);
	dict_atomic_inc(trans, t_strdup_printf(MIRROR_KEY_STATUS"%u/copies",
					       id), (long long)count);
	ret = registry_transaction_commit(reg, &trans, error_r);
	if (ret == 0) {
		/* mirror add sets it to 0 */
		*error_r = t_strdup_printf("Mirror %u has no copy counter "
			"(removed meanwhile, or the registry is damaged: "
			"doveadm mirror check --repair)", id);
		return -1;
	}
	return ret < 0 ? -1 : 0;
}

int mirror_registry_status_get(struct registry *reg, unsigned int id,
			       struct mirror_status *status_r,
			       const char **error_r)
{
	const char *value, *p;
	int ret;

	i_zero(status_r);
	if (registry_get_counter(reg, t_strdup_printf(
			MIRROR_KEY_STATUS"%u/copies", id),
			&status_r->copies, error_r) < 0 ||
	    registry_get_counter(reg, t_strdup_printf(
			MIRROR_KEY_STATUS"%u/failures", id),
			&status_r->failures, error_r) < 0)
		return -1;
	ret = registry_get(reg, t_strdup_printf(
			MIRROR_KEY_STATUS"%u/last-failure", id), &value,
				  error_r);
	if (ret < 0)
		return -1;
	if (ret > 0) {
		long t;

		p = strchr(value, ' ');
		if (p == NULL || str_to_long(t_strdup_until(value, p), &t) < 0) {
			*error_r = t_strdup_printf(
				"Broken registry data in the status of "
				"mirror %u", id);
			return -1;
		}
		status_r->last_failure = (time_t)t;
		status_r->last_failure_reason = p + 1;
	}
	return 0;
}

int mirror_registry_list_all(struct registry *reg, pool_t pool,
			     ARRAY_TYPE(mirror_def) *defs,
			     const char **error_r)
{
	ARRAY_TYPE(const_string) sources;
	const char *const *source, **keys, **values, *error;
	pool_t lookup_pool;
	unsigned int i, count;
	int ret = 0;

	t_array_init(&sources, 64);
	if (mirror_registry_get_sources(reg, pool_datastack_create(),
					&sources, error_r) < 0)
		return -1;
	count = array_count(&sources);
	keys = t_new(const char *, count + 1);
	values = t_new(const char *, count + 1);
	i = 0;
	array_foreach(&sources, source) {
		keys[i++] = t_strconcat(MIRROR_KEY_SOURCE,
					registry_key_escape(*source), NULL);
	}
	lookup_pool = pool_alloconly_create("mirror source list", 4096);
	if (registry_get_many(reg, lookup_pool, keys, count, values,
				     error_r) < 0) {
		pool_unref(&lookup_pool);
		return -1;
	}
	for (i = 0; i < count; i++) {
		if (values[i] == NULL) {
			/* listed but gone: removed while we read, unless it
			   is still listed */
			if (mirror_registry_source_listed(reg, keys[i],
				array_idx_elem(&sources, i), error_r) != 0) {
				ret = -1;
				break;
			}
			continue;
		}
		if (mirror_defs_decode(values[i], pool, defs, &error) < 0) {
			*error_r = t_strdup_printf(
				"Broken registry data in %s: %s",
				str_sanitize(keys[i], 120), error);
			ret = -1;
			break;
		}
	}
	pool_unref(&lookup_pool);
	if (ret == 0)
		array_sort(defs, mirror_def_cmp);
	return ret;
}
