/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* The requests of Dovecot's dict protocol, and who may make them
   (registry-access.h). */

#include "lib.h"
#include "strnum.h"
#include "strescape.h"
#include "dict.h"
#include "dict-client.h"
#include "registry-dict.h"
#include "registry-access.h"

#include <ctype.h>

/* the login records: password hashes, CRAM-MD5 states */
#define REGISTRY_KEY_SECRETS REGISTRY_KEY_MIRROR"user/"

/* what mail processes keep up to date; everything else is written by
   doveadm (as root) and by LMTP (which runs as root) */
static const char *const registry_mail_writable[] = {
	REGISTRY_KEY_MIRROR"status/",
	REGISTRY_KEY_MIRROR"expire/",
	REGISTRY_KEY_BAG"status/",
	REGISTRY_KEY_BAG"count/",
	REGISTRY_KEY_BAG"backup/",
	REGISTRY_KEY_BAG"usage/",
};

/* a counter never leaves this range, so that an increment can't
   overflow in any backend */
#define REGISTRY_COUNTER_MAX (1LL << 62)

int registry_handshake_parse(const char *line, const char **name_r,
			     const char **error_r)
{
	const char *const *args = t_strsplit_tabescaped(line);
	unsigned int major, minor, value_type;

	if (str_array_length(args) < 5 || args[0][0] != 'H' ||
	    str_to_uint(args[0] + 1, &major) < 0 ||
	    str_to_uint(args[1], &minor) < 0 ||
	    str_to_uint(args[2], &value_type) < 0) {
		*error_r = "Not a dict protocol handshake";
		return -1;
	}
	if (major != DICT_CLIENT_PROTOCOL_MAJOR_VERSION) {
		*error_r = t_strdup_printf("Unsupported dict protocol "
					   "version %u", major);
		return -1;
	}
	if (value_type != DICT_DATA_TYPE_STRING) {
		*error_r = "Only string values are supported";
		return -1;
	}
	*name_r = args[4];
	return 0;
}

static int
registry_request_trans_id(const char *const *args, unsigned int count,
			  struct registry_request *req_r)
{
	if (str_array_length(args) < count)
		return -1;
	return str_to_uint(args[0], &req_r->trans_id);
}

int registry_request_parse(const char *line, struct registry_request *req_r,
			   const char **error_r)
{
	const char *const *args;
	char cmd = line[0];
	unsigned int count;
	int ret = 0;

	i_zero(req_r);
	if (cmd == '\0') {
		*error_r = "Empty request";
		return -1;
	}
	args = t_strsplit_tabescaped(line + 1);
	count = str_array_length(args);
	switch (cmd) {
	case DICT_PROTOCOL_CMD_LOOKUP:
		/* <key> [<username>] */
		req_r->type = REGISTRY_REQUEST_LOOKUP;
		if (count < 1)
			ret = -1;
		else
			req_r->key = args[0];
		break;
	case DICT_PROTOCOL_CMD_ITERATE:
		/* <flags> <max_rows> <path> [<username>] */
		req_r->type = REGISTRY_REQUEST_ITERATE;
		if (count < 3 || str_to_uint(args[0], &req_r->iter_flags) < 0 ||
		    str_to_uint64(args[1], &req_r->iter_max_rows) < 0)
			ret = -1;
		else
			req_r->key = args[2];
		break;
	case DICT_PROTOCOL_CMD_BEGIN:
		/* <id> [<username>] */
		req_r->type = REGISTRY_REQUEST_BEGIN;
		ret = registry_request_trans_id(args, 1, req_r);
		break;
	case DICT_PROTOCOL_CMD_COMMIT_ASYNC:
		req_r->async_commit = TRUE;
		/* fall through */
	case DICT_PROTOCOL_CMD_COMMIT:
		req_r->type = REGISTRY_REQUEST_COMMIT;
		ret = registry_request_trans_id(args, 1, req_r);
		break;
	case DICT_PROTOCOL_CMD_ROLLBACK:
		req_r->type = REGISTRY_REQUEST_ROLLBACK;
		ret = registry_request_trans_id(args, 1, req_r);
		break;
	case DICT_PROTOCOL_CMD_SET:
		/* <id> <key> <value> */
		req_r->type = REGISTRY_REQUEST_SET;
		if (count != 3 || registry_request_trans_id(args, 3, req_r) < 0)
			ret = -1;
		else {
			req_r->key = args[1];
			req_r->value = args[2];
		}
		break;
	case DICT_PROTOCOL_CMD_UNSET:
		/* <id> <key> */
		req_r->type = REGISTRY_REQUEST_UNSET;
		if (count != 2 || registry_request_trans_id(args, 2, req_r) < 0)
			ret = -1;
		else
			req_r->key = args[1];
		break;
	case DICT_PROTOCOL_CMD_ATOMIC_INC:
		/* <id> <key> <diff> */
		req_r->type = REGISTRY_REQUEST_ATOMIC_INC;
		if (count != 3 || registry_request_trans_id(args, 3, req_r) < 0 ||
		    str_to_llong(args[2], &req_r->diff) < 0 ||
		    req_r->diff >= REGISTRY_COUNTER_MAX ||
		    req_r->diff <= -REGISTRY_COUNTER_MAX)
			ret = -1;
		else
			req_r->key = args[1];
		break;
	case DICT_PROTOCOL_CMD_TIMESTAMP:
		/* <id> <secs> <nsecs> */
		req_r->type = REGISTRY_REQUEST_TIMESTAMP;
		ret = registry_request_trans_id(args, 3, req_r);
		break;
	default:
		*error_r = t_strdup_printf("Unknown command %c",
					   i_isprint(cmd) ? cmd : '?');
		return -1;
	}
	if (ret < 0) {
		*error_r = t_strdup_printf("Broken %c request", cmd);
		return -1;
	}
	return 0;
}

static bool registry_key_is_mail_writable(const char *key)
{
	unsigned int i;

	for (i = 0; i < N_ELEMENTS(registry_mail_writable); i++) {
		if (str_begins(key, registry_mail_writable[i]))
			return TRUE;
	}
	return FALSE;
}

static bool registry_key_is_mail_readable(const char *key)
{
	return (str_begins(key, REGISTRY_KEY_MIRROR) ||
		str_begins(key, REGISTRY_KEY_BAG)) &&
		!str_begins(key, REGISTRY_KEY_SECRETS);
}

const char *registry_access_check(enum registry_role role,
				  const struct registry_request *req)
{
	if (role == REGISTRY_ROLE_ADMIN)
		return NULL;

	switch (req->type) {
	case REGISTRY_REQUEST_LOOKUP:
		if (!registry_key_is_mail_readable(req->key))
			return "the mail uid may not read it";
		return NULL;
	case REGISTRY_REQUEST_ITERATE:
		/* an iteration of a parent of the login records would
		   return them too */
		if (!registry_key_is_mail_readable(req->key) ||
		    str_begins(REGISTRY_KEY_SECRETS, req->key))
			return "the mail uid may not read it";
		return NULL;
	case REGISTRY_REQUEST_SET:
	case REGISTRY_REQUEST_UNSET:
	case REGISTRY_REQUEST_ATOMIC_INC:
		if (!registry_key_is_mail_writable(req->key))
			return "the mail uid may not change it";
		return NULL;
	case REGISTRY_REQUEST_BEGIN:
	case REGISTRY_REQUEST_COMMIT:
	case REGISTRY_REQUEST_ROLLBACK:
	case REGISTRY_REQUEST_TIMESTAMP:
		return NULL;
	}
	i_unreached();
}

bool registry_counter_value_is_valid(const char *value, long long diff)
{
	long long n;

	if (str_to_llong(value, &n) < 0 ||
	    n >= REGISTRY_COUNTER_MAX || n <= -REGISTRY_COUNTER_MAX)
		return FALSE;
	/* both are below 2^62: no overflow */
	n += diff;
	return n < REGISTRY_COUNTER_MAX && n > -REGISTRY_COUNTER_MAX;
}
