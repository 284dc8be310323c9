/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* Mirror sources and the registry keys of a delivery address: an address
   or a domain, lowercase, without a recipient detail (mirror-address.h). */

#include "lib.h"
#include "str.h"
#include "str-sanitize.h"
#include "smtp-address.h"
#include "smtp-parser.h"
#include "mirror-address.h"

#include <ctype.h>

const char *mirror_type_to_str(enum mirror_type type)
{
	switch (type) {
	case MIRROR_TYPE_SINGLE:
		return "single";
	case MIRROR_TYPE_ALL:
		return "all";
	}
	i_unreached();
}

int mirror_type_from_str(const char *str, enum mirror_type *type_r)
{
	if (strcmp(str, "single") == 0)
		*type_r = MIRROR_TYPE_SINGLE;
	else if (strcmp(str, "all") == 0)
		*type_r = MIRROR_TYPE_ALL;
	else
		return -1;
	return 0;
}

bool mirror_domain_is_valid(const char *domain, const char **error_r)
{
	size_t len = strlen(domain), label_len = 0;
	unsigned int labels = 1;
	const char *p;

	if (len == 0) {
		*error_r = "empty domain";
		return FALSE;
	}
	if (len > MIRROR_DOMAIN_MAX_LEN) {
		*error_r = "domain is too long";
		return FALSE;
	}
	for (p = domain; *p != '\0'; p++) {
		unsigned char c = *p;

		if (c == '.') {
			if (label_len == 0 || p[-1] == '-') {
				*error_r = "domain has an empty or malformed label";
				return FALSE;
			}
			label_len = 0;
			labels++;
			continue;
		}
		if (!i_isalnum(c) && c != '-') {
			*error_r = "domain contains an invalid character";
			return FALSE;
		}
		if (c == '-' && label_len == 0) {
			*error_r = "domain label starts with '-'";
			return FALSE;
		}
		if (++label_len > 63) {
			*error_r = "domain label is longer than 63 characters";
			return FALSE;
		}
	}
	if (label_len == 0 || p[-1] == '-') {
		*error_r = "domain has an empty or malformed label";
		return FALSE;
	}
	if (labels < 2) {
		*error_r = "domain must have at least two labels";
		return FALSE;
	}
	return TRUE;
}

bool mirror_localpart_is_valid(const char *localpart, const char **error_r)
{
	size_t len = strlen(localpart);
	const char *p;

	if (len == 0) {
		*error_r = "empty local part";
		return FALSE;
	}
	if (len > MIRROR_LOCALPART_MAX_LEN) {
		*error_r = "local part is longer than 64 characters";
		return FALSE;
	}
	if (localpart[0] == '.' || localpart[len-1] == '.' ||
	    strstr(localpart, "..") != NULL) {
		*error_r = "local part has a misplaced '.'";
		return FALSE;
	}
	for (p = localpart; *p != '\0'; p++) {
		if (*p != '.' && !smtp_char_is_atext((unsigned char)*p)) {
			*error_r = "local part contains an invalid character "
				"(quoted local parts are not supported)";
			return FALSE;
		}
	}
	return TRUE;
}

int mirror_source_parse(const char *source, enum mirror_type *type_r,
			const char **normalized_r, const char **error_r)
{
	const char *at, *localpart, *domain, *error;

	if (*source == '\0') {
		*error_r = "Invalid source: empty";
		return -1;
	}
	if (strlen(source) > MIRROR_ADDRESS_MAX_LEN) {
		*error_r = "Invalid source: longer than 254 characters";
		return -1;
	}
	at = strrchr(source, '@');
	if (at == NULL) {
		domain = t_str_lcase(source);
		if (!mirror_domain_is_valid(domain, &error)) {
			*error_r = t_strdup_printf(
				"Invalid source domain '%s': %s",
				str_sanitize(source, 80), error);
			return -1;
		}
		*type_r = MIRROR_TYPE_ALL;
		*normalized_r = domain;
		return 0;
	}
	localpart = t_str_lcase(t_strdup_until(source, at));
	domain = t_str_lcase(at + 1);
	if (!mirror_localpart_is_valid(localpart, &error) ||
	    !mirror_domain_is_valid(domain, &error)) {
		*error_r = t_strdup_printf("Invalid source address '%s': %s",
					   str_sanitize(source, 80), error);
		return -1;
	}
	*type_r = MIRROR_TYPE_SINGLE;
	*normalized_r = t_strconcat(localpart, "@", domain, NULL);
	return 0;
}

bool mirror_address_keys(const char *localpart, const char *domain,
			 const char *delimiters,
			 const char **address_r, const char **domain_r)
{
	struct smtp_address addr;
	const char *user, *detail, *error;
	char delim;

	if (localpart == NULL || domain == NULL)
		return FALSE;
	if (delimiters != NULL && *localpart != '\0') {
		/* as LMTP finds the user a recipient is delivered to */
		smtp_address_init(&addr, localpart, NULL);
		smtp_address_detail_parse_temp(delimiters, &addr, &user,
					       &delim, &detail);
		/* a local part that starts with a delimiter has no user */
		if (*user != '\0')
			localpart = user;
	}
	localpart = t_str_lcase(localpart);
	domain = t_str_lcase(domain);
	if (!mirror_localpart_is_valid(localpart, &error) ||
	    !mirror_domain_is_valid(domain, &error))
		return FALSE;
	*address_r = t_strconcat(localpart, "@", domain, NULL);
	*domain_r = domain;
	return TRUE;
}
