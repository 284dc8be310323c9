/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* Fuzz target: the decoders of registry values, which come from a shared
   store (Redis, SQL) that other servers and administrators write too:
   mirror_defs_decode(), mirror_sources_decode() and bag_def_decode().

   Input: one selector byte ('0' definitions, '1' sources, '2' a bag; any
   other byte picks one by its value), then the value.

   Asserts: what decodes is valid (mirror_def_is_valid(),
   mirror_source_parse() gives it back, bag_def_is_valid()); a failed
   decode leaves the array as it was; encoding a decoded value and decoding
   that gives the same value, and encoding it again the same text (the
   encoders write one canonical form). */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "fuzz-common.h"
#include "mirror-address.h"
#include "registry.h"
#include "mirror-def.h"
#include "mirror-account.h"
#include "bag-def.h"
#include "bag-input.h"

enum fuzz_registry_kind {
	FUZZ_REGISTRY_MIRROR_DEFS = 0,
	FUZZ_REGISTRY_MIRROR_SOURCES,
	FUZZ_REGISTRY_BAG_DEF,

	FUZZ_REGISTRY_KIND_COUNT
};

/* A definition already in the array: decoding must append after it, and
   leave it alone when it fails. */
static void fuzz_mirror_def_sentinel(struct mirror_def *def_r)
{
	i_zero(def_r);
	def_r->id = 1;
	def_r->type = MIRROR_TYPE_ALL;
	def_r->source = "example.com";
	def_r->storage = "sentinel";
	def_r->days = MIRROR_DAYS_DEFAULT;
}

static void
fuzz_mirror_def_assert_equal(const struct mirror_def *def1,
			     const struct mirror_def *def2)
{
	i_assert(def1->id == def2->id);
	i_assert(def1->type == def2->type);
	i_assert(strcmp(def1->source, def2->source) == 0);
	i_assert(strcmp(def1->storage, def2->storage) == 0);
	i_assert(def1->days == def2->days);
	i_assert(def1->created == def2->created);
	i_assert(def1->readonly == def2->readonly);
	i_assert(def1->auto_storage == def2->auto_storage);
	i_assert(def1->hold_since == def2->hold_since);
	i_assert(null_strcmp(def1->hold_reason, def2->hold_reason) == 0);
}

static void fuzz_mirror_defs(const char *json, pool_t pool)
{
	ARRAY_TYPE(mirror_def) defs, defs2;
	struct mirror_def sentinel;
	const struct mirror_def *def, *def2;
	const char *encoded, *error;
	unsigned int i, count;

	p_array_init(&defs, pool, 8);
	fuzz_mirror_def_sentinel(&sentinel);
	array_push_back(&defs, &sentinel);
	if (mirror_defs_decode(json, pool, &defs, &error) < 0) {
		i_assert(error != NULL);
		i_assert(array_count(&defs) == 1);
		fuzz_mirror_def_assert_equal(array_idx(&defs, 0), &sentinel);
		return;
	}
	array_delete(&defs, 0, 1);
	array_foreach(&defs, def)
		i_assert(mirror_def_is_valid(def, &error));

	encoded = mirror_defs_encode(&defs);
	p_array_init(&defs2, pool, array_count(&defs) + 1);
	if (mirror_defs_decode(encoded, pool, &defs2, &error) < 0)
		i_panic("encoded definitions don't decode: %s", error);
	count = array_count(&defs);
	i_assert(array_count(&defs2) == count);
	for (i = 0; i < count; i++) {
		def = array_idx(&defs, i);
		def2 = array_idx(&defs2, i);
		fuzz_mirror_def_assert_equal(def, def2);
	}
	i_assert(strcmp(mirror_defs_encode(&defs2), encoded) == 0);
}

static void fuzz_mirror_sources(const char *json, pool_t pool)
{
	ARRAY_TYPE(const_string) sources, sources2;
	const char *sentinel = "example.com", *source, *normalized;
	const char *encoded, *error;
	enum mirror_type type;
	unsigned int i, count;

	p_array_init(&sources, pool, 8);
	array_push_back(&sources, &sentinel);
	if (mirror_sources_decode(json, pool, &sources, &error) < 0) {
		i_assert(error != NULL);
		i_assert(array_count(&sources) == 1);
		i_assert(array_idx_elem(&sources, 0) == sentinel);
		return;
	}
	array_delete(&sources, 0, 1);
	array_foreach_elem(&sources, source) {
		i_assert(mirror_source_parse(source, &type, &normalized,
					     &error) == 0);
		i_assert(strcmp(source, normalized) == 0);
	}

	encoded = mirror_sources_encode(&sources);
	p_array_init(&sources2, pool, array_count(&sources) + 1);
	if (mirror_sources_decode(encoded, pool, &sources2, &error) < 0)
		i_panic("encoded sources don't decode: %s", error);
	count = array_count(&sources);
	i_assert(array_count(&sources2) == count);
	for (i = 0; i < count; i++) {
		i_assert(strcmp(array_idx_elem(&sources, i),
				array_idx_elem(&sources2, i)) == 0);
	}
	i_assert(strcmp(mirror_sources_encode(&sources2), encoded) == 0);
}

static void
fuzz_bag_def_assert_equal(const struct bag_def *def1,
			  const struct bag_def *def2)
{
	unsigned int i, count;

	i_assert(strcmp(def1->domain, def2->domain) == 0);
	i_assert(strcmp(def1->user, def2->user) == 0);
	i_assert(def1->modes == def2->modes);
	count = array_count(&def1->etrn_nets);
	i_assert(array_count(&def2->etrn_nets) == count);
	for (i = 0; i < count; i++) {
		i_assert(strcmp(array_idx_elem(&def1->etrn_nets, i),
				array_idx_elem(&def2->etrn_nets, i)) == 0);
	}
	i_assert(null_strcmp(def1->host, def2->host) == 0);
	i_assert(def1->retry_period == def2->retry_period);
	i_assert(null_strcmp(def1->atrn_identity, def2->atrn_identity) == 0);
	i_assert(def1->pop3_per_account == def2->pop3_per_account);
	i_assert(def1->recipient_list == def2->recipient_list);
	i_assert(def1->auto_identity == def2->auto_identity);
	i_assert(def1->created == def2->created);
}

static void fuzz_bag_def(const char *json, pool_t pool)
{
	struct bag_def def, def2;
	const char *encoded, *error;

	if (bag_def_decode(json, pool, &def, &error) < 0) {
		i_assert(error != NULL);
		return;
	}
	i_assert(bag_def_is_valid(&def, &error));

	encoded = bag_def_encode(&def);
	if (bag_def_decode(encoded, pool, &def2, &error) < 0)
		i_panic("encoded bag doesn't decode: %s", error);
	fuzz_bag_def_assert_equal(&def, &def2);
	i_assert(strcmp(bag_def_encode(&def2), encoded) == 0);
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
	pool_t pool;

	if (size == 0)
		return 0;
	pool = pool_alloconly_create("fuzz registry", 1024);
	T_BEGIN {
		const char *json = t_strndup(data + 1, size - 1);

		switch (fuzz_select(data[0], FUZZ_REGISTRY_KIND_COUNT)) {
		case FUZZ_REGISTRY_MIRROR_DEFS:
			fuzz_mirror_defs(json, pool);
			break;
		case FUZZ_REGISTRY_MIRROR_SOURCES:
			fuzz_mirror_sources(json, pool);
			break;
		case FUZZ_REGISTRY_BAG_DEF:
			fuzz_bag_def(json, pool);
			break;
		}
	} T_END;
	pool_unref(&pool);
	return 0;
}
