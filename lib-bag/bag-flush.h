#ifndef BAG_FLUSH_H
#define BAG_FLUSH_H

#include "net.h"

/* Sending a bag to the customer's MTA.

   Each message is sent with its stored envelope. It leaves the bag only
   when every recipient is done: accepted (2xx after DATA), or refused for
   good (5xx), in which case its sender gets a delivery status
   notification (RFC 3464) when it asked for one. A recipient that got a
   4xx stays: when others of the same message are done, the message is
   stored again with only the waiting recipients and the original removed.
   A connection that fails midway stops the flush; what was not confirmed
   stays, so at worst a message is sent again. */

struct bag_def;
struct bag_store;
struct bag_smtp_client;
struct event;


/* The category of the bag's events (log prefix "bag: ") */
extern struct event_category event_category_bag;

struct bag_flush_result {
	/* messages that left the bag */
	unsigned int delivered;
	/* messages still waiting for a recipient after the flush */
	unsigned int deferred;
	/* recipients refused with a 5xx reply */
	unsigned int bounced;
	/* messages whose stored envelope can't be read: kept, logged */
	unsigned int broken;
	/* messages in the bag when the flush ended; UINT_MAX if unknown */
	unsigned int remaining;
	/* why the flush ended early (connection lost, a refused session),
	   or NULL */
	const char *error;
	/* how long it took (with the connection, for bag_flush_to_host()) */
	uint64_t usecs;
};

/* What a backup bag does with mail that has waited long: a message saved
   before give_up_before that still waits bounces (its recipients fail
   with 4.4.7, delivery time expired); one saved before warn_before gets a
   single "delayed" notification. 0 turns either off. */
struct bag_flush_policy {
	time_t give_up_before;
	time_t warn_before;
	/* Will-Retry-Until is the save date plus this */
	unsigned int retry_period;
};

/* Send every message of store over client, which has been started.
   remote_mta names the peer in notifications. event_parent may be NULL.
   The caller holds the
   store's lock. Returns 0 if the whole bag was tried, -1 if the flush
   stopped early (result_r->error). */
int bag_flush_run(struct bag_store *store, struct bag_smtp_client *client,
		  const char *remote_mta,
		  const struct bag_flush_policy *policy, struct event *event,
		  struct bag_flush_result *result_r);

/* Connect to host:port, start an SMTP session, run the flush and end it
   with QUIT. */
int bag_flush_to_host(struct bag_store *store, const char *host,
		      in_port_t port, unsigned int timeout_msecs,
		      const struct bag_flush_policy *policy,
		      struct event *event, struct bag_flush_result *result_r);
/* Apply policy to every message without sending any, after the
   customer's MTA couldn't be reached (why, for the notifications). */
void bag_flush_give_up(struct bag_store *store,
		       const struct bag_flush_policy *policy, const char *why,
		       struct event *event, struct bag_flush_result *result);

/* Log the flush as the event bag_flush_finished and record it in the
   registry's status of the bag (and its message counter). */
void bag_flush_finished(struct registry *reg, const struct bag_def *def,
			const char *how, const struct bag_flush_result *result,
			struct event *event);

#endif
