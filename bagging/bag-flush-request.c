/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* The bag-flush listener. An ETRN process answers its client at once and
   asks here, over the unix socket, for the flush: one line
   "FLUSH\t<domain>\n". The process that takes the request sends the bag
   over a new connection to the domain's host.

   One flush per domain runs at a time (the store's lock). A request that
   finds the lock taken leaves a request mark and ends; the running flush
   takes the mark before it lets the lock go and runs again, so mail that
   arrived after it last looked isn't left behind. */

#include "lib.h"
#include "str.h"
#include "str-sanitize.h"
#include "strescape.h"
#include "master-service.h"
#include "mirror-registry.h"
#include "bag-registry.h"
#include "bag-store.h"
#include "bag-flush.h"
#include "bag-service.h"

#include <poll.h>
#include <unistd.h>

#define BAG_FLUSH_SOCKET "bag-flush"
#define BAG_FLUSH_REQUEST_MAX 512
#define BAG_FLUSH_REQUEST_TIMEOUT_MSECS (10*1000)

int bag_flush_request(const char *domain, const char **error_r)
{
	const char *path, *line;
	ssize_t ret;
	int fd;

	path = t_strconcat(bag_service.base_dir, "/"BAG_FLUSH_SOCKET, NULL);
	fd = net_connect_unix(path);
	if (fd == -1) {
		*error_r = t_strdup_printf("net_connect_unix(%s) failed: %m",
					   path);
		return -1;
	}
	line = t_strdup_printf("FLUSH\t%s\n", str_tabescape(domain));
	/* one short write to a fresh unix socket: it can't be partial */
	ret = write(fd, line, strlen(line));
	if (ret != (ssize_t)strlen(line)) {
		*error_r = ret < 0 ?
			t_strdup_printf("write(%s) failed: %m", path) :
			t_strdup_printf("write(%s) was partial", path);
		i_close_fd(&fd);
		return -1;
	}
	i_close_fd(&fd);
	return 0;
}

/* Read the request line (bounded, with a timeout). */
static const char *bag_flush_request_read(int fd, const char **error_r)
{
	char buf[BAG_FLUSH_REQUEST_MAX + 1];
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	size_t pos = 0;
	const char *const *args;
	char *lf;
	ssize_t ret;

	while ((lf = memchr(buf, '\n', pos)) == NULL) {
		if (pos == BAG_FLUSH_REQUEST_MAX) {
			*error_r = "Request too long";
			return NULL;
		}
		ret = poll(&pfd, 1, BAG_FLUSH_REQUEST_TIMEOUT_MSECS);
		if (ret == 0) {
			*error_r = "Timed out reading the request";
			return NULL;
		}
		if (ret > 0)
			ret = read(fd, buf + pos, BAG_FLUSH_REQUEST_MAX - pos);
		if (ret < 0 && errno == EINTR)
			continue;
		if (ret <= 0) {
			*error_r = ret < 0 ? t_strdup_printf("read() failed: %m") :
				"Connection closed before the request ended";
			return NULL;
		}
		pos += ret;
	}
	*lf = '\0';
	args = t_strsplit_tabescaped(buf);
	if (args[0] == NULL || strcmp(args[0], "FLUSH") != 0 ||
	    args[1] == NULL || args[2] != NULL) {
		*error_r = t_strdup_printf("Invalid request '%s'",
					   str_sanitize(buf, 80));
		return NULL;
	}
	return args[1];
}

/* Flush while requests come in, holding the lock. */
static void
bag_flush_locked(struct mirror_registry *reg, const struct bag_def *def,
		 struct bag_store *store, const char *host, in_port_t port)
{
	struct bag_flush_result result;
	const char *error;
	int ret;

	while ((ret = bag_store_flush_request_take(store, &error)) > 0) {
		(void)bag_flush_to_host(store, host, port,
					bag_service.timeout_msecs,
					bag_service.event, &result);
		bag_flush_finished(reg, def, "etrn", &result,
				   bag_service.event);
	}
	if (ret < 0)
		e_error(bag_service.event, "%s", error);
}

static void bag_flush_domain(const char *domain)
{
	struct mirror_registry *reg;
	struct bag_store *store = NULL;
	struct bag_def def;
	const char *host, *error;
	in_port_t port;
	int ret;

	if (bag_service_registry_open(&reg, &error) < 0) {
		e_error(bag_service.event, "Can't flush %s: %s", domain, error);
		return;
	}
	ret = bag_registry_get(reg, domain, pool_datastack_create(), &def,
			       &error);
	if (ret == 0 || (ret > 0 && (def.modes & BAG_MODE_ETRN) == 0)) {
		error = "it has no ETRN host";
		ret = -1;
	}
	if (ret > 0)
		ret = bag_host_parse(def.host, &host, &port, &error);
	if (ret >= 0) {
		ret = bag_store_open(bag_service.storage_service, def.user,
				     "bag", TRUE, bag_service.event, &store,
				     &error);
	}
	if (ret < 0) {
		e_error(bag_service.event, "Can't flush %s: %s", domain, error);
		mirror_registry_deinit(&reg);
		return;
	}
	/* the mark first: a running flush that sees it flushes again */
	if (bag_store_flush_request(store, &error) < 0)
		e_error(bag_service.event, "Can't flush %s: %s", domain, error);
	else for (;;) {
		ret = bag_store_lock(store, &error);
		if (ret <= 0) {
			if (ret < 0) {
				e_error(bag_service.event, "Can't flush %s: %s",
					domain, error);
			} else {
				e_debug(bag_service.event, "%s is being "
					"flushed already: it will flush "
					"again", domain);
			}
			break;
		}
		bag_flush_locked(reg, &def, store, host, port);
		bag_store_unlock(store);
		/* a request that came between the last look and the
		   unlock found the lock taken */
		if ((ret = bag_store_flush_request_take(store, &error)) <= 0)
			break;
		if (bag_store_flush_request(store, &error) < 0)
			break;
	}
	bag_store_close(&store);
	mirror_registry_deinit(&reg);
}

void bag_flush_request_serve(const struct master_service_connection *conn)
{
	const char *domain, *error;
	int fd = conn->fd;

	T_BEGIN {
		domain = bag_flush_request_read(fd, &error);
		i_close_fd(&fd);
		if (domain == NULL) {
			e_error(bag_service.event, "bag-flush: %s", error);
		} else if (bag_domain_parse(domain, &domain, &error) < 0) {
			e_error(bag_service.event, "bag-flush: %s", error);
		} else {
			bag_flush_domain(domain);
		}
	} T_END;
	bag_service_client_destroyed();
}
