/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* Unit tests of the registry's core on a file dict: key escaping, JSON
   values, counters and times. */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "test-common.h"
#include "registry-dict.h"
#include "registry-json.h"
#include "registry-access.h"
#include "registry-marker.h"

#define TEST_REGISTRY_PATH ".test-registry.tmp"

static struct registry *test_registry_open(void)
{
	struct registry *reg;
	const char *error;

	i_unlink_if_exists(TEST_REGISTRY_PATH);
	test_assert(registry_init("file:"TEST_REGISTRY_PATH, ".", NULL, &reg,
				  &error) == 0);
	return reg;
}

static void test_registry_key_escape(void)
{
	string_t *str = t_str_new(32);

	test_begin("registry_key_escape() + unescape()");
	test_assert_strcmp(registry_key_escape("a.b+c@d-e.com"),
			   "a.b+c@d-e.com");
	test_assert_strcmp(registry_key_escape("a/b@x.com"), "a%2fb@x.com");
	test_assert_strcmp(registry_key_escape("a%b"), "a%25b");
	test_assert(registry_key_unescape("a%2fb%25", str) == 0);
	test_assert_strcmp(str_c(str), "a/b%");
	str_truncate(str, 0);
	test_assert(registry_key_unescape("a%00", str) == -1);
	test_assert(registry_key_unescape("a%2", str) == -1);
	test_assert(registry_key_unescape("a%zz", str) == -1);
	test_end();
}

static void test_registry_json(void)
{
	ARRAY_TYPE(const_string) strings;
	struct json_object *obj;
	const char *error, *str, *a = "a", *b = "b\"";
	int64_t num;
	bool bval;

	test_begin("registry JSON values");
	t_array_init(&strings, 2);
	array_push_back(&strings, &a);
	array_push_back(&strings, &b);
	test_assert_strcmp(registry_json_strings(&strings), "[\"a\",\"b\\\"\"]");

	test_assert(registry_json_parse("{\"n\":5,\"s\":\"x\",\"b\":true}",
					json_type_object, &obj, &error) == 0);
	test_assert(registry_json_get_int(obj, "n", 1, 10, &num, &error) == 0 &&
		    num == 5);
	test_assert(registry_json_get_int(obj, "n", 6, 10, &num, &error) < 0);
	test_assert(registry_json_get_str(obj, "s", &str, &error) == 0 &&
		    strcmp(str, "x") == 0);
	test_assert(registry_json_get_str(obj, "n", &str, &error) < 0);
	test_assert(registry_json_get_bool(obj, "b", &bval, &error) == 0 &&
		    bval);
	test_assert(registry_json_get_bool(obj, "none", &bval, &error) == 0 &&
		    !bval);
	json_object_put(obj);

	/* wrong type, trailing data, truncated, NUL in a string */
	test_assert(registry_json_parse("[]", json_type_object, &obj,
					&error) < 0);
	test_assert(registry_json_parse("{} x", json_type_object, &obj,
					&error) < 0);
	test_assert(registry_json_parse("{\"a\":", json_type_object, &obj,
					&error) < 0);
	test_assert(registry_json_parse("{\"s\":\"a\\u0000b\"}",
					json_type_object, &obj, &error) == 0);
	test_assert(registry_json_get_str(obj, "s", &str, &error) < 0);
	json_object_put(obj);
	/* too deep */
	test_assert(registry_json_parse("[[[[[1]]]]]", json_type_array, &obj,
					&error) < 0);
	test_end();
}

static void test_registry_counters(void)
{
	struct registry *reg = test_registry_open();
	struct dict_transaction_context *trans;
	const char *const keys[] = {
		DICT_PATH_SHARED"test/a", DICT_PATH_SHARED"test/b"
	};
	const long long diffs[] = { 2, 5 };
	uint64_t value;
	time_t t;
	const char *error;

	test_begin("registry counters and times");
	test_assert(registry_get_counter(reg, keys[0], &value, &error) == 0 &&
		    value == 0);
	/* missing keys are set, existing ones incremented */
	test_assert(registry_counters_add(reg, keys, diffs, 2, &error) == 0);
	test_assert(registry_counters_add(reg, keys, diffs, 2, &error) == 0);
	test_assert(registry_get_counter(reg, keys[0], &value, &error) == 1 &&
		    value == 4);
	test_assert(registry_get_counter(reg, keys[1], &value, &error) == 1 &&
		    value == 10);

	trans = registry_transaction_begin(reg);
	dict_set(trans, keys[0], "zz");
	dict_set(trans, DICT_PATH_SHARED"test/t", "1700000000");
	test_assert(registry_commit(reg, &trans, &error) == 0);
	test_assert(registry_get_counter(reg, keys[0], &value, &error) < 0);
	test_assert(registry_get_time(reg, DICT_PATH_SHARED"test/t", &t,
				      &error) == 1 && t == 1700000000);
	test_assert(registry_get_time(reg, keys[0], &t, &error) < 0);
	registry_deinit(&reg);
	i_unlink(TEST_REGISTRY_PATH);
	test_end();
}

static void test_registry_access(void)
{
	struct registry_request req;
	const char *name, *error;

	test_begin("registry_request_parse() + registry_access_check()");
	test_assert(registry_handshake_parse("H3\t2\t0\t\tmirror", &name,
					     &error) == 0);
	test_assert_strcmp(name, "mirror");
	test_assert(registry_handshake_parse("H2\t2\t0\t\tmirror", &name,
					     &error) < 0);
	test_assert(registry_handshake_parse("H3\t2\t1\t\tmirror", &name,
					     &error) < 0);
	test_assert(registry_handshake_parse("H3\t2", &name, &error) < 0);

	test_assert(registry_request_parse("Lshared/mirror/user/a@b",
					   &req, &error) == 0);
	test_assert(req.type == REGISTRY_REQUEST_LOOKUP);
	test_assert(registry_access_check(REGISTRY_ROLE_ADMIN, &req) == NULL);
	test_assert(registry_access_check(REGISTRY_ROLE_MAIL, &req) != NULL);
	test_assert(registry_request_parse("Lshared/mirror/userdb/a@b",
					   &req, &error) == 0);
	test_assert(registry_access_check(REGISTRY_ROLE_MAIL, &req) == NULL);
	test_assert(registry_request_parse("Lpriv/x", &req, &error) == 0);
	test_assert(registry_access_check(REGISTRY_ROLE_MAIL, &req) != NULL);

	/* an iteration of a parent of the secrets returns them too */
	test_assert(registry_request_parse("I1\t0\tshared/mirror/", &req,
					   &error) == 0);
	test_assert(req.type == REGISTRY_REQUEST_ITERATE);
	test_assert(registry_access_check(REGISTRY_ROLE_MAIL, &req) != NULL);
	test_assert(registry_request_parse("I1\t0\tshared/mirror/us", &req,
					   &error) == 0);
	test_assert(registry_access_check(REGISTRY_ROLE_MAIL, &req) != NULL);
	test_assert(registry_request_parse("I1\t0\tshared/bag/rcpt/x/", &req,
					   &error) == 0);
	test_assert(registry_access_check(REGISTRY_ROLE_MAIL, &req) == NULL);

	test_assert(registry_request_parse("S1\tshared/mirror/source/x\t[]",
					   &req, &error) == 0);
	test_assert(req.type == REGISTRY_REQUEST_SET && req.trans_id == 1);
	test_assert_strcmp(req.value, "[]");
	test_assert(registry_access_check(REGISTRY_ROLE_MAIL, &req) != NULL);
	test_assert(registry_access_check(REGISTRY_ROLE_ADMIN, &req) == NULL);
	test_assert(registry_request_parse("A7\tshared/mirror/status/3/copies\t1",
					   &req, &error) == 0);
	test_assert(req.type == REGISTRY_REQUEST_ATOMIC_INC && req.diff == 1);
	test_assert(registry_access_check(REGISTRY_ROLE_MAIL, &req) == NULL);
	test_assert(registry_request_parse("A7\tshared/mirror/next-id\t1",
					   &req, &error) == 0);
	test_assert(registry_access_check(REGISTRY_ROLE_MAIL, &req) != NULL);
	test_assert(registry_request_parse("U2\tshared/bag/count/x.test",
					   &req, &error) == 0);
	test_assert(registry_access_check(REGISTRY_ROLE_MAIL, &req) == NULL);
	/* the expire index, not the scan's records */
	test_assert(registry_request_parse("U2\tshared/mirror/expire-last-run",
					   &req, &error) == 0);
	test_assert(registry_access_check(REGISTRY_ROLE_MAIL, &req) != NULL);
	test_assert(registry_request_parse("C2", &req, &error) == 0);
	test_assert(req.type == REGISTRY_REQUEST_COMMIT && !req.async_commit);
	test_assert(registry_request_parse("D2", &req, &error) == 0);
	test_assert(req.type == REGISTRY_REQUEST_COMMIT && req.async_commit);

	test_assert(registry_request_parse("", &req, &error) < 0);
	test_assert(registry_request_parse("X", &req, &error) < 0);
	test_assert(registry_request_parse("S1\tkey", &req, &error) < 0);
	test_assert(registry_request_parse("Sx\tkey\tv", &req, &error) < 0);
	test_assert(registry_request_parse("A1\tkey\tzz", &req, &error) < 0);
	test_assert(registry_request_parse("A1\tkey\t9223372036854775807",
					   &req, &error) < 0);
	test_assert(registry_request_parse("I1\t0", &req, &error) < 0);

	test_assert(registry_counter_value_is_valid("0", 1));
	test_assert(registry_counter_value_is_valid("-5", 1));
	test_assert(!registry_counter_value_is_valid("zz", 1));
	test_assert(!registry_counter_value_is_valid("-5x", 1));
	test_assert(!registry_counter_value_is_valid("", 1));
	test_assert(!registry_counter_value_is_valid("99999999999999999999", 1));
	test_assert(!registry_counter_value_is_valid("4611686018427387903", 1));
	test_assert(registry_counter_value_is_valid("4611686018427387902", 1));
	test_end();
}

static void test_registry_marker(void)
{
	struct registry_marker marker, parsed;
	const char *value, *error;

	test_begin("registry marker");
	registry_marker_new(&marker);
	test_assert(marker.format == REGISTRY_FORMAT);
	test_assert(registry_id_is_valid(marker.id));
	value = registry_marker_encode(&marker);
	test_assert(registry_marker_parse(value, &parsed, &error) == 0);
	test_assert_strcmp(parsed.id, marker.id);
	test_assert(parsed.created == marker.created);
	test_assert(registry_marker_check(value, NULL) == NULL);
	test_assert(registry_marker_check(value, marker.id) == NULL);

	/* missing, broken, newer, foreign: never used */
	test_assert(strstr(registry_marker_check(NULL, NULL),
			   "it has no marker") != NULL);
	test_assert(strstr(registry_marker_check("{", NULL),
			   "its marker (shared/mirror/registry) is broken")
		    != NULL);
	test_assert(registry_marker_check(
		"{\"format\":1,\"id\":\"xyz\",\"created\":1}", NULL) != NULL);
	test_assert(registry_marker_check(
		"{\"format\":1,\"created\":1}", NULL) != NULL);
	test_assert(strstr(registry_marker_check(t_strdup_printf(
		"{\"format\":2,\"id\":\"%s\",\"created\":1}", marker.id),
		NULL), "its format 2 is newer") != NULL);
	test_assert(strstr(registry_marker_check(value,
		"00000000000000000000000000000000"), "a registry of another "
		"installation") != NULL);

	test_assert(!registry_id_is_valid("0123"));
	test_assert(!registry_id_is_valid("0123456789ABCDEF0123456789abcdef"));
	test_assert(registry_id_is_valid("0123456789abcdef0123456789abcdef"));
	test_end();
}

int main(void)
{
	static void (*const test_functions[])(void) = {
		test_registry_key_escape,
		test_registry_json,
		test_registry_counters,
		test_registry_access,
		test_registry_marker,
		NULL
	};
	int ret;

	dict_drivers_register_builtin();
	ret = test_run(test_functions);
	dict_drivers_unregister_builtin();
	return ret;
}
