#ifndef BAG_LISTENER_H
#define BAG_LISTENER_H

/* What the ETRN and ODMR listeners share on each connection: its streams,
   TLS (STARTTLS through lib-smtp's server, with Dovecot's ssl_cert and
   ssl_key, or implicit TLS on a listener with ssl = yes) and the time a
   new client has to greet. */

#include "net.h"

struct istream;
struct ostream;
struct event;
struct ssl_iostream;
struct master_service_connection;

struct bag_listener {
	struct event *event;
	struct ip_addr remote_ip;
	in_port_t remote_port;
	int fd;
	/* the connection's streams as they are now (TLS ones after
	   STARTTLS), referenced */
	struct istream *input;
	struct ostream *output;
	struct ssl_iostream *ssl_iostream;
	/* bag_first_command_timeout: until EHLO/HELO */
	struct timeout *to_first;
	void (*first_timeout)(void *context);
	void *context;
	/* TLS is on */
	bool tls;
	/* its protocol and cipher are logged */
	bool tls_logged;
};

/* The event of a listener's client: a child of the bag service's, with
   the protocol ("etrn", "odmr") and the client's address as fields and
   in the log prefix. */
struct event *bag_listener_event_create(const char *protocol,
					const struct master_service_connection *conn);

/* Set up the connection's streams (with implicit TLS if the listener has
   ssl = yes). first_timeout is called if the client doesn't greet in
   time. Returns 0, or -1 with an error. */
int bag_listener_init(struct bag_listener *listener,
		      const struct master_service_connection *conn,
		      struct event *event,
		      void (*first_timeout)(void *context), void *context,
		      const char **error_r);
void bag_listener_deinit(struct bag_listener *listener);

/* Whether STARTTLS is offered: Dovecot's ssl is on and the connection has
   no TLS yet. */
bool bag_listener_tls_offered(const struct bag_listener *listener);
/* lib-smtp's conn_start_tls: TLS on the streams after STARTTLS's 220. */
int bag_listener_start_tls(struct bag_listener *listener,
			   struct istream **input, struct ostream **output);
/* The client greeted: it may idle as long as lib-smtp's server allows
   (and on TLS, the session's protocol and cipher are logged). */
void bag_listener_greeted(struct bag_listener *listener);

#endif
