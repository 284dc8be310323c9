#ifndef BAG_SERVICE_H
#define BAG_SERVICE_H

/* The bag service: one executable, three listeners, one connection per
   process (client_limit = 1), running as the mail user.

     etrn       ETRN (RFC 1985): the customer's MTA asks, from an allowed
                address, that its domain's bag be sent to it
     odmr       ATRN / On-Demand Mail Relay (RFC 2645): the customer's MTA
                authenticates and receives its mail on the same connection
     bag-flush  internal: flushes one domain to its host, asked by the
                ETRN process (which answers at once and is not the one
                to send the mail) */

#include "net.h"

struct master_service_connection;
struct mail_storage_service_ctx;
struct registry;

struct bag_service {
	struct mail_storage_service_ctx *storage_service;
	struct event *event;
	/* mirror_dict (the strings are the process's own copies) */
	char *dict_uri;
	char *base_dir;
	/* the name in greetings and EHLO replies */
	char *hostname;
	/* bag_timeout: how long to wait for each reply of the customer */
	unsigned int timeout_msecs;
	/* bag_auth_socket: Dovecot auth's client socket for ATRN */
	char *auth_socket_path;
	/* bag_odmr_plaintext_auth: offer PLAIN and LOGIN to non-local
	   clients (there is no TLS on the ODMR port) */
	bool plaintext_auth;
	/* backup bags: bag_backup_retry_min and _max, the first interval
	   between tries and the longest (doubling between them), and
	   bag_backup_delay_warning, after how long a waiting message's
	   sender is told (0: never); in seconds */
	unsigned int retry_min, retry_max, delay_warning;
};

extern struct bag_service bag_service;

/* Open the registry, or return -1 with an error. */
int bag_service_registry_open(struct registry **reg_r,
			      const char **error_r);
/* The client this process served is gone: let the process go. */
void bag_service_client_destroyed(void);

void bag_etrn_client_create(const struct master_service_connection *conn);
/* The backup scheduler, run by the service started with -b: one process,
   no listener, retrying the backup bags until master stops it. */
void bag_backup_run(void);
void bag_odmr_client_create(const struct master_service_connection *conn);

/* Serve one bag-flush request: read it and flush (blocking). */
void bag_flush_request_serve(const struct master_service_connection *conn);
void bag_flush_request_deinit(void);

#endif
