/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* Unit tests of the pure parts: sources and addresses, registry values,
   the hash chain's records and links. */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "hex-binary.h"
#include "write-full.h"
#include "hash-method.h"
#include "istream.h"
#include "istream-crlf.h"
#include "istream-hash.h"
#include "test-common.h"
#include "dict.h"
#include "mirror-address.h"
#include "registry.h"
#include "mirror-registry.h"
#include "mirror-chain.h"
#include "mirror-expire.h"
#include "mirror-account.h"
#include "mirror-expire-index.h"
#include "mirror-count-journal.h"

#include <fcntl.h>
#include <unistd.h>

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
	/* no local part (found by fuzz-args) */
	test_assert(!mirror_address_keys("", "example.com", "+",
					 &address, &domain));
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
	def.readonly = TRUE;
	def.auto_storage = TRUE;
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
	test_assert(!d->readonly && !d->auto_storage);
	d = array_idx(&decoded, 1);
	test_assert(d->id == 9 && d->type == MIRROR_TYPE_ALL &&
		    d->days == 3650 && d->readonly && d->auto_storage);
	test_assert_strcmp(d->storage, "backup");

	/* a legal hold, with and without a reason */
	array_clear(&defs);
	array_clear(&decoded);
	def.hold_since = 1700000100;
	def.hold_reason = "Case 17: \xc3\xa9";
	array_push_back(&defs, &def);
	def.hold_reason = "";
	array_push_back(&defs, &def);
	json = mirror_defs_encode(&defs);
	test_assert(mirror_defs_decode(json, pool_datastack_create(),
				       &decoded, &error) == 0);
	test_assert(array_count(&decoded) == 2);
	d = array_idx(&decoded, 0);
	test_assert(d->hold_since == 1700000100);
	test_assert_strcmp(d->hold_reason, "Case 17: \xc3\xa9");
	d = array_idx(&decoded, 1);
	test_assert_strcmp(d->hold_reason, "");
	/* not held: no hold member at all */
	def.hold_since = 0;
	def.hold_reason = NULL;
	array_clear(&defs);
	array_push_back(&defs, &def);
	test_assert(strstr(mirror_defs_encode(&defs), "hold") == NULL);

	/* unknown members are ignored (forward compatibility) */
	array_clear(&decoded);
	test_assert(mirror_defs_decode(
		"[{\"id\":1,\"type\":\"all\",\"source\":\"example.com\","
		"\"storage\":\"s\",\"days\":1,\"created\":0,\"future\":[1]}]",
		pool_datastack_create(), &decoded, &error) == 0);
	test_assert(array_count(&decoded) == 1);
	test_end();
}

static void test_mirror_levels_parse(void)
{
	static const char *const bad[] = {
		"free", "free:", "free:x", "free:-1", "Free:1", "a b:1",
		"free:0 free:1", ":1", "free:4294967295",
	};
	ARRAY_TYPE(mirror_level) levels;
	const struct mirror_level *level;
	const char *error;
	unsigned int i;

	test_begin("mirror_levels_parse()");
	t_array_init(&levels, 4);
	test_assert(mirror_levels_parse("free:0  basic:1 big:unlimited",
					pool_datastack_create(), &levels,
					&error) == 0);
	test_assert(array_count(&levels) == 3);
	level = mirror_level_find(&levels, "basic");
	test_assert(level != NULL && level->limit == 1);
	level = mirror_level_find(&levels, "big");
	test_assert(level != NULL && level->limit == UINT_MAX);
	test_assert(mirror_level_find(&levels, "gold") == NULL);
	for (i = 0; i < N_ELEMENTS(bad); i++) {
		array_clear(&levels);
		test_assert_idx(mirror_levels_parse(bad[i],
				pool_datastack_create(), &levels,
				&error) < 0, i);
	}
	test_assert(mirror_name_is_valid("acme-corp.eu_1"));
	test_assert(!mirror_name_is_valid(""));
	test_assert(!mirror_name_is_valid("Acme"));
	test_assert(!mirror_name_is_valid("a/b"));
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
		"[{\"id\":1,\"type\":\"all\",\"source\":\"example.com\",\"storage\":\"s\",\"days\":1,\"created\":0,\"readonly\":\"yes\"}]",
		"[{\"id\":1,\"type\":\"all\",\"source\":\"example.com\",\"storage\":\"a b\",\"days\":1,\"created\":0}]",
		"[{\"id\":1,\"type\":\"all\",\"source\":\"example.com\",\"storage\":\"s\",\"days\":0,\"created\":0}]",
		"[{\"id\":1,\"type\":\"all\",\"source\":\"example.com\",\"storage\":\"s\",\"days\":3651,\"created\":0}]",
		"[{\"id\":1,\"type\":\"all\",\"source\":\"example.com\",\"storage\":\"s\",\"days\":1,\"created\":-5}]",
		"[{\"id\":1,\"type\":\"all\",\"source\":\"example.com\",\"storage\":\"s\",\"days\":1}]",
		"[{\"id\":1,\"type\":\"all\",\"source\":\"exa\\u0000mple.com\",\"storage\":\"s\",\"days\":1,\"created\":0}]",
		/* broken holds */
		"[{\"id\":1,\"type\":\"all\",\"source\":\"example.com\",\"storage\":\"s\",\"days\":1,\"created\":0,\"hold\":1}]",
		"[{\"id\":1,\"type\":\"all\",\"source\":\"example.com\",\"storage\":\"s\",\"days\":1,\"created\":0,\"hold\":{\"reason\":\"\"}}]",
		"[{\"id\":1,\"type\":\"all\",\"source\":\"example.com\",\"storage\":\"s\",\"days\":1,\"created\":0,\"hold\":{\"since\":0,\"reason\":\"\"}}]",
		"[{\"id\":1,\"type\":\"all\",\"source\":\"example.com\",\"storage\":\"s\",\"days\":1,\"created\":0,\"hold\":{\"since\":5}}]",
		"[{\"id\":1,\"type\":\"all\",\"source\":\"example.com\",\"storage\":\"s\",\"days\":1,\"created\":0,\"hold\":{\"since\":5,\"reason\":\"a\\nb\"}}]",
		"[{\"id\":1,\"type\":\"all\",\"source\":\"example.com\",\"storage\":\"s\",\"days\":1,\"created\":0,\"hold\":{\"since\":5,\"reason\":\"\\u00ff\\u0000\"}}]",
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
	string_t *big = t_str_new(REGISTRY_VALUE_MAX_SIZE + 16);
	str_append_c(big, '[');
	while (str_len(big) <= REGISTRY_VALUE_MAX_SIZE)
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

static void test_chain_record_init(struct mirror_chain_record *rec)
{
	unsigned int i;

	i_zero(rec);
	rec->type = MIRROR_CHAIN_RECORD_COPY;
	rec->seq = 1;
	rec->time = 1700000000;
	rec->uid_validity = 1234;
	rec->uid = 5;
	for (i = 0; i < MIRROR_CHAIN_HASH_SIZE; i++)
		rec->content_hash[i] = i;
}

static void test_mirror_chain_link(void)
{
	struct mirror_chain_record rec, rec2;
	unsigned char link[MIRROR_CHAIN_HASH_SIZE];
	const char *error;

	test_begin("mirror_chain_link()");
	/* known answers, computed independently (Python's hashlib) */
	test_chain_record_init(&rec);
	mirror_chain_link(7, NULL, &rec, rec.link);
	test_assert_strcmp(binary_to_hex(rec.link, sizeof(rec.link)),
		"dcbd56ed995b565f1d6b4837e38ac24f183a6551b9cf51db6223a91a4210aee1");
	rec2 = rec;
	rec2.type = MIRROR_CHAIN_RECORD_EXPIRE;
	rec2.seq = 2;
	rec2.time = 1700000100;
	mirror_chain_link(7, rec.link, &rec2, rec2.link);
	test_assert_strcmp(binary_to_hex(rec2.link, sizeof(rec2.link)),
		"f1f64e780bb516708788ebc127d3064cd06f41b810a988df81fd5bcd0375cecb");
	test_assert(mirror_chain_record_follows(7, NULL, &rec, &error));
	test_assert(mirror_chain_record_follows(7, &rec, &rec2, &error));

	/* every field is part of the link */
	test_assert(!mirror_chain_record_follows(8, NULL, &rec, &error));
	test_assert(!mirror_chain_record_follows(7, NULL, &rec2, &error));
	rec2.uid++;
	test_assert(!mirror_chain_record_follows(7, &rec, &rec2, &error));
	rec2.uid--;
	rec2.uid_validity++;
	test_assert(!mirror_chain_record_follows(7, &rec, &rec2, &error));
	rec2.uid_validity--;
	rec2.time++;
	test_assert(!mirror_chain_record_follows(7, &rec, &rec2, &error));
	rec2.time--;
	rec2.content_hash[31] ^= 1;
	test_assert(!mirror_chain_record_follows(7, &rec, &rec2, &error));
	rec2.content_hash[31] ^= 1;
	rec2.type = MIRROR_CHAIN_RECORD_COPY;
	test_assert(!mirror_chain_record_follows(7, &rec, &rec2, &error));
	rec2.type = MIRROR_CHAIN_RECORD_EXPIRE;
	/* the seq must be the next one, even with a matching link */
	rec2.seq = 3;
	mirror_chain_link(7, rec.link, &rec2, rec2.link);
	test_assert(!mirror_chain_record_follows(7, &rec, &rec2, &error));
	/* the link is over the previous link */
	rec2.seq = 2;
	mirror_chain_link(7, NULL, &rec2, link);
	memcpy(rec2.link, link, sizeof(link));
	test_assert(!mirror_chain_record_follows(7, &rec, &rec2, &error));
	test_end();
}

static void test_mirror_chain_hash_method(void)
{
	const struct hash_method *meth = &mirror_chain_hash_method;
	unsigned char digest[MIRROR_CHAIN_HASH_SIZE];
	struct istream *input, *lf, *hash;
	const unsigned char *data;
	size_t size;
	void *ctx;

	test_begin("mirror_chain_hash_method");
	/* through istream-lf and istream-hash, as the copier uses it, with a
	   context at an odd address */
	ctx = i_malloc(meth->context_size + 1);
	meth->init((char *)ctx + 1);
	input = test_istream_create("a\r\nb\n");
	test_istream_set_max_buffer_size(input, 1);
	lf = i_stream_create_lf(input);
	hash = i_stream_create_hash(lf, meth, (char *)ctx + 1);
	while (i_stream_read_more(hash, &data, &size) > 0)
		i_stream_skip(hash, size);
	test_assert(hash->eof && hash->stream_errno == 0);
	meth->result((char *)ctx + 1, digest);
	test_assert_strcmp(binary_to_hex(digest, sizeof(digest)),
		"e622f861cfb90d7fc2773ebf739fd5331515e652d2d3bad8d5a24ec90bf505fd");
	i_stream_unref(&hash);
	i_stream_unref(&lf);
	i_stream_unref(&input);
	i_free(ctx);
	test_end();
}

static void test_mirror_chain_record_format_parse(void)
{
	struct mirror_chain_record rec, parsed;
	string_t *str = t_str_new(256);
	const char *error, *line;

	test_begin("mirror_chain_record format and parse");
	test_chain_record_init(&rec);
	mirror_chain_link(7, NULL, &rec, rec.link);
	mirror_chain_record_format(str, &rec);
	test_assert_strcmp(str_c(str),
		"copy 1 1700000000 1234 5 "
		"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f "
		"dcbd56ed995b565f1d6b4837e38ac24f183a6551b9cf51db6223a91a4210aee1\n");
	line = t_strndup(str_data(str), str_len(str) - 1);
	test_assert(mirror_chain_record_parse(line, &parsed, &error) == 0);
	test_assert(memcmp(&rec, &parsed, sizeof(rec)) == 0);

	rec.type = MIRROR_CHAIN_RECORD_EXPIRE;
	rec.seq = 18446744073709551615ULL;
	rec.uid_validity = rec.uid = 4294967295U;
	str_truncate(str, 0);
	mirror_chain_record_format(str, &rec);
	line = t_strndup(str_data(str), str_len(str) - 1);
	test_assert(strncmp(line, "expire ", 7) == 0);
	test_assert(mirror_chain_record_parse(line, &parsed, &error) == 0);
	test_assert(memcmp(&rec, &parsed, sizeof(rec)) == 0);

	/* hold and release name no message */
	rec.type = MIRROR_CHAIN_RECORD_HOLD;
	rec.uid_validity = rec.uid = 0;
	str_truncate(str, 0);
	mirror_chain_record_format(str, &rec);
	line = t_strndup(str_data(str), str_len(str) - 1);
	test_assert(strncmp(line, "hold 18446744073709551615 1700000000 0 0 ",
			    41) == 0);
	test_assert(mirror_chain_record_parse(line, &parsed, &error) == 0);
	test_assert(memcmp(&rec, &parsed, sizeof(rec)) == 0);
	rec.type = MIRROR_CHAIN_RECORD_RELEASE;
	str_truncate(str, 0);
	mirror_chain_record_format(str, &rec);
	line = t_strndup(str_data(str), str_len(str) - 1);
	test_assert(strncmp(line, "release ", 8) == 0);
	test_assert(mirror_chain_record_parse(line, &parsed, &error) == 0);
	test_assert(memcmp(&rec, &parsed, sizeof(rec)) == 0);
	test_end();
}

static void test_mirror_chain_record_parse_broken(void)
{
#define H64 "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
	static const char *broken[] = {
		"",
		"copy",
		"copy 1 1700000000 1234 5 "H64,
		"copy 1 1700000000 1234 5 "H64" "H64" extra",
		"move 1 1700000000 1234 5 "H64" "H64,
		"COPY 1 1700000000 1234 5 "H64" "H64,
		"copy 0 1700000000 1234 5 "H64" "H64,
		"copy 01 1700000000 1234 5 "H64" "H64,
		"copy +1 1700000000 1234 5 "H64" "H64,
		"copy 1 -1 1234 5 "H64" "H64,
		"copy 1 1700000000 0 5 "H64" "H64,
		"copy 1 1700000000 1234 0 "H64" "H64,
		"copy 1 1700000000 4294967296 5 "H64" "H64,
		"copy 1 1700000000 1234 x "H64" "H64,
		"copy 1 18446744073709551616 1234 5 "H64" "H64,
		"copy 1 1700000000 1234 5 "H64"00 "H64,
		"copy 1 1700000000 1234 5 "H64" "H64"0",
		"copy 1 1700000000 1234 5 "H64" 0"H64,
		"copy 1 1700000000 1234 5 "H64" "
			"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1g",
		"copy 1 1700000000 1234 5 "H64" "
			"000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F",
		"copy  1 1700000000 1234 5 "H64" "H64,
		"copy 1 1700000000 1234 5 "H64" "H64" ",
		" copy 1 1700000000 1234 5 "H64" "H64,
		"copy\t1 1700000000 1234 5 "H64" "H64,
		"copy 1 1700000000 1234 5 "H64" "H64"\r",
		/* a hold or a release names no message; a copy does */
		"hold 1 1700000000 1234 5 "H64" "H64,
		"hold 1 1700000000 0 5 "H64" "H64,
		"release 1 1700000000 1234 0 "H64" "H64,
		"copy 1 1700000000 0 0 "H64" "H64,
		"Hold 1 1700000000 0 0 "H64" "H64,
	};
	struct mirror_chain_record rec;
	const char *error;
	unsigned int i;

	test_begin("mirror_chain_record_parse() broken lines");
	for (i = 0; i < N_ELEMENTS(broken); i++) {
		error = NULL;
		test_assert_idx(mirror_chain_record_parse(broken[i], &rec,
							  &error) < 0, i);
		test_assert_idx(error != NULL, i);
	}
	test_assert(mirror_chain_record_parse(
		"copy 1 1700000000 1234 5 "H64" "H64, &rec, &error) == 0);
	test_assert(mirror_chain_record_parse(
		"hold 1 1700000000 0 0 "H64" "H64, &rec, &error) == 0);
	test_end();
#undef H64
}

static void test_chain_file_write(const char *path, const char *data)
{
	int fd = open(path, O_WRONLY | O_TRUNC | O_CREAT, 0600);

	if (fd == -1)
		i_fatal("open(%s) failed: %m", path);
	if (write_full(fd, data, strlen(data)) < 0)
		i_fatal("write(%s) failed: %m", path);
	i_close_fd(&fd);
}

static void test_chain_file_read(const char *path, string_t *dest)
{
	char buf[1024];
	ssize_t ret;
	int fd = open(path, O_RDONLY);

	if (fd == -1)
		i_fatal("open(%s) failed: %m", path);
	while ((ret = read(fd, buf, sizeof(buf))) > 0)
		str_append_data(dest, buf, ret);
	i_close_fd(&fd);
}

static void test_mirror_chain_file(void)
{
	const char *path = ".test-mirror-chain.tmp";
	ARRAY_TYPE(mirror_chain_record) records;
	struct mirror_chain_record rec, rec3;
	const struct mirror_chain_record *recs;
	unsigned char hash[MIRROR_CHAIN_HASH_SIZE];
	const char *broken, *error, *p;
	string_t *data = t_str_new(1024);
	unsigned int i, count;

	test_begin("mirror chain file: append and read");
	i_unlink_if_exists(path);
	t_array_init(&records, 8);
	/* no file: an empty, intact chain */
	test_assert(mirror_chain_read(path, 3, &records, &broken,
				      &error) == 0);
	test_assert(array_count(&records) == 0 && broken == NULL);

	memset(hash, 0xab, sizeof(hash));
	for (i = 1; i <= 3; i++) {
		test_assert_idx(mirror_chain_append(path, 3,
			i == 3 ? MIRROR_CHAIN_RECORD_EXPIRE :
			MIRROR_CHAIN_RECORD_COPY, 1700000000 + i, 99, i,
			hash, i == 2, &rec, &error) == 0, i);
		test_assert_idx(rec.seq == i, i);
	}
	rec3 = rec;
	test_assert(mirror_chain_read(path, 3, &records, &broken,
				      &error) == 0);
	recs = array_get(&records, &count);
	test_assert(count == 3 && broken == NULL);
	test_assert(count == 3 && memcmp(&recs[2], &rec3, sizeof(rec3)) == 0);
	/* another mirror's links don't match */
	array_clear(&records);
	test_assert(mirror_chain_read(path, 4, &records, &broken,
				      &error) == 0);
	test_assert(array_count(&records) == 3 && broken != NULL);

	/* change a record: the chain is broken, the records still read */
	test_chain_file_read(path, data);
	p = strstr(str_c(data), " 99 2 ");
	test_assert(p != NULL);
	if (p != NULL) {
		str_delete(data, p - str_c(data) + 4, 1);
		str_insert(data, p - str_c(data) + 4, "7");
	}
	test_chain_file_write(path, str_c(data));
	array_clear(&records);
	test_assert(mirror_chain_read(path, 3, &records, &broken,
				      &error) == 0);
	test_assert(array_count(&records) == 3 && broken != NULL &&
		    strstr(broken, "line 2") != NULL);

	/* a garbage line */
	test_chain_file_write(path, t_strconcat(str_c(data), "garbage\n",
						NULL));
	array_clear(&records);
	test_assert(mirror_chain_read(path, 3, &records, &broken,
				      &error) == 0);
	test_assert(array_count(&records) == 3 && broken != NULL);
	/* appending after a broken last record fails and changes nothing */
	test_assert(mirror_chain_append(path, 3, MIRROR_CHAIN_RECORD_COPY,
					1700000009, 99, 9, hash, FALSE, NULL,
					&error) < 0);

	/* an incomplete last record */
	str_truncate(data, 0);
	test_chain_file_write(path, "");
	test_assert(mirror_chain_append(path, 3, MIRROR_CHAIN_RECORD_COPY,
					1700000001, 99, 1, hash, FALSE, NULL,
					&error) == 0);
	test_chain_file_read(path, data);
	test_chain_file_write(path, t_strndup(str_data(data),
					      str_len(data) - 1));
	array_clear(&records);
	test_assert(mirror_chain_read(path, 3, &records, &broken,
				      &error) == 0);
	test_assert(array_count(&records) == 0 && broken != NULL);
	test_assert(mirror_chain_append(path, 3, MIRROR_CHAIN_RECORD_COPY,
					1700000002, 99, 2, hash, FALSE, NULL,
					&error) < 0);

	/* a line longer than any record */
	str_truncate(data, 0);
	for (i = 0; i < 2000; i++)
		str_append_c(data, 'x');
	str_append_c(data, '\n');
	test_chain_file_write(path, str_c(data));
	array_clear(&records);
	test_assert(mirror_chain_read(path, 3, &records, &broken,
				      &error) == 0);
	test_assert(array_count(&records) == 0 && broken != NULL);
	test_assert(mirror_chain_append(path, 3, MIRROR_CHAIN_RECORD_COPY,
					1700000002, 99, 2, hash, FALSE, NULL,
					&error) < 0);
	i_unlink(path);
	test_end();
}

/* Found by fuzz-chain (tests/fuzz/crashes/chain/): the reader took a
   record line ending in CRLF, or one with a NUL and more after it, as
   intact. The appender refused the CRLF line as broken, so one added CR
   stopped every later copy from being recorded while verify still said
   the chain was intact. */
static void test_mirror_chain_file_cr_nul(void)
{
	static const char *const suffixes[] = { "\r", "\0x" };
	const char *path = ".test-mirror-chain-cr-nul.tmp";
	ARRAY_TYPE(mirror_chain_record) records;
	unsigned char hash[MIRROR_CHAIN_HASH_SIZE];
	const char *broken, *error;
	string_t *data = t_str_new(256), *changed = t_str_new(256);
	unsigned int i;
	int fd;

	test_begin("mirror chain file: a CR or NUL in a record");
	i_unlink_if_exists(path);
	memset(hash, 0xcd, sizeof(hash));
	test_assert(mirror_chain_append(path, 3, MIRROR_CHAIN_RECORD_COPY,
					1700000000, 99, 1, hash, FALSE, NULL,
					&error) == 0);
	test_chain_file_read(path, data);
	t_array_init(&records, 4);
	for (i = 0; i < N_ELEMENTS(suffixes); i++) {
		/* the record, then the suffix before its LF */
		str_truncate(changed, 0);
		str_append_data(changed, str_data(data), str_len(data) - 1);
		str_append_data(changed, suffixes[i], i == 0 ? 1 : 2);
		str_append_c(changed, '\n');
		fd = open(path, O_WRONLY | O_TRUNC);
		if (fd == -1)
			i_fatal("open(%s) failed: %m", path);
		if (write_full(fd, str_data(changed), str_len(changed)) < 0)
			i_fatal("write(%s) failed: %m", path);
		i_close_fd(&fd);

		array_clear(&records);
		test_assert_idx(mirror_chain_read(path, 3, &records, &broken,
						  &error) == 0, i);
		test_assert_idx(array_count(&records) == 0 && broken != NULL,
				i);
		test_assert_idx(mirror_chain_append(path, 3,
			MIRROR_CHAIN_RECORD_COPY, 1700000001, 99, 2, hash,
			FALSE, NULL, &error) < 0, i);
	}
	i_unlink(path);
	test_end();
}

static void test_mirror_chain_append_records(void)
{
	const char *path = ".test-mirror-chain-batch.tmp";
	ARRAY_TYPE(mirror_chain_record) records;
	struct mirror_chain_record first, batch[3];
	const struct mirror_chain_record *recs;
	unsigned char hash[MIRROR_CHAIN_HASH_SIZE];
	const char *broken, *error;
	unsigned int i, count;

	test_begin("mirror chain file: append several records at once");
	i_unlink_if_exists(path);
	/* nothing to append: no file either */
	test_assert(mirror_chain_append_records(path, 5, NULL, 0, FALSE,
						&error) == 0);
	test_assert(access(path, F_OK) < 0 && errno == ENOENT);

	memset(hash, 0x11, sizeof(hash));
	test_assert(mirror_chain_append(path, 5, MIRROR_CHAIN_RECORD_COPY,
					1700000000, 42, 1, hash, FALSE, &first,
					&error) == 0);
	i_zero(&batch);
	for (i = 0; i < N_ELEMENTS(batch); i++) {
		batch[i].type = MIRROR_CHAIN_RECORD_EXPIRE;
		batch[i].time = 1700090000;
		batch[i].uid_validity = 42;
		batch[i].uid = i + 1;
		memset(batch[i].content_hash, 0x20 + i, MIRROR_CHAIN_HASH_SIZE);
	}
	test_assert(mirror_chain_append_records(path, 5, batch,
						N_ELEMENTS(batch), TRUE,
						&error) == 0);
	for (i = 0; i < N_ELEMENTS(batch); i++)
		test_assert_idx(batch[i].seq == i + 2, i);

	t_array_init(&records, 8);
	test_assert(mirror_chain_read(path, 5, &records, &broken,
				      &error) == 0);
	test_assert(broken == NULL);
	recs = array_get(&records, &count);
	test_assert(count == 4);
	if (count == 4) {
		test_assert(recs[0].type == MIRROR_CHAIN_RECORD_COPY &&
			    memcmp(recs[0].link, first.link,
				   MIRROR_CHAIN_HASH_SIZE) == 0);
		for (i = 0; i < N_ELEMENTS(batch); i++) {
			test_assert_idx(recs[i + 1].type ==
					MIRROR_CHAIN_RECORD_EXPIRE &&
					recs[i + 1].uid == i + 1 &&
					memcmp(recs[i + 1].link, batch[i].link,
					       MIRROR_CHAIN_HASH_SIZE) == 0, i);
		}
	}
	i_unlink(path);
	test_end();
}

static void test_mirror_expire_index(void)
{
	const char *path = ".test-mirror-registry.tmp";
	struct registry *reg;
	ARRAY_TYPE(mirror_expire_entry) entries;
	const struct mirror_expire_entry *entry;
	ARRAY_TYPE(mirror_def) defs;
	ARRAY_TYPE(const_string) made;
	/* c@ has no entry: left out */
	const char *const storage_keys[] = {
		"a@example.com", "b@example.com", "c@example.com"
	};
	time_t oldest;
	const char *error;

	test_begin("mirror expire index");
	test_assert(mirror_expire_cutoff(1700000000, 1) == 1700000000 - 86400);
	test_assert(mirror_expire_cutoff(1700000000, 30) ==
		    1700000000 - 30 * 86400);
	test_assert_strcmp(mirror_expire_storage_key("Audit@Example.COM"),
			   "audit@example.com");

	i_unlink_if_exists(path);
	dict_drivers_register_builtin();
	test_assert(registry_init(t_strconcat("file:", path, NULL), ".", NULL,
				  &reg, &error) == 0);
	test_assert(mirror_registry_expire_get(reg, "a@example.com", &oldest,
					       &error) == 0 && oldest == 0);
	/* lower: sets a missing entry, lowers a later one, keeps an
	   earlier one */
	test_assert(mirror_registry_expire_lower(reg, "a@example.com", 500,
						 &error) == 0);
	test_assert(mirror_registry_expire_lower(reg, "A@example.com", 400,
						 &error) == 0);
	test_assert(mirror_registry_expire_lower(reg, "a@example.com", 450,
						 &error) == 0);
	test_assert(mirror_registry_expire_get(reg, "a@example.com", &oldest,
					       &error) == 1 && oldest == 400);
	test_assert(mirror_registry_expire_set(reg, "b@example.com", 700,
					       &error) == 0);

	t_array_init(&entries, 4);
	test_assert(mirror_registry_expire_list(reg, pool_datastack_create(),
						storage_keys, 3, &entries,
						&error) == 0);
	test_assert(array_count(&entries) == 2);
	array_foreach(&entries, entry) {
		if (strcmp(entry->storage_key, "a@example.com") == 0)
			test_assert(entry->oldest == 400);
		else {
			test_assert_strcmp(entry->storage_key,
					   "b@example.com");
			test_assert(entry->oldest == 700);
		}
	}
	/* set 0 unsets */
	test_assert(mirror_registry_expire_set(reg, "a@example.com", 0,
					       &error) == 0);
	test_assert(mirror_registry_expire_get(reg, "a@example.com", &oldest,
					       &error) == 0);
	t_array_init(&defs, 4);
	/* the source list is set up once (doveadm mirror init): without
	   it mirrors would go missing without a word */
	test_assert(mirror_registry_list_all(reg, pool_datastack_create(),
					     &defs, &error) < 0);
	test_assert(strstr(error, "shared/mirror/sources is missing") != NULL);
	t_array_init(&made, 4);
	test_assert(mirror_registry_setup(reg, &made, &error) == 0 &&
		    array_count(&made) == 3);
	array_clear(&made);
	test_assert(mirror_registry_setup(reg, &made, &error) == 0 &&
		    array_count(&made) == 0);
	test_assert(mirror_registry_list_all(reg, pool_datastack_create(),
					     &defs, &error) == 0 &&
		    array_count(&defs) == 0);
	registry_deinit(&reg);
	dict_drivers_unregister_builtin();
	i_unlink(path);
	test_end();
}

static void test_mirror_count_journal(void)
{
	const struct mirror_count_pending entries[] = {
		{ .id = 7, .copies = 3, .failures = 0 },
		{ .id = 4294967295U, .copies = 4294967295U, .failures = 1,
		  .flushing_copies = 2, .flushing_failures = 4294967295U },
		{ .id = 7, .copies = 2, .failures = 5, .flushing_copies = 1 },
	};
	ARRAY_TYPE(mirror_count_pending) pending;
	const struct mirror_count_pending *p;
	struct istream *input;
	string_t *str = t_str_new(256);
	const char *error;
	unsigned int broken;

	test_begin("mirror count journal");
	mirror_count_journal_format(str, entries, N_ELEMENTS(entries));
	test_assert(str_len(str) ==
		    MIRROR_COUNT_JOURNAL_LINE_LEN * N_ELEMENTS(entries));
	/* lines that a rewrite may leave, or that were never the writer's */
	str_append(str, "0000000009\t0000000001\n"
		   "0000000000\t0000000001\t0000000000\t0000000000\t0000000000\n"
		   "000000000x\t0000000001\t0000000000\t0000000000\t0000000000\n"
		   "0000000008\t0000000001\t0000000000\t0000000000\t00000000000\n"
		   "0000000008\t0000000001\t0000000000\t0000000000\n"
		   "00000000");
	input = i_stream_create_from_data(str_data(str), str_len(str));
	t_array_init(&pending, 4);
	test_assert(mirror_count_journal_parse(input, &pending, &broken,
					       &error) == 0);
	i_stream_unref(&input);
	/* the last, unfinished line is not even read */
	test_assert(broken == 5);
	test_assert(array_count(&pending) == 2);
	p = mirror_count_pending_find(&pending, 7);
	test_assert(p != NULL && p->copies == 5 && p->failures == 5 &&
		    p->flushing_copies == 1 && p->flushing_failures == 0);
	p = mirror_count_pending_find(&pending, 4294967295U);
	test_assert(p != NULL && p->copies == 4294967295U &&
		    p->failures == 1 && p->flushing_copies == 2 &&
		    p->flushing_failures == 4294967295U);
	test_assert(mirror_count_pending_find(&pending, 9) == NULL);
	test_end();
}

int main(void)
{
	static void (*const test_functions[])(void) = {
		test_mirror_source_parse,
		test_mirror_address_keys,
		test_mirror_days_parse,
		test_mirror_defs_roundtrip,
		test_mirror_defs_decode_broken,
		test_mirror_sources,
		test_mirror_levels_parse,
		test_mirror_chain_link,
		test_mirror_chain_hash_method,
		test_mirror_chain_record_format_parse,
		test_mirror_chain_record_parse_broken,
		test_mirror_chain_file,
		test_mirror_chain_file_cr_nul,
		test_mirror_chain_append_records,
		test_mirror_expire_index,
		test_mirror_count_journal,
		NULL
	};
	return test_run(test_functions);
}
