/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* doveadm mirror check of Mail Bagging's keys (bag-registry-check.h). */

#include "lib.h"
#include "array.h"
#include "hash.h"
#include "str.h"
#include "str-sanitize.h"
#include "registry-json.h"
#include "registry-check.h"
#include "bag-input.h"
#include "bag-registry-private.h"
#include "bag-registry-check.h"

struct bag_check_bag {
	const char *domain;
	/* in the list of bags */
	bool listed;
	/* domain/<domain> exists */
	bool exists;
	/* it can't be read: nothing that names it is judged */
	bool unknown;
	struct bag_def def;
};

/* An ATRN identity and the bags that name it */
struct bag_check_identity {
	const char *identity;
	ARRAY_TYPE(const_string) domains;
};

struct bag_check {
	struct registry_check *check;
	const struct bag_check_storage *storage;
	pool_t pool;

	ARRAY(struct bag_check_bag *) bags;
	HASH_TABLE(const char *, struct bag_check_bag *) bag_hash;
	/* the list of bags can't be read: why */
	const char *domains_problem;
	bool domains_changed;
	/* a bag, or a key that may be one, is left unread: the keys no
	   bag seems to use may be its, and are not removed */
	bool incomplete;

	ARRAY(struct bag_check_identity *) identities;
};

static int bag_str_cmp(const char *const *s1, const char *const *s2)
{
	return strcmp(*s1, *s2);
}

static bool
bag_check_contains(const ARRAY_TYPE(const_string) *strings, const char *str)
{
	return array_lsearch(strings, &str, bag_str_cmp) != NULL;
}

static const char *bag_check_unescaped(const char *name)
{
	string_t *str = t_str_new(64);

	if (registry_key_unescape(name, str) < 0)
		return NULL;
	return str_c(str);
}

static struct bag_check_bag *
bag_check_bag(struct bag_check *bc, const char *domain)
{
	struct bag_check_bag *bag;

	bag = hash_table_lookup(bc->bag_hash, domain);
	if (bag == NULL) {
		bag = p_new(bc->pool, struct bag_check_bag, 1);
		bag->domain = p_strdup(bc->pool, domain);
		hash_table_insert(bc->bag_hash, bag->domain, bag);
		array_push_back(&bc->bags, &bag);
	}
	return bag;
}

/* Reading the bags */

static void bag_check_read_list(struct bag_check *bc)
{
	ARRAY_TYPE(const_string) listed;
	struct bag_check_bag *bag;
	const char *value, *domain, *error;

	value = registry_check_get(bc->check, BAG_KEY_DOMAINS);
	if (value == NULL) {
		bc->domains_problem = "missing";
		return;
	}
	t_array_init(&listed, 64);
	if (bag_strings_decode(value, bag_domain_parse_any, NULL, "domain",
			       bc->pool, &listed, &error) < 0) {
		bc->domains_problem = p_strconcat(bc->pool, "broken: ", error,
						  NULL);
		return;
	}
	array_foreach_elem(&listed, domain) {
		bag = bag_check_bag(bc, domain);
		if (bag->listed) {
			registry_check_fixed(bc->check, BAG_KEY_DOMAINS,
				t_strdup_printf("lists %s twice", domain),
				"rewritten");
			bc->domains_changed = TRUE;
		}
		bag->listed = TRUE;
	}
}

/* The domain/ keys the list doesn't name. */
static void bag_check_read_keys(struct bag_check *bc)
{
	ARRAY_TYPE(const_string) names;
	const char *name, *domain, *normalized, *error;

	if (!registry_check_iterated(bc->check))
		return;
	t_array_init(&names, 64);
	registry_check_names(bc->check, BAG_KEY_DOMAIN, &names);
	array_foreach_elem(&names, name) {
		domain = bag_check_unescaped(name);
		if (domain != NULL &&
		    bag_domain_parse(domain, &normalized, &error) == 0 &&
		    strcmp(domain, normalized) == 0 &&
		    strcmp(registry_key_escape(domain), name) == 0) {
			(void)bag_check_bag(bc, domain);
			continue;
		}
		bc->incomplete = TRUE;
		registry_check_left(bc->check,
				    t_strconcat(BAG_KEY_DOMAIN, name, NULL),
				    "not the key of a bag",
				    "remove it by hand (doveadm dict unset)");
	}
}

static void bag_check_read_bags(struct bag_check *bc)
{
	struct bag_check_bag *bag;
	ARRAY_TYPE(const_string) keys;
	const char *key, *value, *error;

	t_array_init(&keys, array_count(&bc->bags) + 1);
	array_foreach_elem(&bc->bags, bag) {
		key = bag_domain_key(bag->domain);
		array_push_back(&keys, &key);
	}
	registry_check_prefetch_array(bc->check, &keys);
	array_foreach_elem(&bc->bags, bag) {
		key = bag_domain_key(bag->domain);
		if ((value = registry_check_get(bc->check, key)) == NULL)
			continue;
		bag->exists = TRUE;
		if (bag_def_decode(value, bc->pool, &bag->def, &error) < 0) {
			bag->unknown = TRUE;
			bc->incomplete = TRUE;
			registry_check_left(bc->check, key,
				t_strconcat("broken: ", error, NULL),
				"the bag can't be read: fix or remove it by "
				"hand (doveadm dict set or unset)");
		} else if (strcmp(bag->def.domain, bag->domain) != 0) {
			bag->unknown = TRUE;
			bc->incomplete = TRUE;
			registry_check_left(bc->check, key,
				t_strdup_printf("names %s",
					str_sanitize(bag->def.domain, 80)),
				"fix it by hand (doveadm dict set)");
		}
	}
}

static void bag_check_list(struct bag_check *bc)
{
	struct bag_check_bag *bag;
	ARRAY_TYPE(const_string) rebuilt;
	const char *key;

	t_array_init(&rebuilt, array_count(&bc->bags) + 1);
	array_foreach_elem(&bc->bags, bag) {
		if (bag->exists)
			array_push_back(&rebuilt, &bag->domain);
		key = bag_domain_key(bag->domain);
		if (bag->listed && !bag->exists) {
			if (bc->domains_problem == NULL) {
				registry_check_fixed(bc->check, key,
					"missing, but "BAG_KEY_DOMAINS
					" lists it",
					"dropped from "BAG_KEY_DOMAINS);
			}
			bc->domains_changed = TRUE;
		} else if (bag->exists && !bag->listed) {
			if (bc->domains_problem == NULL) {
				registry_check_fixed(bc->check,
					BAG_KEY_DOMAINS,
					t_strdup_printf("misses %s",
							bag->domain),
					"added");
			}
			bc->domains_changed = TRUE;
		}
	}
	if (bc->domains_problem != NULL) {
		if (!registry_check_iterated(bc->check)) {
			registry_check_left(bc->check, BAG_KEY_DOMAINS,
				bc->domains_problem, "the dict can't iterate "
				"(Redis) to find the bags: set it by hand "
				"(doveadm dict set, a JSON array of the "
				"bagged domains)");
			return;
		}
		registry_check_fixed(bc->check, BAG_KEY_DOMAINS,
				     bc->domains_problem,
				     "rebuilt from the bags");
		bc->domains_changed = TRUE;
	}
	if (bc->domains_changed) {
		array_sort(&rebuilt, bag_str_cmp);
		registry_check_set(bc->check, BAG_KEY_DOMAINS,
				   registry_json_strings(&rebuilt));
	}
}

/* A list of addresses and the keys it indexes */

struct bag_check_list {
	const char *what;
	/* rcpts/<domain> or boxes/<domain> */
	const char *list_key;
	/* rcpt/<domain>/ or box/<domain>/ */
	const char *prefix;
	/* the addresses of the union, sorted, and their keys' values
	   (NULL: the key is missing) */
	ARRAY_TYPE(const_string) addrs, values;
};

/* Make the list and its keys agree: the union of both. */
static void
bag_check_address_list(struct bag_check *bc, const struct bag_check_bag *bag,
		       struct bag_check_list *list)
{
	ARRAY_TYPE(const_string) listed, names;
	const char *value, *problem = NULL, *name, *addr, *error;
	const char **keys;
	unsigned int i, count;
	bool listed_ok, changed = FALSE;

	p_array_init(&list->addrs, bc->pool, 8);
	p_array_init(&list->values, bc->pool, 8);
	t_array_init(&listed, 16);
	value = registry_check_get(bc->check, list->list_key);
	if (value == NULL)
		problem = "missing";
	else if (bag_strings_decode(value, bag_rcpt_parse, bag->domain,
				    "address", bc->pool, &listed,
				    &error) < 0)
		problem = t_strconcat("broken: ", error, NULL);
	listed_ok = problem == NULL;
	if (!listed_ok && !registry_check_iterated(bc->check)) {
		registry_check_left(bc->check, list->list_key, problem,
			t_strdup_printf("the dict can't iterate (Redis) to "
					"find its %s: set it by hand (doveadm "
					"dict set, a JSON array of them)",
					list->what));
		return;
	}
	array_foreach_elem(&listed, addr) {
		if (!bag_check_contains(&list->addrs, addr))
			array_push_back(&list->addrs, &addr);
	}
	if (registry_check_iterated(bc->check)) {
		t_array_init(&names, 16);
		registry_check_names(bc->check, list->prefix, &names);
		array_foreach_elem(&names, name) {
			addr = bag_check_unescaped(name);
			if (addr == NULL ||
			    bag_rcpt_parse(addr, bag->domain, &addr,
					   &error) < 0) {
				registry_check_left(bc->check,
					t_strconcat(list->prefix, name, NULL),
					"not the key of an address of the bag",
					"remove it by hand (doveadm dict "
					"unset)");
				continue;
			}
			if (bag_check_contains(&list->addrs, addr))
				continue;
			addr = p_strdup(bc->pool, addr);
			array_push_back(&list->addrs, &addr);
			if (listed_ok) {
				registry_check_fixed(bc->check, list->list_key,
					t_strdup_printf("misses %s", addr),
					"added");
			}
			changed = TRUE;
		}
	}
	array_sort(&list->addrs, bag_str_cmp);

	/* the keys of the addresses */
	count = array_count(&list->addrs);
	keys = t_new(const char *, count + 1);
	for (i = 0; i < count; i++) {
		keys[i] = t_strconcat(list->prefix, registry_key_escape(
			array_idx_elem(&list->addrs, i)), NULL);
	}
	registry_check_prefetch(bc->check, keys, count);
	for (i = 0; i < count; i++) {
		value = registry_check_get(bc->check, keys[i]);
		if (value != NULL)
			value = p_strdup(bc->pool, value);
		array_push_back(&list->values, &value);
	}
	if (!listed_ok) {
		registry_check_fixed(bc->check, list->list_key, problem,
			t_strdup_printf("rebuilt from the %s keys",
					list->prefix));
		changed = TRUE;
	}
	if (changed) {
		registry_check_set(bc->check, list->list_key,
				   registry_json_strings(&list->addrs));
	}
}

static void bag_check_recipients(struct bag_check *bc,
				 const struct bag_check_bag *bag)
{
	struct bag_check_list list;
	const char *key, *value;
	unsigned int i;

	i_zero(&list);
	list.what = "recipients";
	list.list_key = bag_rcpts_key(bag->domain);
	list.prefix = bag_rcpt_prefix(bag->domain);
	bag_check_address_list(bc, bag, &list);
	for (i = 0; i < array_count(&list.values); i++) {
		value = array_idx_elem(&list.values, i);
		if (value != NULL)
			continue;
		key = t_strconcat(list.prefix, registry_key_escape(
			array_idx_elem(&list.addrs, i)), NULL);
		registry_check_set(bc->check, key, "1");
		registry_check_fixed(bc->check, key,
			t_strconcat("missing, but ", list.list_key,
				    " lists it", NULL), "set");
	}
}

static void bag_check_boxes(struct bag_check *bc,
			    const struct bag_check_bag *bag)
{
	struct bag_check_list list;
	const char *key, *addr, *user;
	unsigned int i;

	i_zero(&list);
	list.what = "POP3 boxes";
	list.list_key = bag_boxes_key(bag->domain);
	list.prefix = bag_box_prefix(bag->domain);
	bag_check_address_list(bc, bag, &list);
	for (i = 0; i < array_count(&list.values); i++) {
		addr = array_idx_elem(&list.addrs, i);
		user = array_idx_elem(&list.values, i);
		if (user == NULL) {
			/* the name every box of addr gets */
			user = bag_box_user_name(addr);
			key = bag_box_key(bag->domain, addr);
			registry_check_set(bc->check, key, user);
			registry_check_fixed(bc->check, key,
				t_strconcat("missing, but ", list.list_key,
					    " lists it", NULL),
				t_strconcat("set to ", user, NULL));
		}
		/* a box gets a password when the administrator gives it
		   one: none is expected */
		registry_check_login(bc->check, user, NULL,
				     bag_box_userdb_fields(bag->domain));
	}
}

static void bag_check_counter(struct bag_check *bc,
			      const struct bag_check_bag *bag)
{
	const char *key = bag_count_key(bag->domain), *value, *problem;
	const char *error;
	unsigned int count;

	value = registry_check_get(bc->check, key);
	if (value != NULL && registry_check_counter_is_valid(value) &&
	    str_to_uint(value, &count) == 0)
		return;
	problem = value == NULL ? "missing" :
		t_strconcat("not a counter: ", registry_check_value(value),
			    NULL);
	if (bc->storage->inbox_count(bag->def.user, bc->storage->context,
				     &count, &error) < 0) {
		registry_check_left(bc->check, key, problem, t_strconcat(
			"can't count the bag's messages: ", error, NULL));
		return;
	}
	registry_check_set(bc->check, key, dec2str(count));
	registry_check_fixed(bc->check, key, problem, t_strdup_printf(
		"reset to %u from the bag's INBOX", count));
}

static void bag_check_usage(struct bag_check *bc,
			    const struct bag_check_bag *bag)
{
	ARRAY_TYPE(const_string) names;
	const char *prefix, *name, *key, *value;

	/* the months a bag was used in are found only by iterating */
	if (!registry_check_iterated(bc->check))
		return;
	prefix = t_strconcat(BAG_KEY_USAGE, registry_key_escape(bag->domain),
			     "/", NULL);
	t_array_init(&names, 16);
	registry_check_names(bc->check, prefix, &names);
	array_foreach_elem(&names, name) {
		key = t_strconcat(prefix, name, NULL);
		value = registry_check_get(bc->check, key);
		if (registry_check_counter_is_valid(value))
			continue;
		registry_check_left(bc->check, key, t_strconcat(
			"not a counter: ", registry_check_value(value), NULL),
			"a month's usage can't be counted again: fix it by "
			"hand (doveadm dict set)");
	}
}

static void bag_check_state(struct bag_check *bc,
			    const struct bag_check_bag *bag)
{
	struct bag_status status;
	struct bag_backup_state state;
	const char *key, *value, *error;

	key = bag_status_key(bag->domain);
	value = registry_check_get(bc->check, key);
	if (value != NULL &&
	    bag_status_decode(value, pool_datastack_create(), &status,
			      &error) < 0) {
		registry_check_unset(bc->check, key);
		registry_check_fixed(bc->check, key,
				     t_strconcat("broken: ", error, NULL),
				     "removed: it only records the last "
				     "flush");
	}
	key = bag_backup_key(bag->domain);
	value = registry_check_get(bc->check, key);
	if (value != NULL && bag_backup_decode(value, &state, &error) < 0) {
		registry_check_left(bc->check, key,
			t_strconcat("broken: ", error, NULL),
			"it holds the retry schedule of the backup domain: "
			"fix it by hand (doveadm dict set)");
	}
}

static void bag_check_identity_named(struct bag_check *bc,
				     const struct bag_check_bag *bag)
{
	struct bag_check_identity *id, *found = NULL;
	const char *identity = t_str_lcase(bag->def.atrn_identity);

	array_foreach_elem(&bc->identities, id) {
		if (strcmp(id->identity, identity) == 0)
			found = id;
	}
	if (found == NULL) {
		found = p_new(bc->pool, struct bag_check_identity, 1);
		found->identity = p_strdup(bc->pool, identity);
		p_array_init(&found->domains, bc->pool, 2);
		array_push_back(&bc->identities, &found);
	}
	array_push_back(&found->domains, &bag->domain);
}

static void bag_check_logins(struct bag_check *bc,
			     const struct bag_check_bag *bag)
{
	const char *identity = bag->def.atrn_identity;

	registry_check_login(bc->check, bag->def.user,
		t_strconcat("doveadm bag password ", bag->domain, NULL),
		bag_user_userdb_fields(&bag->def));
	if ((bag->def.modes & BAG_MODE_ATRN) == 0)
		return;
	bag_check_identity_named(bc, bag);
	/* an identity made for a bag only authenticates: no userdb
	   record; one of the site's is the site's */
	if (bag->def.auto_identity) {
		registry_check_login(bc->check, identity,
			t_strconcat("doveadm bag password -a ", identity,
				    NULL), NULL);
	} else {
		registry_check_login_used(bc->check, identity);
	}
}

static void bag_check_bags(struct bag_check *bc)
{
	struct bag_check_bag *bag;
	ARRAY_TYPE(const_string) keys;
	const char *key;

	t_array_init(&keys, array_count(&bc->bags) * 5 + 1);
	array_foreach_elem(&bc->bags, bag) {
		if (!bag->exists || bag->unknown)
			continue;
		key = bag_rcpts_key(bag->domain);
		array_push_back(&keys, &key);
		key = bag_boxes_key(bag->domain);
		array_push_back(&keys, &key);
		key = bag_count_key(bag->domain);
		array_push_back(&keys, &key);
		key = bag_status_key(bag->domain);
		array_push_back(&keys, &key);
		key = bag_backup_key(bag->domain);
		array_push_back(&keys, &key);
	}
	registry_check_prefetch_array(bc->check, &keys);
	array_foreach_elem(&bc->bags, bag) {
		if (!bag->exists || bag->unknown)
			continue;
		T_BEGIN {
			bag_check_recipients(bc, bag);
			bag_check_boxes(bc, bag);
			bag_check_counter(bc, bag);
			bag_check_usage(bc, bag);
			bag_check_state(bc, bag);
			bag_check_logins(bc, bag);
		} T_END;
	}
}

/* An identity's list holds every ATRN bag that names it, and no other
   bag. */
static void bag_check_identity(struct bag_check *bc,
			       const struct bag_check_identity *id)
{
	ARRAY_TYPE(const_string) have, kept;
	struct bag_check_bag *bag;
	const char *key = bag_identity_key(id->identity), *value, *domain;
	const char *error;
	bool read = FALSE, changed = FALSE;

	t_array_init(&have, 8);
	t_array_init(&kept, 8);
	value = registry_check_get(bc->check, key);
	if (value == NULL) {
		registry_check_fixed(bc->check, key, "missing",
				     "made from the bags");
		changed = TRUE;
	} else if (bag_strings_decode(value, bag_domain_parse_any, NULL,
				      "domain", pool_datastack_create(),
				      &have, &error) < 0) {
		registry_check_fixed(bc->check, key,
				     t_strconcat("broken: ", error, NULL),
				     "made from the bags");
		changed = TRUE;
		array_clear(&have);
	} else {
		read = TRUE;
	}
	array_foreach_elem(&have, domain) {
		if (bag_check_contains(&id->domains, domain)) {
			if (!bag_check_contains(&kept, domain))
				array_push_back(&kept, &domain);
			continue;
		}
		bag = hash_table_lookup(bc->bag_hash, domain);
		if (bag != NULL && bag->unknown) {
			registry_check_left(bc->check, key, t_strdup_printf(
				"lists %s, whose bag can't be read", domain),
				"can't tell until it can");
			array_push_back(&kept, &domain);
			continue;
		}
		registry_check_fixed(bc->check, key, t_strdup_printf(
			bag == NULL || !bag->exists ? "lists %s, which isn't "
			"bagged" : "lists %s, whose bag names another "
			"identity", domain), "dropped from it");
		changed = TRUE;
	}
	array_foreach_elem(&id->domains, domain) {
		if (bag_check_contains(&kept, domain))
			continue;
		array_push_back(&kept, &domain);
		if (read) {
			registry_check_fixed(bc->check, key, t_strdup_printf(
				"misses %s", domain), "added");
		}
		changed = TRUE;
	}
	if (changed) {
		array_sort(&kept, bag_str_cmp);
		registry_check_set(bc->check, key,
				   registry_json_strings(&kept));
	}
}

static void bag_check_identities(struct bag_check *bc)
{
	struct bag_check_identity *id;
	ARRAY_TYPE(const_string) keys, names;
	const char *key, *name, *identity;
	bool found;

	t_array_init(&keys, array_count(&bc->identities) + 1);
	array_foreach_elem(&bc->identities, id) {
		key = bag_identity_key(id->identity);
		array_push_back(&keys, &key);
	}
	registry_check_prefetch_array(bc->check, &keys);
	array_foreach_elem(&bc->identities, id) T_BEGIN {
		bag_check_identity(bc, id);
	} T_END;
	if (!registry_check_iterated(bc->check) || bc->incomplete)
		return;
	/* the lists of identities no bag names */
	t_array_init(&names, 16);
	registry_check_names(bc->check, BAG_KEY_IDENTITY, &names);
	array_foreach_elem(&names, name) {
		identity = bag_check_unescaped(name);
		found = FALSE;
		array_foreach_elem(&bc->identities, id) {
			if (identity != NULL &&
			    strcmp(id->identity, identity) == 0)
				found = TRUE;
		}
		if (found)
			continue;
		key = t_strconcat(BAG_KEY_IDENTITY, name, NULL);
		registry_check_unset(bc->check, key);
		registry_check_fixed(bc->check, key,
				     "an identity no ATRN bag names",
				     "removed");
	}
}

/* The keys a removed bag left (its usage is history: kept). */
static void bag_check_leftovers(struct bag_check *bc)
{
	static const char *const prefixes[] = {
		BAG_KEY_RCPT, BAG_KEY_RCPTS, BAG_KEY_BOX, BAG_KEY_BOXES,
		BAG_KEY_COUNT, BAG_KEY_STATUS, BAG_KEY_BACKUP
	};
	ARRAY_TYPE(const_string) names;
	struct bag_check_bag *bag;
	const char *name, *p, *domain, *key;
	unsigned int i;

	if (!registry_check_iterated(bc->check) || bc->incomplete)
		return;
	t_array_init(&names, 64);
	for (i = 0; i < N_ELEMENTS(prefixes); i++) {
		array_clear(&names);
		registry_check_names(bc->check, prefixes[i], &names);
		array_foreach_elem(&names, name) {
			p = strchr(name, '/');
			domain = bag_check_unescaped(p == NULL ? name :
						     t_strdup_until(name, p));
			bag = domain == NULL ? NULL :
				hash_table_lookup(bc->bag_hash, domain);
			if (bag != NULL && bag->exists)
				continue;
			key = t_strconcat(prefixes[i], name, NULL);
			registry_check_unset(bc->check, key);
			registry_check_fixed(bc->check, key, t_strdup_printf(
				"of %s, which isn't bagged",
				str_sanitize(domain == NULL ? name : domain,
					     80)), "removed");
		}
	}
}

void bag_registry_check(struct registry_check *check,
			const struct bag_check_storage *storage)
{
	struct bag_check bc;

	i_zero(&bc);
	bc.check = check;
	bc.storage = storage;
	bc.pool = registry_check_pool(check);
	p_array_init(&bc.bags, bc.pool, 64);
	hash_table_create(&bc.bag_hash, bc.pool, 64, str_hash, strcmp);
	p_array_init(&bc.identities, bc.pool, 16);

	bag_check_read_list(&bc);
	bag_check_read_keys(&bc);
	bag_check_read_bags(&bc);
	if (registry_check_failed(check) == NULL)
		bag_check_list(&bc);
	if (registry_check_failed(check) == NULL)
		bag_check_bags(&bc);
	if (registry_check_failed(check) == NULL)
		bag_check_identities(&bc);
	if (registry_check_failed(check) == NULL)
		bag_check_leftovers(&bc);
	hash_table_destroy(&bc.bag_hash);
}
