/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* Unit tests of the pure parts: sources and addresses, registry values. */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "test-common.h"
#include "mirror-address.h"
#include "mirror-registry.h"

static void test_mirror_source_parse(void)
{
	static const struct {
		const char *input, *normalized;
		enum mirror_type type;
	} valid[] = {
		{ "Alice@Example.COM", "alice@example.com", MIRROR_TYPE_SINGLE },
		{ "a.b-c+d@mail.example.org", "a.b-c+d@mail.example.org",
		  MIRROR_TYPE_SINGLE },
		{ "Example.com", "example.com", MIRROR_TYPE_ALL },
		{ "x-1.example.co.uk", "x-1.example.co.uk", MIRROR_TYPE_ALL },
		{ "o'neil@example.com", "o'neil@example.com",
		  MIRROR_TYPE_SINGLE },
	};
	static const char *invalid[] = {
		"", "@", "user@", "@example.com", "example", "user@example",
		"a..b@example.com", ".a@example.com", "a.@example.com",
		"a b@example.com", "\"q\"@example.com", "a@-example.com",
		"a@example-.com", "a@example..com", "a@.example.com",
		"example.com.", "a@exa_mple.com", "a@b@example.com",
		"a@example.com\r\nX-Evil: 1", "caf\xc3\xa9@example.com",
		"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx@example.com",
	};
	enum mirror_type type;
	const char *normalized, *error;
	unsigned int i;

	test_begin("mirror_source_parse()");
	for (i = 0; i < N_ELEMENTS(valid); i++) {
		test_assert_idx(mirror_source_parse(valid[i].input, &type,
			&normalized, &error) == 0, i);
		test_assert_strcmp_idx(normalized, valid[i].normalized, i);
		test_assert_idx(type == valid[i].type, i);
	}
	for (i = 0; i < N_ELEMENTS(invalid); i++) {
		error = NULL;
		test_assert_idx(mirror_source_parse(invalid[i], &type,
			&normalized, &error) < 0, i);
		test_assert_idx(error != NULL && strchr(error, '\n') == NULL, i);
	}
	/* a label of 63 is fine, 64 is not */
	string_t *label = t_str_new(80);
	str_append_max(label, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 63);
	const char *l63 = t_strconcat(str_c(label), ".com", NULL);
	const char *l64 = t_strconcat(str_c(label), "a.com", NULL);
	test_assert(mirror_source_parse(l63, &type, &normalized, &error) == 0);
	test_assert(mirror_source_parse(l64, &type, &normalized, &error) < 0);
	test_end();
}

static void test_mirror_address_keys(void)
{
	const char *address, *domain;

	test_begin("mirror_address_keys()");
	test_assert(mirror_address_keys("User+Tag", "Example.COM", "+",
					&address, &domain));
	test_assert_strcmp(address, "user@example.com");
	test_assert_strcmp(domain, "example.com");
	/* several delimiters: the first one found ends the user */
	test_assert(mirror_address_keys("bob-x+y", "example.com", "+-",
					&address, &domain));
	test_assert_strcmp(address, "bob@example.com");
	/* no delimiter configured: the detail stays */
	test_assert(mirror_address_keys("bob+x", "example.com", "",
					&address, &domain));
	test_assert_strcmp(address, "bob+x@example.com");
	/* a leading delimiter is not a detail */
	test_assert(mirror_address_keys("+x", "example.com", "+",
					&address, &domain));
	test_assert_strcmp(address, "+x@example.com");
	test_assert(!mirror_address_keys("a b", "example.com", "+",
					 &address, &domain));
	test_assert(!mirror_address_keys("a", NULL, "+", &address, &domain));
	test_assert(!mirror_address_keys("a", "localhost", "+",
					 &address, &domain));
	test_end();
}

static void test_mirror_key_escape(void)
{
	test_begin("mirror_key_escape()");
	test_assert_strcmp(mirror_key_escape("a.b+c@d-e.com"), "a.b+c@d-e.com");
	test_assert_strcmp(mirror_key_escape("a/b@x.com"), "a%2fb@x.com");
	test_assert_strcmp(mirror_key_escape("a%b"), "a%25b");
	test_end();
}

static void test_mirror_days_parse(void)
{
	unsigned int days;
	const char *error;

	test_begin("mirror_days_parse()");
	test_assert(mirror_days_parse("1", &days, &error) == 0 && days == 1);
	test_assert(mirror_days_parse("3650", &days, &error) == 0 &&
		    days == 3650);
	test_assert(mirror_days_parse("0", &days, &error) < 0);
	test_assert(mirror_days_parse("3651", &days, &error) < 0);
	test_assert(mirror_days_parse("-1", &days, &error) < 0);
	test_assert(mirror_days_parse("abc", &days, &error) < 0);
	test_assert(mirror_days_parse("", &days, &error) < 0);
	test_assert(mirror_days_parse("30d", &days, &error) < 0);
	test_assert(mirror_days_parse("99999999999999999999", &days,
				      &error) < 0);
	test_end();
}

static void test_mirror_defs_roundtrip(void)
{
	ARRAY_TYPE(mirror_def) defs, decoded;
	struct mirror_def def;
	const struct mirror_def *d;
	const char *json, *error;

	test_begin("mirror_defs_encode() + decode()");
	t_array_init(&defs, 2);
	t_array_init(&decoded, 2);
	i_zero(&def);
	def.id = 7;
	def.type = MIRROR_TYPE_SINGLE;
	def.source = "alice@example.com";
	def.storage = "audit@example.com";
	def.days = 30;
	def.created = 1700000000;
	array_push_back(&defs, &def);
	def.id = 9;
	def.type = MIRROR_TYPE_ALL;
	def.source = "example.com";
	def.storage = "backup";
	def.days = 3650;
	array_push_back(&defs, &def);

	json = mirror_defs_encode(&defs);
	test_assert(mirror_defs_decode(json, pool_datastack_create(),
				       &decoded, &error) == 0);
	test_assert(array_count(&decoded) == 2);
	d = array_idx(&decoded, 0);
	test_assert(d->id == 7 && d->type == MIRROR_TYPE_SINGLE &&
		    d->days == 30 && d->created == 1700000000);
	test_assert_strcmp(d->source, "alice@example.com");
	test_assert_strcmp(d->storage, "audit@example.com");
	d = array_idx(&decoded, 1);
	test_assert(d->id == 9 && d->type == MIRROR_TYPE_ALL &&
		    d->days == 3650);
	test_assert_strcmp(d->storage, "backup");

	/* unknown members are ignored (forward compatibility) */
	array_clear(&decoded);
	test_assert(mirror_defs_decode(
		"[{\"id\":1,\"type\":\"all\",\"source\":\"example.com\","
		"\"storage\":\"s\",\"days\":1,\"created\":0,\"future\":[1]}]",
		pool_datastack_create(), &decoded, &error) == 0);
	test_assert(array_count(&decoded) == 1);
	test_end();
}

static void test_mirror_defs_decode_broken(void)
{
	static const char *broken[] = {
		"", "null", "{}", "[", "[1]", "[{}]", "[] x", "[[[[[]]]]]",
		/* wrong types and values */
		"[{\"id\":\"1\",\"type\":\"all\",\"source\":\"example.com\",\"storage\":\"s\",\"days\":1,\"created\":0}]",
		"[{\"id\":0,\"type\":\"all\",\"source\":\"example.com\",\"storage\":\"s\",\"days\":1,\"created\":0}]",
		"[{\"id\":4294967296,\"type\":\"all\",\"source\":\"example.com\",\"storage\":\"s\",\"days\":1,\"created\":0}]",
		"[{\"id\":1,\"type\":\"some\",\"source\":\"example.com\",\"storage\":\"s\",\"days\":1,\"created\":0}]",
		"[{\"id\":1,\"type\":\"single\",\"source\":\"example.com\",\"storage\":\"s\",\"days\":1,\"created\":0}]",
		"[{\"id\":1,\"type\":\"all\",\"source\":\"Example.com\",\"storage\":\"s\",\"days\":1,\"created\":0}]",
		"[{\"id\":1,\"type\":\"all\",\"source\":\"example.com\",\"storage\":\"\",\"days\":1,\"created\":0}]",
		"[{\"id\":1,\"type\":\"all\",\"source\":\"example.com\",\"storage\":\"a b\",\"days\":1,\"created\":0}]",
		"[{\"id\":1,\"type\":\"all\",\"source\":\"example.com\",\"storage\":\"s\",\"days\":0,\"created\":0}]",
		"[{\"id\":1,\"type\":\"all\",\"source\":\"example.com\",\"storage\":\"s\",\"days\":3651,\"created\":0}]",
		"[{\"id\":1,\"type\":\"all\",\"source\":\"example.com\",\"storage\":\"s\",\"days\":1,\"created\":-5}]",
		"[{\"id\":1,\"type\":\"all\",\"source\":\"example.com\",\"storage\":\"s\",\"days\":1}]",
		"[{\"id\":1,\"type\":\"all\",\"source\":\"exa\\u0000mple.com\",\"storage\":\"s\",\"days\":1,\"created\":0}]",
		/* one good element, then a bad one: nothing is returned */
		"[{\"id\":1,\"type\":\"all\",\"source\":\"example.com\",\"storage\":\"s\",\"days\":1,\"created\":0},7]",
	};
	ARRAY_TYPE(mirror_def) decoded;
	const char *error;
	unsigned int i;

	test_begin("mirror_defs_decode() broken data");
	t_array_init(&decoded, 2);
	for (i = 0; i < N_ELEMENTS(broken); i++) {
		error = NULL;
		test_assert_idx(mirror_defs_decode(broken[i],
			pool_datastack_create(), &decoded, &error) < 0, i);
		test_assert_idx(error != NULL, i);
		test_assert_idx(array_count(&decoded) == 0, i);
	}
	/* oversized values are refused before parsing */
	string_t *big = t_str_new(MIRROR_REGISTRY_VALUE_MAX_SIZE + 16);
	str_append_c(big, '[');
	while (str_len(big) <= MIRROR_REGISTRY_VALUE_MAX_SIZE)
		str_append(big, "1,");
	str_append(big, "1]");
	test_assert(mirror_defs_decode(str_c(big), pool_datastack_create(),
				       &decoded, &error) < 0);
	test_end();
}

static void test_mirror_sources(void)
{
	ARRAY_TYPE(const_string) sources, decoded;
	const char *s, *json, *error;

	test_begin("mirror_sources_encode() + decode()");
	t_array_init(&sources, 2);
	t_array_init(&decoded, 2);
	s = "a@example.com"; array_push_back(&sources, &s);
	s = "example.org"; array_push_back(&sources, &s);
	json = mirror_sources_encode(&sources);
	test_assert(mirror_sources_decode(json, pool_datastack_create(),
					  &decoded, &error) == 0);
	test_assert(array_count(&decoded) == 2);
	test_assert_strcmp(array_idx_elem(&decoded, 1), "example.org");
	array_clear(&decoded);
	test_assert(mirror_sources_decode("[\"BAD\"]", pool_datastack_create(),
					  &decoded, &error) < 0);
	test_assert(mirror_sources_decode("[1]", pool_datastack_create(),
					  &decoded, &error) < 0);
	test_assert(array_count(&decoded) == 0);
	test_end();
}

int main(void)
{
	static void (*const test_functions[])(void) = {
		test_mirror_source_parse,
		test_mirror_address_keys,
		test_mirror_key_escape,
		test_mirror_days_parse,
		test_mirror_defs_roundtrip,
		test_mirror_defs_decode_broken,
		test_mirror_sources,
		NULL
	};
	return test_run(test_functions);
}
