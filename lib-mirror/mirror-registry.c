/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "strnum.h"
#include "str-sanitize.h"
#include "ioloop.h"
#include "dict-private.h"
#include "mirror-registry-private.h"

#define MIRROR_KEY_PREFIX DICT_PATH_SHARED"mirror/"
#define MIRROR_KEY_SOURCE MIRROR_KEY_PREFIX"source/"
#define MIRROR_KEY_ID MIRROR_KEY_PREFIX"id/"
#define MIRROR_KEY_SOURCES MIRROR_KEY_PREFIX"sources"
#define MIRROR_KEY_NEXT_ID MIRROR_KEY_PREFIX"next-id"
#define MIRROR_KEY_STORAGE MIRROR_KEY_PREFIX"storage/"
#define MIRROR_KEY_USER MIRROR_KEY_PREFIX"user/"
#define MIRROR_KEY_USERDB MIRROR_KEY_PREFIX"userdb/"
#define MIRROR_KEY_STATUS MIRROR_KEY_PREFIX"status/"
#define MIRROR_KEY_ACCOUNT MIRROR_KEY_PREFIX"account/"
#define MIRROR_KEY_ACCOUNTS MIRROR_KEY_PREFIX"accounts"
#define MIRROR_KEY_DOMAIN MIRROR_KEY_PREFIX"domain/"
#define MIRROR_KEY_EXPIRE MIRROR_KEY_PREFIX"expire/"
#define MIRROR_KEY_EXPIRE_LAST_RUN MIRROR_KEY_PREFIX"expire-last-run"
#define MIRROR_KEY_EXPIRE_LEASE MIRROR_KEY_PREFIX"expire-lease/"
/* A registry value is an array of objects; room for one more level of
   nesting that a later version may add. */
#define MIRROR_JSON_MAX_DEPTH 4

int mirror_days_parse(const char *str, unsigned int *days_r,
		      const char **error_r)
{
	unsigned int days;

	if (str_to_uint(str, &days) < 0) {
		*error_r = t_strdup_printf(
			"Invalid days '%s': not a number (%u..%u)",
			str_sanitize(str, 20), MIRROR_DAYS_MIN,
			MIRROR_DAYS_MAX);
		return -1;
	}
	if (days < MIRROR_DAYS_MIN || days > MIRROR_DAYS_MAX) {
		*error_r = t_strdup_printf(
			"Invalid days %u: out of range %u..%u", days,
			MIRROR_DAYS_MIN, MIRROR_DAYS_MAX);
		return -1;
	}
	*days_r = days;
	return 0;
}

bool mirror_storage_is_valid(const char *storage, const char **error_r)
{
	const char *p;

	if (*storage == '\0') {
		*error_r = "empty storage user";
		return FALSE;
	}
	if (strlen(storage) > MIRROR_STORAGE_MAX_LEN) {
		*error_r = "storage user name is too long";
		return FALSE;
	}
	for (p = storage; *p != '\0'; p++) {
		if ((unsigned char)*p <= ' ' || (unsigned char)*p >= 0x7f ||
		    *p == '/' || *p == '"' || *p == '\\') {
			*error_r = "storage user name contains an invalid "
				"character";
			return FALSE;
		}
	}
	return TRUE;
}

bool mirror_def_is_valid(const struct mirror_def *def, const char **error_r)
{
	enum mirror_type type;
	const char *normalized, *error;

	if (def->id == 0) {
		*error_r = "id must be positive";
		return FALSE;
	}
	if (mirror_source_parse(def->source, &type, &normalized, &error) < 0) {
		*error_r = error;
		return FALSE;
	}
	if (type != def->type || strcmp(normalized, def->source) != 0) {
		*error_r = t_strdup_printf(
			"source '%s' does not match type %s",
			str_sanitize(def->source, 80),
			mirror_type_to_str(def->type));
		return FALSE;
	}
	if (!mirror_storage_is_valid(def->storage, &error)) {
		*error_r = error;
		return FALSE;
	}
	if (def->days < MIRROR_DAYS_MIN || def->days > MIRROR_DAYS_MAX) {
		*error_r = t_strdup_printf("days %u out of range", def->days);
		return FALSE;
	}
	if (def->created < 0) {
		*error_r = "negative creation time";
		return FALSE;
	}
	return TRUE;
}

/* JSON encoding */

const char *mirror_json_finish(struct json_object *obj)
{
	const char *str = t_strdup(json_object_to_json_string_ext(
		obj, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));

	json_object_put(obj);
	return str;
}

const char *mirror_defs_encode(const ARRAY_TYPE(mirror_def) *defs)
{
	struct json_object *arr = json_object_new_array(), *obj;
	const struct mirror_def *def;

	array_foreach(defs, def) {
		obj = json_object_new_object();
		json_object_object_add(obj, "id",
			json_object_new_int64(def->id));
		json_object_object_add(obj, "type",
			json_object_new_string(mirror_type_to_str(def->type)));
		json_object_object_add(obj, "source",
			json_object_new_string(def->source));
		json_object_object_add(obj, "storage",
			json_object_new_string(def->storage));
		json_object_object_add(obj, "days",
			json_object_new_int64(def->days));
		json_object_object_add(obj, "created",
			json_object_new_int64(def->created));
		json_object_object_add(obj, "readonly",
			json_object_new_boolean(def->readonly));
		json_object_object_add(obj, "auto",
			json_object_new_boolean(def->auto_storage));
		json_object_array_add(arr, obj);
	}
	return mirror_json_finish(arr);
}

const char *mirror_sources_encode(const ARRAY_TYPE(const_string) *sources)
{
	struct json_object *arr = json_object_new_array();
	const char *source;

	array_foreach_elem(sources, source)
		json_object_array_add(arr, json_object_new_string(source));
	return mirror_json_finish(arr);
}

int mirror_json_parse(const char *json, enum json_type type,
		  struct json_object **obj_r, const char **error_r)
{
	struct json_tokener *tok;
	struct json_object *obj;
	size_t len = strlen(json);

	if (len > MIRROR_REGISTRY_VALUE_MAX_SIZE) {
		*error_r = "value is too large";
		return -1;
	}
	tok = json_tokener_new_ex(MIRROR_JSON_MAX_DEPTH);
	if (tok == NULL)
		i_fatal_status(FATAL_OUTOFMEM, "json_tokener_new_ex() failed");
	obj = json_tokener_parse_ex(tok, json, (int)len);
	if (obj == NULL) {
		enum json_tokener_error jerr = json_tokener_get_error(tok);

		*error_r = t_strdup_printf("invalid JSON: %s",
			jerr == json_tokener_continue ? "truncated" :
			json_tokener_error_desc(jerr));
		json_tokener_free(tok);
		return -1;
	}
	if (json_tokener_get_parse_end(tok) != len) {
		*error_r = "invalid JSON: trailing data";
		json_object_put(obj);
		json_tokener_free(tok);
		return -1;
	}
	json_tokener_free(tok);
	if (!json_object_is_type(obj, type)) {
		*error_r = type == json_type_array ? "not a JSON array" :
			"not a JSON object";
		json_object_put(obj);
		return -1;
	}
	*obj_r = obj;
	return 0;
}

static int
mirror_json_parse_array(const char *json, struct json_object **arr_r,
			const char **error_r)
{
	return mirror_json_parse(json, json_type_array, arr_r, error_r);
}

int mirror_json_get_int(struct json_object *obj, const char *name,
		    int64_t min, int64_t max, int64_t *value_r,
		    const char **error_r)
{
	struct json_object *field;

	if (!json_object_object_get_ex(obj, name, &field) ||
	    !json_object_is_type(field, json_type_int)) {
		*error_r = t_strdup_printf("'%s' is missing or not an integer",
					   name);
		return -1;
	}
	errno = 0;
	*value_r = json_object_get_int64(field);
	if (errno != 0 || *value_r < min || *value_r > max) {
		*error_r = t_strdup_printf("'%s' is out of range", name);
		return -1;
	}
	return 0;
}

int mirror_json_get_str(struct json_object *obj, const char *name,
		    const char **value_r, const char **error_r)
{
	struct json_object *field;
	const char *value;

	if (!json_object_object_get_ex(obj, name, &field) ||
	    !json_object_is_type(field, json_type_string)) {
		*error_r = t_strdup_printf("'%s' is missing or not a string",
					   name);
		return -1;
	}
	value = json_object_get_string(field);
	if (strlen(value) != (size_t)json_object_get_string_len(field)) {
		*error_r = t_strdup_printf("'%s' contains NUL", name);
		return -1;
	}
	*value_r = value;
	return 0;
}

int mirror_json_get_bool(struct json_object *obj, const char *name,
		     bool *value_r, const char **error_r)
{
	struct json_object *field;

	*value_r = FALSE;
	if (!json_object_object_get_ex(obj, name, &field))
		return 0;
	if (!json_object_is_type(field, json_type_boolean)) {
		*error_r = t_strdup_printf("'%s' is not a boolean", name);
		return -1;
	}
	*value_r = json_object_get_boolean(field) != 0;
	return 0;
}

static int
mirror_def_from_json(struct json_object *obj, struct mirror_def *def_r,
		     const char **error_r)
{
	const char *type, *error;
	int64_t num;

	i_zero(def_r);
	if (!json_object_is_type(obj, json_type_object)) {
		*error_r = "element is not an object";
		return -1;
	}
	if (mirror_json_get_int(obj, "id", 1, UINT_MAX, &num, error_r) < 0)
		return -1;
	def_r->id = (unsigned int)num;
	if (mirror_json_get_str(obj, "type", &type, error_r) < 0 ||
	    mirror_json_get_str(obj, "source", &def_r->source, error_r) < 0 ||
	    mirror_json_get_str(obj, "storage", &def_r->storage, error_r) < 0)
		return -1;
	if (mirror_type_from_str(type, &def_r->type) < 0) {
		*error_r = "'type' is not single or all";
		return -1;
	}
	if (mirror_json_get_int(obj, "days", MIRROR_DAYS_MIN, MIRROR_DAYS_MAX,
				&num, error_r) < 0)
		return -1;
	def_r->days = (unsigned int)num;
	if (mirror_json_get_int(obj, "created", 0, INT64_MAX, &num,
				error_r) < 0)
		return -1;
	def_r->created = (time_t)num;
	if (mirror_json_get_bool(obj, "readonly", &def_r->readonly,
				 error_r) < 0 ||
	    mirror_json_get_bool(obj, "auto", &def_r->auto_storage,
				 error_r) < 0)
		return -1;
	if (!mirror_def_is_valid(def_r, &error)) {
		*error_r = t_strdup_printf("mirror %u: %s", def_r->id, error);
		return -1;
	}
	return 0;
}

int mirror_defs_decode(const char *json, pool_t pool,
		       ARRAY_TYPE(mirror_def) *defs, const char **error_r)
{
	struct json_object *arr;
	struct mirror_def *decoded;
	size_t i, count;
	int ret = 0;

	if (mirror_json_parse_array(json, &arr, error_r) < 0)
		return -1;
	count = json_object_array_length(arr);
	decoded = t_new(struct mirror_def, count + 1);
	for (i = 0; i < count && ret == 0; i++) {
		ret = mirror_def_from_json(json_object_array_get_idx(arr, i),
					   &decoded[i], error_r);
	}
	if (ret == 0) {
		for (i = 0; i < count; i++) {
			decoded[i].source = p_strdup(pool, decoded[i].source);
			decoded[i].storage = p_strdup(pool, decoded[i].storage);
			array_push_back(defs, &decoded[i]);
		}
	}
	json_object_put(arr);
	return ret;
}

int mirror_sources_decode(const char *json, pool_t pool,
			  ARRAY_TYPE(const_string) *sources,
			  const char **error_r)
{
	struct json_object *arr, *elem;
	const char *const *decoded, *source, *normalized, *error;
	enum mirror_type type;
	size_t i, count;
	int ret = 0;

	if (mirror_json_parse_array(json, &arr, error_r) < 0)
		return -1;
	count = json_object_array_length(arr);
	decoded = t_new(const char *, count + 1);
	for (i = 0; i < count && ret == 0; i++) {
		elem = json_object_array_get_idx(arr, i);
		if (!json_object_is_type(elem, json_type_string)) {
			*error_r = "source is not a string";
			ret = -1;
			break;
		}
		source = json_object_get_string(elem);
		if (mirror_source_parse(source, &type, &normalized,
					&error) < 0 ||
		    strcmp(source, normalized) != 0) {
			*error_r = t_strdup_printf("invalid source '%s'",
						   str_sanitize(source, 80));
			ret = -1;
			break;
		}
		((const char **)decoded)[i] = source;
	}
	if (ret == 0) {
		for (i = 0; i < count; i++) {
			source = p_strdup(pool, decoded[i]);
			array_push_back(sources, &source);
		}
	}
	json_object_put(arr);
	return ret;
}

/* Store */

int mirror_registry_init(const char *dict_uri, const char *base_dir,
			 struct event *event_parent,
			 struct mirror_registry **reg_r, const char **error_r)
{
	struct mirror_registry *reg;
	struct dict_settings set;
	struct dict *dict;
	const char *error;

	i_zero(&set);
	set.base_dir = base_dir;
	set.event_parent = event_parent;
	if (dict_init(dict_uri, &set, &dict, &error) < 0) {
		*error_r = t_strdup_printf("dict_init(%s) failed: %s",
					   dict_uri, error);
		return -1;
	}
	reg = i_new(struct mirror_registry, 1);
	reg->dict = dict;
	*reg_r = reg;
	return 0;
}

void mirror_registry_deinit(struct mirror_registry **_reg)
{
	struct mirror_registry *reg = *_reg;

	if (reg == NULL)
		return;
	*_reg = NULL;
	dict_wait(reg->dict);
	dict_deinit(&reg->dict);
	i_free(reg);
}

int mirror_registry_get(struct mirror_registry *reg, const char *key,
		    const char **value_r, const char **error_r)
{
	/* dict_lookup() reads the error even on success */
	const char *error = NULL;
	int ret;

	/* never inside an open transaction: Redis would queue the GET
	   between MULTI and EXEC */
	i_assert(reg->dict->transaction_count == 0);

	ret = dict_lookup(reg->dict, &reg->opset, pool_datastack_create(),
			  key, value_r, &error);
	if (ret < 0) {
		*error_r = t_strdup_printf("dict lookup of %s failed: %s",
					   key, error);
	}
	return ret;
}

/* Lookups pipelined where the dict can (the dict proxy), one by one
   where it can't; a batch at a time, so that a large registry doesn't
   queue everything at once. */
#define MIRROR_REGISTRY_GET_BATCH 512

struct mirror_registry_get_slot {
	pool_t pool;
	const char **value_r;
	const char *key;
	const char **error_r;
};

static void
mirror_registry_get_many_callback(const struct dict_lookup_result *result,
				  struct mirror_registry_get_slot *slot)
{
	if (result->ret > 0)
		*slot->value_r = p_strdup(slot->pool, result->value);
	else if (result->ret < 0 && *slot->error_r == NULL) {
		*slot->error_r = p_strdup_printf(slot->pool,
			"dict lookup of %s failed: %s", slot->key,
			result->error);
	}
}

int mirror_registry_get_many(struct mirror_registry *reg, pool_t pool,
			     const char *const *keys, unsigned int count,
			     const char **values_r, const char **error_r)
{
	i_assert(!pool->datastack_pool);
	i_assert(reg->dict->transaction_count == 0);

	struct mirror_registry_get_slot *slots;
	const char *error = NULL;
	unsigned int i, n;

	for (i = 0; i < count; i++)
		values_r[i] = NULL;
	for (i = 0; i < count && error == NULL; i += n) {
		n = I_MIN(count - i, MIRROR_REGISTRY_GET_BATCH);
		slots = p_new(pool, struct mirror_registry_get_slot, n);
		for (unsigned int j = 0; j < n; j++) {
			slots[j].pool = pool;
			slots[j].value_r = &values_r[i + j];
			slots[j].key = keys[i + j];
			slots[j].error_r = &error;
			dict_lookup_async(reg->dict, &reg->opset, keys[i + j],
					  mirror_registry_get_many_callback,
					  &slots[j]);
		}
		/* the callbacks may run in the dict's ioloop, in another
		   data stack frame: pool is not the data stack */
		dict_wait(reg->dict);
	}
	if (error != NULL) {
		*error_r = t_strdup(error);
		return -1;
	}
	return 0;
}

static const char *mirror_storage_key(const char *storage)
{
	/* usernames are compared case-insensitively, as Dovecot's usual
	   username_format=%Lu does */
	return t_strconcat(MIRROR_KEY_STORAGE,
			   mirror_key_escape(t_str_lcase(storage)), NULL);
}

static const char *mirror_user_key(const char *user)
{
	return t_strconcat(MIRROR_KEY_USER,
			   mirror_key_escape(t_str_lcase(user)), NULL);
}

int mirror_registry_storage_lookup(struct mirror_registry *reg,
				   const char *storage, pool_t pool,
				   ARRAY_TYPE(mirror_def) *defs,
				   const char **error_r)
{
	const char *value, *error;
	int ret;

	ret = mirror_registry_get(reg, mirror_storage_key(storage), &value,
				  error_r);
	if (ret <= 0)
		return ret;
	if (mirror_defs_decode(value, pool, defs, &error) < 0) {
		*error_r = t_strdup_printf(
			"Broken registry data for storage %s: %s",
			str_sanitize(storage, 80), error);
		return -1;
	}
	return array_count(defs) > 0 ? 1 : 0;
}

int mirror_registry_lookup(struct mirror_registry *reg, const char *source,
			   pool_t pool, ARRAY_TYPE(mirror_def) *defs,
			   const char **error_r)
{
	const char *key, *value, *error;
	int ret;

	key = t_strconcat(MIRROR_KEY_SOURCE, mirror_key_escape(source), NULL);
	if ((ret = mirror_registry_get(reg, key, &value, error_r)) <= 0)
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
mirror_registry_get_sources(struct mirror_registry *reg, pool_t pool,
			    ARRAY_TYPE(const_string) *sources,
			    const char **error_r)
{
	const char *value, *error;
	int ret;

	ret = mirror_registry_get(reg, MIRROR_KEY_SOURCES, &value, error_r);
	if (ret <= 0)
		return ret;
	if (mirror_sources_decode(value, pool, sources, &error) < 0) {
		*error_r = t_strdup_printf(
			"Broken registry data in the source list: %s", error);
		return -1;
	}
	return 0;
}

int mirror_registry_counters_add(struct mirror_registry *reg,
				 const char *const *keys,
				 const long long *diffs, unsigned int count,
				 const char **error_r)
{
	struct dict_transaction_context *trans;
	const char *error;
	unsigned int i;
	int ret;

	trans = dict_transaction_begin(reg->dict, &reg->opset);
	for (i = 0; i < count; i++)
		dict_atomic_inc(trans, keys[i], diffs[i]);
	ret = dict_transaction_commit(&trans, &error);
	if (ret == DICT_COMMIT_RET_NOTFOUND) {
		trans = dict_transaction_begin(reg->dict, &reg->opset);
		for (i = 0; i < count; i++)
			dict_set(trans, keys[i], t_strdup_printf("%lld",
								 diffs[i]));
		ret = dict_transaction_commit(&trans, &error);
	}
	if (ret < 0) {
		*error_r = t_strdup_printf("dict commit failed: %s", error);
		return -1;
	}
	return 0;
}

int mirror_registry_commit(struct dict_transaction_context **trans,
		       const char **error_r)
{
	const char *error;

	if (dict_transaction_commit(trans, &error) < 0) {
		*error_r = t_strdup_printf("dict commit failed: %s", error);
		return -1;
	}
	return 0;
}

static int
mirror_registry_alloc_id(struct mirror_registry *reg, unsigned int *id_r,
			 const char **error_r)
{
	const char *key = MIRROR_KEY_NEXT_ID;
	const long long one = 1;
	uint64_t id;
	int ret;

	/* missing before the first mirror ever */
	if (mirror_registry_counters_add(reg, &key, &one, 1, error_r) < 0 ||
	    (ret = mirror_registry_get_counter(reg, key, &id, error_r)) < 0)
		return -1;
	if (ret == 0 || id == 0 || id > UINT_MAX) {
		*error_r = "Broken registry data: invalid id counter";
		return -1;
	}
	*id_r = id;
	return 0;
}

static bool
mirror_sources_contains(const ARRAY_TYPE(const_string) *sources,
			const char *source)
{
	const char *s;

	array_foreach_elem(sources, s) {
		if (strcmp(s, source) == 0)
			return TRUE;
	}
	return FALSE;
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

static const char *mirror_userdb_key(const char *user)
{
	return t_strconcat(MIRROR_KEY_USERDB,
			   mirror_key_escape(t_str_lcase(user)), NULL);
}

/* Dovecot's dict passdb and userdb read these as "objects": every member
   becomes a field, so the two records hold only what each one needs. */
void mirror_user_password_set(struct dict_transaction_context *trans,
			      const char *user, const char *password_hash)
{
	struct json_object *obj = json_object_new_object();

	json_object_object_add(obj, "password",
			       json_object_new_string(password_hash));
	dict_set(trans, mirror_user_key(user), mirror_json_finish(obj));
}

void mirror_user_records_set(struct dict_transaction_context *trans,
			     const char *user, const char *password_hash,
			     struct json_object *userdb_fields)
{
	if (password_hash != NULL)
		mirror_user_password_set(trans, user, password_hash);
	if (userdb_fields != NULL) {
		dict_set(trans, mirror_userdb_key(user),
			 mirror_json_finish(userdb_fields));
	}
}

void mirror_user_records_unset(struct dict_transaction_context *trans,
			       const char *user)
{
	dict_unset(trans, mirror_user_key(user));
	dict_unset(trans, mirror_userdb_key(user));
}

static void
mirror_user_record_set(struct dict_transaction_context *trans,
		       const char *user, const char *password_hash,
		       unsigned int mirror_id)
{
	struct json_object *obj = json_object_new_object();

	json_object_object_add(obj, "mirror_storage",
			       json_object_new_string(dec2str(mirror_id)));
	mirror_user_records_set(trans, user, password_hash, obj);
}

int mirror_registry_add(struct mirror_registry *reg, struct mirror_def *def,
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
		ret = mirror_registry_user_exists(reg, def->storage, error_r);
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

	trans = dict_transaction_begin(reg->dict, &reg->opset);
	dict_set(trans, t_strconcat(MIRROR_KEY_SOURCE,
				    mirror_key_escape(def->source), NULL),
		 mirror_defs_encode(&defs));
	dict_set(trans, t_strdup_printf(MIRROR_KEY_ID"%u", def->id),
		 def->source);
	dict_set(trans, mirror_storage_key(def->storage),
		 mirror_defs_encode(&storage_defs));
	if (!mirror_sources_contains(&sources, def->source)) {
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
	if (mirror_registry_commit(&trans, error_r) < 0)
		return -1;
	return 1;
}

int mirror_registry_get_def(struct mirror_registry *reg, unsigned int id,
			    pool_t pool, struct mirror_def *def_r,
			    const char **error_r)
{
	ARRAY_TYPE(mirror_def) defs;
	const struct mirror_def *def;
	const char *source;
	int ret;

	ret = mirror_registry_get(reg, t_strdup_printf(MIRROR_KEY_ID"%u", id),
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
mirror_registry_replaced(struct mirror_registry *reg, bool by_storage,
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

int mirror_registry_update(struct mirror_registry *reg,
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
	trans = dict_transaction_begin(reg->dict, &reg->opset);
	mirror_registry_set_defs(trans, t_strconcat(MIRROR_KEY_SOURCE,
				 mirror_key_escape(def->source), NULL),
				 &by_source);
	mirror_registry_set_defs(trans, mirror_storage_key(def->storage),
				 &by_storage);
	return mirror_registry_commit(&trans, error_r);
}

int mirror_registry_remove(struct mirror_registry *reg, unsigned int id,
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

	id_key = t_strdup_printf(MIRROR_KEY_ID"%u", id);
	if ((ret = mirror_registry_get(reg, id_key, &source, error_r)) <= 0)
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

	trans = dict_transaction_begin(reg->dict, &reg->opset);
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
				 mirror_key_escape(source), NULL);
	if (array_count(&kept) > 0)
		dict_set(trans, source_key, mirror_defs_encode(&kept));
	else {
		dict_unset(trans, source_key);
		dict_set(trans, MIRROR_KEY_SOURCES,
			 mirror_sources_encode(&kept_sources));
	}
	if (mirror_registry_commit(&trans, error_r) < 0)
		return -1;
	return found ? 1 : 0;
}

static int mirror_def_cmp(const struct mirror_def *d1,
			  const struct mirror_def *d2)
{
	if (d1->id < d2->id)
		return -1;
	return d1->id > d2->id ? 1 : 0;
}

int mirror_registry_list(struct mirror_registry *reg, const char *source,
			 pool_t pool, ARRAY_TYPE(mirror_def) *defs,
			 const char **error_r)
{
	ARRAY_TYPE(const_string) sources;
	const char *s;

	t_array_init(&sources, 16);
	if (source != NULL)
		array_push_back(&sources, &source);
	else if (mirror_registry_get_sources(reg, pool_datastack_create(),
					     &sources, error_r) < 0)
		return -1;
	array_foreach_elem(&sources, s) {
		if (mirror_registry_lookup(reg, s, pool, defs, error_r) < 0)
			return -1;
	}
	array_sort(defs, mirror_def_cmp);
	return 0;
}

/* Storage users created by the suite */

int mirror_registry_user_exists(struct mirror_registry *reg, const char *user,
				const char **error_r)
{
	const char *value;

	return mirror_registry_get(reg, mirror_user_key(user), &value,
				   error_r);
}

int mirror_registry_user_set(struct mirror_registry *reg, const char *user,
			     const char *password_hash, unsigned int mirror_id,
			     const char **error_r)
{
	struct dict_transaction_context *trans;

	trans = dict_transaction_begin(reg->dict, &reg->opset);
	mirror_user_record_set(trans, user, password_hash, mirror_id);
	return mirror_registry_commit(&trans, error_r);
}

int mirror_registry_user_remove(struct mirror_registry *reg, const char *user,
				const char **error_r)
{
	struct dict_transaction_context *trans;

	trans = dict_transaction_begin(reg->dict, &reg->opset);
	mirror_user_records_unset(trans, user);
	return mirror_registry_commit(&trans, error_r);
}

/* Copy counters */

void mirror_registry_status_update(struct mirror_registry *reg,
				   const struct mirror_copy_result *results,
				   unsigned int count)
{
	struct dict_transaction_context *trans;
	const char *error;
	unsigned int i;
	int ret;

	trans = dict_transaction_begin(reg->dict, &reg->opset);
	for (i = 0; i < count; i++) {
		const struct mirror_copy_result *r = &results[i];

		if (r->error == NULL) {
			dict_atomic_inc(trans, t_strdup_printf(
				MIRROR_KEY_STATUS"%u/copies", r->id), 1);
			continue;
		}
		dict_atomic_inc(trans, t_strdup_printf(
			MIRROR_KEY_STATUS"%u/failures", r->id), 1);
		dict_set(trans, t_strdup_printf(
			MIRROR_KEY_STATUS"%u/last-failure", r->id),
			 t_strdup_printf("%ld %s", (long)ioloop_time,
					 str_sanitize(r->error, 500)));
	}
	/* NOTFOUND: the mirror was removed meanwhile */
	ret = dict_transaction_commit(&trans, &error);
	if (ret < 0 && ret != DICT_COMMIT_RET_NOTFOUND)
		i_error("mirror: Updating the copy counters failed: %s", error);
}

int mirror_registry_get_counter(struct mirror_registry *reg, const char *key,
				uint64_t *value_r, const char **error_r)
{
	const char *value;
	int ret;

	*value_r = 0;
	if ((ret = mirror_registry_get(reg, key, &value, error_r)) <= 0)
		return ret;
	if (str_to_uint64(value, value_r) < 0) {
		*error_r = t_strdup_printf("Broken registry data in %s: "
					   "not a number", key);
		return -1;
	}
	return 1;
}

int mirror_registry_status_get(struct mirror_registry *reg, unsigned int id,
			       struct mirror_status *status_r,
			       const char **error_r)
{
	const char *value, *p;
	int ret;

	i_zero(status_r);
	if (mirror_registry_get_counter(reg, t_strdup_printf(
			MIRROR_KEY_STATUS"%u/copies", id),
			&status_r->copies, error_r) < 0 ||
	    mirror_registry_get_counter(reg, t_strdup_printf(
			MIRROR_KEY_STATUS"%u/failures", id),
			&status_r->failures, error_r) < 0)
		return -1;
	ret = mirror_registry_get(reg, t_strdup_printf(
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

/* Service levels and accounts */

bool mirror_name_is_valid(const char *name)
{
	const char *p;

	if (*name == '\0' || strlen(name) > MIRROR_NAME_MAX_LEN)
		return FALSE;
	for (p = name; *p != '\0'; p++) {
		if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
		      *p == '.' || *p == '_' || *p == '-'))
			return FALSE;
	}
	return TRUE;
}

int mirror_levels_parse(const char *str, pool_t pool,
			ARRAY_TYPE(mirror_level) *levels, const char **error_r)
{
	const char *const *words, *p;
	struct mirror_level level;

	for (words = t_strsplit_spaces(str, " "); *words != NULL; words++) {
		p = strchr(*words, ':');
		i_zero(&level);
		if (p == NULL) {
			*error_r = t_strdup_printf(
				"mirror_levels: '%s' is not NAME:LIMIT",
				str_sanitize(*words, 40));
			return -1;
		}
		level.name = t_strdup_until(*words, p);
		if (!mirror_name_is_valid(level.name)) {
			*error_r = t_strdup_printf(
				"mirror_levels: invalid level name '%s'",
				str_sanitize(level.name, 40));
			return -1;
		}
		if (strcmp(p + 1, "unlimited") == 0)
			level.limit = UINT_MAX;
		else if (str_to_uint(p + 1, &level.limit) < 0 ||
			 level.limit == UINT_MAX) {
			*error_r = t_strdup_printf(
				"mirror_levels: invalid limit for level %s",
				level.name);
			return -1;
		}
		if (mirror_level_find(levels, level.name) != NULL) {
			*error_r = t_strdup_printf(
				"mirror_levels: level %s is given twice",
				level.name);
			return -1;
		}
		level.name = p_strdup(pool, level.name);
		array_push_back(levels, &level);
	}
	return 0;
}

const struct mirror_level *
mirror_level_find(const ARRAY_TYPE(mirror_level) *levels, const char *name)
{
	const struct mirror_level *level;

	array_foreach(levels, level) {
		if (strcmp(level->name, name) == 0)
			return level;
	}
	return NULL;
}

static const char *mirror_account_encode(const struct mirror_account *acct)
{
	struct json_object *obj = json_object_new_object();
	struct json_object *arr = json_object_new_array();
	const char *domain;

	json_object_object_add(obj, "level",
			       json_object_new_string(acct->level));
	array_foreach_elem(&acct->domains, domain)
		json_object_array_add(arr, json_object_new_string(domain));
	json_object_object_add(obj, "domains", arr);
	return mirror_json_finish(obj);
}

int mirror_registry_account_get(struct mirror_registry *reg, const char *name,
				pool_t pool, struct mirror_account *acct_r,
				const char **error_r)
{
	struct json_object *obj, *arr;
	const char *value, *level, *domain, *error = NULL;
	size_t i;
	int ret;

	i_zero(acct_r);
	ret = mirror_registry_get(reg, t_strconcat(MIRROR_KEY_ACCOUNT,
			mirror_key_escape(name), NULL), &value, error_r);
	if (ret <= 0)
		return ret;
	if (mirror_json_parse(value, json_type_object, &obj, &error) < 0) {
		*error_r = t_strdup_printf(
			"Broken registry data for account %s: %s",
			str_sanitize(name, 80), error);
		return -1;
	}
	acct_r->name = p_strdup(pool, name);
	p_array_init(&acct_r->domains, pool, 4);
	if (mirror_json_get_str(obj, "level", &level, &error) == 0) {
		acct_r->level = p_strdup(pool, level);
		if (!json_object_object_get_ex(obj, "domains", &arr) ||
		    !json_object_is_type(arr, json_type_array))
			error = "'domains' is missing or not an array";
	}
	for (i = 0; error == NULL && i < json_object_array_length(arr); i++) {
		struct json_object *elem = json_object_array_get_idx(arr, i);

		if (!json_object_is_type(elem, json_type_string)) {
			error = "domain is not a string";
			break;
		}
		domain = p_strdup(pool, json_object_get_string(elem));
		array_push_back(&acct_r->domains, &domain);
	}
	json_object_put(obj);
	if (error != NULL) {
		*error_r = t_strdup_printf(
			"Broken registry data for account %s: %s",
			str_sanitize(name, 80), error);
		return -1;
	}
	return 1;
}

int mirror_registry_accounts(struct mirror_registry *reg, pool_t pool,
			     ARRAY_TYPE(const_string) *names,
			     const char **error_r)
{
	struct json_object *arr, *elem;
	const char *value, *name, *error;
	size_t i;
	int ret;

	ret = mirror_registry_get(reg, MIRROR_KEY_ACCOUNTS, &value, error_r);
	if (ret <= 0)
		return ret;
	if (mirror_json_parse_array(value, &arr, &error) < 0) {
		*error_r = t_strdup_printf(
			"Broken registry data in the account list: %s", error);
		return -1;
	}
	for (i = 0; i < json_object_array_length(arr); i++) {
		elem = json_object_array_get_idx(arr, i);
		if (!json_object_is_type(elem, json_type_string) ||
		    !mirror_name_is_valid(json_object_get_string(elem))) {
			*error_r = "Broken registry data in the account list";
			json_object_put(arr);
			return -1;
		}
		name = p_strdup(pool, json_object_get_string(elem));
		array_push_back(names, &name);
	}
	json_object_put(arr);
	return 0;
}

int mirror_registry_account_set_level(struct mirror_registry *reg,
				      const char *name, const char *level,
				      const char **error_r)
{
	struct dict_transaction_context *trans;
	struct mirror_account acct;
	ARRAY_TYPE(const_string) names;
	pool_t pool = pool_datastack_create();
	int ret;

	if ((ret = mirror_registry_account_get(reg, name, pool, &acct,
					       error_r)) < 0)
		return -1;
	t_array_init(&names, 16);
	if (mirror_registry_accounts(reg, pool, &names, error_r) < 0)
		return -1;
	trans = dict_transaction_begin(reg->dict, &reg->opset);
	if (ret == 0) {
		acct.name = name;
		t_array_init(&acct.domains, 1);
		if (!mirror_sources_contains(&names, name)) {
			array_push_back(&names, &name);
			dict_set(trans, MIRROR_KEY_ACCOUNTS,
				 mirror_sources_encode(&names));
		}
	}
	acct.level = level;
	dict_set(trans, t_strconcat(MIRROR_KEY_ACCOUNT,
				    mirror_key_escape(name), NULL),
		 mirror_account_encode(&acct));
	return mirror_registry_commit(&trans, error_r);
}

int mirror_registry_domain_account(struct mirror_registry *reg,
				   const char *domain, const char **account_r,
				   const char **error_r)
{
	return mirror_registry_get(reg, t_strconcat(MIRROR_KEY_DOMAIN,
			mirror_key_escape(domain), NULL), account_r, error_r);
}

static void
mirror_account_drop_domain(struct mirror_account *acct, const char *domain)
{
	const char *const *domains;
	unsigned int i, count;

	domains = array_get(&acct->domains, &count);
	for (i = 0; i < count; i++) {
		if (strcmp(domains[i], domain) == 0) {
			array_delete(&acct->domains, i, 1);
			return;
		}
	}
}

int mirror_registry_domain_assign(struct mirror_registry *reg,
				  const char *domain, const char *account,
				  const char **error_r)
{
	struct dict_transaction_context *trans;
	struct mirror_account old_acct, new_acct;
	const char *old, *domain_key;
	pool_t pool = pool_datastack_create();
	bool moved;
	int ret;

	domain_key = t_strconcat(MIRROR_KEY_DOMAIN,
				 mirror_key_escape(domain), NULL);
	if (account != NULL) {
		ret = mirror_registry_account_get(reg, account, pool,
						  &new_acct, error_r);
		if (ret <= 0) {
			if (ret == 0) {
				*error_r = t_strdup_printf(
					"Unknown account %s", account);
			}
			return ret;
		}
	}
	if ((ret = mirror_registry_domain_account(reg, domain, &old,
						  error_r)) < 0)
		return -1;
	i_zero(&old_acct);
	moved = ret > 0 && (account == NULL || strcmp(old, account) != 0);
	if (moved && mirror_registry_account_get(reg, old, pool, &old_acct,
						 error_r) < 0)
		return -1;
	trans = dict_transaction_begin(reg->dict, &reg->opset);
	if (moved) {
		if (old_acct.name != NULL) {
			mirror_account_drop_domain(&old_acct, domain);
			dict_set(trans, t_strconcat(MIRROR_KEY_ACCOUNT,
					mirror_key_escape(old), NULL),
				 mirror_account_encode(&old_acct));
		}
	}
	if (account == NULL)
		dict_unset(trans, domain_key);
	else {
		mirror_account_drop_domain(&new_acct, domain);
		array_push_back(&new_acct.domains, &domain);
		dict_set(trans, domain_key, account);
		dict_set(trans, t_strconcat(MIRROR_KEY_ACCOUNT,
				mirror_key_escape(account), NULL),
			 mirror_account_encode(&new_acct));
	}
	if (mirror_registry_commit(&trans, error_r) < 0)
		return -1;
	return 1;
}

/* The expire index */

const char *mirror_expire_storage_key(const char *storage)
{
	return mirror_key_escape(t_str_lcase(storage));
}

static const char *mirror_expire_key(const char *storage)
{
	return t_strconcat(MIRROR_KEY_EXPIRE,
			   mirror_expire_storage_key(storage), NULL);
}

static int
mirror_registry_get_time(struct mirror_registry *reg, const char *key,
			 time_t *time_r, const char **error_r)
{
	const char *value;
	long t;
	int ret;

	*time_r = 0;
	if ((ret = mirror_registry_get(reg, key, &value, error_r)) <= 0)
		return ret;
	if (str_to_long(value, &t) < 0 || t < 0) {
		*error_r = t_strdup_printf("Broken registry data in %s: "
					   "not a time", key);
		return -1;
	}
	*time_r = (time_t)t;
	return 1;
}

int mirror_registry_expire_get(struct mirror_registry *reg,
			       const char *storage, time_t *oldest_r,
			       const char **error_r)
{
	return mirror_registry_get_time(reg, mirror_expire_key(storage),
					oldest_r, error_r);
}

int mirror_registry_expire_set(struct mirror_registry *reg,
			       const char *storage, time_t oldest,
			       const char **error_r)
{
	struct dict_transaction_context *trans;

	trans = dict_transaction_begin(reg->dict, &reg->opset);
	if (oldest == 0)
		dict_unset(trans, mirror_expire_key(storage));
	else {
		dict_set(trans, mirror_expire_key(storage),
			 dec2str(oldest));
	}
	return mirror_registry_commit(&trans, error_r);
}

int mirror_registry_expire_lower(struct mirror_registry *reg,
				 const char *storage, time_t save_date,
				 const char **error_r)
{
	time_t oldest;
	int ret;

	ret = mirror_registry_expire_get(reg, storage, &oldest, error_r);
	if (ret < 0)
		return -1;
	if (ret > 0 && oldest <= save_date)
		return 0;
	return mirror_registry_expire_set(reg, storage, save_date, error_r);
}

int mirror_registry_expire_last_run(struct mirror_registry *reg,
				    time_t *last_run_r, const char **error_r)
{
	return mirror_registry_get_time(reg, MIRROR_KEY_EXPIRE_LAST_RUN,
					last_run_r, error_r);
}

int mirror_registry_expire_set_last_run(struct mirror_registry *reg,
					time_t last_run, const char **error_r)
{
	struct dict_transaction_context *trans;

	trans = dict_transaction_begin(reg->dict, &reg->opset);
	dict_set(trans, MIRROR_KEY_EXPIRE_LAST_RUN, dec2str(last_run));
	return mirror_registry_commit(&trans, error_r);
}

/* The fleet's lease on a scheduled scan */

static const char *mirror_expire_lease_key(time_t run, const char *what)
{
	return t_strdup_printf(MIRROR_KEY_EXPIRE_LEASE"%ld/%s", (long)run,
			       what);
}

int mirror_registry_expire_lease_take(struct mirror_registry *reg,
				      time_t run, unsigned int attempt,
				      const char *holder, const char **error_r)
{
	const long long one = 1;
	const char *key;
	uint64_t tickets;
	int ret;

	/* the first increment of the attempt's counter makes it 1: that
	   server holds the lease. Redis creates the key with INCRBY; the
	   file and SQL dicts increment only an existing key, and a
	   missing one is set. */
	key = mirror_expire_lease_key(run, dec2str(attempt));
	if (mirror_registry_counters_add(reg, &key, &one, 1, error_r) < 0 ||
	    (ret = mirror_registry_get_counter(reg, key, &tickets,
						error_r)) < 0)
		return -1;
	if (ret == 0 || tickets == 0) {
		*error_r = t_strdup_printf("Broken registry data in %s", key);
		return -1;
	}
	if (tickets > 1)
		return 0;
	return mirror_registry_expire_lease_refresh(reg, run, attempt, holder,
						    error_r) < 0 ? -1 : 1;
}

int mirror_registry_expire_lease_refresh(struct mirror_registry *reg,
					 time_t run, unsigned int attempt,
					 const char *holder,
					 const char **error_r)
{
	struct dict_transaction_context *trans;

	trans = dict_transaction_begin(reg->dict, &reg->opset);
	dict_set(trans, mirror_expire_lease_key(run, "holder"),
		 t_strdup_printf("%u %ld %s", attempt, (long)time(NULL),
				 holder));
	return mirror_registry_commit(&trans, error_r);
}

int mirror_registry_expire_lease_holder(struct mirror_registry *reg,
					time_t run, unsigned int *attempt_r,
					time_t *refreshed_r,
					const char **holder_r,
					const char **error_r)
{
	const char *key = mirror_expire_lease_key(run, "holder");
	const char *value, *const *args;
	long t;
	int ret;

	if ((ret = mirror_registry_get(reg, key, &value, error_r)) <= 0)
		return ret;
	args = t_strsplit(value, " ");
	if (str_array_length(args) != 3 ||
	    str_to_uint(args[0], attempt_r) < 0 || *attempt_r == 0 ||
	    str_to_long(args[1], &t) < 0 || t < 0) {
		*error_r = t_strdup_printf("Broken registry data in %s", key);
		return -1;
	}
	*refreshed_r = (time_t)t;
	*holder_r = args[2];
	return 1;
}

int mirror_registry_expire_lease_forget(struct mirror_registry *reg,
					time_t run, unsigned int attempts,
					const char **error_r)
{
	struct dict_transaction_context *trans;
	unsigned int i;

	trans = dict_transaction_begin(reg->dict, &reg->opset);
	dict_unset(trans, mirror_expire_lease_key(run, "holder"));
	for (i = 1; i <= attempts; i++)
		dict_unset(trans, mirror_expire_lease_key(run, dec2str(i)));
	return mirror_registry_commit(&trans, error_r);
}

int mirror_registry_iterate(struct mirror_registry *reg, const char *prefix,
			int (*callback)(const char *name, const char *value,
					void *context, const char **error_r),
			void *context, const char **error_r)
{
	struct dict_iterate_context *iter;
	const char *key, *value, *error = NULL, *cb_error = NULL;
	size_t prefix_len = strlen(prefix);
	int ret = 0;

	iter = dict_iterate_init(reg->dict, &reg->opset, prefix,
				 DICT_ITERATE_FLAG_RECURSE);
	while (dict_iterate(iter, &key, &value)) {
		if (strncmp(key, prefix, prefix_len) != 0)
			continue;
		/* not in a data stack frame: the callback allocates what
		   the caller keeps, maybe from the data stack */
		ret = callback(key + prefix_len, value, context, &cb_error);
		if (ret < 0)
			break;
	}
	if (dict_iterate_deinit(&iter, &error) < 0) {
		*error_r = t_strdup_printf("dict iteration of %s failed: %s",
					   prefix, error);
		return -1;
	}
	if (ret < 0) {
		*error_r = cb_error;
		return -1;
	}
	return 0;
}

int mirror_registry_expire_list(struct mirror_registry *reg, pool_t pool,
				const char *const *storage_keys,
				unsigned int count,
				ARRAY_TYPE(mirror_expire_entry) *entries,
				const char **error_r)
{
	struct mirror_expire_entry *entry;
	const char **keys, **values;
	pool_t lookup_pool;
	unsigned int i;
	long t;
	int ret = 0;

	keys = t_new(const char *, count + 1);
	values = t_new(const char *, count + 1);
	for (i = 0; i < count; i++)
		keys[i] = t_strconcat(MIRROR_KEY_EXPIRE, storage_keys[i], NULL);
	lookup_pool = pool_alloconly_create("mirror expire index", 4096);
	if (mirror_registry_get_many(reg, lookup_pool, keys, count, values,
				     error_r) < 0) {
		pool_unref(&lookup_pool);
		return -1;
	}
	for (i = 0; i < count && ret == 0; i++) {
		if (values[i] == NULL)
			continue;
		if (str_to_long(values[i], &t) < 0 || t < 0) {
			*error_r = t_strdup_printf(
				"Broken registry data in %s: not a time",
				str_sanitize(keys[i], 120));
			ret = -1;
			break;
		}
		entry = array_append_space(entries);
		entry->storage_key = p_strdup(pool, storage_keys[i]);
		entry->oldest = (time_t)t;
	}
	pool_unref(&lookup_pool);
	return ret;
}

int mirror_registry_list_all(struct mirror_registry *reg, pool_t pool,
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
					mirror_key_escape(*source), NULL);
	}
	lookup_pool = pool_alloconly_create("mirror source list", 4096);
	if (mirror_registry_get_many(reg, lookup_pool, keys, count, values,
				     error_r) < 0) {
		pool_unref(&lookup_pool);
		return -1;
	}
	for (i = 0; i < count; i++) {
		/* listed but gone: removed while we read */
		if (values[i] == NULL)
			continue;
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
