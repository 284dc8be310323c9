/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* The bag-flush listener: every flush to a customer's host runs here, in
   a bag process of its own, as the mail user.

   A request is one line, tab-separated:

     FLUSH <domain> [host=<host[:port]>] [wait] [backup]

   An ETRN process asks without "wait", and closes at once: it answers
   its client before the mail moves. `doveadm bag flush` asks with "wait"
   and reads one reply line when the flush has ended; so does the backup
   scheduler, which adds "backup":

     DONE <delivered> <deferred> <bounced> <broken> [<error>]
     BUSY                    another process is flushing the domain
     FAIL <error>            the flush couldn't start

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
#include "write-full.h"
#include "master-service.h"
#include "mirror-registry.h"
#include "bag-registry.h"
#include "bag-store.h"
#include "bag-flush.h"
#include "bag-service.h"
#include "bag-input.h"

#include <poll.h>
#include <unistd.h>

#define BAG_FLUSH_REQUEST_MAX 1024
#define BAG_FLUSH_REQUEST_TIMEOUT_MSECS (10*1000)

struct bag_flush_request {
	const char *domain;
	/* NULL: the bag's ETRN host */
	const char *host;
	bool wait;
	/* asked by the backup scheduler */
	bool backup;
};

int bag_flush_request(const char *domain, const char **error_r)
{
	int fd;

	fd = bag_flush_request_connect(bag_service.base_dir, domain, NULL, 0,
				       error_r);
	if (fd == -1)
		return -1;
	i_close_fd(&fd);
	return 0;
}

/* Read the request line (bounded, with a timeout). */
static int
bag_flush_request_read(int fd, struct bag_flush_request *req_r,
		       const char **error_r)
{
	char buf[BAG_FLUSH_REQUEST_MAX + 1];
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	size_t pos = 0;
	const char *const *args, *domain, *error;
	char *lf;
	ssize_t ret;

	i_zero(req_r);
	while ((lf = memchr(buf, '\n', pos)) == NULL) {
		if (pos == BAG_FLUSH_REQUEST_MAX) {
			*error_r = "Request too long";
			return -1;
		}
		ret = poll(&pfd, 1, BAG_FLUSH_REQUEST_TIMEOUT_MSECS);
		if (ret == 0) {
			*error_r = "Timed out reading the request";
			return -1;
		}
		if (ret > 0)
			ret = read(fd, buf + pos, BAG_FLUSH_REQUEST_MAX - pos);
		if (ret < 0 && errno == EINTR)
			continue;
		if (ret <= 0) {
			*error_r = ret < 0 ?
				t_strdup_printf("read() failed: %m") :
				"Connection closed before the request ended";
			return -1;
		}
		pos += ret;
	}
	*lf = '\0';
	args = t_strsplit_tabescaped(buf);
	if (args[0] == NULL || strcmp(args[0], "FLUSH") != 0 ||
	    args[1] == NULL) {
		*error_r = t_strdup_printf("Invalid request '%s'",
					   str_sanitize(buf, 80));
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

static void bag_flush_reply(int fd, const char *line)
{
	if (write_full(fd, line, strlen(line)) < 0)
		e_error(bag_service.event, "bag-flush: write() failed: %m");
}

static void bag_flush_request_run(int fd)
{
	struct bag_flush_request req;
	struct bag_flush_result result;
	const char *error;
	string_t *reply;
	int ret;

	if (bag_flush_request_read(fd, &req, &error) < 0) {
		e_error(bag_service.event, "bag-flush: %s", error);
		bag_flush_reply(fd, t_strdup_printf("FAIL\t%s\n",
						    str_tabescape(error)));
		return;
	}
	if (!req.wait) {
		/* the asker doesn't wait: nothing to say to it */
		shutdown(fd, SHUT_RDWR);
	}
	ret = bag_flush_domain(&req, &result, &error);
	if (ret < 0) {
		e_error(bag_service.event, "Can't flush %s: %s", req.domain,
			error);
	} else if (ret == 0) {
		e_debug(bag_service.event, "%s is being flushed already%s",
			req.domain, req.wait ? "" : ": it will flush again");
	}
	if (!req.wait)
		return;
	reply = t_str_new(128);
	if (ret < 0)
		str_printfa(reply, "FAIL\t%s", str_tabescape(error));
	else if (ret == 0)
		str_append(reply, "BUSY");
	else {
		str_printfa(reply, "DONE\t%u\t%u\t%u\t%u", result.delivered,
			    result.deferred, result.bounced, result.broken);
		if (result.error != NULL) {
			str_append_c(reply, '\t');
			str_append_tabescaped(reply, result.error);
		}
	}
	str_append_c(reply, '\n');
	bag_flush_reply(fd, str_c(reply));
}

void bag_flush_request_serve(const struct master_service_connection *conn)
{
	int fd = conn->fd;

	T_BEGIN {
		bag_flush_request_run(fd);
	} T_END;
	i_close_fd(&fd);
	bag_service_client_destroyed();
}
