/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* Fuzz target: the parsers of what administrators give doveadm and the
   settings, and of the addresses that delivery makes registry keys of.

   Input: one selector byte, then the argument (cut at a NUL, as a command
   line would be):
     '0' bag_domain_parse()    '5' mirror_levels_parse()
     '1' bag_host_parse()      '6' registry_key_escape() and _unescape()
     '2' bag_net_is_valid()    '7' bag_rcpt_parse() (domain example.org)
     '3' mirror_source_parse() '8' bag_modes_parse()
     '4' mirror_days_parse()   '9' mirror_address_keys() (LOCAL@DOMAIN)
     ':' bag_retry_period_parse()
   Any other selector picks one by its value.

   Asserts: an error is safe to log (no control characters); what parses
   is normalized (lowercase where it should be) and parses again to
   itself; written back the way the suite writes it (HOST:PORT, NAME:LIMIT,
   the modes' names, a key escaped), it reads back the same. */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "net.h"
#include "fuzz-common.h"
#include "mirror-address.h"
#include "registry.h"
#include "mirror-def.h"
#include "mirror-account.h"
#include "bag-def.h"
#include "bag-input.h"

enum fuzz_args_kind {
	FUZZ_ARGS_DOMAIN = 0,
	FUZZ_ARGS_HOST,
	FUZZ_ARGS_NET,
	FUZZ_ARGS_SOURCE,
	FUZZ_ARGS_DAYS,
	FUZZ_ARGS_LEVELS,
	FUZZ_ARGS_KEY,
	FUZZ_ARGS_RCPT,
	FUZZ_ARGS_MODES,
	FUZZ_ARGS_ADDRESS_KEYS,
	FUZZ_ARGS_PERIOD,

	FUZZ_ARGS_KIND_COUNT
};

#define FUZZ_RCPT_DOMAIN "example.org"
#define FUZZ_DETAIL_DELIMITERS "+-"

static void fuzz_domain(const char *str)
{
	const char *domain, *domain2, *error;

	if (bag_domain_parse(str, &domain, &error) < 0) {
		fuzz_assert_loggable(error);
		return;
	}
	i_assert(strcmp(domain, t_str_lcase(str)) == 0);
	i_assert(mirror_domain_is_valid(domain, &error));
	i_assert(bag_domain_parse(domain, &domain2, &error) == 0);
	i_assert(strcmp(domain, domain2) == 0);
}

static void fuzz_host(const char *str)
{
	const char *host, *host2, *written, *error;
	in_port_t port, port2;

	if (bag_host_parse(str, &host, &port, &error) < 0) {
		fuzz_assert_loggable(error);
		return;
	}
	i_assert(port != 0);
	i_assert(strcmp(host, t_str_lcase(host)) == 0);
	if (strchr(str, ':') == NULL)
		i_assert(port == BAG_DEFAULT_PORT);
	/* as "doveadm bag" shows it, and bag_smtp_client_connect()
	   names it */
	written = strchr(host, ':') != NULL ?
		t_strdup_printf("[%s]:%u", host, port) :
		t_strdup_printf("%s:%u", host, port);
	if (bag_host_parse(written, &host2, &port2, &error) < 0)
		i_panic("host %s doesn't parse again: %s", written, error);
	i_assert(strcmp(host, host2) == 0);
	i_assert(port == port2);
}

static void fuzz_net(const char *str)
{
	ARRAY_TYPE(const_string) nets;
	struct bag_def def;
	struct ip_addr ip;
	unsigned int bits;
	const char *error;

	if (!bag_net_is_valid(str, &error)) {
		fuzz_assert_loggable(error);
		return;
	}
	i_assert(net_parse_range(str, &ip, &bits) == 0);
	/* the network's own address is in it (a mapped IPv4 one too:
	   crashes/args/net-v4-mapped-never-matches) */
	i_zero(&def);
	t_array_init(&nets, 1);
	array_push_back(&nets, &str);
	def.etrn_nets = nets;
	i_assert(bag_def_allows_ip(&def, &ip));
}

static void fuzz_source(const char *str)
{
	const char *normalized, *normalized2, *error;
	enum mirror_type type, type2;
	string_t *unescaped;

	if (mirror_source_parse(str, &type, &normalized, &error) < 0) {
		fuzz_assert_loggable(error);
		return;
	}
	i_assert(strcmp(normalized, t_str_lcase(str)) == 0);
	i_assert((type == MIRROR_TYPE_SINGLE) == (strchr(str, '@') != NULL));
	i_assert(strlen(normalized) <= MIRROR_ADDRESS_MAX_LEN);
	i_assert(mirror_source_parse(normalized, &type2, &normalized2,
				     &error) == 0);
	i_assert(type == type2);
	i_assert(strcmp(normalized, normalized2) == 0);
	/* a source is a registry key */
	unescaped = t_str_new(64);
	i_assert(registry_key_unescape(registry_key_escape(normalized),
				     unescaped) == 0);
	i_assert(strcmp(str_c(unescaped), normalized) == 0);
}

static void fuzz_days(const char *str)
{
	unsigned int days, days2;
	const char *error;

	if (mirror_days_parse(str, &days, &error) < 0) {
		fuzz_assert_loggable(error);
		return;
	}
	i_assert(days >= MIRROR_DAYS_MIN && days <= MIRROR_DAYS_MAX);
	i_assert(mirror_days_parse(dec2str(days), &days2, &error) == 0);
	i_assert(days == days2);
}

static void fuzz_levels(const char *str)
{
	ARRAY_TYPE(mirror_level) levels, levels2;
	const struct mirror_level *level, *level2;
	string_t *written;
	const char *error;
	unsigned int i, count;

	t_array_init(&levels, 4);
	if (mirror_levels_parse(str, pool_datastack_create(), &levels,
				&error) < 0) {
		fuzz_assert_loggable(error);
		return;
	}
	written = t_str_new(128);
	array_foreach(&levels, level) {
		i_assert(mirror_name_is_valid(level->name));
		i_assert(mirror_level_find(&levels, level->name) == level);
		if (str_len(written) > 0)
			str_append_c(written, ' ');
		str_append(written, level->name);
		if (level->limit == UINT_MAX)
			str_append(written, ":unlimited");
		else
			str_printfa(written, ":%u", level->limit);
	}
	t_array_init(&levels2, 4);
	if (mirror_levels_parse(str_c(written), pool_datastack_create(),
				&levels2, &error) < 0)
		i_panic("levels '%s' don't parse again: %s",
			str_c(written), error);
	count = array_count(&levels);
	i_assert(array_count(&levels2) == count);
	for (i = 0; i < count; i++) {
		level = array_idx(&levels, i);
		level2 = array_idx(&levels2, i);
		i_assert(strcmp(level->name, level2->name) == 0);
		i_assert(level->limit == level2->limit);
	}
}

static void fuzz_key(const char *str)
{
	const char *escaped = registry_key_escape(str), *p;
	string_t *unescaped = t_str_new(128);

	/* only what a dict key can safely have */
	for (p = escaped; *p != '\0'; p++) {
		i_assert((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
			 strchr(".@_+-%", *p) != NULL);
	}
	i_assert(registry_key_unescape(escaped, unescaped) == 0);
	i_assert(strcmp(str_c(unescaped), str) == 0);

	/* and the input as a stored key */
	str_truncate(unescaped, 0);
	if (registry_key_unescape(str, unescaped) == 0) {
		i_assert(str_len(unescaped) <= strlen(str));
		i_assert(strlen(str_c(unescaped)) == str_len(unescaped));
	}
}

static void fuzz_rcpt(const char *str)
{
	const char *addr, *addr2, *error;

	if (bag_rcpt_parse(str, FUZZ_RCPT_DOMAIN, &addr, &error) < 0) {
		fuzz_assert_loggable(error);
		return;
	}
	i_assert(fuzz_str_ends_with(addr, "@"FUZZ_RCPT_DOMAIN));
	i_assert(strcmp(addr, t_str_lcase(addr)) == 0);
	i_assert(bag_rcpt_parse(addr, FUZZ_RCPT_DOMAIN, &addr2, &error) == 0);
	i_assert(strcmp(addr, addr2) == 0);
}

static void fuzz_modes(const char *str)
{
	enum bag_mode modes, modes2;
	const char *error;

	if (bag_modes_parse(str, &modes, &error) < 0) {
		fuzz_assert_loggable(error);
		return;
	}
	i_assert((modes & ~BAG_MODES_ALL) == 0);
	i_assert(bag_modes_parse(bag_modes_to_str(modes), &modes2,
				 &error) == 0);
	i_assert(modes == modes2);
}

static void fuzz_address_keys(const char *str)
{
	const char *at = strrchr(str, '@'), *localpart, *domain;
	const char *address, *domain_key, *normalized, *error;
	enum mirror_type type;

	localpart = at == NULL ? str : t_strdup_until(str, at);
	domain = at == NULL ? NULL : at + 1;
	if (!mirror_address_keys(localpart, domain, FUZZ_DETAIL_DELIMITERS,
				 &address, &domain_key))
		return;
	i_assert(strcmp(domain_key, t_str_lcase(domain)) == 0);
	i_assert(fuzz_str_ends_with(address,
				    t_strconcat("@", domain_key, NULL)));
	/* the keys are what an administrator's source is normalized to */
	if (mirror_source_parse(address, &type, &normalized, &error) < 0)
		i_panic("address key %s is no source: %s", address, error);
	i_assert(type == MIRROR_TYPE_SINGLE);
	i_assert(strcmp(normalized, address) == 0);
	i_assert(mirror_source_parse(domain_key, &type, &normalized,
				     &error) == 0);
	i_assert(type == MIRROR_TYPE_ALL);
	i_assert(strcmp(normalized, domain_key) == 0);
}

static void fuzz_period(const char *str)
{
	unsigned int secs, secs2;
	const char *error;

	if (bag_retry_period_parse(str, &secs, &error) < 0) {
		fuzz_assert_loggable(error);
		return;
	}
	i_assert(secs > 0 && secs <= BAG_RETRY_PERIOD_MAX_SECS);
	/* as doveadm bag show prints it */
	i_assert(bag_retry_period_parse(t_strdup_printf("%u s", secs),
					&secs2, &error) == 0);
	i_assert(secs == secs2);
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
	if (size == 0)
		return 0;
	T_BEGIN {
		const char *arg = t_strndup(data + 1, size - 1);

		switch (fuzz_select(data[0], FUZZ_ARGS_KIND_COUNT)) {
		case FUZZ_ARGS_DOMAIN:
			fuzz_domain(arg);
			break;
		case FUZZ_ARGS_HOST:
			fuzz_host(arg);
			break;
		case FUZZ_ARGS_NET:
			fuzz_net(arg);
			break;
		case FUZZ_ARGS_SOURCE:
			fuzz_source(arg);
			break;
		case FUZZ_ARGS_DAYS:
			fuzz_days(arg);
			break;
		case FUZZ_ARGS_LEVELS:
			fuzz_levels(arg);
			break;
		case FUZZ_ARGS_KEY:
			fuzz_key(arg);
			break;
		case FUZZ_ARGS_RCPT:
			fuzz_rcpt(arg);
			break;
		case FUZZ_ARGS_MODES:
			fuzz_modes(arg);
			break;
		case FUZZ_ARGS_ADDRESS_KEYS:
			fuzz_address_keys(arg);
			break;
		case FUZZ_ARGS_PERIOD:
			fuzz_period(arg);
			break;
		}
	} T_END;
	return 0;
}
