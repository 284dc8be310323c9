/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* What administrators and clients give for a bag: domains, hosts,
   networks, recipients, periods. Each parser bounds and checks its input
   and names the problem in its error. */

#include "lib.h"
#include "str-sanitize.h"
#include "strnum.h"
#include "settings-parser.h"
#include "mirror-address.h"
#include "bag-def.h"
#include "bag-input.h"

#include <ctype.h>

int bag_domain_parse(const char *str, const char **domain_r,
		     const char **error_r)
{
	const char *domain = t_str_lcase(str), *error;

	if (!mirror_domain_is_valid(domain, &error)) {
		*error_r = t_strdup_printf("Invalid domain '%s': %s",
					   str_sanitize(str, 80), error);
		return -1;
	}
	*domain_r = domain;
	return 0;
}

static bool bag_hostname_is_valid(const char *host)
{
	const char *p;

	if (*host == '\0' || strlen(host) > BAG_HOST_MAX_LEN)
		return FALSE;
	for (p = host; *p != '\0'; p++) {
		if (!i_isalnum(*p) && *p != '.' && *p != '-' && *p != '_')
			return FALSE;
	}
	return TRUE;
}

int bag_host_parse(const char *str, const char **host_r, in_port_t *port_r,
		   const char **error_r)
{
	struct ip_addr ip;
	const char *host, *p;
	in_port_t port = BAG_DEFAULT_PORT;

	if (str[0] == '[') {
		/* [ip6] or [ip6]:port */
		p = strchr(str, ']');
		if (p == NULL)
			goto invalid;
		host = t_strdup_until(str + 1, p);
		if (net_addr2ip(host, &ip) < 0 || ip.family != AF_INET6)
			goto invalid;
		p++;
	} else {
		p = strchr(str, ':');
		host = p == NULL ? str : t_strdup_until(str, p);
		if (!bag_hostname_is_valid(host))
			goto invalid;
		if (p == NULL)
			p = "";
	}
	if (*p == ':') {
		if (net_str2port(p + 1, &port) < 0)
			goto invalid;
	} else if (*p != '\0') {
		goto invalid;
	}
	*host_r = t_str_lcase(host);
	*port_r = port;
	return 0;
invalid:
	*error_r = t_strdup_printf("Invalid host '%s' (HOST, HOST:PORT or "
				   "[IPv6]:PORT)", str_sanitize(str, 80));
	return -1;
}

bool bag_net_is_valid(const char *str, const char **error_r)
{
	struct ip_addr ip;
	unsigned int bits;

	if (net_parse_range(str, &ip, &bits) < 0) {
		*error_r = t_strdup_printf("Invalid network '%s' "
					   "(ADDRESS or ADDRESS/BITS)",
					   str_sanitize(str, 60));
		return FALSE;
	}
	return TRUE;
}

int bag_rcpt_parse(const char *str, const char *domain, const char **addr_r,
		   const char **error_r)
{
	const char *at = strrchr(str, '@'), *local, *error;

	if (at == NULL || strcasecmp(at + 1, domain) != 0) {
		*error_r = t_strdup_printf("Invalid recipient '%s': not an "
					   "address of %s",
					   str_sanitize(str, 80), domain);
		return -1;
	}
	local = t_str_lcase(t_strdup_until(str, at));
	if (!mirror_localpart_is_valid(local, &error)) {
		*error_r = t_strdup_printf("Invalid recipient '%s': %s",
					   str_sanitize(str, 80), error);
		return -1;
	}
	*addr_r = t_strconcat(local, "@", domain, NULL);
	return 0;
}

int bag_retry_period_parse(const char *str, unsigned int *secs_r,
			   const char **error_r)
{
	unsigned int secs;
	const char *error;
	int ret;

	/* a plain number is seconds, as in the manual; Dovecot's time
	   settings want a unit */
	if (str_is_numeric(str, '\0'))
		ret = str_to_uint(str, &secs);
	else
		ret = settings_get_time(str, &secs, &error);
	if (ret < 0 || secs == 0 || secs > BAG_RETRY_PERIOD_MAX_SECS) {
		*error_r = t_strdup_printf(
			"Invalid retry period '%s' (1 second to 365 days, "
			"e.g. 5d)", str_sanitize(str, 40));
		return -1;
	}
	*secs_r = secs;
	return 0;
}
