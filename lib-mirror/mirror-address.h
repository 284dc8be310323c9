#ifndef MIRROR_ADDRESS_H
#define MIRROR_ADDRESS_H

/* Mirror sources are either one address ("single" mirror) or a whole
   domain ("all" mirror). Both are kept in a normalized form: lowercase,
   without a recipient detail, so that matching is a plain string compare. */

#define MIRROR_LOCALPART_MAX_LEN 64
#define MIRROR_DOMAIN_MAX_LEN 253
#define MIRROR_ADDRESS_MAX_LEN 254

enum mirror_type {
	MIRROR_TYPE_SINGLE = 1,
	MIRROR_TYPE_ALL,
};

const char *mirror_type_to_str(enum mirror_type type);
int mirror_type_from_str(const char *str, enum mirror_type *type_r);

/* Returns TRUE if domain is a valid DNS name with at least two labels. */
bool mirror_domain_is_valid(const char *domain, const char **error_r);
/* Returns TRUE if localpart is a valid unquoted (dot-atom) local part. */
bool mirror_localpart_is_valid(const char *localpart, const char **error_r);

/* Parse a mirror source as an administrator gives it: "user@domain" or
   "domain". Returns 0 with its type and normalized form, -1 with an error
   naming the problem. */
int mirror_source_parse(const char *source, enum mirror_type *type_r,
			const char **normalized_r, const char **error_r);

/* Build the registry keys for a delivery address: the address without its
   detail ("user+detail@Example.COM" -> "user@example.com" when '+' is one
   of the delimiters) and its domain. Returns FALSE if the address cannot
   be the source of any mirror (e.g. it is not valid). */
bool mirror_address_keys(const char *localpart, const char *domain,
			 const char *delimiters,
			 const char **address_r, const char **domain_r);

#endif
