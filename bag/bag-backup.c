/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* The backup scheduler (bag -b): one process without listeners that sends
   the backup bags to their customers' MTAs by itself.

   Every few seconds it looks at each backup bag. A bag with mail and no
   retry pending is tried at once; after a failed try (the MTA can't be
   reached, or mail is still waiting after it: a 4xx) the next try waits
   bag_backup_retry_min, and twice as long after each further failure, up
   to bag_backup_retry_max, as Postfix backs off. A try that leaves
   nothing waiting ends the schedule. The schedule is kept in the registry
   (backup/<domain>), so a restart goes on where it was.

   A try is a flush by the bag-flush listener like any other (the domain's
   lock: never two at once, with ETRN and doveadm too), asked with
   "backup": the flush bounces what waited longer than the bag's retry
   period, and warns about what waited bag_backup_delay_warning. */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "str-sanitize.h"
#include "ioloop.h"
#include "master-service.h"
#include "mirror-registry.h"
#include "bag-registry.h"
#include "bag-flush-client.h"
#include "bag-service.h"

#define BAG_BACKUP_CHECK_MAX_MSECS (30*1000)

struct bag_backup_try {
	char *domain;
	struct bag_flush_client *client;
};

struct bag_backup {
	struct timeout *to;
	ARRAY(struct bag_backup_try *) tries;
};

static struct bag_backup bag_backup;

static bool bag_backup_trying(const char *domain)
{
	struct bag_backup_try *try;

	array_foreach_elem(&bag_backup.tries, try) {
		if (strcmp(try->domain, domain) == 0)
			return TRUE;
	}
	return FALSE;
}

static void bag_backup_try_free(struct bag_backup_try *try)
{
	struct bag_backup_try *const *tries;
	unsigned int i, count;

	tries = array_get(&bag_backup.tries, &count);
	for (i = 0; i < count; i++) {
		if (tries[i] == try) {
			array_delete(&bag_backup.tries, i, 1);
			break;
		}
	}
	bag_flush_client_deinit(&try->client);
	i_free(try->domain);
	i_free(try);
}

/* Whether nothing waits in the bag: the counter every flush sets to what
   it left (and LMTP increments). */
static bool bag_backup_bag_empty(struct registry *reg, const char *domain)
{
	unsigned int count;
	const char *error;
	int ret;

	ret = bag_registry_count_get(reg, domain, &count, &error);
	if (ret < 0) {
		e_error(bag_service.event, "backup %s: %s", domain, error);
		return FALSE;
	}
	return ret > 0 && count == 0;
}

/* Record how a try went: done (nothing waits), failed, or not run. A try
   that failed but left nothing waiting (everything bounced when the
   retry period ran out) ends the schedule too: there is nothing left to
   retry. */
static void
bag_backup_schedule(const char *domain, bool done, const char *why)
{
	struct registry *reg;
	struct bag_backup_state state;
	const char *error;

	if (bag_service_registry_open(&reg, &error) < 0) {
		e_error(bag_service.event, "backup %s: %s", domain, error);
		return;
	}
	if (bag_registry_backup_get(reg, domain, &state, &error) < 0) {
		/* broken: start the schedule again */
		e_error(bag_service.event, "backup %s: %s", domain, error);
		i_zero(&state);
	}
	if (!done && bag_backup_bag_empty(reg, domain)) {
		e_info(bag_service.event, "backup %s: try %u failed (%s), but "
		       "nothing waits any more", domain, state.failures + 1,
		       str_sanitize(why, 200));
		done = TRUE;
	}
	if (done) {
		i_zero(&state);
	} else {
		state.interval = state.interval == 0 ? bag_service.retry_min :
			I_MIN(state.interval * 2, bag_service.retry_max);
		state.next = ioloop_time + state.interval;
		state.failures++;
		e_info(bag_service.event, "backup %s: try %u failed (%s): "
		       "next in %u s", domain, state.failures,
		       str_sanitize(why, 200), state.interval);
	}
	if (bag_registry_backup_set(reg, domain, &state, &error) < 0)
		e_error(bag_service.event, "backup %s: %s", domain, error);
	registry_deinit(&reg);
}

static void
bag_backup_try_reply(const struct bag_flush_reply *reply, void *context)
{
	struct bag_backup_try *try = context;

	/* the client frees itself after this */
	try->client = NULL;
	switch (reply->status) {
	case BAG_FLUSH_REPLY_BUSY:
		/* an ETRN or doveadm flush is at it: look again at the next
		   check */
		break;
	case BAG_FLUSH_REPLY_DONE:
		/* nothing waits once every message is delivered or
		   bounced */
		bag_backup_schedule(try->domain,
				    reply->error == NULL &&
				    reply->deferred == 0,
				    reply->error != NULL ? reply->error :
				    "messages still wait");
		break;
	case BAG_FLUSH_REPLY_FAIL:
		bag_backup_schedule(try->domain, FALSE, reply->error);
		break;
	}
	bag_backup_try_free(try);
}

static void bag_backup_try_start(const char *domain)
{
	struct bag_backup_try *try;
	const char *error;

	try = i_new(struct bag_backup_try, 1);
	try->domain = i_strdup(domain);
	if (bag_flush_client_request(bag_service.base_dir, domain, NULL,
				     BAG_FLUSH_REQUEST_FLAG_WAIT |
				     BAG_FLUSH_REQUEST_FLAG_BACKUP,
				     bag_backup_try_reply, try, &try->client,
				     &error) < 0) {
		e_error(bag_service.event, "backup %s: %s", domain, error);
		i_free(try->domain);
		i_free(try);
		return;
	}
	e_debug(bag_service.event, "backup %s: trying", domain);
	array_push_back(&bag_backup.tries, &try);
}

/* Whether the bag is due for a try now. */
static bool
bag_backup_is_due(struct registry *reg, const struct bag_def *def)
{
	struct bag_backup_state state;
	unsigned int count;
	int ret;
	const char *error;

	if (bag_registry_backup_get(reg, def->domain, &state, &error) < 0) {
		e_error(bag_service.event, "backup %s: %s", def->domain,
			error);
		i_zero(&state);
	}
	/* a try only when mail waits (the count is a hint, set right by
	   every flush): an empty bag is never retried, even if a retry was
	   pending when the bag emptied (ETRN, doveadm bag flush) */
	ret = bag_registry_count_get(reg, def->domain, &count, &error);
	if (ret < 0) {
		e_error(bag_service.event, "backup %s: %s", def->domain,
			error);
		count = 1;
	} else if (ret == 0) {
		/* no counter (lost): whether mail waits is unknown, and the
		   try's flush sets it */
		count = 1;
	}
	if (count == 0) {
		if (state.next != 0) {
			i_zero(&state);
			if (bag_registry_backup_set(reg, def->domain, &state,
						    &error) < 0) {
				e_error(bag_service.event, "backup %s: %s",
					def->domain, error);
			}
		}
		return FALSE;
	}
	return state.next == 0 || state.next <= ioloop_time;
}

static void bag_backup_check(void *context ATTR_UNUSED)
{
	struct registry *reg;
	ARRAY_TYPE(bag_def) defs;
	const struct bag_def *def;
	const char *error;

	if (bag_service_registry_open(&reg, &error) < 0) {
		e_error(bag_service.event, "backup: %s", error);
		return;
	}
	T_BEGIN {
		t_array_init(&defs, 16);
		if (bag_registry_list(reg, pool_datastack_create(), &defs,
				      &error) < 0)
			e_error(bag_service.event, "backup: %s", error);
		array_foreach(&defs, def) {
			if ((def->modes & BAG_MODE_BACKUP) == 0 ||
			    bag_backup_trying(def->domain) ||
			    !bag_backup_is_due(reg, def))
				continue;
			bag_backup_try_start(def->domain);
		}
	} T_END;
	registry_deinit(&reg);
}

void bag_backup_run(void)
{
	unsigned int msecs;
	struct bag_backup_try *try;

	/* often enough for the shortest retry interval */
	msecs = I_MIN(bag_service.retry_min * 1000 / 2,
		      BAG_BACKUP_CHECK_MAX_MSECS);
	msecs = I_MAX(msecs, 1000);
	i_array_init(&bag_backup.tries, 8);
	bag_backup.to = timeout_add(msecs, bag_backup_check, NULL);
	e_debug(bag_service.event, "backup: checking every %u ms", msecs);
	master_service_run(master_service, NULL);
	timeout_remove(&bag_backup.to);
	while (array_count(&bag_backup.tries) > 0) {
		try = array_idx_elem(&bag_backup.tries, 0);
		bag_backup_try_free(try);
	}
	array_free(&bag_backup.tries);
}
