/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* The registry's fsck (registry-check.h): what it read, the problems it
   found and the repairs it queued, and the checks of the registry's own
   keys: its marker and the login records. */

#include "lib.h"
#include "array.h"
#include "hash.h"
#include "str.h"
#include "str-sanitize.h"
#include "registry-dict.h"
#include "registry-json.h"
#include "registry-access.h"
#include "registry-marker.h"
#include "registry-user.h"
#include "registry-check.h"

/* what registry_check_load() reads: every key of the suite */
static const char *const registry_check_prefixes[] = {
	REGISTRY_KEY_MIRROR, REGISTRY_KEY_BAG
};

/* the longest key, problem or action a row shows */
#define REGISTRY_CHECK_TEXT_MAX 1024

/* the value of a key that was looked up and doesn't exist */
static const char registry_check_missing[] = "";

struct registry_check_change {
	const char *key;
	/* NULL: unset */
	const char *value;
};

struct registry_check {
	struct registry *reg;
	pool_t pool;
	bool repair;
	bool iterated;

	/* what was read: key -> value, or registry_check_missing */
	HASH_TABLE(const char *, const char *) values;
	/* after an iteration: every key, sorted */
	ARRAY_TYPE(const_string) keys;
	const char *error;

	ARRAY_TYPE(registry_check_problem) problems;
	ARRAY(struct registry_check_change) changes;
	/* the logins something uses, as their keys name them */
	HASH_TABLE(const char *, const char *) logins;
};

struct registry_check *registry_check_init(struct registry *reg, bool repair)
{
	struct registry_check *check;
	pool_t pool;

	pool = pool_alloconly_create("registry check", 16384);
	check = p_new(pool, struct registry_check, 1);
	check->reg = reg;
	check->pool = pool;
	check->repair = repair;
	hash_table_create(&check->values, pool, 1024, str_hash, strcmp);
	hash_table_create(&check->logins, pool, 64, str_hash, strcmp);
	p_array_init(&check->keys, pool, 1024);
	p_array_init(&check->problems, pool, 16);
	p_array_init(&check->changes, pool, 16);
	return check;
}

void registry_check_deinit(struct registry_check **_check)
{
	struct registry_check *check = *_check;
	pool_t pool = check->pool;

	*_check = NULL;
	hash_table_destroy(&check->values);
	hash_table_destroy(&check->logins);
	pool_unref(&pool);
}

bool registry_check_repairing(const struct registry_check *check)
{
	return check->repair;
}

pool_t registry_check_pool(const struct registry_check *check)
{
	return check->pool;
}

/* Reads */

static void
registry_check_store(struct registry_check *check, const char *key,
		     const char *value)
{
	const char *k = p_strdup(check->pool, key);
	const char *v = value == NULL ? registry_check_missing :
		p_strdup(check->pool, value);

	hash_table_update(check->values, k, v);
}

struct registry_check_load_ctx {
	struct registry_check *check;
	const char *prefix;
};

static int
registry_check_load_key(const char *name, const char *value, void *context,
			const char **error_r ATTR_UNUSED)
{
	struct registry_check_load_ctx *ctx = context;
	struct registry_check *check = ctx->check;
	const char *key = p_strconcat(check->pool, ctx->prefix, name, NULL);
	const char *v = p_strdup(check->pool, value);

	hash_table_update(check->values, key, v);
	array_push_back(&check->keys, &key);
	return 0;
}

int registry_check_load(struct registry_check *check, const char **error_r)
{
	struct registry_check_load_ctx ctx = { .check = check };
	unsigned int i;
	int ret = 1;

	hash_table_clear(check->values, TRUE);
	array_clear(&check->keys);
	check->iterated = FALSE;
	for (i = 0; i < N_ELEMENTS(registry_check_prefixes) && ret > 0; i++) {
		ctx.prefix = registry_check_prefixes[i];
		ret = registry_iterate_if_supported(check->reg, ctx.prefix,
						    registry_check_load_key,
						    &ctx, error_r);
	}
	if (ret < 0)
		return -1;
	if (ret == 0) {
		/* Redis: looked up as asked for */
		hash_table_clear(check->values, TRUE);
		array_clear(&check->keys);
		registry_check_note(check, DICT_PATH_SHARED,
			"not searched: the dict can't iterate (Redis)",
			"unchecked: unused logins, keys of removed mirrors "
			"and bags, accounts and bags missing from their lists");
		return 0;
	}
	check->iterated = TRUE;
	array_sort(&check->keys, i_strcmp_p);
	return 0;
}

bool registry_check_iterated(const struct registry_check *check)
{
	return check->iterated;
}

void registry_check_prefetch(struct registry_check *check,
			     const char *const *keys, unsigned int count)
{
	ARRAY_TYPE(const_string) wanted;
	const char **values, *error;
	unsigned int i, n;

	if (check->iterated || check->error != NULL)
		return;
	t_array_init(&wanted, count + 1);
	for (i = 0; i < count; i++) {
		if (hash_table_lookup(check->values, keys[i]) == NULL)
			array_push_back(&wanted, &keys[i]);
	}
	n = array_count(&wanted);
	if (n == 0)
		return;
	values = t_new(const char *, n);
	if (registry_get_many(check->reg, check->pool, array_front(&wanted),
			      n, values, &error) < 0) {
		check->error = p_strdup(check->pool, error);
		return;
	}
	for (i = 0; i < n; i++)
		registry_check_store(check, array_idx_elem(&wanted, i),
				     values[i]);
}

void registry_check_prefetch_array(struct registry_check *check,
				   const ARRAY_TYPE(const_string) *keys)
{
	if (array_count(keys) > 0) {
		registry_check_prefetch(check, array_front(keys),
					array_count(keys));
	}
}

const char *registry_check_get(struct registry_check *check, const char *key)
{
	const char *value, *error;
	int ret;

	if (check->error != NULL)
		return NULL;
	value = hash_table_lookup(check->values, key);
	if (value == NULL && !check->iterated) {
		ret = registry_get(check->reg, key, &value, &error);
		if (ret < 0) {
			check->error = p_strdup(check->pool, error);
			return NULL;
		}
		registry_check_store(check, key, ret > 0 ? value : NULL);
		value = hash_table_lookup(check->values, key);
	}
	return value == NULL || value == registry_check_missing ? NULL : value;
}

void registry_check_names(struct registry_check *check, const char *prefix,
			  ARRAY_TYPE(const_string) *names)
{
	const char *const *keys, *name;
	size_t len = strlen(prefix);
	unsigned int lo = 0, hi, mid;

	i_assert(check->iterated);
	keys = array_get(&check->keys, &hi);
	/* the first key >= prefix */
	while (lo < hi) {
		mid = (lo + hi) / 2;
		if (strcmp(keys[mid], prefix) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	for (; lo < array_count(&check->keys); lo++) {
		if (strncmp(keys[lo], prefix, len) != 0)
			break;
		name = keys[lo] + len;
		array_push_back(names, &name);
	}
}

const char *registry_check_failed(const struct registry_check *check)
{
	return check->error;
}

/* Problems and repairs */

static void
registry_check_add(struct registry_check *check, const char *key,
		   const char *problem, const char *action,
		   enum registry_check_state state)
{
	struct registry_check_problem *p;

	/* a key found by iterating, and what an error says, may hold
	   anything: every row is printable */
	p = array_append_space(&check->problems);
	p->key = p_strdup(check->pool,
			  str_sanitize(key, REGISTRY_CHECK_TEXT_MAX));
	p->problem = p_strdup(check->pool,
			      str_sanitize(problem, REGISTRY_CHECK_TEXT_MAX));
	p->action = p_strdup(check->pool,
			     str_sanitize(action, REGISTRY_CHECK_TEXT_MAX));
	p->state = state;
}

void registry_check_left(struct registry_check *check, const char *key,
			 const char *problem, const char *why)
{
	registry_check_add(check, key, problem,
			   t_strconcat("left: ", why, NULL),
			   REGISTRY_CHECK_LEFT);
}

void registry_check_fixed(struct registry_check *check, const char *key,
			  const char *problem, const char *done)
{
	registry_check_add(check, key, problem, check->repair ? done :
			   t_strconcat("would be ", done, NULL),
			   REGISTRY_CHECK_PENDING);
}

void registry_check_note(struct registry_check *check, const char *key,
			 const char *text, const char *action)
{
	registry_check_add(check, key, text, action, REGISTRY_CHECK_NOTE);
}

static void
registry_check_change(struct registry_check *check, const char *key,
		      const char *value)
{
	struct registry_check_change *change;

	array_foreach_modifiable(&check->changes, change) {
		if (strcmp(change->key, key) == 0) {
			change->value = p_strdup(check->pool, value);
			return;
		}
	}
	change = array_append_space(&check->changes);
	change->key = p_strdup(check->pool, key);
	change->value = p_strdup(check->pool, value);
}

void registry_check_set(struct registry_check *check, const char *key,
			const char *value)
{
	i_assert(value != NULL);
	registry_check_change(check, key, value);
}

void registry_check_unset(struct registry_check *check, const char *key)
{
	registry_check_change(check, key, NULL);
}

bool registry_check_changes(const struct registry_check *check,
			    const char *key)
{
	const struct registry_check_change *change;

	array_foreach(&check->changes, change) {
		if (strcmp(change->key, key) == 0)
			return TRUE;
	}
	return FALSE;
}

static void
registry_check_settle(struct registry_check *check, const char *error)
{
	struct registry_check_problem *p;

	array_foreach_modifiable(&check->problems, p) {
		if (p->state != REGISTRY_CHECK_PENDING)
			continue;
		if (error == NULL)
			p->state = REGISTRY_CHECK_DONE;
		else {
			p->state = REGISTRY_CHECK_FAILED;
			p->action = p_strdup_printf(check->pool,
				"left: writing the repair failed: %s",
				str_sanitize(error, REGISTRY_CHECK_TEXT_MAX));
		}
	}
}

int registry_check_commit(struct registry_check *check, const char **error_r)
{
	struct dict_transaction_context *trans;
	const struct registry_check_change *change;
	int ret = 0;

	if (!check->repair)
		return 0;
	if (array_count(&check->changes) > 0) {
		trans = registry_transaction_begin(check->reg);
		array_foreach(&check->changes, change) {
			if (change->value == NULL)
				dict_unset(trans, change->key);
			else
				dict_set(trans, change->key, change->value);
		}
		ret = registry_commit(check->reg, &trans, error_r);
		array_clear(&check->changes);
	}
	registry_check_settle(check, ret < 0 ? *error_r : NULL);
	return ret;
}

const ARRAY_TYPE(registry_check_problem) *
registry_check_problems(const struct registry_check *check)
{
	return &check->problems;
}

unsigned int registry_check_remaining(const struct registry_check *check)
{
	const struct registry_check_problem *p;
	unsigned int count = 0;

	array_foreach(&check->problems, p) {
		if (p->state != REGISTRY_CHECK_DONE &&
		    p->state != REGISTRY_CHECK_NOTE)
			count++;
	}
	return count;
}

bool registry_check_counter_is_valid(const char *value)
{
	return value[0] != '-' && registry_counter_value_is_valid(value, 0);
}

const char *registry_check_value(const char *value)
{
	return t_strdup_printf("'%s'", str_sanitize(value, 40));
}

/* The registry's own keys */

int registry_check_marker(struct registry_check *check, const char **error_r)
{
	struct registry_marker marker;
	const char *value, *error;

	value = registry_check_get(check, REGISTRY_KEY_MARKER);
	if ((error = registry_check_failed(check)) != NULL) {
		*error_r = error;
		return -1;
	}
	if (value == NULL) {
		/* a lost registry has none: nothing in it is the truth */
		*error_r = t_strconcat("The registry is unavailable: ",
			registry_marker_check(NULL, NULL), "; check reads no "
			"registry without it (doveadm mirror init --upgrade "
			"sets up one that dovecot-mirror 0.1 wrote)", NULL);
		return -1;
	}
	if (registry_marker_parse(value, &marker, &error) < 0) {
		registry_check_left(check, REGISTRY_KEY_MARKER,
			t_strconcat("broken: ", error, NULL),
			"nothing else was checked: if this registry is yours, "
			"unset the marker (doveadm dict unset) and run "
			"doveadm mirror init --upgrade");
		return 0;
	}
	if (marker.format > REGISTRY_FORMAT) {
		*error_r = t_strconcat("The registry is unavailable: ",
			registry_marker_check(value, NULL),
			": check it with the version that wrote it", NULL);
		return -1;
	}
	return 1;
}

static const char *registry_check_login_name(const char *user)
{
	return registry_key_escape(t_str_lcase(user));
}

void registry_check_login_used(struct registry_check *check,
			       const char *user)
{
	const char *name = registry_check_login_name(user);

	if (hash_table_lookup(check->logins, name) == NULL) {
		name = p_strdup(check->pool, name);
		hash_table_insert(check->logins, name, name);
	}
}

static const char *registry_check_json(struct json_object *obj)
{
	return str_sanitize(json_object_to_json_string_ext(obj,
		JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE), 60);
}

/* The problem of a userdb record (value), or NULL if it has fields. The
   record that repairs it is in *record_r (to release). */
static const char *
registry_check_userdb_problem(const char *value, struct json_object *fields,
			      struct json_object **record_r)
{
	struct json_object *have;
	const char *error, *problem = NULL;

	if (value == NULL) {
		*record_r = json_object_new_object();
		return "missing";
	}
	if (registry_json_parse(value, json_type_object, record_r,
				&error) < 0) {
		*record_r = json_object_new_object();
		return t_strconcat("broken: ", error, NULL);
	}
	json_object_object_foreach(fields, name, want) {
		if (!json_object_object_get_ex(*record_r, name, &have)) {
			problem = t_strdup_printf("'%s' is missing", name);
			break;
		}
		if (!json_object_equal(have, want)) {
			problem = t_strdup_printf("'%s' is %s, not %s", name,
						  registry_check_json(have),
						  registry_check_json(want));
			break;
		}
	}
	return problem;
}

static const char *registry_check_password_problem(const char *value)
{
	struct json_object *obj;
	const char *password, *error;
	int ret;

	if (value == NULL)
		return "missing";
	if (registry_json_parse(value, json_type_object, &obj, &error) < 0)
		return t_strconcat("broken: ", error, NULL);
	ret = registry_json_get_str(obj, "password", &password, &error);
	json_object_put(obj);
	return ret < 0 ? t_strconcat("broken: ", error, NULL) : NULL;
}

void registry_check_login(struct registry_check *check, const char *user,
			  const char *password_hint,
			  struct json_object *userdb_fields)
{
	const char *keys[] = {
		registry_user_key(user), registry_userdb_key(user)
	};
	struct json_object *record;
	const char *problem;

	registry_check_login_used(check, user);
	registry_check_prefetch(check, keys, N_ELEMENTS(keys));
	if (password_hint != NULL) {
		problem = registry_check_password_problem(
			registry_check_get(check, keys[0]));
		if (problem != NULL) {
			registry_check_left(check, keys[0], problem,
				t_strdup_printf("%s makes a new password",
						password_hint));
		}
	}
	if (userdb_fields == NULL)
		return;
	problem = registry_check_userdb_problem(
		registry_check_get(check, keys[1]), userdb_fields, &record);
	if (problem != NULL) {
		json_object_object_foreach(userdb_fields, name, want) {
			json_object_object_add(record, name,
					       json_object_get(want));
		}
		registry_check_set(check, keys[1],
				   registry_json_finish(record));
		registry_check_fixed(check, keys[1], problem,
				     "rewritten from the definition");
	} else {
		json_object_put(record);
	}
	json_object_put(userdb_fields);
}

static void
registry_check_logins_under(struct registry_check *check, const char *prefix)
{
	ARRAY_TYPE(const_string) names;
	const char *name;

	t_array_init(&names, 64);
	registry_check_names(check, prefix, &names);
	array_foreach_elem(&names, name) {
		if (hash_table_lookup(check->logins, name) != NULL)
			continue;
		registry_check_left(check, t_strconcat(prefix, name, NULL),
			"a login of no mirror, bag, ATRN identity or POP3 box",
			"removing a login is the administrator's call "
			"(doveadm dict unset)");
	}
}

void registry_check_logins_unused(struct registry_check *check)
{
	if (!check->iterated)
		return;
	registry_check_logins_under(check, REGISTRY_KEY_USER);
	registry_check_logins_under(check, REGISTRY_KEY_USERDB);
}
