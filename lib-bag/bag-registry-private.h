#ifndef BAG_REGISTRY_PRIVATE_H
#define BAG_REGISTRY_PRIVATE_H

/* Mail Bagging's keys in the registry (laid out in bag-registry.h) and
   the JSON of its values, for bag-registry.c, which keeps them, and
   bag-registry-check.c, which checks them. */

#include "registry-dict.h"
#include "bag-registry.h"

#define BAG_KEY_DOMAIN REGISTRY_KEY_BAG"domain/"
#define BAG_KEY_DOMAINS REGISTRY_KEY_BAG"domains"
#define BAG_KEY_RCPT REGISTRY_KEY_BAG"rcpt/"
#define BAG_KEY_RCPTS REGISTRY_KEY_BAG"rcpts/"
#define BAG_KEY_IDENTITY REGISTRY_KEY_BAG"identity/"
#define BAG_KEY_STATUS REGISTRY_KEY_BAG"status/"
#define BAG_KEY_COUNT REGISTRY_KEY_BAG"count/"
#define BAG_KEY_USAGE REGISTRY_KEY_BAG"usage/"
#define BAG_KEY_BACKUP REGISTRY_KEY_BAG"backup/"
#define BAG_KEY_BOX REGISTRY_KEY_BAG"box/"
#define BAG_KEY_BOXES REGISTRY_KEY_BAG"boxes/"

const char *bag_domain_key(const char *domain);
/* rcpt/<domain>/ and box/<domain>/: the keys of each address follow */
const char *bag_rcpt_prefix(const char *domain);
const char *bag_box_prefix(const char *domain);
const char *bag_box_key(const char *domain, const char *addr);
const char *bag_rcpts_key(const char *domain);
const char *bag_boxes_key(const char *domain);
const char *bag_identity_key(const char *identity);
const char *bag_count_key(const char *domain);
const char *bag_status_key(const char *domain);
const char *bag_backup_key(const char *domain);

/* A JSON array of strings, each checked (and maybe normalized) by parse:
   the bag list and an identity's domains with bag_domain_parse_any(), a
   recipient list and a bag's boxes with bag_rcpt_parse(). what names a
   string in the error. 0, or -1 with error_r. */
int bag_strings_decode(const char *value,
		       int (*parse)(const char *str, const char *domain,
				    const char **value_r, const char **error_r),
		       const char *domain, const char *what, pool_t pool,
		       ARRAY_TYPE(const_string) *strings, const char **error_r);
int bag_domain_parse_any(const char *str, const char *domain,
			 const char **value_r, const char **error_r);
int bag_status_decode(const char *value, pool_t pool,
		      struct bag_status *status_r, const char **error_r);
int bag_backup_decode(const char *value, struct bag_backup_state *state_r,
		      const char **error_r);

/* The userdb records of a bag user and of a POP3 box user. */
struct json_object *bag_user_userdb_fields(const struct bag_def *def);
struct json_object *bag_box_userdb_fields(const char *domain);

#endif
