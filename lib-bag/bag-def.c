/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* A bag's definition: its modes, its checks and its JSON in the
   registry. */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "str-sanitize.h"
#include "registry-json.h"
#include "mirror-def.h"
#include "bag-input.h"
#include "bag-def.h"

static const struct {
	enum bag_mode mode;
	const char *name;
} bag_mode_names[] = {
	{ BAG_MODE_ETRN, "etrn" },
	{ BAG_MODE_ATRN, "atrn" },
	{ BAG_MODE_BACKUP, "backup" },
	{ BAG_MODE_POP3, "pop3" },
};

static const char *const bag_tls_mode_names[] = {
	[BAG_TLS_DEFAULT] = "default",
	[BAG_TLS_MAY] = "may",
	[BAG_TLS_ENCRYPT] = "encrypt",
	[BAG_TLS_VERIFY] = "verify",
};

const char *bag_tls_mode_name(enum bag_tls_mode mode)
{
	i_assert(mode < N_ELEMENTS(bag_tls_mode_names));
	return bag_tls_mode_names[mode];
}

int bag_tls_mode_parse(const char *str, bool allow_default,
		       enum bag_tls_mode *mode_r, const char **error_r)
{
	unsigned int i;

	for (i = allow_default ? 0 : 1; i < N_ELEMENTS(bag_tls_mode_names);
	     i++) {
		if (strcasecmp(str, bag_tls_mode_names[i]) == 0) {
			*mode_r = i;
			return 0;
		}
	}
	*error_r = t_strdup_printf("Invalid TLS mode '%s' (may, encrypt or "
				   "verify%s)", str_sanitize(str, 20),
				   allow_default ? ", or default" : "");
	return -1;
}

const char *bag_modes_to_str(enum bag_mode modes)
{
	string_t *str = t_str_new(32);
	unsigned int i;

	for (i = 0; i < N_ELEMENTS(bag_mode_names); i++) {
		if ((modes & bag_mode_names[i].mode) == 0)
			continue;
		if (str_len(str) > 0)
			str_append_c(str, ',');
		str_append(str, bag_mode_names[i].name);
	}
	return str_c(str);
}

int bag_modes_parse(const char *str, enum bag_mode *modes_r,
		    const char **error_r)
{
	const char *const *names = t_strsplit_spaces(str, ", ");
	enum bag_mode modes = 0;
	unsigned int i;

	for (; *names != NULL; names++) {
		for (i = 0; i < N_ELEMENTS(bag_mode_names); i++) {
			if (strcasecmp(*names, bag_mode_names[i].name) == 0)
				break;
		}
		if (i == N_ELEMENTS(bag_mode_names)) {
			*error_r = t_strdup_printf(
				"Unknown bag mode '%s' (etrn, atrn, backup, "
				"pop3)",
				str_sanitize(*names, 20));
			return -1;
		}
		modes |= bag_mode_names[i].mode;
	}
	*modes_r = modes;
	return 0;
}

/* Whether the first bits bits of two IPv6 addresses are the same. */
static bool
bag_ip6_prefix_equals(const unsigned char *a, const unsigned char *b,
		      unsigned int bits)
{
	unsigned int bytes = bits / 8, rest = bits % 8;

	if (memcmp(a, b, bytes) != 0)
		return FALSE;
	return rest == 0 ||
		((a[bytes] ^ b[bytes]) & (0xff << (8 - rest)) & 0xff) == 0;
}

/* An IPv4 client (or an IPv4-mapped one, which net_is_in_network() makes
   IPv4 before it compares, so that it would match no IPv6 network) is in
   an IPv6 network when its mapped form ::ffff:a.b.c.d is. */
static bool
bag_ip4_in_ip6_network(const struct ip_addr *ip, const struct ip_addr *net_ip,
		       unsigned int bits)
{
	static const unsigned char prefix[12] = {
		0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff
	};
	unsigned char mapped[16];

	if (ip->family == AF_INET) {
		memcpy(mapped, prefix, sizeof(prefix));
		memcpy(mapped + 12, &ip->u.ip4, 4);
	} else if (ip->family == AF_INET6 &&
		   memcmp(&ip->u.ip6, prefix, sizeof(prefix)) == 0) {
		memcpy(mapped, &ip->u.ip6, 16);
	} else {
		return FALSE;
	}
	return bag_ip6_prefix_equals(mapped,
				     (const unsigned char *)&net_ip->u.ip6,
				     I_MIN(bits, 128));
}

bool bag_def_allows_ip(const struct bag_def *def, const struct ip_addr *ip)
{
	struct ip_addr net_ip;
	unsigned int bits;
	const char *net;

	array_foreach_elem(&def->etrn_nets, net) {
		if (net_parse_range(net, &net_ip, &bits) < 0)
			continue;
		if (net_is_in_network(ip, &net_ip, bits) ||
		    (net_ip.family == AF_INET6 &&
		     bag_ip4_in_ip6_network(ip, &net_ip, bits)))
			return TRUE;
	}
	return FALSE;
}

bool bag_def_is_valid(const struct bag_def *def, const char **error_r)
{
	const char *domain, *host, *net, *error;
	in_port_t port;

	if (bag_domain_parse(def->domain, &domain, &error) < 0 ||
	    strcmp(domain, def->domain) != 0) {
		*error_r = t_strdup_printf("invalid domain '%s'",
					   str_sanitize(def->domain, 80));
		return FALSE;
	}
	if (!mirror_storage_is_valid(def->user, &error)) {
		*error_r = t_strdup_printf("bag user: %s", error);
		return FALSE;
	}
	if (def->modes == 0 || (def->modes & ~BAG_MODES_ALL) != 0) {
		*error_r = "no valid mode";
		return FALSE;
	}
	if ((def->modes & BAG_MODE_POP3) != 0 && def->modes != BAG_MODE_POP3) {
		*error_r = "pop3 goes with no other mode";
		return FALSE;
	}
	if ((def->modes & (BAG_MODE_ETRN | BAG_MODE_BACKUP)) != 0 &&
	    (def->host == NULL ||
	     bag_host_parse(def->host, &host, &port, &error) < 0)) {
		*error_r = "etrn or backup without a valid host";
		return FALSE;
	}
	if (def->tls > BAG_TLS_VERIFY ||
	    (def->tls != BAG_TLS_DEFAULT &&
	     (def->modes & (BAG_MODE_ETRN | BAG_MODE_BACKUP)) == 0)) {
		*error_r = "a TLS mode without a host";
		return FALSE;
	}
	if ((def->modes & BAG_MODE_BACKUP) != 0 &&
	    (def->retry_period == 0 ||
	     def->retry_period > BAG_RETRY_PERIOD_MAX_SECS)) {
		*error_r = "backup without a valid retry period";
		return FALSE;
	}
	if ((def->modes & BAG_MODE_ETRN) != 0) {
		if (array_count(&def->etrn_nets) == 0 ||
		    array_count(&def->etrn_nets) > BAG_NETS_MAX) {
			*error_r = t_strdup_printf(
				"etrn needs 1..%u networks", BAG_NETS_MAX);
			return FALSE;
		}
		array_foreach_elem(&def->etrn_nets, net) {
			if (!bag_net_is_valid(net, error_r))
				return FALSE;
		}
	}
	if ((def->modes & BAG_MODE_ATRN) != 0 &&
	    (def->atrn_identity == NULL ||
	     !mirror_storage_is_valid(def->atrn_identity, &error))) {
		*error_r = "atrn without a valid identity";
		return FALSE;
	}
	if (def->created < 0) {
		*error_r = "negative creation time";
		return FALSE;
	}
	return TRUE;
}

const char *bag_def_encode(const struct bag_def *def)
{
	struct json_object *obj = json_object_new_object(), *arr;
	const char *net;

	json_object_object_add(obj, "domain",
			       json_object_new_string(def->domain));
	json_object_object_add(obj, "user", json_object_new_string(def->user));
	json_object_object_add(obj, "modes",
			       json_object_new_string(
					bag_modes_to_str(def->modes)));
	if ((def->modes & BAG_MODE_ETRN) != 0) {
		arr = json_object_new_array();
		array_foreach_elem(&def->etrn_nets, net)
			json_object_array_add(arr, json_object_new_string(net));
		json_object_object_add(obj, "etrn_nets", arr);
	}
	if ((def->modes & (BAG_MODE_ETRN | BAG_MODE_BACKUP)) != 0) {
		json_object_object_add(obj, "host",
				       json_object_new_string(def->host));
	}
	if ((def->modes & BAG_MODE_BACKUP) != 0) {
		json_object_object_add(obj, "retry_period",
				       json_object_new_int64(def->retry_period));
	}
	/* absent means the bag_tls setting: older definitions have none */
	if ((def->modes & (BAG_MODE_ETRN | BAG_MODE_BACKUP)) != 0 &&
	    def->tls != BAG_TLS_DEFAULT) {
		json_object_object_add(obj, "tls", json_object_new_string(
			bag_tls_mode_name(def->tls)));
	}
	if ((def->modes & BAG_MODE_ATRN) != 0) {
		json_object_object_add(obj, "atrn_identity",
			json_object_new_string(def->atrn_identity));
		json_object_object_add(obj, "auto_identity",
			json_object_new_boolean(def->auto_identity));
	}
	if ((def->modes & BAG_MODE_POP3) != 0) {
		json_object_object_add(obj, "pop3_per_account",
			json_object_new_boolean(def->pop3_per_account));
	}
	json_object_object_add(obj, "recipient_list",
			       json_object_new_boolean(def->recipient_list));
	json_object_object_add(obj, "created",
			       json_object_new_int64(def->created));
	return registry_json_finish(obj);
}

static int
bag_def_from_json(struct json_object *obj, pool_t pool,
		  struct bag_def *def_r, const char **error_r)
{
	struct json_object *arr, *elem;
	const char *modes, *str, *error;
	size_t i, count;
	int64_t num;

	if (registry_json_get_str(obj, "domain", &def_r->domain, error_r) < 0 ||
	    registry_json_get_str(obj, "user", &def_r->user, error_r) < 0 ||
	    registry_json_get_str(obj, "modes", &modes, error_r) < 0)
		return -1;
	if (bag_modes_parse(modes, &def_r->modes, &error) < 0) {
		*error_r = t_strdup_printf("'modes': %s", error);
		return -1;
	}
	p_array_init(&def_r->etrn_nets, pool, 4);
	if ((def_r->modes & (BAG_MODE_ETRN | BAG_MODE_BACKUP)) != 0 &&
	    registry_json_get_str(obj, "host", &def_r->host, error_r) < 0)
		return -1;
	if ((def_r->modes & BAG_MODE_BACKUP) != 0) {
		if (registry_json_get_int(obj, "retry_period", 1,
					BAG_RETRY_PERIOD_MAX_SECS, &num,
					error_r) < 0)
			return -1;
		def_r->retry_period = (unsigned int)num;
	}
	if ((def_r->modes & (BAG_MODE_ETRN | BAG_MODE_BACKUP)) != 0 &&
	    json_object_object_get_ex(obj, "tls", &elem)) {
		if (!json_object_is_type(elem, json_type_string) ||
		    bag_tls_mode_parse(json_object_get_string(elem), FALSE,
				       &def_r->tls, &error) < 0) {
			*error_r = "'tls' is not may, encrypt or verify";
			return -1;
		}
	}
	if ((def_r->modes & BAG_MODE_ETRN) != 0) {
		if (!json_object_object_get_ex(obj, "etrn_nets", &arr) ||
		    !json_object_is_type(arr, json_type_array)) {
			*error_r = "'etrn_nets' is missing or not an array";
			return -1;
		}
		count = json_object_array_length(arr);
		for (i = 0; i < count && i <= BAG_NETS_MAX; i++) {
			elem = json_object_array_get_idx(arr, i);
			if (!json_object_is_type(elem, json_type_string)) {
				*error_r = "'etrn_nets' has a non-string";
				return -1;
			}
			str = p_strdup(pool, json_object_get_string(elem));
			array_push_back(&def_r->etrn_nets, &str);
		}
	}
	if ((def_r->modes & BAG_MODE_ATRN) != 0 &&
	    (registry_json_get_str(obj, "atrn_identity", &def_r->atrn_identity,
				 error_r) < 0 ||
	     registry_json_get_bool(obj, "auto_identity", &def_r->auto_identity,
				    error_r) < 0))
		return -1;
	/* read only for the mode that writes it, as auto_identity: doveadm
	   bag recipient acts on it without checking the mode */
	if ((def_r->modes & BAG_MODE_POP3) != 0 &&
	    registry_json_get_bool(obj, "pop3_per_account",
				   &def_r->pop3_per_account, error_r) < 0)
		return -1;
	if (registry_json_get_bool(obj, "recipient_list",
				   &def_r->recipient_list, error_r) < 0)
		return -1;
	if (registry_json_get_int(obj, "created", 0, INT64_MAX, &num,
				error_r) < 0)
		return -1;
	def_r->created = (time_t)num;
	if (!bag_def_is_valid(def_r, &error)) {
		*error_r = error;
		return -1;
	}
	def_r->domain = p_strdup(pool, def_r->domain);
	def_r->user = p_strdup(pool, def_r->user);
	def_r->host = p_strdup(pool, def_r->host);
	def_r->atrn_identity = p_strdup(pool, def_r->atrn_identity);
	return 0;
}

int bag_def_decode(const char *json, pool_t pool, struct bag_def *def_r,
		   const char **error_r)
{
	struct json_object *obj;
	int ret;

	i_zero(def_r);
	if (registry_json_parse(json, json_type_object, &obj, error_r) < 0)
		return -1;
	ret = bag_def_from_json(obj, pool, def_r, error_r);
	json_object_put(obj);
	return ret;
}
