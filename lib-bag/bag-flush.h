#ifndef BAG_FLUSH_H
#define BAG_FLUSH_H

#include "net.h"
#include "bag-def.h"

/* Sending a bag to the customer's MTA, in the ioloop: nothing here waits
   outside it, so a service that runs flushes serves its other clients
   meanwhile and stops (dovecot stop) in the middle of one.

   Each message is sent with its stored envelope. It leaves the bag only
   when every recipient is done: accepted (2xx after DATA), or refused for
   good (5xx), in which case its sender gets a delivery status
   notification (RFC 3464) when it asked for one. A recipient that got a
   4xx stays; the recipients of the message that are done are recorded in
   the bag's journal (bag-journal.h), and the next flush sends it to the
   waiting ones only.

   Exactly once, up to the message in flight: a flush cut off at any point
   (a connection lost, kill -9, dovecot stop) may send again only the
   message whose 250 it hadn't recorded yet, and never sends a
   notification twice. Every removal is committed as its message is
   confirmed. */

struct bag_def;
struct bag_store;
struct bag_smtp_sender;
struct registry;
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
	/* the session's TLS: protocol and cipher, or NULL in the clear */
	const char *tls_protocol, *tls_cipher;
	/* nothing was in the bag: no session was opened, and the result
	   says nothing about the customer's MTA */
	bool empty;
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

struct bag_flush_settings {
	/* names the peer in notifications (Remote-MTA) */
	const char *remote_mta;
	/* NULL: none */
	const struct bag_flush_policy *policy;
	/* the registry and the domain whose message counter follows each
	   removal (reg may be NULL) */
	struct registry *reg;
	const char *domain;
};

typedef void bag_flush_callback_t(const struct bag_flush_result *result,
				  void *context);

/* Send every message of store with sender (a session that is ready), or
   with sender NULL only apply the policy to each message, sending none
   (the customer's MTA couldn't be reached: why goes into the
   notifications). The caller holds the store's lock. event is the
   flush's event (bag_flush_event_create()). callback gets the result,
   from the ioloop, unless the flush is aborted. */
struct bag_flush *
bag_flush_start(struct bag_store *store, struct bag_smtp_sender *sender,
		const char *why, const struct bag_flush_settings *set,
		struct event *event, bag_flush_callback_t *callback,
		void *context);
#define bag_flush_start(store, sender, why, set, event, callback, context) \
	bag_flush_start(store, sender, why, set, event, \
		(bag_flush_callback_t *)callback, TRUE ? context : \
		CALLBACK_TYPECHECK(callback, void (*)( \
			const struct bag_flush_result *, typeof(context))))
/* Stop now (no callback): the message in flight stays, as a lost
   connection leaves it. result_r gets what was done, with reason as its
   error. */
void bag_flush_abort(struct bag_flush **flush, const char *reason,
		     struct bag_flush_result *result_r);

/* A whole flush to the customer's host: connect (with STARTTLS as tls
   says), send, end the session. When the host can't be reached, what
   waited too long for the policy bounces. */
struct bag_flush_host_settings {
	const char *host;
	in_port_t port;
	const char *my_hostname;
	unsigned int timeout_msecs;
	/* never BAG_TLS_DEFAULT */
	enum bag_tls_mode tls;
	/* the last flush of the bag had TLS (bag-smtp-relay.h) */
	bool tls_last;
	const char *ca_file, *ca_dir;
	struct bag_flush_settings flush;
};
struct bag_flush_host *
bag_flush_host_start(struct bag_store *store,
		     const struct bag_flush_host_settings *set,
		     struct event *event, bag_flush_callback_t *callback,
		     void *context);
#define bag_flush_host_start(store, set, event, callback, context) \
	bag_flush_host_start(store, set, event, \
		(bag_flush_callback_t *)callback, TRUE ? context : \
		CALLBACK_TYPECHECK(callback, void (*)( \
			const struct bag_flush_result *, typeof(context))))
void bag_flush_host_abort(struct bag_flush_host **flush,
			  const char *reason,
			  struct bag_flush_result *result_r);

/* The event of a flush, bag_flush_finished, created when the flush
   starts, so that its duration is the flush's. */
struct event *bag_flush_event_create(struct event *parent);
/* Log the flush, send its event (and unref it), and record the flush in
   the registry's status of the bag (and its message counter). An empty
   bag's flush changes no status. */
void bag_flush_finished(struct registry *reg, const struct bag_def *def,
			const char *how, const struct bag_flush_result *result,
			struct event **event);

#endif
