/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* The registry's core: the dict, lookups and commits with readable errors,
   counters, and the escaping of key components. */

#include "lib.h"
#include "str.h"
#include "strnum.h"
#include "registry-dict.h"
#include "registry-access.h"
#include "registry-lock.h"

int registry_init(const char *dict_uri, const char *base_dir,
		  struct event *event_parent,
		  struct registry **reg_r, const char **error_r)
{
	struct registry *reg;
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
	reg = i_new(struct registry, 1);
	reg->dict = dict;
	reg->base_dir = i_strdup(base_dir);
	*reg_r = reg;
	return 0;
}

int registry_init_unchecked(const char *dict_uri, const char *base_dir,
			    struct event *event_parent,
			    struct registry **reg_r, const char **error_r)
{
	const char *p;

	/* proxy:[<options>:]<socket>:mirror, the service's socket (not
	   Dovecot's dict service's, proxy::<name>) */
	if (str_begins(dict_uri, "proxy:") &&
	    !str_begins(dict_uri, "proxy::") &&
	    (p = strrchr(dict_uri, ':')) != NULL &&
	    strcmp(p + 1, "mirror") == 0) {
		dict_uri = t_strconcat(t_strdup_until(dict_uri, p + 1),
				       REGISTRY_NAME_UNCHECKED, NULL);
	}
	return registry_init(dict_uri, base_dir, event_parent, reg_r,
			     error_r);
}

void registry_deinit(struct registry **_reg)
{
	struct registry *reg = *_reg;

	if (reg == NULL)
		return;
	*_reg = NULL;
	i_assert(reg->transactions == 0);
	registry_unlock(reg);
	dict_wait(reg->dict);
	dict_deinit(&reg->dict);
	i_free(reg->base_dir);
	i_free(reg);
}

int registry_get(struct registry *reg, const char *key,
		 const char **value_r, const char **error_r)
{
	/* dict_lookup() reads the error even on success */
	const char *error = NULL;
	int ret;

	/* never inside an open transaction: Redis would queue the GET
	   between MULTI and EXEC */
	i_assert(reg->transactions == 0);

	ret = dict_lookup(reg->dict, &reg->opset, pool_datastack_create(),
			  key, value_r, &error);
	if (ret < 0) {
		*error_r = t_strdup_printf("dict lookup of %s failed: %s",
					   key, error);
	}
	return ret;
}

struct registry_get_async_ctx {
	char *key;
	registry_get_callback_t *callback;
	void *context;
};

static void
registry_get_async_callback(const struct dict_lookup_result *result,
			    struct registry_get_async_ctx *ctx)
{
	const char *error = NULL;

	if (result->ret < 0) {
		error = t_strdup_printf("dict lookup of %s failed: %s",
					ctx->key, result->error);
	}
	ctx->callback(result->ret, result->value, error, ctx->context);
	i_free(ctx->key);
	i_free(ctx);
}

#undef registry_get_async
void registry_get_async(struct registry *reg, const char *key,
			registry_get_callback_t *callback, void *context)
{
	struct registry_get_async_ctx *ctx;

	/* as registry_get() */
	i_assert(reg->transactions == 0);

	ctx = i_new(struct registry_get_async_ctx, 1);
	ctx->key = i_strdup(key);
	ctx->callback = callback;
	ctx->context = context;
	dict_lookup_async(reg->dict, &reg->opset, key,
			  registry_get_async_callback, ctx);
}

void registry_wait(struct registry *reg)
{
	dict_wait(reg->dict);
}

/* Lookups pipelined where the dict can (the dict proxy), one by one
   where it can't; a batch at a time, so that a large registry doesn't
   queue everything at once. */
#define REGISTRY_GET_BATCH 512

struct registry_get_slot {
	pool_t pool;
	const char **value_r;
	const char *key;
	const char **error_r;
};

static void
registry_get_many_callback(const struct dict_lookup_result *result,
			   struct registry_get_slot *slot)
{
	if (result->ret > 0)
		*slot->value_r = p_strdup(slot->pool, result->value);
	else if (result->ret < 0 && *slot->error_r == NULL) {
		*slot->error_r = p_strdup_printf(slot->pool,
			"dict lookup of %s failed: %s", slot->key,
			result->error);
	}
}

int registry_get_many(struct registry *reg, pool_t pool,
		      const char *const *keys, unsigned int count,
		      const char **values_r, const char **error_r)
{
	i_assert(!pool->datastack_pool);
	i_assert(reg->transactions == 0);

	struct registry_get_slot *slots;
	const char *error = NULL;
	unsigned int i, n;

	for (i = 0; i < count; i++)
		values_r[i] = NULL;
	for (i = 0; i < count && error == NULL; i += n) {
		n = I_MIN(count - i, REGISTRY_GET_BATCH);
		slots = p_new(pool, struct registry_get_slot, n);
		for (unsigned int j = 0; j < n; j++) {
			slots[j].pool = pool;
			slots[j].value_r = &values_r[i + j];
			slots[j].key = keys[i + j];
			slots[j].error_r = &error;
			dict_lookup_async(reg->dict, &reg->opset, keys[i + j],
					  registry_get_many_callback,
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

struct dict_transaction_context *
registry_transaction_begin(struct registry *reg)
{
	const char *error;
	uint64_t gen;

	/* a holder of the lock that stalled past its lease may have lost
	   it: then nothing it writes is committed. Read before the
	   transaction is open. */
	if (reg->lock_held && !reg->lock_lost &&
	    (registry_get_counter(reg, REGISTRY_KEY_MIRROR"lock/gen", &gen,
				  &error) <= 0 || gen != reg->lock_gen))
		reg->lock_lost = TRUE;
	reg->transactions++;
	return dict_transaction_begin(reg->dict, &reg->opset);
}

int registry_transaction_commit(struct registry *reg,
				struct dict_transaction_context **trans,
				const char **error_r)
{
	const char *error;
	int ret;

	i_assert(reg->transactions > 0);
	reg->transactions--;
	if (reg->lock_lost) {
		dict_transaction_rollback(trans);
		*error_r = "The registry lock was taken over while this "
			"command held it (it was stalled past the lease): "
			"nothing was changed";
		return DICT_COMMIT_RET_FAILED;
	}
	ret = dict_transaction_commit(trans, &error);
	if (ret < 0)
		*error_r = t_strdup_printf("dict commit failed: %s", error);
	return ret;
}

int registry_commit(struct registry *reg,
		    struct dict_transaction_context **trans,
		    const char **error_r)
{
	return registry_transaction_commit(reg, trans, error_r) < 0 ? -1 : 0;
}

int registry_get_counter(struct registry *reg, const char *key,
			 uint64_t *value_r, const char **error_r)
{
	const char *value;
	int ret;

	*value_r = 0;
	if ((ret = registry_get(reg, key, &value, error_r)) <= 0)
		return ret;
	if (str_to_uint64(value, value_r) < 0) {
		*error_r = t_strdup_printf("Broken registry data in %s: "
					   "not a number", key);
		return -1;
	}
	return 1;
}

int registry_get_time(struct registry *reg, const char *key,
		      time_t *time_r, const char **error_r)
{
	const char *value;
	int ret;

	*time_r = 0;
	if ((ret = registry_get(reg, key, &value, error_r)) <= 0)
		return ret;
	if (registry_time_parse(value, time_r) < 0) {
		*error_r = t_strdup_printf("Broken registry data in %s: "
					   "not a time", key);
		return -1;
	}
	return 1;
}

int registry_time_parse(const char *value, time_t *time_r)
{
	long t;

	if (str_to_long(value, &t) < 0 || t < 0)
		return -1;
	*time_r = (time_t)t;
	return 0;
}

int registry_counters_add(struct registry *reg,
			  const char *const *keys,
			  const long long *diffs, unsigned int count,
			  const char **error_r)
{
	struct dict_transaction_context *trans;
	unsigned int i;
	int ret;

	trans = registry_transaction_begin(reg);
	for (i = 0; i < count; i++)
		dict_atomic_inc(trans, keys[i], diffs[i]);
	ret = registry_transaction_commit(reg, &trans, error_r);
	if (ret == DICT_COMMIT_RET_NOTFOUND) {
		trans = registry_transaction_begin(reg);
		for (i = 0; i < count; i++)
			dict_set(trans, keys[i], t_strdup_printf("%lld",
								 diffs[i]));
		ret = registry_transaction_commit(reg, &trans, error_r);
	}
	return ret < 0 ? -1 : 0;
}

/* A dict without iteration (Redis) fails it with this (dict-fail.c), also
   through a proxy, which passes the error on */
#define REGISTRY_ITERATE_UNSUPPORTED "Unsupported operation"

static int
registry_iterate_real(struct registry *reg, const char *prefix,
		      int (*callback)(const char *name, const char *value,
				      void *context, const char **error_r),
		      void *context, bool *unsupported_r,
		      const char **error_r)
{
	struct dict_iterate_context *iter;
	const char *key, *value, *error = NULL, *cb_error = NULL;
	size_t prefix_len = strlen(prefix);
	int ret = 0;

	*unsupported_r = FALSE;
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
		*unsupported_r = strstr(error, REGISTRY_ITERATE_UNSUPPORTED) !=
			NULL;
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

int registry_iterate(struct registry *reg, const char *prefix,
		     int (*callback)(const char *name, const char *value,
				     void *context, const char **error_r),
		     void *context, const char **error_r)
{
	bool unsupported;

	return registry_iterate_real(reg, prefix, callback, context,
				     &unsupported, error_r);
}

int registry_iterate_if_supported(struct registry *reg, const char *prefix,
		int (*callback)(const char *name, const char *value,
				void *context, const char **error_r),
		void *context, const char **error_r)
{
	bool unsupported;

	if (registry_iterate_real(reg, prefix, callback, context,
				  &unsupported, error_r) == 0)
		return 1;
	return unsupported ? 0 : -1;
}

static bool registry_failing = FALSE;

bool registry_failure_begin(void)
{
	if (registry_failing)
		return FALSE;
	registry_failing = TRUE;
	return TRUE;
}

bool registry_failure_end(void)
{
	if (!registry_failing)
		return FALSE;
	registry_failing = FALSE;
	return TRUE;
}

const char *registry_key_escape(const char *str)
{
	string_t *dest = t_str_new(strlen(str) + 8);

	for (; *str != '\0'; str++) {
		unsigned char c = *str;

		if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		    strchr(".@_+-", c) != NULL)
			str_append_c(dest, c);
		else
			str_printfa(dest, "%%%02x", c);
	}
	return str_c(dest);
}

int registry_key_unescape(const char *str, string_t *dest)
{
	unsigned char c;
	unsigned int i, value;

	for (; *str != '\0'; str++) {
		if (*str != '%') {
			str_append_c(dest, *str);
			continue;
		}
		value = 0;
		for (i = 1; i <= 2; i++) {
			c = str[i];
			if (c >= '0' && c <= '9')
				value = value * 16 + (c - '0');
			else if (c >= 'a' && c <= 'f')
				value = value * 16 + (c - 'a' + 10);
			else
				return -1;
		}
		if (value == 0)
			return -1;
		str_append_c(dest, value);
		str += 2;
	}
	return 0;
}
