/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* The connection side of the ETRN and ODMR listeners: streams, TLS and
   the first command's time limit (bag-listener.h). */

#include "lib.h"
#include "ioloop.h"
#include "istream.h"
#include "ostream.h"
#include "iostream-ssl.h"
#include "master-service.h"
#include "master-service-ssl.h"
#include "bag-service.h"
#include "bag-listener.h"

/* the longest command line is lib-smtp's to check: this only bounds the
   buffer */
#define BAG_LISTENER_MAX_INPUT_BUFFER (64*1024)

static int
bag_listener_tls(struct bag_listener *listener, struct istream **input,
		 struct ostream **output, const char **error_r)
{
	const char *error;

	if (master_service_ssl_init(master_service, input, output,
				    &listener->ssl_iostream, &error) < 0) {
		*error_r = t_strdup_printf("TLS initialization failed: %s",
					   error);
		return -1;
	}
	listener->tls = TRUE;
	listener->tls_logged = FALSE;
	return 0;
}

static void bag_listener_first_timeout(struct bag_listener *listener)
{
	timeout_remove(&listener->to_first);
	e_info(listener->event, "No EHLO/HELO within %u ms "
	       "(bag_first_command_timeout): disconnecting",
	       bag_service.first_command_timeout_msecs);
	listener->first_timeout(listener->context);
}

struct event *bag_listener_event_create(const char *protocol,
					const struct master_service_connection *conn)
{
	const char *ip = net_ip2addr(&conn->remote_ip);
	struct event *event;

	event = event_create(bag_service.event);
	event_add_str(event, "protocol", protocol);
	event_add_str(event, "remote_ip", ip);
	event_set_append_log_prefix(event, t_strdup_printf("%s(%s): ",
							   protocol, ip));
	return event;
}

int bag_listener_init(struct bag_listener *listener,
		      const struct master_service_connection *conn,
		      struct event *event,
		      void (*first_timeout)(void *context), void *context,
		      const char **error_r)
{
	i_zero(listener);
	listener->event = event;
	listener->remote_ip = conn->remote_ip;
	listener->remote_port = conn->remote_port;
	listener->first_timeout = first_timeout;
	listener->context = context;
	/* closed in bag_listener_deinit(), after the streams (lib-smtp
	   doesn't close a connection it was given as streams) */
	listener->fd = conn->fd;
	listener->input = i_stream_create_fd(conn->fd,
					     BAG_LISTENER_MAX_INPUT_BUFFER);
	listener->output = o_stream_create_fd(conn->fd, SIZE_MAX);
	i_stream_set_name(listener->input, net_ip2addr(&conn->remote_ip));
	o_stream_set_name(listener->output, net_ip2addr(&conn->remote_ip));
	o_stream_set_no_error_handling(listener->output, TRUE);
	if (conn->ssl && bag_listener_tls(listener, &listener->input,
					  &listener->output, error_r) < 0)
		return -1;
	listener->to_first = timeout_add(
		bag_service.first_command_timeout_msecs,
		bag_listener_first_timeout, listener);
	return 0;
}

void bag_listener_deinit(struct bag_listener *listener)
{
	timeout_remove(&listener->to_first);
	ssl_iostream_destroy(&listener->ssl_iostream);
	i_stream_destroy(&listener->input);
	o_stream_destroy(&listener->output);
	i_close_fd(&listener->fd);
}

bool bag_listener_tls_offered(const struct bag_listener *listener)
{
	return !listener->tls && master_service_ssl_is_enabled(master_service);
}

int bag_listener_start_tls(struct bag_listener *listener,
			   struct istream **input, struct ostream **output)
{
	const char *error;

	/* lib-smtp's server was made from our streams: our references go
	   to the TLS streams, lib-smtp's are swapped when this returns */
	i_assert(*input == listener->input && *output == listener->output);
	if (bag_listener_tls(listener, &listener->input, &listener->output,
			     &error) < 0) {
		e_error(listener->event, "%s", error);
		return -1;
	}
	*input = listener->input;
	*output = listener->output;
	return 0;
}

void bag_listener_greeted(struct bag_listener *listener)
{
	timeout_remove(&listener->to_first);
	/* the first EHLO/HELO on TLS: the handshake is done */
	if (listener->tls && !listener->tls_logged &&
	    ssl_iostream_is_handshaked(listener->ssl_iostream)) {
		listener->tls_logged = TRUE;
		e_info(listener->event, "TLS: %s",
		       ssl_iostream_get_security_string(
				listener->ssl_iostream));
	}
}
