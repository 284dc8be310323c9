/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* The bags in the registry: definitions, recipient lists, ATRN identities,
   POP3 boxes, flush status, counters, usage and backup schedules. */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "strnum.h"
#include "str-sanitize.h"
#include "ioloop.h"
#include "mirror-address.h"
#include "registry-dict.h"
#include "registry-json.h"
#include "registry-user.h"
#include "bag-input.h"
#include "bag-registry.h"
#include "bag-registry-private.h"

#include <ctype.h>

const char *bag_domain_key(const char *domain)
{
	return t_strconcat(BAG_KEY_DOMAIN, registry_key_escape(domain), NULL);
}

const char *bag_box_prefix(const char *domain)
{
	return t_strconcat(BAG_KEY_BOX, registry_key_escape(domain), "/",
			   NULL);
}

const char *bag_box_key(const char *domain, const char *addr)
{
	return t_strconcat(bag_box_prefix(domain), registry_key_escape(addr),
			   NULL);
}

const char *bag_count_key(const char *domain)
{
	return t_strconcat(BAG_KEY_COUNT, registry_key_escape(domain), NULL);
}

const char *bag_status_key(const char *domain)
{
	return t_strconcat(BAG_KEY_STATUS, registry_key_escape(domain), NULL);
}

const char *bag_backup_key(const char *domain)
{
	return t_strconcat(BAG_KEY_BACKUP, registry_key_escape(domain), NULL);
}

const char *bag_identity_key(const char *identity)
{
	return t_strconcat(BAG_KEY_IDENTITY,
			   registry_key_escape(t_str_lcase(identity)), NULL);
}

const char *bag_rcpts_key(const char *domain)
{
	return t_strconcat(BAG_KEY_RCPTS, registry_key_escape(domain), NULL);
}

const char *bag_boxes_key(const char *domain)
{
	return t_strconcat(BAG_KEY_BOXES, registry_key_escape(domain), NULL);
}

const char *bag_rcpt_prefix(const char *domain)
{
	return t_strconcat(BAG_KEY_RCPT, registry_key_escape(domain), "/", NULL);
}

int bag_registry_get(struct registry *reg, const char *domain,
		     pool_t pool, struct bag_def *def_r, const char **error_r)
{
	const char *value, *error;
	int ret;

	ret = registry_get(reg, bag_domain_key(domain), &value,
			   error_r);
	if (ret <= 0)
		return ret;
	if (bag_def_decode(value, pool, def_r, &error) < 0) {
		*error_r = t_strdup_printf(
			"Broken registry data for bag %s: %s",
			str_sanitize(domain, 80), error);
		return -1;
	}
	if (strcmp(def_r->domain, domain) != 0) {
		*error_r = t_strdup_printf(
			"Broken registry data for bag %s: it names %s",
			str_sanitize(domain, 80),
			str_sanitize(def_r->domain, 80));
		return -1;
	}
	return 1;
}

int bag_strings_decode(const char *value,
		       int (*parse)(const char *str, const char *domain,
				    const char **value_r, const char **error_r),
		       const char *domain, const char *what, pool_t pool,
		       ARRAY_TYPE(const_string) *strings, const char **error_r)
{
	struct json_object *arr, *elem;
	const char *str, *error;
	size_t i, count;

	if (registry_json_parse(value, json_type_array, &arr, error_r) < 0)
		return -1;
	count = json_object_array_length(arr);
	for (i = 0; i < count; i++) {
		elem = json_object_array_get_idx(arr, i);
		if (!json_object_is_type(elem, json_type_string) ||
		    parse(json_object_get_string(elem), domain, &str,
			  &error) < 0) {
			*error_r = t_strdup_printf("invalid %s", what);
			json_object_put(arr);
			return -1;
		}
		str = p_strdup(pool, str);
		array_push_back(strings, &str);
	}
	json_object_put(arr);
	return 0;
}

/* A JSON array of strings, each checked by parse (which may normalize
   it): 1 found, 0 the key doesn't exist, -1 error. `what` names a string
   in the error. */
static int
bag_strings_get(struct registry *reg, const char *key,
		int (*parse)(const char *str, const char *domain,
			     const char **value_r, const char **error_r),
		const char *domain, const char *what, pool_t pool,
		ARRAY_TYPE(const_string) *strings, const char **error_r)
{
	const char *value, *error;
	int ret;

	if ((ret = registry_get(reg, key, &value, error_r)) <= 0)
		return ret;
	if (bag_strings_decode(value, parse, domain, what, pool, strings,
			       &error) < 0) {
		*error_r = t_strdup_printf("Broken registry data in %s: %s",
					   key, error);
		return -1;
	}
	return 1;
}

static void
bag_strings_set(struct dict_transaction_context *trans, const char *key,
		const ARRAY_TYPE(const_string) *strings)
{
	struct json_object *arr;
	const char *str;

	arr = json_object_new_array();
	array_foreach_elem(strings, str)
		json_object_array_add(arr, json_object_new_string(str));
	dict_set(trans, key, registry_json_finish(arr));
}

int bag_domain_parse_any(const char *str, const char *domain ATTR_UNUSED,
		     const char **value_r, const char **error_r)
{
	return bag_domain_parse(str, value_r, error_r);
}

/* A JSON array of domains, e.g. the bag list or an identity's domains */
static int
bag_domains_get(struct registry *reg, const char *key, pool_t pool,
		ARRAY_TYPE(const_string) *domains, const char **error_r)
{
	return bag_strings_get(reg, key, bag_domain_parse_any, NULL,
			       "domain", pool, domains, error_r);
}

/* An empty list is no key */
static void
bag_domains_set(struct dict_transaction_context *trans, const char *key,
		const ARRAY_TYPE(const_string) *domains)
{
	if (array_count(domains) == 0)
		dict_unset(trans, key);
	else
		bag_strings_set(trans, key, domains);
}

static int bag_str_cmp(const char *const *s1, const char *const *s2)
{
	return strcmp(*s1, *s2);
}

/* The array under key with domain added (or, add=FALSE, removed), read
   before the transaction that writes it with bag_domains_set(). The list
   of every bagged domain must exist. */
static int
bag_domains_changed(struct registry *reg, const char *key,
		    const char *domain, bool add,
		    ARRAY_TYPE(const_string) *kept, const char **error_r)
{
	ARRAY_TYPE(const_string) domains;
	const char *d;
	int ret;

	t_array_init(&domains, 16);
	ret = bag_domains_get(reg, key, pool_datastack_create(), &domains,
			      error_r);
	if (ret < 0)
		return -1;
	if (ret == 0 && strcmp(key, BAG_KEY_DOMAINS) == 0) {
		/* set up by doveadm mirror init and never removed */
		*error_r = "Broken registry: "BAG_KEY_DOMAINS" is missing "
			"(doveadm mirror check --repair rebuilds it)";
		return -1;
	}
	array_foreach_elem(&domains, d) {
		if (strcmp(d, domain) != 0)
			array_push_back(kept, &d);
	}
	if (add)
		array_push_back(kept, &domain);
	array_sort(kept, bag_str_cmp);
	return 0;
}

static int bag_def_cmp(const struct bag_def *d1, const struct bag_def *d2)
{
	return strcmp(d1->domain, d2->domain);
}

/* The list of bagged domains, which doveadm mirror init sets up and
   nothing removes: missing, it was lost. */
static int
bag_domain_list_get(struct registry *reg, ARRAY_TYPE(const_string) *domains,
		    const char **error_r)
{
	int ret;

	ret = bag_domains_get(reg, BAG_KEY_DOMAINS, pool_datastack_create(),
			      domains, error_r);
	if (ret == 0) {
		*error_r = "Broken registry: "BAG_KEY_DOMAINS" is missing "
			"(doveadm mirror check --repair rebuilds it)";
		return -1;
	}
	return ret < 0 ? -1 : 0;
}

int bag_registry_list(struct registry *reg, pool_t pool,
		      ARRAY_TYPE(bag_def) *defs, const char **error_r)
{
	ARRAY_TYPE(const_string) domains;
	struct bag_def def;
	const char *domain;
	int ret;

	t_array_init(&domains, 16);
	if (bag_domain_list_get(reg, &domains, error_r) < 0)
		return -1;
	array_foreach_elem(&domains, domain) {
		ret = bag_registry_get(reg, domain, pool, &def, error_r);
		if (ret < 0)
			return -1;
		/* a stale list entry is not a bag */
		if (ret > 0)
			array_push_back(defs, &def);
	}
	array_sort(defs, bag_def_cmp);
	return 0;
}

struct json_object *bag_user_userdb_fields(const struct bag_def *def)
{
	struct json_object *userdb;

	/* the bag user reads its bag over IMAP, read-only (the mirror
	   plugin keeps a session with mirror_readonly so). A POP3 box is
	   the customer's to empty: bag_pop3. */
	if ((def->modes & BAG_MODE_POP3) != 0)
		return bag_box_userdb_fields(def->domain);
	userdb = json_object_new_object();
	json_object_object_add(userdb, "bag_domain",
			       json_object_new_string(def->domain));
	json_object_object_add(userdb, "mirror_readonly",
			       json_object_new_string("yes"));
	return userdb;
}

struct json_object *bag_box_userdb_fields(const char *domain)
{
	struct json_object *userdb = json_object_new_object();

	json_object_object_add(userdb, "bag_pop3",
			       json_object_new_string(domain));
	return userdb;
}

int bag_registry_add(struct registry *reg, struct bag_def *def,
		     const char *user_password_hash,
		     const char *identity_password_hash,
		     const char **error_r)
{
	struct dict_transaction_context *trans;
	ARRAY_TYPE(const_string) domains, identity_domains;
	struct bag_def old;
	const char *error;
	int ret;

	ret = bag_registry_get(reg, def->domain, pool_datastack_create(),
			       &old, error_r);
	if (ret != 0) {
		if (ret > 0) {
			*error_r = t_strdup_printf("%s is bagged already",
						   def->domain);
		}
		return ret > 0 ? 0 : -1;
	}
	/* never take over an existing login record */
	ret = registry_user_exists(reg, def->user, error_r);
	if (ret == 0 && identity_password_hash != NULL) {
		ret = registry_user_exists(reg, def->atrn_identity,
					   error_r);
	}
	if (ret != 0) {
		if (ret > 0) {
			*error_r = "A login record of the bag user or of the "
				"ATRN identity exists already";
		}
		return ret > 0 ? 0 : -1;
	}
	def->created = ioloop_time;
	def->auto_identity = identity_password_hash != NULL;
	if (!bag_def_is_valid(def, &error)) {
		*error_r = t_strdup_printf("Invalid bag: %s", error);
		return -1;
	}

	t_array_init(&domains, 16);
	t_array_init(&identity_domains, 4);
	if (bag_domains_changed(reg, BAG_KEY_DOMAINS, def->domain, TRUE,
				&domains, error_r) < 0 ||
	    ((def->modes & BAG_MODE_ATRN) != 0 &&
	     bag_domains_changed(reg, bag_identity_key(def->atrn_identity),
				 def->domain, TRUE, &identity_domains,
				 error_r) < 0))
		return -1;

	trans = registry_transaction_begin(reg);
	dict_set(trans, bag_domain_key(def->domain), bag_def_encode(def));
	/* from the start, so that incrementing it never races creating it */
	dict_set(trans, bag_count_key(def->domain), "0");
	/* the lists exist from the start: a store without dict iteration
	   (Redis) reads only them */
	dict_set(trans, bag_rcpts_key(def->domain), "[]");
	dict_set(trans, bag_boxes_key(def->domain), "[]");
	bag_strings_set(trans, BAG_KEY_DOMAINS, &domains);
	if ((def->modes & BAG_MODE_ATRN) != 0) {
		bag_domains_set(trans, bag_identity_key(def->atrn_identity),
				&identity_domains);
	}
	registry_user_records_set(trans, def->user, user_password_hash,
				  bag_user_userdb_fields(def));
	/* the identity only authenticates: no userdb record, so it can't
	   open a mail session */
	if (identity_password_hash != NULL) {
		registry_user_records_set(trans, def->atrn_identity,
					  identity_password_hash, NULL);
	}
	return registry_commit(reg, &trans, error_r) < 0 ? -1 : 1;
}

/* A JSON array of addresses of domain: a recipient list or the boxes of
   a POP3 connector. 1 found, 0 the key doesn't exist, -1 error. */
static int
bag_addrs_get(struct registry *reg, const char *key,
	      const char *domain, pool_t pool,
	      ARRAY_TYPE(const_string) *addrs, const char **error_r)
{
	return bag_strings_get(reg, key, bag_rcpt_parse, domain, "address",
			       pool, addrs, error_r);
}

/* Sorted; an empty list stays a key */
static void
bag_addrs_set(struct dict_transaction_context *trans, const char *key,
	      ARRAY_TYPE(const_string) *addrs)
{
	array_sort(addrs, bag_str_cmp);
	bag_strings_set(trans, key, addrs);
}

static bool bag_addrs_contain(const ARRAY_TYPE(const_string) *addrs,
			      const char *addr)
{
	const char *a;

	array_foreach_elem(addrs, a) {
		if (strcmp(a, addr) == 0)
			return TRUE;
	}
	return FALSE;
}

struct bag_key_list_ctx {
	pool_t pool;
	ARRAY_TYPE(const_string) *addrs, *values;
	const char *what;
};

static int
bag_key_list_entry(const char *name, const char *value, void *context,
		   const char **error_r)
{
	struct bag_key_list_ctx *ctx = context;
	string_t *str = t_str_new(64);
	const char *s;

	if (registry_key_unescape(name, str) < 0) {
		*error_r = t_strdup_printf("Broken registry data in %s",
					   ctx->what);
		return -1;
	}
	s = p_strdup(ctx->pool, str_c(str));
	array_push_back(ctx->addrs, &s);
	if (ctx->values != NULL) {
		s = p_strdup(ctx->pool, value);
		array_push_back(ctx->values, &s);
	}
	return 0;
}

/* The addresses in list_key; a bag made before the lists existed has
   only the keys under prefix, found with a dict iteration (the file and
   SQL dicts have one). values: the keys' values, read too. */
static int
bag_list_read(struct registry *reg, const char *list_key,
	      const char *prefix, const char *domain, pool_t pool,
	      ARRAY_TYPE(const_string) *addrs,
	      ARRAY_TYPE(const_string) *values, const char **error_r)
{
	struct bag_key_list_ctx ctx = {
		.pool = pool,
		.addrs = addrs,
		.values = values,
		.what = list_key,
	};
	ARRAY_TYPE(const_string) listed;
	const char *const *addr, **keys, **found, *v;
	unsigned int i, count;
	pool_t lookup_pool;
	int ret;

	if (values == NULL) {
		ret = bag_addrs_get(reg, list_key, domain, pool, addrs,
				    error_r);
	} else {
		t_array_init(&listed, 16);
		ret = bag_addrs_get(reg, list_key, domain, pool, &listed,
				    error_r);
	}
	if (ret < 0)
		return -1;
	if (ret == 0) {
		return registry_iterate(reg, prefix, bag_key_list_entry,
					&ctx, error_r);
	}
	if (values == NULL)
		return 0;
	count = array_count(&listed);
	keys = t_new(const char *, count + 1);
	found = t_new(const char *, count + 1);
	i = 0;
	array_foreach(&listed, addr)
		keys[i++] = t_strconcat(prefix, registry_key_escape(*addr), NULL);
	lookup_pool = pool_alloconly_create("bag list", 1024);
	ret = registry_get_many(reg, lookup_pool, keys, count, found,
				error_r);
	for (i = 0; i < count && ret == 0; i++) {
		/* listed, but its key is gone: not there */
		if (found[i] == NULL)
			continue;
		array_push_back(addrs, array_idx(&listed, i));
		v = p_strdup(pool, found[i]);
		array_push_back(values, &v);
	}
	pool_unref(&lookup_pool);
	return ret;
}

static int
bag_rcpt_addrs(struct registry *reg, const char *domain, pool_t pool,
	       ARRAY_TYPE(const_string) *addrs, const char **error_r)
{
	return bag_list_read(reg, bag_rcpts_key(domain),
			     bag_rcpt_prefix(domain), domain, pool, addrs,
			     NULL, error_r);
}

int bag_registry_remove(struct registry *reg, const char *domain,
			pool_t pool, struct bag_def *removed_r,
			const char **error_r)
{
	struct dict_transaction_context *trans;
	ARRAY_TYPE(const_string) addrs, box_addrs, box_users, domains;
	ARRAY_TYPE(const_string) identity_domains;
	const char *addr, *prefix, *identity_key = NULL;
	int ret;

	ret = bag_registry_get(reg, domain, pool, removed_r, error_r);
	if (ret <= 0)
		return ret;
	/* everything read first: no lookup while the transaction is open */
	t_array_init(&addrs, 16);
	t_array_init(&box_addrs, 16);
	t_array_init(&box_users, 16);
	t_array_init(&domains, 16);
	t_array_init(&identity_domains, 4);
	if (bag_rcpt_addrs(reg, domain, pool_datastack_create(), &addrs,
			   error_r) < 0 ||
	    bag_registry_box_list(reg, domain, pool_datastack_create(),
				  &box_addrs, &box_users, error_r) < 0 ||
	    bag_domains_changed(reg, BAG_KEY_DOMAINS, domain, FALSE,
				&domains, error_r) < 0)
		return -1;
	if ((removed_r->modes & BAG_MODE_ATRN) != 0) {
		identity_key = bag_identity_key(removed_r->atrn_identity);
		if (bag_domains_changed(reg, identity_key, domain, FALSE,
					&identity_domains, error_r) < 0)
			return -1;
	}

	trans = registry_transaction_begin(reg);
	dict_unset(trans, bag_domain_key(domain));
	dict_unset(trans, bag_status_key(domain));
	dict_unset(trans, bag_count_key(domain));
	dict_unset(trans, bag_backup_key(domain));
	array_foreach_elem(&box_addrs, addr)
		dict_unset(trans, bag_box_key(domain, addr));
	dict_unset(trans, bag_boxes_key(domain));
	prefix = bag_rcpt_prefix(domain);
	array_foreach_elem(&addrs, addr)
		dict_unset(trans, t_strconcat(prefix, registry_key_escape(addr),
					      NULL));
	dict_unset(trans, bag_rcpts_key(domain));
	/* the list stays, empty or not */
	bag_strings_set(trans, BAG_KEY_DOMAINS, &domains);
	if (identity_key != NULL) {
		bag_domains_set(trans, identity_key, &identity_domains);
		/* no other domain left for an identity the suite made */
		if (removed_r->auto_identity &&
		    array_count(&identity_domains) == 0)
			registry_user_records_unset(trans,
						    removed_r->atrn_identity);
	}
	return registry_commit(reg, &trans, error_r) < 0 ? -1 : 1;
}

int bag_registry_rcpt_lookup(struct registry *reg, const char *domain,
			     const char *addr, const char **error_r)
{
	const char *value;

	return registry_get(reg, t_strconcat(bag_rcpt_prefix(domain),
					     registry_key_escape(addr), NULL),
				   &value, error_r);
}

static void
bag_def_set(struct dict_transaction_context *trans, const struct bag_def *def)
{
	dict_set(trans, bag_domain_key(def->domain), bag_def_encode(def));
}

int bag_registry_def_update(struct registry *reg, const struct bag_def *def,
			    const char **error_r)
{
	struct dict_transaction_context *trans;
	const char *error;

	if (!bag_def_is_valid(def, &error)) {
		*error_r = t_strdup_printf("Invalid bag of %s: %s",
					   def->domain, error);
		return -1;
	}
	trans = registry_transaction_begin(reg);
	bag_def_set(trans, def);
	return registry_commit(reg, &trans, error_r);
}

int bag_registry_rcpt_update(struct registry *reg,
			     const struct bag_def *def,
			     const char *const *addrs, bool add,
			     const char **error_r)
{
	struct dict_transaction_context *trans;
	ARRAY_TYPE(const_string) list, kept;
	struct bag_def changed = *def;
	const char *prefix = bag_rcpt_prefix(def->domain), *addr;
	const char *const *ap;

	t_array_init(&list, 16);
	t_array_init(&kept, 16);
	if (bag_rcpt_addrs(reg, def->domain, pool_datastack_create(), &list,
			   error_r) < 0)
		return -1;
	array_foreach_elem(&list, addr) {
		if (add || !str_array_find(addrs, addr))
			array_push_back(&kept, &addr);
	}
	for (ap = addrs; add && *ap != NULL; ap++) {
		if (!bag_addrs_contain(&kept, *ap))
			array_push_back(&kept, ap);
	}

	trans = registry_transaction_begin(reg);
	for (ap = addrs; *ap != NULL; ap++) {
		const char *key = t_strconcat(prefix,
					      registry_key_escape(*ap), NULL);
		if (add)
			dict_set(trans, key, "1");
		else
			dict_unset(trans, key);
	}
	bag_addrs_set(trans, bag_rcpts_key(def->domain), &kept);
	if (!def->recipient_list) {
		changed.recipient_list = TRUE;
		bag_def_set(trans, &changed);
	}
	return registry_commit(reg, &trans, error_r);
}

int bag_registry_rcpt_clear(struct registry *reg,
			    const struct bag_def *def, const char **error_r)
{
	struct dict_transaction_context *trans;
	ARRAY_TYPE(const_string) addrs;
	struct bag_def changed = *def;
	const char *prefix = bag_rcpt_prefix(def->domain), *addr;

	t_array_init(&addrs, 16);
	if (bag_rcpt_addrs(reg, def->domain, pool_datastack_create(), &addrs,
			   error_r) < 0)
		return -1;
	trans = registry_transaction_begin(reg);
	array_foreach_elem(&addrs, addr)
		dict_unset(trans, t_strconcat(prefix, registry_key_escape(addr),
					      NULL));
	array_clear(&addrs);
	bag_addrs_set(trans, bag_rcpts_key(def->domain), &addrs);
	changed.recipient_list = FALSE;
	bag_def_set(trans, &changed);
	return registry_commit(reg, &trans, error_r);
}

int bag_registry_rcpt_list(struct registry *reg, const char *domain,
			   pool_t pool, ARRAY_TYPE(const_string) *addrs,
			   const char **error_r)
{
	if (bag_rcpt_addrs(reg, domain, pool, addrs, error_r) < 0)
		return -1;
	array_sort(addrs, bag_str_cmp);
	return 0;
}

int bag_registry_identity_domains(struct registry *reg,
				  const char *identity, pool_t pool,
				  ARRAY_TYPE(const_string) *domains,
				  const char **error_r)
{
	if (bag_domains_get(reg, bag_identity_key(identity), pool, domains,
			    error_r) < 0)
		return -1;
	array_sort(domains, bag_str_cmp);
	return 0;
}

int bag_status_decode(const char *value, pool_t pool,
		      struct bag_status *status_r, const char **error_r)
{
	struct json_object *obj, *tls;
	const char *result;
	int64_t t, delivered, deferred, bounced;

	i_zero(status_r);
	if (registry_json_parse(value, json_type_object, &obj, error_r) < 0)
		return -1;
	if (registry_json_get_int(obj, "time", 0, INT64_MAX, &t, error_r) < 0 ||
	    registry_json_get_str(obj, "result", &result, error_r) < 0 ||
	    registry_json_get_int(obj, "delivered", 0, UINT_MAX, &delivered,
				  error_r) < 0 ||
	    registry_json_get_int(obj, "deferred", 0, UINT_MAX, &deferred,
				  error_r) < 0 ||
	    registry_json_get_int(obj, "bounced", 0, UINT_MAX, &bounced,
				  error_r) < 0) {
		json_object_put(obj);
		return -1;
	}
	status_r->time = (time_t)t;
	status_r->result = p_strdup(pool, result);
	status_r->delivered = (unsigned int)delivered;
	status_r->deferred = (unsigned int)deferred;
	status_r->bounced = (unsigned int)bounced;
	if (json_object_object_get_ex(obj, "tls", &tls) &&
	    json_object_is_type(tls, json_type_string))
		status_r->tls = p_strdup(pool, json_object_get_string(tls));
	json_object_put(obj);
	return 0;
}

int bag_registry_status_get(struct registry *reg, const char *domain,
			    pool_t pool, struct bag_status *status_r,
			    const char **error_r)
{
	const char *value, *error;
	int ret;

	i_zero(status_r);
	ret = registry_get(reg, bag_status_key(domain), &value, error_r);
	if (ret <= 0)
		return ret;
	if (bag_status_decode(value, pool, status_r, &error) < 0) {
		*error_r = t_strdup_printf(
			"Broken registry data in the status of bag %s: %s",
			str_sanitize(domain, 80), error);
		return -1;
	}
	return 1;
}

void bag_registry_status_set(struct registry *reg, const char *domain,
			     const struct bag_status *status,
			     struct event *event)
{
	struct dict_transaction_context *trans;
	struct json_object *obj = json_object_new_object();
	const char *error;

	json_object_object_add(obj, "time",
			       json_object_new_int64(status->time));
	json_object_object_add(obj, "result",
			       json_object_new_string(status->result));
	json_object_object_add(obj, "delivered",
			       json_object_new_int64(status->delivered));
	json_object_object_add(obj, "deferred",
			       json_object_new_int64(status->deferred));
	json_object_object_add(obj, "bounced",
			       json_object_new_int64(status->bounced));
	if (status->tls != NULL) {
		json_object_object_add(obj, "tls",
				       json_object_new_string(status->tls));
	}
	trans = registry_transaction_begin(reg);
	dict_set(trans, bag_status_key(domain), registry_json_finish(obj));
	if (registry_commit(reg, &trans, &error) < 0) {
		e_error(event, "Can't record the flush of bag %s: %s",
			domain, error);
	}
}

int bag_registry_count_get(struct registry *reg, const char *domain,
			   unsigned int *count_r, const char **error_r)
{
	const char *value;
	int ret;

	*count_r = 0;
	ret = registry_get(reg, bag_count_key(domain), &value, error_r);
	if (ret <= 0)
		return ret;
	/* below 0 after more removals than LMTP counted: none */
	if (value[0] == '-' && str_is_numeric(value + 1, '\0'))
		return 1;
	if (str_to_uint(value, count_r) < 0) {
		*error_r = t_strdup_printf("Broken registry data in the "
					   "message count of bag %s",
					   str_sanitize(domain, 80));
		return -1;
	}
	return 1;
}

void bag_registry_count_add(struct registry *reg, const char *domain,
			    unsigned int count, struct event *event)
{
	const char *key = bag_count_key(domain), *error;
	const long long diff = count;

	/* missing for a bag added by an earlier version: the next flush
	   sets the right value */
	if (registry_counters_add(reg, &key, &diff, 1, &error) < 0) {
		e_error(event, "Can't count the bag of %s: %s", domain,
			error);
	}
}

void bag_registry_count_set(struct registry *reg, const char *domain,
			    unsigned int count, struct event *event)
{
	struct dict_transaction_context *trans;
	const char *error;

	trans = registry_transaction_begin(reg);
	dict_set(trans, bag_count_key(domain), dec2str(count));
	if (registry_commit(reg, &trans, &error) < 0) {
		e_error(event, "Can't count the bag of %s: %s", domain,
			error);
	}
}

void bag_registry_count_sub(struct registry *reg, const char *domain,
			    unsigned int count, struct event *event)
{
	struct dict_transaction_context *trans;
	const char *error;
	int ret;

	trans = registry_transaction_begin(reg);
	dict_atomic_inc(trans, bag_count_key(domain), -(long long)count);
	ret = registry_transaction_commit(reg, &trans, &error);
	if (ret < 0 && ret != DICT_COMMIT_RET_NOTFOUND) {
		e_error(event, "Can't count the bag of %s: %s", domain,
			error);
	}
}

static const char *
bag_usage_key(const char *domain, const char *month, const char *what)
{
	return t_strconcat(BAG_KEY_USAGE, registry_key_escape(domain), "/",
			   month, "/", what, NULL);
}

int bag_registry_usage_get(struct registry *reg, const char *domain,
			   const char *month, uint64_t *messages_r,
			   uint64_t *bytes_r, const char **error_r)
{
	int ret, ret2;

	ret = registry_get_counter(reg,
			bag_usage_key(domain, month, "messages"), messages_r,
			error_r);
	if (ret < 0)
		return -1;
	ret2 = registry_get_counter(reg,
			bag_usage_key(domain, month, "bytes"), bytes_r,
			error_r);
	if (ret2 < 0)
		return -1;
	return ret > 0 || ret2 > 0 ? 1 : 0;
}

int bag_registry_usage_add(struct registry *reg, const char *domain,
			   const char *month, uint64_t size,
			   uint64_t *messages_r, uint64_t *bytes_r,
			   const char **error_r)
{
	const char *keys[] = {
		bag_usage_key(domain, month, "messages"),
		bag_usage_key(domain, month, "bytes"),
	};
	const long long diffs[] = { 1, (long long)size };

	/* missing for the month's first message */
	if (registry_counters_add(reg, keys, diffs, N_ELEMENTS(keys),
					 error_r) < 0)
		return -1;
	return bag_registry_usage_get(reg, domain, month, messages_r, bytes_r,
				      error_r) < 0 ? -1 : 0;
}

const char *bag_box_user_name(const char *addr)
{
	const char *at = strrchr(addr, '@'), *p;
	string_t *name = t_str_new(64);

	i_assert(at != NULL);
	str_append(name, "_bag_");
	for (p = addr; p < at; p++) {
		if (i_isalnum(*p) || *p == '.' || *p == '_' || *p == '-')
			str_append_c(name, i_tolower(*p));
		else
			str_append_c(name, '-');
	}
	str_append(name, at);
	return str_c(name);
}

int bag_registry_box_get(struct registry *reg, const char *domain,
			 const char *addr, const char **user_r,
			 const char **error_r)
{
	return registry_get(reg, bag_box_key(domain, addr), user_r,
			    error_r);
}

int bag_registry_box_add(struct registry *reg, const char *domain,
			 const char *addr, const char *user,
			 const char *password_hash, const char **error_r)
{
	struct dict_transaction_context *trans;
	ARRAY_TYPE(const_string) addrs;
	const char *old;
	int ret;

	ret = bag_registry_box_get(reg, domain, addr, &old, error_r);
	if (ret != 0)
		return ret < 0 ? -1 : 0;
	t_array_init(&addrs, 16);
	ret = bag_addrs_get(reg, bag_boxes_key(domain), domain,
			    pool_datastack_create(), &addrs, error_r);
	if (ret < 0)
		return -1;
	trans = registry_transaction_begin(reg);
	dict_set(trans, bag_box_key(domain, addr), user);
	/* a bag made before the list existed is iterated instead */
	if (ret > 0 && !bag_addrs_contain(&addrs, addr)) {
		array_push_back(&addrs, &addr);
		bag_addrs_set(trans, bag_boxes_key(domain), &addrs);
	}
	/* without a password, mail is kept until the box is given one */
	registry_user_records_set(trans, user, password_hash,
				  bag_box_userdb_fields(domain));
	return registry_commit(reg, &trans, error_r) < 0 ? -1 : 1;
}

int bag_registry_box_list(struct registry *reg, const char *domain,
			  pool_t pool, ARRAY_TYPE(const_string) *addrs,
			  ARRAY_TYPE(const_string) *users,
			  const char **error_r)
{
	return bag_list_read(reg, bag_boxes_key(domain),
			     bag_box_prefix(domain),
			     domain, pool, addrs, users, error_r);
}

int bag_backup_decode(const char *value, struct bag_backup_state *state_r,
		      const char **error_r)
{
	struct json_object *obj;
	int64_t next, interval, failures;

	i_zero(state_r);
	if (registry_json_parse(value, json_type_object, &obj, error_r) < 0)
		return -1;
	if (registry_json_get_int(obj, "next", 0, INT64_MAX, &next,
				  error_r) < 0 ||
	    registry_json_get_int(obj, "interval", 0, UINT_MAX, &interval,
				  error_r) < 0 ||
	    registry_json_get_int(obj, "failures", 0, UINT_MAX, &failures,
				  error_r) < 0) {
		json_object_put(obj);
		return -1;
	}
	json_object_put(obj);
	state_r->next = (time_t)next;
	state_r->interval = (unsigned int)interval;
	state_r->failures = (unsigned int)failures;
	return 0;
}

int bag_registry_backup_get(struct registry *reg, const char *domain,
			    struct bag_backup_state *state_r,
			    const char **error_r)
{
	const char *value, *error;
	int ret;

	i_zero(state_r);
	ret = registry_get(reg, bag_backup_key(domain), &value, error_r);
	if (ret <= 0)
		return ret;
	if (bag_backup_decode(value, state_r, &error) < 0) {
		*error_r = t_strdup_printf("Broken registry data in the retry "
					   "schedule of %s: %s", domain, error);
		return -1;
	}
	return 1;
}

int bag_registry_backup_set(struct registry *reg, const char *domain,
			    const struct bag_backup_state *state,
			    const char **error_r)
{
	struct dict_transaction_context *trans;
	struct json_object *obj = json_object_new_object();

	json_object_object_add(obj, "next", json_object_new_int64(state->next));
	json_object_object_add(obj, "interval",
			       json_object_new_int64(state->interval));
	json_object_object_add(obj, "failures",
			       json_object_new_int64(state->failures));
	trans = registry_transaction_begin(reg);
	dict_set(trans, bag_backup_key(domain), registry_json_finish(obj));
	return registry_commit(reg, &trans, error_r);
}

int bag_registry_password_set(struct registry *reg, const char *user,
			      const char *password_hash,
			      const char **error_r)
{
	struct dict_transaction_context *trans;

	trans = registry_transaction_begin(reg);
	registry_user_password_set(trans, user, password_hash);
	return registry_commit(reg, &trans, error_r);
}

/* An upgrade of a bag made before 0.2: its user's userdb record gets
   mirror_readonly (which keeps IMAP and POP3 sessions of a bag that
   isn't a POP3 connector read-only), its message counter is made. Read
   first, then written: no lookup while a transaction is open. */
static int
bag_registry_upgrade_domain(struct registry *reg, const char *domain,
			    ARRAY_TYPE(const_string) *made,
			    const char **error_r)
{
	struct dict_transaction_context *trans;
	struct bag_def def;
	struct json_object *fields = NULL, *value;
	const char *count_key = bag_count_key(domain), *count, *what;
	bool readonly = FALSE;
	int ret;

	if ((ret = bag_registry_get(reg, domain, pool_datastack_create(), &def,
				    error_r)) <= 0)
		return ret;
	if ((def.modes & BAG_MODE_POP3) == 0) {
		ret = registry_userdb_get(reg, def.user, &fields, error_r);
		if (ret < 0)
			return -1;
		readonly = ret > 0 &&
			!json_object_object_get_ex(fields, "mirror_readonly",
						   &value);
	}
	if ((ret = registry_get(reg, count_key, &count, error_r)) < 0) {
		if (fields != NULL)
			json_object_put(fields);
		return -1;
	}
	if (!readonly && ret > 0) {
		if (fields != NULL)
			json_object_put(fields);
		return 0;
	}

	trans = registry_transaction_begin(reg);
	if (readonly) {
		json_object_object_add(fields, "mirror_readonly",
				       json_object_new_string("yes"));
		registry_user_records_set(trans, def.user, NULL, fields);
		fields = NULL;
		what = t_strdup_printf("mirror_readonly of %s", def.user);
		array_push_back(made, &what);
	}
	if (ret == 0) {
		dict_set(trans, count_key, "0");
		array_push_back(made, &count_key);
	}
	if (fields != NULL)
		json_object_put(fields);
	return registry_commit(reg, &trans, error_r);
}

int bag_registry_setup(struct registry *reg, bool upgrade,
		       ARRAY_TYPE(const_string) *made, const char **error_r)
{
	struct dict_transaction_context *trans;
	ARRAY_TYPE(const_string) domains;
	const char *domain, *key = BAG_KEY_DOMAINS;
	int ret;

	t_array_init(&domains, 16);
	ret = bag_domains_get(reg, key, pool_datastack_create(), &domains,
			      error_r);
	if (ret < 0)
		return -1;
	if (ret == 0) {
		trans = registry_transaction_begin(reg);
		dict_set(trans, key, "[]");
		array_push_back(made, &key);
		return registry_commit(reg, &trans, error_r);
	}
	if (!upgrade)
		return 0;
	array_foreach_elem(&domains, domain) {
		if (bag_registry_upgrade_domain(reg, domain, made,
						error_r) < 0)
			return -1;
	}
	return 0;
}
