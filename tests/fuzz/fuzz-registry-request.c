/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* Fuzz target: what the mirror-registry service reads from any local
   process that reaches its socket (the mail uid included): the dict
   protocol's handshake and requests (registry_handshake_parse(),
   registry_request_parse()) and who may make them
   (registry_access_check()); and what it reads from the registry before
   it answers: the marker (registry_marker_check()) and the counters it
   increments (registry_counter_value_is_valid()).

   Input: one selector byte ('0' protocol lines, '1' a marker value, '2' a
   counter value; any other byte picks one by its value), then the data;
   protocol lines are separated by LF, the first is the handshake.

   Asserts: the mail uid is never allowed to read a login record's secret
   nor to iterate over a parent of them, nor to write anything but what
   mail processes keep up to date; every refusal is loggable; a marker
   that is accepted parses, with a format this version reads; a counter
   value that is accepted is an integer that an increment can't overflow. */

#include "lib.h"
#include "str.h"
#include "strnum.h"
#include "fuzz-common.h"
#include "registry-access.h"
#include "registry-marker.h"

enum fuzz_request_kind {
	FUZZ_REQUEST_LINES = 0,
	FUZZ_REQUEST_MARKER,
	FUZZ_REQUEST_COUNTER,

	FUZZ_REQUEST_KIND_COUNT
};

#define SECRETS "shared/mirror/user/"

static bool fuzz_key_is_state(const char *key)
{
	static const char *const state[] = {
		"shared/mirror/status/", "shared/mirror/expire/",
		"shared/bag/status/", "shared/bag/count/",
		"shared/bag/backup/", "shared/bag/usage/",
	};
	unsigned int i;

	for (i = 0; i < N_ELEMENTS(state); i++) {
		if (str_begins(key, state[i]))
			return TRUE;
	}
	return FALSE;
}

static void fuzz_request(const char *line)
{
	struct registry_request req;
	const char *error, *reason;

	if (registry_request_parse(line, &req, &error) < 0) {
		fuzz_assert_loggable(error);
		return;
	}
	i_assert(registry_access_check(REGISTRY_ROLE_ADMIN, &req) == NULL);
	reason = registry_access_check(REGISTRY_ROLE_MAIL, &req);
	if (reason != NULL) {
		fuzz_assert_loggable(reason);
		return;
	}
	switch (req.type) {
	case REGISTRY_REQUEST_LOOKUP:
		i_assert(!str_begins(req.key, SECRETS));
		i_assert(str_begins(req.key, "shared/mirror/") ||
			 str_begins(req.key, "shared/bag/"));
		break;
	case REGISTRY_REQUEST_ITERATE:
		i_assert(!str_begins(req.key, SECRETS) &&
			 !str_begins(SECRETS, req.key));
		break;
	case REGISTRY_REQUEST_SET:
	case REGISTRY_REQUEST_UNSET:
	case REGISTRY_REQUEST_ATOMIC_INC:
		i_assert(fuzz_key_is_state(req.key));
		break;
	default:
		break;
	}
}

static void fuzz_lines(const char *data)
{
	const char *const *lines = t_strsplit(data, "\n");
	const char *name, *error;

	if (lines[0] == NULL)
		return;
	if (registry_handshake_parse(lines[0], &name, &error) < 0)
		fuzz_assert_loggable(error);
	for (lines++; *lines != NULL; lines++)
		fuzz_request(*lines);
}

static void fuzz_marker(const char *value)
{
	struct registry_marker marker;
	const char *reason, *error;

	reason = registry_marker_check(value, NULL);
	if (reason != NULL)
		return;
	i_assert(registry_marker_parse(value, &marker, &error) == 0);
	i_assert(marker.format <= REGISTRY_FORMAT);
	i_assert(registry_id_is_valid(marker.id));
	/* an accepted marker is accepted for its own id, and not for another */
	i_assert(registry_marker_check(value, marker.id) == NULL);
	i_assert(registry_marker_check(value, strcmp(marker.id,
		"00000000000000000000000000000000") == 0 ?
		"11111111111111111111111111111111" :
		"00000000000000000000000000000000") != NULL);
}

static void fuzz_counter(const char *value)
{
	long long n;

	if (!registry_counter_value_is_valid(value, 1))
		return;
	i_assert(str_to_llong(value, &n) == 0);
	i_assert(n < (1LL << 62) - 1 && n > -(1LL << 62));
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
	if (size == 0)
		return 0;
	T_BEGIN {
		const char *input = t_strndup(data + 1, size - 1);

		switch (fuzz_select(data[0], FUZZ_REQUEST_KIND_COUNT)) {
		case FUZZ_REQUEST_LINES:
			fuzz_lines(input);
			break;
		case FUZZ_REQUEST_MARKER:
			fuzz_marker(input);
			break;
		case FUZZ_REQUEST_COUNTER:
			fuzz_counter(input);
			break;
		}
	} T_END;
	return 0;
}
