#ifndef BAG_INPUT_H
#define BAG_INPUT_H

/* Parsers of what administrators (doveadm bag) and clients (ETRN, ATRN)
   give: bounded, and with an error that names the problem. */

#include "net.h"

/* A domain as the administrator or a client gives it: lowercased, checked
   to be a DNS name of two labels or more. */
int bag_domain_parse(const char *str, const char **domain_r,
		     const char **error_r);
/* "host", "host:port", "[ip6]", "[ip6]:port"; the port is 25 if not
   given. */
int bag_host_parse(const char *str, const char **host_r, in_port_t *port_r,
		   const char **error_r);
/* An address or a network (ADDR/BITS), as net_parse_range() reads it. */
bool bag_net_is_valid(const char *str, const char **error_r);
/* An address of the recipient list: "local@domain" of the bag's domain,
   lowercased, without a recipient detail (see mirror_address_keys()). */
int bag_rcpt_parse(const char *str, const char *domain, const char **addr_r,
		   const char **error_r);

/* A Backup Domain's retry period: a number of seconds ("3600"), or a
   time as Dovecot's settings read it ("5d", "36h", "3600 s"); 1 second
   to 365 days. */
int bag_retry_period_parse(const char *str, unsigned int *secs_r,
			   const char **error_r);

#endif
