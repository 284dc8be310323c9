/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* doveadm mirror check of Mail Mirror's keys (mirror-registry-check.h). */

#include "lib.h"
#include "array.h"
#include "hash.h"
#include "str.h"
#include "strnum.h"
#include "str-sanitize.h"
#include "registry-json.h"
#include "registry-user.h"
#include "registry-check.h"
#include "mirror-registry-private.h"
#include "mirror-registry-check.h"

/* When the id counter is lost and the dict can't iterate, ids are looked
   up this many at a time past the last one found, until none is. */
#define MIRROR_CHECK_ID_PROBE 512

#define MIRROR_CHECK_INCOMPLETE \
	"can't tell while a definition can't be read"

struct mirror_check_source {
	const char *name;
	/* in the source list */
	bool listed;
	/* source/<name> was read */
	bool read;
	/* source/<name> exists */
	bool exists;
	/* its definitions can't be read, or aren't its own */
	bool unknown;
	/* source/<name> is lost, and its definitions were found in the
	   storage lists */
	bool recovered;
	ARRAY_TYPE(mirror_def) defs;
};

struct mirror_check_id {
	unsigned int id;
	/* what id/<id> names */
	const char *source;
};

/* The mirrors that copy into one storage */
struct mirror_check_storage_list {
	const char *storage;
	ARRAY_TYPE(mirror_def) defs;
	/* the userdb doesn't know it (or can't tell), or its userdb
	   record is being rewritten */
	bool unusable;
};

struct mirror_check {
	struct registry_check *check;
	const struct mirror_check_storage *storage;
	pool_t pool;

	ARRAY(struct mirror_check_source *) sources;
	HASH_TABLE(const char *, struct mirror_check_source *) source_hash;
	/* the source list can't be read: why */
	const char *sources_problem;
	bool sources_changed;

	const char *next_id_value;
	bool next_id_valid;
	uint64_t next_id;

	ARRAY(struct mirror_check_id) ids;
	/* every definition that can be read, sorted by id */
	ARRAY_TYPE(mirror_def) defs;
	/* some can't: what no definition names may still be theirs */
	bool incomplete;
	unsigned int max_id;

	ARRAY(struct mirror_check_storage_list *) storages;
};

static int mirror_def_id_cmp(const struct mirror_def *d1,
			     const struct mirror_def *d2)
{
	return d1->id < d2->id ? -1 : (d1->id > d2->id ? 1 : 0);
}

static const struct mirror_def *
mirror_check_def(struct mirror_check *mc, unsigned int id)
{
	struct mirror_def key = { .id = id };

	return array_bsearch(&mc->defs, &key, mirror_def_id_cmp);
}

static bool mirror_def_equals(const struct mirror_def *d1,
			      const struct mirror_def *d2)
{
	return d1->id == d2->id && d1->type == d2->type &&
		strcmp(d1->source, d2->source) == 0 &&
		strcmp(d1->storage, d2->storage) == 0 &&
		d1->days == d2->days && d1->created == d2->created &&
		d1->readonly == d2->readonly &&
		d1->auto_storage == d2->auto_storage &&
		d1->hold_since == d2->hold_since &&
		null_strcmp(d1->hold_reason, d2->hold_reason) == 0;
}

/* Something that no definition names: removed, unless a definition that
   can't be read might name it. */
static void
mirror_check_orphan(struct mirror_check *mc, const char *key,
		    const char *problem)
{
	if (mc->incomplete) {
		registry_check_left(mc->check, key, problem,
				    MIRROR_CHECK_INCOMPLETE);
		return;
	}
	registry_check_unset(mc->check, key);
	registry_check_fixed(mc->check, key, problem, "removed");
}

static const char *mirror_check_problem(const char *value)
{
	return value == NULL ? "missing" :
		t_strconcat("not a counter: ", registry_check_value(value),
			    NULL);
}

/* Reading the definitions */

static struct mirror_check_source *
mirror_check_source(struct mirror_check *mc, const char *name)
{
	struct mirror_check_source *src;

	src = hash_table_lookup(mc->source_hash, name);
	if (src == NULL) {
		src = p_new(mc->pool, struct mirror_check_source, 1);
		src->name = p_strdup(mc->pool, name);
		p_array_init(&src->defs, mc->pool, 2);
		hash_table_insert(mc->source_hash, src->name, src);
		array_push_back(&mc->sources, &src);
	}
	return src;
}

static bool mirror_source_is_valid(const char *source)
{
	enum mirror_type type;
	const char *normalized, *error;

	return mirror_source_parse(source, &type, &normalized, &error) == 0 &&
		strcmp(source, normalized) == 0;
}

static void mirror_check_read_lists(struct mirror_check *mc)
{
	static const char *const keys[] = {
		MIRROR_KEY_NEXT_ID, MIRROR_KEY_SOURCES
	};
	struct mirror_check_source *src;
	ARRAY_TYPE(const_string) listed;
	const char *value, *name, *error;

	registry_check_prefetch(mc->check, keys, N_ELEMENTS(keys));
	value = registry_check_get(mc->check, MIRROR_KEY_NEXT_ID);
	mc->next_id_value = value;
	mc->next_id_valid = value != NULL &&
		registry_check_counter_is_valid(value) &&
		str_to_uint64(value, &mc->next_id) == 0 &&
		mc->next_id <= UINT_MAX;

	value = registry_check_get(mc->check, MIRROR_KEY_SOURCES);
	if (value == NULL) {
		mc->sources_problem = "missing";
		return;
	}
	t_array_init(&listed, 64);
	if (mirror_sources_decode(value, mc->pool, &listed, &error) < 0) {
		mc->sources_problem = p_strconcat(mc->pool, "broken: ", error,
						  NULL);
		return;
	}
	array_foreach_elem(&listed, name) {
		src = mirror_check_source(mc, name);
		if (src->listed) {
			registry_check_fixed(mc->check, MIRROR_KEY_SOURCES,
				t_strdup_printf("lists %s twice", name),
				"rewritten");
			mc->sources_changed = TRUE;
		}
		src->listed = TRUE;
	}
}

static void
mirror_check_source_decode(struct mirror_check *mc,
			   struct mirror_check_source *src)
{
	const struct mirror_def *def;
	const char *key = mirror_source_key(src->name), *value, *error;

	src->read = TRUE;
	if ((value = registry_check_get(mc->check, key)) == NULL)
		return;
	src->exists = TRUE;
	if (mirror_defs_decode(value, mc->pool, &src->defs, &error) < 0) {
		src->unknown = TRUE;
		registry_check_left(mc->check, key,
			t_strconcat("broken: ", error, NULL),
			"its mirrors can't be read: fix or remove it by hand "
			"(doveadm dict set or unset)");
		return;
	}
	array_foreach(&src->defs, def) {
		if (strcmp(def->source, src->name) == 0)
			continue;
		src->unknown = TRUE;
		registry_check_left(mc->check, key,
			t_strdup_printf("holds mirror %u of %s", def->id,
					str_sanitize(def->source, 80)),
			"whose mirrors these are can't be told: fix it by "
			"hand (doveadm dict set)");
		array_clear(&src->defs);
		return;
	}
}

/* Read the definitions of every source found so far. */
static void mirror_check_read_sources(struct mirror_check *mc)
{
	struct mirror_check_source *src;
	ARRAY_TYPE(const_string) keys;
	const char *key;

	t_array_init(&keys, array_count(&mc->sources) + 1);
	array_foreach_elem(&mc->sources, src) {
		if (!src->read) {
			key = mirror_source_key(src->name);
			array_push_back(&keys, &key);
		}
	}
	registry_check_prefetch_array(mc->check, &keys);
	array_foreach_elem(&mc->sources, src) {
		if (!src->read)
			mirror_check_source_decode(mc, src);
	}
}

static void
mirror_check_id_found(struct mirror_check *mc, unsigned int id,
		      const char *source)
{
	struct mirror_check_id *entry;

	entry = array_append_space(&mc->ids);
	entry->id = id;
	entry->source = p_strdup(mc->pool, source);
	/* the source it names may have definitions no list has */
	if (mirror_source_is_valid(source))
		(void)mirror_check_source(mc, source);
}

/* Look up id/<first>..id/<last>: TRUE if any was found. */
static bool
mirror_check_read_id_range(struct mirror_check *mc, unsigned int first,
			   unsigned int last)
{
	const char **keys, *value;
	unsigned int i, count = last - first + 1;
	bool found = FALSE;

	keys = t_new(const char *, count);
	for (i = 0; i < count; i++)
		keys[i] = mirror_id_key(first + i);
	registry_check_prefetch(mc->check, keys, count);
	for (i = 0; i < count; i++) {
		if ((value = registry_check_get(mc->check, keys[i])) != NULL) {
			mirror_check_id_found(mc, first + i, value);
			found = TRUE;
		}
	}
	return found;
}

static void mirror_check_read_ids(struct mirror_check *mc)
{
	struct mirror_check_source *src;
	const struct mirror_def *def;
	ARRAY_TYPE(const_string) names;
	const char *name, *key;
	unsigned int id, last = 0, first;

	if (registry_check_iterated(mc->check)) {
		t_array_init(&names, 64);
		registry_check_names(mc->check, MIRROR_KEY_ID, &names);
		array_foreach_elem(&names, name) {
			key = t_strconcat(MIRROR_KEY_ID, name, NULL);
			if (str_to_uint(name, &id) < 0 || id == 0) {
				registry_check_unset(mc->check, key);
				registry_check_fixed(mc->check, key,
						     "not a mirror id",
						     "removed");
				continue;
			}
			mirror_check_id_found(mc, id,
				registry_check_get(mc->check, key));
		}
		return;
	}
	/* no iteration: the ids up to the counter and the highest id of
	   the definitions read */
	if (mc->next_id_valid)
		last = mc->next_id;
	array_foreach_elem(&mc->sources, src) {
		array_foreach(&src->defs, def)
			last = I_MAX(last, def->id);
	}
	if (last > 0)
		(void)mirror_check_read_id_range(mc, 1, last);
	if (mc->next_id_valid)
		return;
	/* the counter is lost: look past it until nothing more is found */
	do {
		first = last + 1;
		last = first + MIRROR_CHECK_ID_PROBE - 1;
	} while (mirror_check_read_id_range(mc, first, last));
}

/* The source/ keys that neither the list nor the id index names. */
static void mirror_check_read_source_keys(struct mirror_check *mc)
{
	ARRAY_TYPE(const_string) names;
	const char *name, *key;
	string_t *str = t_str_new(128);

	if (!registry_check_iterated(mc->check))
		return;
	t_array_init(&names, 64);
	registry_check_names(mc->check, MIRROR_KEY_SOURCE, &names);
	array_foreach_elem(&names, name) {
		str_truncate(str, 0);
		if (registry_key_unescape(name, str) == 0 &&
		    mirror_source_is_valid(str_c(str)) &&
		    strcmp(registry_key_escape(str_c(str)), name) == 0) {
			(void)mirror_check_source(mc, str_c(str));
			continue;
		}
		key = t_strconcat(MIRROR_KEY_SOURCE, name, NULL);
		registry_check_left(mc->check, key, "not the key of a source",
				    "remove it by hand (doveadm dict unset)");
	}
}

/* Every definition that can be read, sorted by id; a mirror id that two
   sources hold makes both unknown. */
static void mirror_check_gather(struct mirror_check *mc)
{
	struct mirror_check_source *src, *other;
	const struct mirror_def *defs;
	unsigned int i, count;
	bool again;

	do {
		again = FALSE;
		array_clear(&mc->defs);
		mc->incomplete = FALSE;
		array_foreach_elem(&mc->sources, src) {
			if (src->unknown) {
				mc->incomplete = TRUE;
				continue;
			}
			array_append_array(&mc->defs, &src->defs);
		}
		array_sort(&mc->defs, mirror_def_id_cmp);
		defs = array_get(&mc->defs, &count);
		for (i = 1; i < count && !again; i++) {
			if (defs[i].id != defs[i - 1].id)
				continue;
			src = hash_table_lookup(mc->source_hash,
						defs[i].source);
			other = hash_table_lookup(mc->source_hash,
						  defs[i - 1].source);
			registry_check_left(mc->check,
				mirror_source_key(src->name),
				t_strdup_printf("holds mirror %u, which %s "
						"holds too", defs[i].id,
						mirror_source_key(other->name)),
				"remove one of them by hand (doveadm dict set)");
			src->unknown = TRUE;
			other->unknown = TRUE;
			again = TRUE;
		}
	} while (again);
}

/* The problem of a source whose key is lost. */
static const char *
mirror_check_lost_problem(const struct mirror_check_source *src)
{
	return src->listed ? "missing, but "MIRROR_KEY_SOURCES" lists it" :
		"missing, but the id index ("MIRROR_KEY_ID") names it";
}

/* Whether the id index names source for mirror id. */
static bool
mirror_check_id_names(struct mirror_check *mc, unsigned int id,
		      const char *source)
{
	const struct mirror_check_id *entry;

	array_foreach(&mc->ids, entry) {
		if (entry->id == id && strcmp(entry->source, source) == 0)
			return TRUE;
	}
	return FALSE;
}

/* A source that the list or the id index names and whose definitions are
   lost: each storage list holds a copy of the definitions of the mirrors
   that copy into it, so they are taken from there. Only after an
   iteration finds every storage list; without one (Redis) the source is
   left. */
static void mirror_check_recover(struct mirror_check *mc)
{
	struct mirror_check_source *src;
	ARRAY_TYPE(const_string) names;
	ARRAY_TYPE(mirror_def) defs;
	const struct mirror_def *def, *have;
	const char *name, *key, *value, *error;
	bool lost = FALSE;

	array_foreach_elem(&mc->sources, src) {
		if (src->exists || src->unknown)
			continue;
		lost = TRUE;
		if (registry_check_iterated(mc->check))
			continue;
		/* nothing can be said of what is derived from it */
		src->unknown = TRUE;
		registry_check_left(mc->check, mirror_source_key(src->name),
			mirror_check_lost_problem(src),
			"its mirrors may be in a storage list ("
			MIRROR_KEY_STORAGE"<user>), which the dict can't "
			"search (Redis): set it again from there by hand "
			"(doveadm dict set), or if none holds them, remove "
			"it from "MIRROR_KEY_SOURCES" and its "MIRROR_KEY_ID
			" keys");
	}
	if (!lost || !registry_check_iterated(mc->check))
		return;

	t_array_init(&names, 64);
	registry_check_names(mc->check, MIRROR_KEY_STORAGE, &names);
	array_foreach_elem(&names, name) {
		key = t_strconcat(MIRROR_KEY_STORAGE, name, NULL);
		value = registry_check_get(mc->check, key);
		t_array_init(&defs, 4);
		if (value == NULL ||
		    mirror_defs_decode(value, mc->pool, &defs, &error) < 0)
			continue;
		array_foreach(&defs, def) {
			src = hash_table_lookup(mc->source_hash, def->source);
			if (src == NULL || src->exists || src->unknown)
				continue;
			/* the list or the id index must name it */
			if (!src->listed &&
			    !mirror_check_id_names(mc, def->id, def->source))
				continue;
			have = array_bsearch(&src->defs, def,
					     mirror_def_id_cmp);
			if (have != NULL) {
				if (mirror_def_equals(have, def))
					continue;
				src->unknown = TRUE;
				registry_check_left(mc->check,
					mirror_source_key(src->name),
					t_strdup_printf("missing, and the "
						"storage lists hold different "
						"definitions of mirror %u",
						def->id),
					"set it again by hand (doveadm dict "
					"set)");
				continue;
			}
			array_push_back(&src->defs, def);
			array_sort(&src->defs, mirror_def_id_cmp);
			src->recovered = TRUE;
		}
	}
	array_foreach_elem(&mc->sources, src) {
		if (!src->recovered || src->unknown)
			continue;
		key = mirror_source_key(src->name);
		registry_check_set(mc->check, key,
				   mirror_defs_encode(&src->defs));
		registry_check_fixed(mc->check, key,
			mirror_check_lost_problem(src),
			"rebuilt from the storage lists ("
			MIRROR_KEY_STORAGE")");
	}
}

static void mirror_check_read(struct mirror_check *mc)
{
	const struct mirror_check_id *entry;
	const struct mirror_def *def;

	mirror_check_read_lists(mc);
	mirror_check_read_sources(mc);
	mirror_check_read_ids(mc);
	mirror_check_read_source_keys(mc);
	mirror_check_read_sources(mc);
	mirror_check_recover(mc);
	mirror_check_gather(mc);

	array_foreach(&mc->defs, def)
		mc->max_id = I_MAX(mc->max_id, def->id);
	array_foreach(&mc->ids, entry)
		mc->max_id = I_MAX(mc->max_id, entry->id);
}

/* The derived keys */

static void mirror_check_sources(struct mirror_check *mc)
{
	struct mirror_check_source *src;
	ARRAY_TYPE(const_string) rebuilt;
	const char *key;
	bool has_defs;

	t_array_init(&rebuilt, array_count(&mc->sources) + 1);
	array_foreach_elem(&mc->sources, src) {
		key = mirror_source_key(src->name);
		has_defs = !src->unknown && array_count(&src->defs) > 0;
		if (src->listed && (has_defs || src->unknown))
			array_push_back(&rebuilt, &src->name);
		if (src->unknown)
			continue;
		if (src->listed && !src->exists && !src->recovered) {
			if (mc->sources_problem == NULL) {
				registry_check_fixed(mc->check, key,
					"missing, but "MIRROR_KEY_SOURCES
					" lists it",
					"dropped from "MIRROR_KEY_SOURCES
					": no storage list holds its "
					"mirrors either");
			}
			mc->sources_changed = TRUE;
		} else if (src->exists && !has_defs) {
			registry_check_unset(mc->check, key);
			registry_check_fixed(mc->check, key, "holds no mirror",
					     "removed");
			if (src->listed)
				mc->sources_changed = TRUE;
		} else if (has_defs && !src->listed) {
			if (mc->sources_problem == NULL) {
				registry_check_fixed(mc->check,
					MIRROR_KEY_SOURCES,
					t_strdup_printf("misses %s", src->name),
					"added");
			}
			mc->sources_changed = TRUE;
		}
	}
	/* the unlisted ones after the listed ones */
	array_foreach_elem(&mc->sources, src) {
		if (!src->listed && !src->unknown && array_count(&src->defs) > 0)
			array_push_back(&rebuilt, &src->name);
	}
	if (mc->sources_problem != NULL) {
		/* without an iteration the definitions are found through
		   the id index: a mirror whose id key is lost too isn't */
		registry_check_fixed(mc->check, MIRROR_KEY_SOURCES,
			mc->sources_problem,
			registry_check_iterated(mc->check) ?
			"rebuilt from the definitions" :
			"rebuilt from the definitions the id index names "
			"("MIRROR_KEY_ID")");
		mc->sources_changed = TRUE;
	}
	if (mc->sources_changed) {
		registry_check_set(mc->check, MIRROR_KEY_SOURCES,
				   mirror_sources_encode(&rebuilt));
	}
}

static void mirror_check_ids(struct mirror_check *mc)
{
	const struct mirror_check_id *entry;
	const struct mirror_def *def;
	struct mirror_check_source *src;
	ARRAY_TYPE(const_string) keys;
	const char *key, *value;

	t_array_init(&keys, array_count(&mc->defs) + 1);
	array_foreach(&mc->defs, def) {
		key = mirror_id_key(def->id);
		array_push_back(&keys, &key);
	}
	registry_check_prefetch_array(mc->check, &keys);
	array_foreach(&mc->defs, def) {
		key = mirror_id_key(def->id);
		value = registry_check_get(mc->check, key);
		if (value != NULL && strcmp(value, def->source) == 0)
			continue;
		registry_check_set(mc->check, key, def->source);
		registry_check_fixed(mc->check, key, value == NULL ? "missing" :
			t_strdup_printf("names %s, but mirror %u is of %s",
					str_sanitize(value, 80), def->id,
					def->source),
			t_strconcat("set to ", def->source, NULL));
	}
	array_foreach(&mc->ids, entry) {
		if (mirror_check_def(mc, entry->id) != NULL)
			continue;
		src = hash_table_lookup(mc->source_hash, entry->source);
		key = mirror_id_key(entry->id);
		if (src != NULL && src->unknown) {
			/* judged once its source can be read */
			continue;
		}
		mirror_check_orphan(mc, key,
			t_strdup_printf("names %s, which has no mirror %u",
					str_sanitize(entry->source, 80),
					entry->id));
	}
}

static void mirror_check_next_id(struct mirror_check *mc)
{
	const char *problem;

	if (mc->next_id_valid && mc->next_id >= mc->max_id)
		return;
	problem = !mc->next_id_valid ?
		mirror_check_problem(mc->next_id_value) :
		t_strdup_printf("is %"PRIu64", lower than id %u, which is in "
				"use", mc->next_id, mc->max_id);
	registry_check_set(mc->check, MIRROR_KEY_NEXT_ID, dec2str(mc->max_id));
	registry_check_fixed(mc->check, MIRROR_KEY_NEXT_ID, problem,
		mc->max_id == 0 ? "set to 0: no id is in use" :
		t_strdup_printf("set to %u, the highest id found",
				mc->max_id));
}

static void mirror_check_group_storages(struct mirror_check *mc)
{
	HASH_TABLE(const char *, struct mirror_check_storage_list *) hash;
	struct mirror_check_storage_list *list;
	const struct mirror_def *def;
	const char *key;

	hash_table_create(&hash, pool_datastack_create(), 64, str_hash,
			  strcmp);
	array_foreach(&mc->defs, def) {
		key = t_strdup(mirror_storage_key(def->storage));
		list = hash_table_lookup(hash, key);
		if (list == NULL) {
			list = p_new(mc->pool,
				     struct mirror_check_storage_list, 1);
			list->storage = def->storage;
			p_array_init(&list->defs, mc->pool, 2);
			hash_table_insert(hash, key, list);
			array_push_back(&mc->storages, &list);
		}
		array_push_back(&list->defs, def);
	}
	hash_table_destroy(&hash);
}

/* How the definitions a storage list has differ from those it should
   have: NULL if they don't. *left_r is set if it can't be rewritten. */
static const char *
mirror_check_storage_diff(struct mirror_check *mc,
			  ARRAY_TYPE(mirror_def) *want,
			  ARRAY_TYPE(mirror_def) *have, const char **left_r)
{
	const struct mirror_def *def, *found, *prev = NULL;

	*left_r = NULL;
	array_sort(have, mirror_def_id_cmp);
	array_foreach(have, def) {
		if (prev != NULL && prev->id == def->id)
			return t_strdup_printf("lists mirror %u twice", def->id);
		prev = def;
		found = array_bsearch(want, def, mirror_def_id_cmp);
		if (found != NULL) {
			if (!mirror_def_equals(found, def)) {
				return t_strdup_printf("holds an old "
					"definition of mirror %u", def->id);
			}
			continue;
		}
		found = mirror_check_def(mc, def->id);
		if (found != NULL) {
			return t_strdup_printf("lists mirror %u, which copies "
					       "to %s", def->id,
					       found->storage);
		}
		if (mc->incomplete)
			*left_r = MIRROR_CHECK_INCOMPLETE;
		return t_strdup_printf("lists mirror %u, which doesn't exist",
				       def->id);
	}
	array_foreach(want, def) {
		if (array_bsearch(have, def, mirror_def_id_cmp) == NULL)
			return t_strdup_printf("lacks mirror %u", def->id);
	}
	return NULL;
}

static void mirror_check_storage_lists(struct mirror_check *mc)
{
	struct mirror_check_storage_list *list;
	ARRAY_TYPE(const_string) keys, names;
	ARRAY_TYPE(mirror_def) have;
	const char *key, *name, *value, *problem, *why, *error;
	string_t *str;

	t_array_init(&keys, array_count(&mc->storages) + 1);
	array_foreach_elem(&mc->storages, list) {
		key = mirror_storage_key(list->storage);
		array_push_back(&keys, &key);
	}
	registry_check_prefetch_array(mc->check, &keys);
	array_foreach_elem(&mc->storages, list) {
		key = mirror_storage_key(list->storage);
		value = registry_check_get(mc->check, key);
		why = NULL;
		t_array_init(&have, 4);
		if (value == NULL)
			problem = "missing";
		else if (mirror_defs_decode(value, pool_datastack_create(),
					    &have, &error) < 0)
			problem = t_strconcat("broken: ", error, NULL);
		else {
			problem = mirror_check_storage_diff(mc, &list->defs,
							    &have, &why);
		}
		if (problem == NULL)
			continue;
		if (why != NULL) {
			registry_check_left(mc->check, key, problem, why);
			continue;
		}
		registry_check_set(mc->check, key,
				   mirror_defs_encode(&list->defs));
		registry_check_fixed(mc->check, key, problem,
				     "rewritten from the definitions");
	}
	if (!registry_check_iterated(mc->check))
		return;
	/* the lists of storages no mirror copies to */
	t_array_init(&names, 64);
	registry_check_names(mc->check, MIRROR_KEY_STORAGE, &names);
	str = t_str_new(128);
	array_foreach_elem(&names, name) {
		key = t_strconcat(MIRROR_KEY_STORAGE, name, NULL);
		if (array_lsearch(&keys, &key, i_strcmp_p) != NULL)
			continue;
		str_truncate(str, 0);
		if (registry_key_unescape(name, str) < 0)
			str_append(str, name);
		mirror_check_orphan(mc, key, t_strdup_printf(
			"no mirror copies to %s", str_sanitize(str_c(str), 80)));
	}
}

static void
mirror_check_copies(struct mirror_check *mc, const struct mirror_def *def)
{
	const char *key = mirror_status_key(def->id, "copies");
	const char *value, *problem, *error;
	uint64_t copies;

	value = registry_check_get(mc->check, key);
	if (value != NULL && registry_check_counter_is_valid(value))
		return;
	problem = mirror_check_problem(value);
	if (mc->storage->chain_copies(def, mc->storage->context, &copies,
				      &error) < 0) {
		registry_check_left(mc->check, key, problem, t_strconcat(
			"can't count the copies in its hash chain: ", error,
			NULL));
		return;
	}
	registry_check_set(mc->check, key, dec2str(copies));
	registry_check_fixed(mc->check, key, problem, t_strdup_printf(
		"reset to %"PRIu64" from the hash chain", copies));
}

static void
mirror_check_failures(struct mirror_check *mc, const struct mirror_def *def)
{
	const char *key = mirror_status_key(def->id, "failures"), *value, *p;
	long t;

	value = registry_check_get(mc->check, key);
	if (value == NULL || !registry_check_counter_is_valid(value)) {
		registry_check_set(mc->check, key, "0");
		registry_check_fixed(mc->check, key,
				     mirror_check_problem(value),
				     "reset to 0: nothing else records "
				     "failures");
	}
	key = mirror_status_key(def->id, "last-failure");
	value = registry_check_get(mc->check, key);
	if (value == NULL)
		return;
	p = strchr(value, ' ');
	if (p != NULL && str_to_long(t_strdup_until(value, p), &t) == 0 &&
	    t >= 0)
		return;
	registry_check_unset(mc->check, key);
	registry_check_fixed(mc->check, key,
			     "broken: not '<unix time> <reason>'",
			     "removed: it only records the last failure");
}

static void mirror_check_counters(struct mirror_check *mc)
{
	static const char *const what[] = {
		"copies", "failures", "last-failure"
	};
	const struct mirror_def *def;
	ARRAY_TYPE(const_string) keys, names;
	const char *key, *name, *p;
	unsigned int i, id;

	t_array_init(&keys, array_count(&mc->defs) * N_ELEMENTS(what) + 1);
	array_foreach(&mc->defs, def) {
		for (i = 0; i < N_ELEMENTS(what); i++) {
			key = mirror_status_key(def->id, what[i]);
			array_push_back(&keys, &key);
		}
	}
	registry_check_prefetch_array(mc->check, &keys);
	array_foreach(&mc->defs, def) {
		mirror_check_copies(mc, def);
		mirror_check_failures(mc, def);
	}
	if (!registry_check_iterated(mc->check))
		return;
	/* the counters of mirrors that were removed */
	t_array_init(&names, 64);
	registry_check_names(mc->check, MIRROR_KEY_STATUS, &names);
	array_foreach_elem(&names, name) {
		p = strchr(name, '/');
		if (p != NULL && str_to_uint(t_strdup_until(name, p), &id) == 0 &&
		    mirror_check_def(mc, id) != NULL)
			continue;
		key = t_strconcat(MIRROR_KEY_STATUS, name, NULL);
		mirror_check_orphan(mc, key, p == NULL ?
			"not the status of a mirror" : t_strdup_printf(
			"of mirror %s, which doesn't exist",
			str_sanitize(t_strdup_until(name, p), 20)));
	}
}

/* The problem of a storage's expire index entry (value, NULL if there is
   none) when its INBOX's oldest message was saved at oldest (0: it is
   empty), or NULL. An entry earlier than that only makes the scan look
   early (and move it), and one of an empty INBOX makes it look once: the
   scan misses mail only when the entry is later, or missing. */
static const char *
mirror_check_expire_problem(const char *value, time_t indexed, time_t oldest)
{
	if (oldest == 0)
		return NULL;
	if (value == NULL) {
		return t_strdup_printf("missing, but the INBOX has mail "
				       "saved at %ld", (long)oldest);
	}
	if (indexed > oldest) {
		return t_strdup_printf("is %ld, later than the oldest mail "
				       "in the INBOX (%ld)", (long)indexed,
				       (long)oldest);
	}
	return NULL;
}

static void mirror_check_expire_index(struct mirror_check *mc)
{
	struct mirror_check_storage_list *list;
	ARRAY_TYPE(const_string) keys;
	const char *key, *value, *problem, *error;
	time_t indexed, oldest;
	bool valid;

	t_array_init(&keys, array_count(&mc->storages) + 1);
	array_foreach_elem(&mc->storages, list) {
		key = mirror_expire_key(list->storage);
		array_push_back(&keys, &key);
	}
	registry_check_prefetch_array(mc->check, &keys);
	/* an entry of a storage no mirror uses is kept on purpose (see
	   mirror-expire.c) */
	array_foreach_elem(&mc->storages, list) {
		if (list->unusable) {
			/* its login is what is wrong: it can't be opened
			   until that is repaired */
			continue;
		}
		key = mirror_expire_key(list->storage);
		value = registry_check_get(mc->check, key);
		indexed = 0;
		valid = value == NULL ||
			registry_time_parse(value, &indexed) == 0;
		if (mc->storage->oldest_saved(list->storage,
					      mc->storage->context, &oldest,
					      &error) < 0) {
			registry_check_left(mc->check, key, valid ?
				"can't be checked" : t_strconcat(
				"not a time: ", registry_check_value(value),
				NULL), t_strconcat("can't read the INBOX: ",
						   error, NULL));
			continue;
		}
		problem = valid ?
			mirror_check_expire_problem(value, indexed, oldest) :
			t_strconcat("not a time: ",
				    registry_check_value(value), NULL);
		if (problem == NULL)
			continue;
		if (oldest == 0) {
			registry_check_unset(mc->check, key);
			registry_check_fixed(mc->check, key, problem,
					     "removed: the INBOX is empty");
		} else {
			registry_check_set(mc->check, key, dec2str(oldest));
			registry_check_fixed(mc->check, key, problem,
					     "rebuilt from the INBOX");
		}
	}
}

/* The mirror id a storage user's userdb record names, 0 if none. */
static unsigned int
mirror_check_userdb_id(struct mirror_check *mc, const char *user)
{
	struct json_object *obj;
	const char *value, *error;
	unsigned int id = 0;

	value = registry_check_get(mc->check, registry_userdb_key(user));
	if (value == NULL ||
	    registry_json_parse(value, json_type_object, &obj, &error) < 0)
		return 0;
	if (registry_json_get_str(obj, "mirror_storage", &value, &error) < 0 ||
	    str_to_uint(value, &id) < 0)
		id = 0;
	json_object_put(obj);
	return id;
}

static void
mirror_check_storage_user(struct mirror_check *mc,
			  struct mirror_check_storage_list *list)
{
	const struct mirror_def *def, *first_auto = NULL;
	const char *error;
	unsigned int id;
	int ret;

	array_foreach(&list->defs, def) {
		if (def->auto_storage && first_auto == NULL)
			first_auto = def;
	}
	if (first_auto != NULL) {
		/* made for a mirror: its record names one that made it
		   (doveadm mirror password of any of them rewrites it) */
		id = mirror_check_userdb_id(mc, list->storage);
		def = mirror_check_def(mc, id);
		if (def == NULL || !def->auto_storage ||
		    strcasecmp(def->storage, list->storage) != 0)
			id = first_auto->id;
		registry_check_login(mc->check, list->storage,
			t_strdup_printf("doveadm mirror password %u",
					first_auto->id),
			mirror_storage_userdb_fields(id));
		list->unusable = registry_check_changes(mc->check,
			registry_userdb_key(list->storage));
		return;
	}
	/* an existing mailbox: the site's userdb has it */
	registry_check_login_used(mc->check, list->storage);
	def = array_front(&list->defs);
	ret = mc->storage->user_exists(list->storage, mc->storage->context,
				       &error);
	list->unusable = ret <= 0;
	if (ret < 0) {
		registry_check_left(mc->check, mirror_storage_key(list->storage),
			t_strdup_printf("storage user %s can't be looked up: %s",
					list->storage, error),
			"check again when the userdb answers");
	} else if (ret == 0) {
		registry_check_left(mc->check, mirror_storage_key(list->storage),
			t_strdup_printf("the userdb doesn't know storage user "
					"%s", list->storage),
			t_strdup_printf("copies to it fail: add the user "
					"again, or remove mirror %u", def->id));
	}
}

static void mirror_check_storage_users(struct mirror_check *mc)
{
	struct mirror_check_storage_list *list;

	array_foreach_elem(&mc->storages, list)
		mirror_check_storage_user(mc, list);
}

/* Accounts */

struct mirror_check_account {
	const char *name;
	bool listed;
	/* account/<name> exists and can be read */
	bool readable;
	struct mirror_account acct;
};

static void
mirror_check_account_list(struct mirror_check *mc,
			  ARRAY_TYPE(const_string) *names)
{
	ARRAY_TYPE(const_string) listed, keys;
	const char *value, *name, *problem = NULL, *error;

	t_array_init(&listed, 16);
	value = registry_check_get(mc->check, MIRROR_KEY_ACCOUNTS);
	if (value == NULL)
		problem = "missing";
	else if (mirror_accounts_decode(value, mc->pool, &listed,
					&error) < 0)
		problem = t_strconcat("broken: ", error, NULL);
	array_foreach_elem(&listed, name) {
		if (array_lsearch(names, &name, i_strcmp_p) == NULL)
			array_push_back(names, &name);
	}
	if (!registry_check_iterated(mc->check)) {
		if (problem != NULL) {
			registry_check_left(mc->check, MIRROR_KEY_ACCOUNTS,
				problem, "the dict can't iterate (Redis) to "
				"find the accounts: set it by hand (doveadm "
				"dict set, a JSON array of their names)");
		}
		return;
	}
	/* the accounts that have a key */
	t_array_init(&keys, 16);
	registry_check_names(mc->check, MIRROR_KEY_ACCOUNT, &keys);
	array_foreach_elem(&keys, name) {
		if (!mirror_name_is_valid(name)) {
			registry_check_left(mc->check,
				t_strconcat(MIRROR_KEY_ACCOUNT, name, NULL),
				"not the key of an account",
				"remove it by hand (doveadm dict unset)");
			continue;
		}
		if (array_lsearch(names, &name, i_strcmp_p) != NULL)
			continue;
		array_push_back(names, &name);
		if (problem == NULL) {
			registry_check_fixed(mc->check, MIRROR_KEY_ACCOUNTS,
				t_strdup_printf("misses account %s", name),
				"added");
		}
	}
	if (problem != NULL) {
		registry_check_fixed(mc->check, MIRROR_KEY_ACCOUNTS, problem,
				     "rebuilt from the account keys");
	}
	if (problem != NULL || array_count(names) > array_count(&listed)) {
		registry_check_set(mc->check, MIRROR_KEY_ACCOUNTS,
				   registry_json_strings(names));
	}
}

static void mirror_check_accounts(struct mirror_check *mc)
{
	ARRAY(struct mirror_check_account) accounts;
	struct mirror_check_account *a;
	ARRAY_TYPE(const_string) names, keys, domains, owners;
	const char *name, *key, *value, *domain, *error;
	const char *const *owner;
	unsigned int i;

	t_array_init(&names, 16);
	(void)registry_check_get(mc->check, MIRROR_KEY_ACCOUNTS);
	mirror_check_account_list(mc, &names);

	t_array_init(&keys, array_count(&names) + 1);
	array_foreach_elem(&names, name) {
		key = mirror_account_key(name);
		array_push_back(&keys, &key);
	}
	registry_check_prefetch_array(mc->check, &keys);
	t_array_init(&accounts, array_count(&names) + 1);
	array_foreach_elem(&names, name) {
		a = array_append_space(&accounts);
		a->name = name;
		key = mirror_account_key(name);
		value = registry_check_get(mc->check, key);
		if (value == NULL) {
			registry_check_left(mc->check, key,
				"missing, but "MIRROR_KEY_ACCOUNTS" lists it",
				"its level and domains are lost: doveadm mirror "
				"account set and assign make it again");
		} else if (mirror_account_decode(name, value, mc->pool,
						 &a->acct, &error) < 0) {
			registry_check_left(mc->check, key,
				t_strconcat("broken: ", error, NULL),
				"fix it by hand (doveadm dict set)");
		} else {
			a->readable = TRUE;
		}
	}

	/* each domain's reverse key names its account */
	array_clear(&keys);
	t_array_init(&domains, 16);
	t_array_init(&owners, 16);
	array_foreach_modifiable(&accounts, a) {
		if (!a->readable)
			continue;
		array_foreach_elem(&a->acct.domains, domain) {
			key = mirror_domain_key(domain);
			array_push_back(&keys, &key);
		}
	}
	registry_check_prefetch_array(mc->check, &keys);
	array_foreach_modifiable(&accounts, a) {
		if (!a->readable)
			continue;
		array_foreach_elem(&a->acct.domains, domain) {
			key = mirror_domain_key(domain);
			for (i = 0; i < array_count(&domains); i++) {
				if (strcmp(array_idx_elem(&domains, i),
					   domain) == 0)
					break;
			}
			if (i < array_count(&domains)) {
				registry_check_left(mc->check, key,
					t_strdup_printf("in accounts %s and %s",
						array_idx_elem(&owners, i),
						a->name),
					"assign it to one of them (doveadm "
					"mirror account assign)");
				continue;
			}
			array_push_back(&domains, &domain);
			array_push_back(&owners, &a->name);
			value = registry_check_get(mc->check, key);
			if (value != NULL && strcmp(value, a->name) == 0)
				continue;
			registry_check_set(mc->check, key, a->name);
			registry_check_fixed(mc->check, key, value == NULL ?
				"missing" : t_strdup_printf(
				"names %s, but account %s lists it",
				str_sanitize(value, 80), a->name),
				t_strconcat("set to ", a->name, NULL));
		}
	}
	if (!registry_check_iterated(mc->check))
		return;
	/* reverse keys that no account lists */
	array_clear(&keys);
	registry_check_names(mc->check, MIRROR_KEY_DOMAIN, &keys);
	array_foreach_elem(&keys, name) {
		string_t *str = t_str_new(64);
		const char *domain_name;

		key = t_strconcat(MIRROR_KEY_DOMAIN, name, NULL);
		if (registry_key_unescape(name, str) == 0) {
			domain_name = str_c(str);
			if (array_lsearch(&domains, &domain_name,
					  i_strcmp_p) != NULL)
				continue;
		}
		value = registry_check_get(mc->check, key);
		owner = NULL;
		array_foreach_modifiable(&accounts, a) {
			if (strcmp(a->name, value) == 0 && !a->readable)
				owner = &a->name;
		}
		if (owner != NULL) {
			registry_check_left(mc->check, key, t_strdup_printf(
				"names account %s", *owner),
				"can't tell while that account can't be read");
			continue;
		}
		registry_check_unset(mc->check, key);
		registry_check_fixed(mc->check, key, t_strdup_printf(
			"names account %s, which doesn't list it",
			str_sanitize(value, 80)), "removed");
	}
}

void mirror_registry_check(struct registry_check *check,
			   const struct mirror_check_storage *storage)
{
	struct mirror_check mc;

	i_zero(&mc);
	mc.check = check;
	mc.storage = storage;
	mc.pool = registry_check_pool(check);
	p_array_init(&mc.sources, mc.pool, 64);
	hash_table_create(&mc.source_hash, mc.pool, 64, str_hash, strcmp);
	p_array_init(&mc.ids, mc.pool, 64);
	p_array_init(&mc.defs, mc.pool, 64);
	p_array_init(&mc.storages, mc.pool, 64);

	mirror_check_read(&mc);
	if (registry_check_failed(check) == NULL) {
		mirror_check_sources(&mc);
		mirror_check_ids(&mc);
		mirror_check_next_id(&mc);
		mirror_check_group_storages(&mc);
		mirror_check_storage_lists(&mc);
	}
	if (registry_check_failed(check) == NULL)
		mirror_check_counters(&mc);
	if (registry_check_failed(check) == NULL)
		mirror_check_storage_users(&mc);
	if (registry_check_failed(check) == NULL)
		mirror_check_expire_index(&mc);
	if (registry_check_failed(check) == NULL)
		mirror_check_accounts(&mc);
	hash_table_destroy(&mc.source_hash);
}
