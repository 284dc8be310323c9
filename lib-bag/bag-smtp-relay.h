#ifndef BAG_SMTP_RELAY_H
#define BAG_SMTP_RELAY_H

#include "net.h"
#include "bag-def.h"

/* The session to a customer's MTA on a connection of its own (ETRN,
   Backup Domains, doveadm bag flush): Dovecot's lib-smtp client, with
   STARTTLS as bag_tls says, all in the ioloop.

     may      STARTTLS when the MTA offers it, its certificate unchecked;
              in the clear when it offers none, or when TLS fails (one
              more connection, as Postfix's "may" does)
     encrypt  STARTTLS or nothing, the certificate unchecked
     verify   STARTTLS or nothing, the certificate checked against the CA
              file and for the host's name

   With may, the session starts in the clear and, when the MTA's EHLO
   reply lists STARTTLS, ends that session with QUIT and starts another
   with STARTTLS; unless the last flush to the MTA had TLS (tls_last):
   then it starts with STARTTLS, and an MTA that no longer offers it is
   logged as a warning (it may be an attacker removing STARTTLS) before
   the mail goes in the clear. So a steady customer costs one connection,
   with or without TLS. */

struct event;
struct bag_smtp_relay;
struct bag_smtp_sender;

struct bag_smtp_relay_settings {
	const char *host;
	in_port_t port;
	/* the name given in EHLO */
	const char *my_hostname;
	/* how long to wait for the connection and for each reply */
	unsigned int timeout_msecs;
	/* never BAG_TLS_DEFAULT */
	enum bag_tls_mode tls;
	/* the last flush to this MTA had TLS (a hint for may) */
	bool tls_last;
	/* CAs for verify (either may be NULL, not both) */
	const char *ca_file, *ca_dir;
	struct event *event_parent;
};

/* ret: 1 when the session is ready for mail, 0 when the MTA refused it
   (a 4xx/5xx greeting or EHLO, or TLS that encrypt or verify need and
   couldn't have), -1 when it couldn't be reached. error says why (not for
   1). */
typedef void bag_smtp_relay_callback_t(int ret, const char *error,
				       void *context);

/* Connect and start the session; callback is called once, from the
   ioloop (never from inside this call). */
struct bag_smtp_relay *
bag_smtp_relay_start(const struct bag_smtp_relay_settings *set,
		     bag_smtp_relay_callback_t *callback, void *context);
#define bag_smtp_relay_start(set, callback, context) \
	bag_smtp_relay_start(set, (bag_smtp_relay_callback_t *)callback, \
		TRUE ? context : CALLBACK_TYPECHECK(callback, void (*)( \
			int, const char *, typeof(context))))
/* The ready session's sender (bag-smtp-sender.h). */
struct bag_smtp_sender *bag_smtp_relay_get_sender(struct bag_smtp_relay *relay);
/* The TLS of the ready session: FALSE in the clear. protocol_r
   ("TLSv1.3"), cipher_r ("TLS_AES_256_GCM_SHA384"). */
bool bag_smtp_relay_get_tls(struct bag_smtp_relay *relay,
			    const char **protocol_r, const char **cipher_r);
/* End the session (lib-smtp sends QUIT when it can, without waiting for
   the reply) and free the relay: no callback is called after this. */
void bag_smtp_relay_destroy(struct bag_smtp_relay **relay);

#endif
