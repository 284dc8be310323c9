#ifndef BAG_SERVICE_H
#define BAG_SERVICE_H

/* The bag executable: three services, each of many clients per process,
   all running as the mail user, everything in the ioloop.

   service bag (bag): the listeners of the customers' MTAs
     etrn       ETRN (RFC 1985): the customer's MTA asks, from an allowed
                address, that its domain's bag be sent to it
     odmr       ATRN / On-Demand Mail Relay (RFC 2645): the customer's MTA
                authenticates and receives its mail on the same
                connection; a listener with ssl = yes is ODMR over
                implicit TLS
   Both offer STARTTLS when Dovecot's ssl is on, give a client
   bag_first_command_timeout to greet (EHLO/HELO) and take at most
   bag_max_connections_per_ip connections from one address.

   service bag-flush (bag -f): the internal bag-flush listener, which
     flushes domains to their hosts, asked by the ETRN processes, the
     backup scheduler and doveadm bag flush. A service of its own, so
     that no number of external connections can starve it.

   service bag-backup (bag -b): the backup scheduler (bag-backup.c). */

#include "net.h"
#include "bag-def.h"

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
	/* bag_cram_md5_auth_socket: the socket of the auth process that
	   offers CRAM-MD5 to ODMR only (NULL: none) */
	char *cram_md5_auth_socket_path;
	/* bag_odmr_plaintext_auth: offer PLAIN and LOGIN to clients that
	   are neither on loopback nor on TLS */
	bool plaintext_auth;
	/* backup bags: bag_backup_retry_min and _max, the first interval
	   between tries and the longest (doubling between them), and
	   bag_backup_delay_warning, after how long a waiting message's
	   sender is told (0: never); in seconds */
	unsigned int retry_min, retry_max, delay_warning;
	/* bag_tls: STARTTLS to the customers' MTAs, for bags without a
	   mode of their own; bag_tls_ca_file (else Dovecot's
	   ssl_client_ca_file) and ssl_client_ca_dir for verify */
	enum bag_tls_mode tls;
	char *tls_ca_file, *tls_ca_dir;
	/* bag_first_command_timeout: how long a new connection may take to
	   greet with EHLO/HELO */
	unsigned int first_command_timeout_msecs;
	/* bag_max_connections_per_ip (0: no limit) */
	unsigned int max_connections_per_ip;
};

extern struct bag_service bag_service;

/* Open the registry, or return -1 with an error. */
int bag_service_registry_open(struct registry **reg_r,
			      const char **error_r);
/* A listener's client that came from remote_ip is gone. */
void bag_service_client_destroyed(const struct ip_addr *remote_ip);

void bag_etrn_client_create(const struct master_service_connection *conn);
void bag_etrn_deinit(void);
void bag_odmr_client_create(const struct master_service_connection *conn);
void bag_odmr_deinit(void);

/* The backup scheduler, run by the service started with -b: one process,
   no listener, retrying the backup bags until master stops it. */
void bag_backup_run(void);

/* Serve a bag-flush connection (bag -f). */
void bag_flush_request_serve(const struct master_service_connection *conn);
/* The service stops: every flush running ends now, what it confirmed
   stays confirmed, the rest waits. */
void bag_flush_request_deinit(void);

#endif
