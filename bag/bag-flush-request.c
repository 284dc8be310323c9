/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* The bag-flush listener: every flush to a customer's host runs here, in
   a bag process of its own, as the mail user. The protocol is in
   bag-flush-client.h: one request per connection, answered when the
   flush has ended if the asker waits (doveadm bag flush, the backup
   scheduler), not at all if it doesn't (an ETRN process, which answers
   its client before the mail moves).

   One flush per domain runs at a time (the store's lock). A request
   without "wait" that finds the lock taken leaves a request mark and
   ends; the running flush takes the mark before it lets the lock go and
   runs again, so mail that arrived after it last looked isn't left
   behind. */

#include "lib.h"
#include "str.h"
#include "ioloop.h"
#include "str-sanitize.h"
#include "strescape.h"
#include "ostream.h"
#include "connection.h"
#include "master-service.h"
#include "bag-registry.h"
#include "bag-store.h"
#include "bag-flush.h"
#include "bag-flush-client.h"
#include "bag-service.h"
#include "bag-input.h"

/* how long the request may take to come */
#define BAG_FLUSH_REQUEST_TIMEOUT_SECS 10

struct bag_flush_request {
	const char *domain;
	/* NULL: the bag's ETRN host */
	const char *host;
	bool wait;
	/* asked by the backup scheduler */
	bool backup;
};

static void
bag_flush_result_add(struct bag_flush_result *total,
		     const struct bag_flush_result *result)
{
	total->delivered += result->delivered;
	total->deferred = result->deferred;
	total->bounced += result->bounced;
	total->broken = result->broken;
	total->error = result->error;
	total->remaining = result->remaining;
	total->usecs += result->usecs;
}

/* Flush while requests come in, holding the lock. */
static void
bag_flush_locked(struct registry *reg, const struct bag_def *def,
		 struct bag_store *store, const char *host, in_port_t port,
		 const char *how, struct bag_flush_result *total)
{
	struct bag_flush_policy policy, *policyp = NULL;
	struct bag_flush_result result;
	const char *error;
	int ret;

	while ((ret = bag_store_flush_request_take(store, &error)) > 0) {
		if ((def->modes & BAG_MODE_BACKUP) != 0) {
			/* a backup bag gives up on what waited too long,
			   however its flush was asked for */
			i_zero(&policy);
			policy.retry_period = def->retry_period;
			policy.give_up_before = ioloop_time -
				(time_t)def->retry_period;
			if (bag_service.delay_warning > 0) {
				policy.warn_before = ioloop_time -
					(time_t)bag_service.delay_warning;
			}
			policyp = &policy;
		}
		(void)bag_flush_to_host(store, host, port,
					bag_service.timeout_msecs, policyp,
					bag_service.event, &result);
		bag_flush_finished(reg, def, how, &result, bag_service.event);
		bag_flush_result_add(total, &result);
	}
	if (ret < 0)
		e_error(bag_service.event, "%s", error);
}

/* Returns 1 if flushed (total_r), 0 if another process is flushing the
   domain, -1 if the flush couldn't start (error_r). */
static int
bag_flush_domain(const struct bag_flush_request *req,
		 struct bag_flush_result *total_r, const char **error_r)
{
	struct registry *reg;
	struct bag_store *store = NULL;
	struct bag_def def;
	const char *host_str, *host, *error;
	const char *how = req->backup ? "backup" :
		(req->wait ? "doveadm" : "etrn");
	in_port_t port;
	int ret;

	i_zero(total_r);
	if (bag_service_registry_open(&reg, error_r) < 0)
		return -1;
	ret = bag_registry_get(reg, req->domain, pool_datastack_create(), &def,
			       error_r);
	if (ret == 0) {
		*error_r = t_strdup_printf("%s is not bagged", req->domain);
		ret = -1;
	}
	host_str = req->host != NULL ? req->host : def.host;
	if (ret > 0 && host_str == NULL) {
		*error_r = t_strdup_printf("%s has no ETRN host", req->domain);
		ret = -1;
	}
	if (ret > 0)
		ret = bag_host_parse(host_str, &host, &port, error_r);
	if (ret >= 0) {
		ret = bag_store_open(bag_service.storage_service, def.user,
				     "bag", TRUE, bag_service.event, &store,
				     error_r);
	}
	/* the mark first: a running flush that sees it flushes again */
	if (ret >= 0)
		ret = bag_store_flush_request(store, error_r);
	while (ret >= 0) {
		ret = bag_store_lock(store, error_r);
		if (ret <= 0) {
			if (ret == 0 && req->wait) {
				/* the running flush doesn't report to us */
				(void)bag_store_flush_request_take(store,
								   &error);
			}
			break;
		}
		bag_flush_locked(reg, &def, store, host, port, how, total_r);
		bag_store_unlock(store);
		ret = 1;
		/* a request that came between the last look and the
		   unlock found the lock taken */
		if (bag_store_flush_request_take(store, &error) <= 0)
			break;
		if (bag_store_flush_request(store, &error) < 0)
			break;
	}
	bag_store_close(&store);
	registry_deinit(&reg);
	return ret;
}

struct bag_flush_conn {
	struct connection conn;
};

static struct connection_list *bag_flush_conns;

static int
bag_flush_request_parse(const char *const *args,
			struct bag_flush_request *req_r, const char **error_r)
{
	const char *domain, *error;

	i_zero(req_r);
	if (args[0] == NULL || strcmp(args[0], "FLUSH") != 0 ||
	    args[1] == NULL) {
		*error_r = t_strdup_printf("Invalid request '%s'",
			str_sanitize(t_strarray_join(args, " "), 80));
		return -1;
	}
	if (bag_domain_parse(args[1], &domain, &error) < 0) {
		*error_r = error;
		return -1;
	}
	req_r->domain = domain;
	for (args += 2; *args != NULL; args++) {
		if (str_begins(*args, "host="))
			req_r->host = *args + 5;
		else if (strcmp(*args, "wait") == 0)
			req_r->wait = TRUE;
		else if (strcmp(*args, "backup") == 0)
			req_r->backup = TRUE;
		else {
			*error_r = t_strdup_printf("Invalid request option '%s'",
						   str_sanitize(*args, 40));
			return -1;
		}
	}
	return 0;
}

static void bag_flush_conn_reply(struct connection *conn,
				 const struct bag_flush_reply *reply)
{
	string_t *line = t_str_new(128);

	bag_flush_reply_append(line, reply);
	str_append_c(line, '\n');
	o_stream_nsend(conn->output, str_data(line), str_len(line));
	if (o_stream_flush(conn->output) < 0) {
		e_error(bag_service.event, "bag-flush: write() failed: %s",
			o_stream_get_error(conn->output));
	}
}

static int
bag_flush_conn_input_args(struct connection *conn, const char *const *args)
{
	struct bag_flush_request req;
	struct bag_flush_result result;
	struct bag_flush_reply reply;
	const char *error;
	int ret;

	i_zero(&reply);
	if (bag_flush_request_parse(args, &req, &error) < 0) {
		e_error(bag_service.event, "bag-flush: %s", error);
		reply.status = BAG_FLUSH_REPLY_FAIL;
		reply.error = error;
		bag_flush_conn_reply(conn, &reply);
		return -1;
	}
	ret = bag_flush_domain(&req, &result, &error);
	if (ret < 0) {
		e_error(bag_service.event, "Can't flush %s: %s", req.domain,
			error);
	} else if (ret == 0) {
		e_debug(bag_service.event, "%s is being flushed already%s",
			req.domain, req.wait ? "" : ": it will flush again");
	}
	if (req.wait) {
		if (ret < 0) {
			reply.status = BAG_FLUSH_REPLY_FAIL;
			reply.error = error;
		} else if (ret == 0) {
			reply.status = BAG_FLUSH_REPLY_BUSY;
		} else {
			reply.status = BAG_FLUSH_REPLY_DONE;
			reply.delivered = result.delivered;
			reply.deferred = result.deferred;
			reply.bounced = result.bounced;
			reply.broken = result.broken;
			reply.error = result.error;
		}
		bag_flush_conn_reply(conn, &reply);
	}
	/* one request per connection */
	return -1;
}

static void bag_flush_conn_destroy(struct connection *conn)
{
	struct bag_flush_conn *fconn =
		container_of(conn, struct bag_flush_conn, conn);

	switch (conn->disconnect_reason) {
	case CONNECTION_DISCONNECT_BUFFER_FULL:
		e_error(bag_service.event, "bag-flush: Request too long");
		break;
	case CONNECTION_DISCONNECT_IDLE_TIMEOUT:
		e_error(bag_service.event,
			"bag-flush: Timed out reading the request");
		break;
	default:
		break;
	}
	connection_deinit(conn);
	i_free(fconn);
	bag_service_client_destroyed();
}

static const struct connection_settings bag_flush_conn_set = {
	.service_name_in = BAG_FLUSH_SERVICE_NAME,
	.service_name_out = BAG_FLUSH_SERVICE_NAME,
	.major_version = BAG_FLUSH_PROTOCOL_MAJOR,
	.minor_version = BAG_FLUSH_PROTOCOL_MINOR,
	.input_max_size = BAG_FLUSH_LINE_MAX,
	.output_max_size = SIZE_MAX,
	.input_idle_timeout_secs = BAG_FLUSH_REQUEST_TIMEOUT_SECS,
};

static const struct connection_vfuncs bag_flush_conn_vfuncs = {
	.destroy = bag_flush_conn_destroy,
	.input_args = bag_flush_conn_input_args,
};

void bag_flush_request_serve(const struct master_service_connection *conn)
{
	struct bag_flush_conn *fconn;

	if (bag_flush_conns == NULL) {
		bag_flush_conns = connection_list_init(&bag_flush_conn_set,
						       &bag_flush_conn_vfuncs);
	}
	fconn = i_new(struct bag_flush_conn, 1);
	connection_init_server(bag_flush_conns, &fconn->conn, conn->name,
			       conn->fd, conn->fd);
}

void bag_flush_request_deinit(void)
{
	if (bag_flush_conns != NULL)
		connection_list_deinit(&bag_flush_conns);
}
