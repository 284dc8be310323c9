/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* Freeing the removed messages' files in parallel (see
   mirror-expire-free.h). */

#define _GNU_SOURCE /* setresgid(), setresuid() */
#include "lib.h"
#include "array.h"
#include "fd-util.h"
#include "fdpass.h"
#include "mirror-expire-reclaim.h"

#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* descriptors held at once, at most */
#define MIRROR_EXPIRE_RECLAIM_MAX_BATCH 8192
/* and at least: a limit too low for this isn't worth the syncs */
#define MIRROR_EXPIRE_RECLAIM_MIN_BATCH 16

struct mirror_expire_reclaim_worker {
	pid_t pid;
	/* -1 once the worker is gone */
	int fd;
};

struct mirror_expire_reclaim {
	struct event *event;
	ARRAY(struct mirror_expire_reclaim_worker) workers;
	unsigned int next_worker, live_workers;
	ARRAY(int) held;
	unsigned int batch;
	/* the descriptor limit before init raised it */
	struct rlimit orig_limit;
	bool limit_raised;
};

static void ATTR_NORETURN mirror_expire_reclaim_worker_run(int sock)
{
	static const int signals[] = {
		SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2,
		SIGALRM, SIGCHLD, SIGPIPE
	};
	uid_t uid = geteuid();
	gid_t gid = getegid();
	unsigned char c;
	unsigned int i;
	ssize_t ret;
	int fd;

	/* Dovecot's handlers would write into the parent's signal pipe */
	for (i = 0; i < N_ELEMENTS(signals); i++)
		(void)signal(signals[i], SIG_DFL);
	/* keep only the effective identity: a temporary privilege drop
	   leaves the real uid root */
	if (uid != 0 && (setresgid(gid, gid, gid) < 0 ||
			 setresuid(uid, uid, uid) < 0))
		_exit(1);

	for (;;) {
		ret = fd_read(sock, &c, 1, &fd);
		if (ret < 0 && errno == EINTR)
			continue;
		if (ret <= 0)
			break;
		/* the last descriptor: the filesystem frees the file now */
		if (fd != -1)
			(void)close(fd);
	}
	_exit(0);
}

static void mirror_expire_reclaim_limit_raise(struct mirror_expire_reclaim *ctx)
{
	struct rlimit lim;
	rlim_t want;

	if (getrlimit(RLIMIT_NOFILE, &ctx->orig_limit) < 0) {
		e_error(ctx->event, "getrlimit(RLIMIT_NOFILE) failed: %m");
		ctx->batch = MIRROR_EXPIRE_RECLAIM_MIN_BATCH;
		return;
	}
	lim = ctx->orig_limit;
	want = lim.rlim_cur + MIRROR_EXPIRE_RECLAIM_MAX_BATCH * 2;
	if (lim.rlim_cur != RLIM_INFINITY && lim.rlim_cur < want &&
	    lim.rlim_cur < lim.rlim_max) {
		lim.rlim_cur = lim.rlim_max == RLIM_INFINITY ? want :
			I_MIN(want, lim.rlim_max);
		if (setrlimit(RLIMIT_NOFILE, &lim) == 0)
			ctx->limit_raised = TRUE;
		else
			lim = ctx->orig_limit;
	}
	/* half of the limit: the other half is the scan's and Dovecot's */
	if (lim.rlim_cur == RLIM_INFINITY ||
	    lim.rlim_cur / 2 > MIRROR_EXPIRE_RECLAIM_MAX_BATCH)
		ctx->batch = MIRROR_EXPIRE_RECLAIM_MAX_BATCH;
	else
		ctx->batch = I_MAX(lim.rlim_cur / 2,
				    MIRROR_EXPIRE_RECLAIM_MIN_BATCH);
}

struct mirror_expire_reclaim *
mirror_expire_reclaim_init(unsigned int processes, struct event *event)
{
	struct mirror_expire_reclaim *ctx;
	struct mirror_expire_reclaim_worker *worker;
	int fds[2];
	unsigned int i;
	pid_t pid;

	if (processes == 0)
		return NULL;
	processes = I_MIN(processes, MIRROR_EXPIRE_RECLAIM_MAX_PROCESSES);

	ctx = i_new(struct mirror_expire_reclaim, 1);
	ctx->event = event;
	i_array_init(&ctx->workers, processes);
	for (i = 0; i < processes; i++) {
		if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) < 0) {
			e_error(event, "socketpair() failed: %m");
			break;
		}
		pid = fork();
		if (pid < 0) {
			e_error(event, "fork() failed: %m");
			i_close_fd(&fds[0]);
			i_close_fd(&fds[1]);
			break;
		}
		if (pid == 0) {
			/* the other workers' sockets would keep them
			   from seeing the end */
			array_foreach_modifiable(&ctx->workers, worker)
				i_close_fd(&worker->fd);
			i_close_fd(&fds[0]);
			array_free(&ctx->workers);
			i_free(ctx);
			mirror_expire_reclaim_worker_run(fds[1]);
		}
		i_close_fd(&fds[1]);
		fd_close_on_exec(fds[0], TRUE);
		worker = array_append_space(&ctx->workers);
		worker->pid = pid;
		worker->fd = fds[0];
		ctx->live_workers++;
	}
	if (ctx->live_workers == 0) {
		array_free(&ctx->workers);
		i_free(ctx);
		return NULL;
	}
	mirror_expire_reclaim_limit_raise(ctx);
	i_array_init(&ctx->held, I_MIN(ctx->batch, 1024));
	e_debug(event, "%u processes free the removed files, "
		"%u descriptors at a time", ctx->live_workers, ctx->batch);
	return ctx;
}

unsigned int mirror_expire_reclaim_batch(struct mirror_expire_reclaim *ctx)
{
	return ctx->batch;
}

void mirror_expire_reclaim_hold(struct mirror_expire_reclaim *ctx, int fd)
{
	/* the caller flushes every batch: the limit is kept */
	i_assert(array_count(&ctx->held) < ctx->batch);
	array_push_back(&ctx->held, &fd);
}

static struct mirror_expire_reclaim_worker *
mirror_expire_reclaim_next_worker(struct mirror_expire_reclaim *ctx)
{
	struct mirror_expire_reclaim_worker *worker;
	unsigned int i, count = array_count(&ctx->workers);

	for (i = 0; i < count && ctx->live_workers > 0; i++) {
		worker = array_idx_modifiable(&ctx->workers,
					      ctx->next_worker++ % count);
		if (worker->fd != -1)
			return worker;
	}
	return NULL;
}

void mirror_expire_reclaim_flush(struct mirror_expire_reclaim *ctx)
{
	struct mirror_expire_reclaim_worker *worker;
	const unsigned char c = 0;
	int fd;

	array_foreach_elem(&ctx->held, fd) {
		worker = mirror_expire_reclaim_next_worker(ctx);
		while (worker != NULL && fd_send(worker->fd, fd, &c, 1) != 1) {
			if (errno == EINTR)
				continue;
			/* the file is closed here instead */
			e_error(ctx->event, "fd_send() to the worker %ld "
				"failed: %m", (long)worker->pid);
			i_close_fd(&worker->fd);
			ctx->live_workers--;
			worker = mirror_expire_reclaim_next_worker(ctx);
		}
		i_close_fd(&fd);
	}
	array_clear(&ctx->held);
}

void mirror_expire_reclaim_deinit(struct mirror_expire_reclaim **_ctx)
{
	struct mirror_expire_reclaim *ctx = *_ctx;
	struct mirror_expire_reclaim_worker *worker;
	int status;

	*_ctx = NULL;
	mirror_expire_reclaim_flush(ctx);
	array_foreach_modifiable(&ctx->workers, worker) {
		if (worker->fd != -1)
			i_close_fd(&worker->fd);
	}
	/* the workers exit when they have closed all they were given */
	array_foreach_modifiable(&ctx->workers, worker) {
		while (waitpid(worker->pid, &status, 0) < 0) {
			if (errno == EINTR)
				continue;
			/* ECHILD: reaped by a SIGCHLD handler already */
			if (errno != ECHILD) {
				e_error(ctx->event, "waitpid(%ld) failed: %m",
					(long)worker->pid);
			}
			break;
		}
	}
	if (ctx->limit_raised &&
	    setrlimit(RLIMIT_NOFILE, &ctx->orig_limit) < 0)
		e_error(ctx->event, "setrlimit(RLIMIT_NOFILE) failed: %m");
	array_free(&ctx->workers);
	array_free(&ctx->held);
	i_free(ctx);
}
