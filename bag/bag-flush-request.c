/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* The bag-flush listener (bag -f, service bag-flush): every flush to a
   customer's host runs here, as the mail user, many at once in each
   process, in the ioloop. The protocol is in bag-flush-client.h: one
   request per connection, answered when the flush has ended if the asker
   waits (doveadm bag flush, the backup scheduler), not at all if it
   doesn't (an ETRN process, which answers its client before the mail
   moves).

   One flush per domain runs at a time (the store's lock, which a process
   never takes twice). A request that finds the lock taken leaves a
   request mark and ends; the running flush takes the mark before it lets
   the lock go and runs again, so mail that arrived after it last looked
   isn't left behind.

   When the service stops (dovecot stop), every flush ends where it is:
   what the customer's MTA confirmed stays confirmed, the rest waits. */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "ioloop.h"
#include "str-sanitize.h"
#include "strescape.h"
#include "ostream.h"
#include "connection.h"
#include "master-service.h"
#include "smtp-submit-settings.h"
#include "bag-registry.h"
#include "bag-store.h"
#include "bag-flush.h"
#include "bag-flush-client.h"
#include "bag-service.h"
#include "bag-input.h"

/* how long the request may take to come */
#define BAG_FLUSH_REQUEST_TIMEOUT_SECS 10
#define BAG_FLUSH_SHUTDOWN_REASON "The bag service is shutting down"

struct bag_flush_request {
	const char *domain;
	/* NULL: the bag's ETRN host */
	const char *host;
	bool wait;
	/* asked by the backup scheduler */
	bool backup;
};

struct bag_flush_job {
	pool_t pool;
	struct bag_flush_conn *fconn;
	struct bag_flush_request req;
	const char *how;
	struct registry *reg;
	struct bag_def def;
	struct bag_store *store;
	struct bag_flush_host_settings set;
	struct bag_flush_policy policy;
	struct bag_flush_host *flush;
	struct event *event;
	struct bag_flush_result total;
	struct timeout *to_next;
};

struct bag_flush_conn {
	struct connection conn;
	struct bag_flush_job *job;
};

static struct connection_list *bag_flush_conns;

static void bag_flush_job_next(struct bag_flush_job *job);
static void bag_flush_job_end(struct bag_flush_job *job, int ret,
			      const char *error);

static void
bag_flush_result_add(struct bag_flush_result *total,
		     const struct bag_flush_result *result, pool_t pool)
{
	if (result->empty)
		return;
	total->delivered += result->delivered;
	total->deferred = result->deferred;
	total->bounced += result->bounced;
	total->broken = result->broken;
	total->error = p_strdup(pool, result->error);
	total->remaining = result->remaining;
}

/*
 * The flush of one domain
 */

static void bag_flush_conn_reply(struct connection *conn,
				 const struct bag_flush_reply *reply)
{
	string_t *line = t_str_new(128);

	bag_flush_reply_append(line, reply);
	str_append_c(line, '\n');
	o_stream_nsend(conn->output, str_data(line), str_len(line));
	if (o_stream_flush(conn->output) < 0) {
		e_error(bag_service.event, "write() failed: %s",
			o_stream_get_error(conn->output));
	}
}

static void bag_flush_job_free(struct bag_flush_job **_job)
{
	struct bag_flush_job *job = *_job;

	*_job = NULL;
	timeout_remove(&job->to_next);
	event_unref(&job->event);
	bag_store_close(&job->store);
	if (job->reg != NULL)
		registry_deinit(&job->reg);
	pool_unref(&job->pool);
}

static void
bag_flush_job_flushed(const struct bag_flush_result *result,
		      struct bag_flush_job *job)
{
	job->flush = NULL;
	bag_flush_finished(job->reg, &job->def, job->how, result,
			   &job->event);
	bag_flush_result_add(&job->total, result, job->pool);
	/* from the ioloop: the flush that called isn't freed yet */
	job->to_next = timeout_add_short(0, bag_flush_job_next, job);
}

static void bag_flush_job_start_flush(struct bag_flush_job *job)
{
	struct bag_flush_host_settings set = job->set;

	if ((job->def.modes & BAG_MODE_BACKUP) != 0) {
		/* a backup bag gives up on what waited too long, however
		   its flush was asked for */
		i_zero(&job->policy);
		job->policy.retry_period = job->def.retry_period;
		job->policy.give_up_before = ioloop_time -
			(time_t)job->def.retry_period;
		if (bag_service.delay_warning > 0) {
			job->policy.warn_before = ioloop_time -
				(time_t)bag_service.delay_warning;
		}
		set.flush.policy = &job->policy;
	}
	job->event = bag_flush_event_create(bag_service.event);
	job->flush = bag_flush_host_start(job->store, &set, job->event,
					  bag_flush_job_flushed, job);
}

/* Flush while requests come in, holding the lock; let it go and look
   once more. */
static void bag_flush_job_next(struct bag_flush_job *job)
{
	const char *error;
	int ret;

	timeout_remove(&job->to_next);
	ret = bag_store_flush_request_take(job->store, &error);
	if (ret > 0) {
		bag_flush_job_start_flush(job);
		return;
	}
	if (ret < 0)
		e_error(bag_service.event, "%s", error);
	bag_store_unlock(job->store);
	/* a request that came between the last look and the unlock found
	   the lock taken */
	if (bag_store_flush_request_take(job->store, &error) > 0 &&
	    bag_store_flush_request(job->store, &error) == 0) {
		ret = bag_store_lock(job->store, &error);
		if (ret > 0) {
			bag_flush_job_next(job);
			return;
		}
		if (ret < 0)
			e_error(bag_service.event, "%s", error);
	}
	bag_flush_job_end(job, 1, NULL);
}

/* Returns 1 when the flush runs, 0 if another flush of the domain runs,
   -1 if it couldn't start (error_r). */
static int bag_flush_job_start(struct bag_flush_job *job,
			       const char **error_r)
{
	const struct bag_flush_request *req = &job->req;
	struct bag_status status;
	const char *host_str, *error;
	int ret;

	if (bag_service_registry_open(&job->reg, error_r) < 0)
		return -1;
	ret = bag_registry_get(job->reg, req->domain, job->pool, &job->def,
			       error_r);
	if (ret == 0) {
		*error_r = t_strdup_printf("%s is not bagged", req->domain);
		return -1;
	}
	if (ret < 0)
		return -1;
	host_str = req->host != NULL ? req->host : job->def.host;
	if (host_str == NULL) {
		*error_r = t_strdup_printf("%s has no ETRN host", req->domain);
		return -1;
	}
	if (bag_host_parse(host_str, &job->set.host, &job->set.port,
			   error_r) < 0)
		return -1;
	job->set.host = p_strdup(job->pool, job->set.host);
	job->set.my_hostname = NULL;
	job->set.timeout_msecs = bag_service.timeout_msecs;
	job->set.tls = job->def.tls != BAG_TLS_DEFAULT ? job->def.tls :
		bag_service.tls;
	job->set.ca_file = bag_service.tls_ca_file;
	job->set.ca_dir = bag_service.tls_ca_dir;
	if (job->set.tls == BAG_TLS_VERIFY && job->set.ca_file == NULL &&
	    job->set.ca_dir == NULL) {
		*error_r = "TLS mode verify needs the CAs: set bag_tls_ca_file "
			"(or ssl_client_ca_file or ssl_client_ca_dir)";
		return -1;
	}
	/* may: STARTTLS at once if the last flush had it */
	if (bag_registry_status_get(job->reg, req->domain,
				    pool_datastack_create(), &status,
				    &error) < 0)
		e_error(bag_service.event, "%s", error);
	else if (status.tls != NULL && strcmp(status.tls, "none") != 0)
		job->set.tls_last = TRUE;
	job->set.flush.reg = job->reg;
	job->set.flush.domain = job->def.domain;

	if (bag_store_open(bag_service.storage_service, job->def.user, "bag",
			   TRUE, bag_service.event, &job->store, error_r) < 0)
		return -1;
	job->set.my_hostname = p_strdup(job->pool,
					job->store->submit_set->hostname);
	/* the mark first: a running flush that sees it flushes again */
	if (bag_store_flush_request(job->store, error_r) < 0)
		return -1;
	ret = bag_store_lock(job->store, error_r);
	if (ret <= 0) {
		if (ret == 0 && req->wait) {
			/* the running flush doesn't report to us */
			(void)bag_store_flush_request_take(job->store,
							   &error);
		}
		return ret;
	}
	bag_flush_job_next(job);
	return 1;
}

/* Log and answer how the job went, and free it. */
static void bag_flush_job_reply(struct bag_flush_job *job, int ret,
				const char *error)
{
	struct bag_flush_conn *fconn = job->fconn;
	struct bag_flush_reply reply;

	if (ret < 0) {
		e_error(bag_service.event, "Can't flush %s: %s",
			job->req.domain, error);
	} else if (ret == 0) {
		e_debug(bag_service.event, "%s is being flushed already%s",
			job->req.domain,
			job->req.wait ? "" : ": it will flush again");
	}
	if (job->req.wait) {
		i_zero(&reply);
		if (ret < 0) {
			reply.status = BAG_FLUSH_REPLY_FAIL;
			reply.error = error;
		} else if (ret == 0) {
			reply.status = BAG_FLUSH_REPLY_BUSY;
		} else {
			reply.status = BAG_FLUSH_REPLY_DONE;
			reply.delivered = job->total.delivered;
			reply.deferred = job->total.deferred;
			reply.bounced = job->total.bounced;
			reply.broken = job->total.broken;
			reply.error = job->total.error;
		}
		bag_flush_conn_reply(&fconn->conn, &reply);
	}
	fconn->job = NULL;
	bag_flush_job_free(&job);
}

/* The job ended after its request was read: answer, and close (one
   request per connection). */
static void bag_flush_job_end(struct bag_flush_job *job, int ret,
			      const char *error)
{
	struct bag_flush_conn *fconn = job->fconn;

	bag_flush_job_reply(job, ret, error);
	connection_disconnect(&fconn->conn);
	fconn->conn.v.destroy(&fconn->conn);
}

/* The service stops: the flush ends where it is. */
static void bag_flush_job_abort(struct bag_flush_job *job)
{
	struct bag_flush_result result;

	timeout_remove(&job->to_next);
	if (job->flush != NULL) {
		bag_flush_host_abort(&job->flush, BAG_FLUSH_SHUTDOWN_REASON,
				     &result);
		bag_flush_finished(job->reg, &job->def, job->how, &result,
				   &job->event);
		bag_flush_result_add(&job->total, &result, job->pool);
	}
	if (job->total.error == NULL)
		job->total.error = BAG_FLUSH_SHUTDOWN_REASON;
	bag_flush_job_end(job, 1, NULL);
}

/*
 * The connections
 */

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

static int
bag_flush_conn_input_args(struct connection *conn, const char *const *args)
{
	struct bag_flush_conn *fconn =
		container_of(conn, struct bag_flush_conn, conn);
	struct bag_flush_request req;
	struct bag_flush_reply reply;
	struct bag_flush_job *job;
	const char *error;
	pool_t pool;
	int ret;

	if (fconn->job != NULL) {
		/* one request per connection */
		e_error(bag_service.event, "A second request on one connection");
		return -1;
	}
	if (bag_flush_request_parse(args, &req, &error) < 0) {
		e_error(bag_service.event, "%s", error);
		i_zero(&reply);
		reply.status = BAG_FLUSH_REPLY_FAIL;
		reply.error = error;
		bag_flush_conn_reply(conn, &reply);
		return -1;
	}
	pool = pool_alloconly_create("bag flush job", 2048);
	job = p_new(pool, struct bag_flush_job, 1);
	job->pool = pool;
	job->fconn = fconn;
	job->req = req;
	job->req.domain = p_strdup(pool, req.domain);
	job->req.host = p_strdup(pool, req.host);
	job->how = req.backup ? "backup" : (req.wait ? "doveadm" : "etrn");
	job->total.remaining = UINT_MAX;
	fconn->job = job;
	/* nothing more is read: the answer is the flush's */
	connection_input_halt(conn);
	T_BEGIN {
		ret = bag_flush_job_start(job, &error);
		if (ret <= 0)
			bag_flush_job_reply(job, ret, error);
	} T_END;
	/* done at once: the connection closes (one request per
	   connection); else when the flush ends */
	return ret <= 0 ? -1 : 1;
}

static void bag_flush_conn_destroy(struct connection *conn)
{
	struct bag_flush_conn *fconn =
		container_of(conn, struct bag_flush_conn, conn);

	if (fconn->job != NULL) {
		/* the asker is gone: the flush goes on, unanswered */
		fconn->job->req.wait = FALSE;
		connection_disconnect(conn);
		return;
	}
	switch (conn->disconnect_reason) {
	case CONNECTION_DISCONNECT_BUFFER_FULL:
		e_error(bag_service.event, "Request too long");
		break;
	case CONNECTION_DISCONNECT_IDLE_TIMEOUT:
		e_error(bag_service.event,
			"Timed out reading the request");
		break;
	default:
		break;
	}
	connection_deinit(conn);
	i_free(fconn);
	bag_service_client_destroyed(NULL);
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
	struct connection *conn, *next;
	struct bag_flush_conn *fconn;

	if (bag_flush_conns == NULL)
		return;
	for (conn = bag_flush_conns->connections; conn != NULL; conn = next) {
		next = conn->next;
		fconn = container_of(conn, struct bag_flush_conn, conn);
		if (fconn->job != NULL)
			bag_flush_job_abort(fconn->job);
	}
	connection_list_deinit(&bag_flush_conns);
}
