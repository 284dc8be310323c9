/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* Unit tests of the workers that free the expiry scan's removed files
   (plugin-expire-mirror/mirror-expire-free.c): real files, real fork()s. */

#include "lib.h"
#include "test-common.h"
#include "mirror-expire-reclaim.h"

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define TEST_FILES 40

/* a global, so that the forked workers still reach it when valgrind
   checks them for leaks at their exit */
static struct event *test_event;


static const char *test_dir(void)
{
	return t_strdup_printf(".test-expire-free.%ld", (long)getpid());
}

/* Make a file, open it, and unlink its name: the returned descriptor is
   its last reference. */
static int test_held_file(const char *dir, unsigned int i)
{
	const char *path = t_strdup_printf("%s/%u", dir, i);
	int fd, rfd;

	fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
	if (fd == -1)
		i_fatal("open(%s) failed: %m", path);
	if (write(fd, "message\n", 8) != 8)
		i_fatal("write(%s) failed: %m", path);
	i_close_fd(&fd);
	rfd = open(path, O_RDONLY);
	if (rfd == -1)
		i_fatal("open(%s) failed: %m", path);
	i_unlink(path);
	return rfd;
}

static bool test_fd_open(int fd)
{
	return fcntl(fd, F_GETFD) != -1;
}

static void test_expire_reclaim_off(void)
{
	test_begin("expire free: 0 processes");
	test_event = event_create(NULL);
	test_assert(mirror_expire_reclaim_init(0, test_event) == NULL);
	event_unref(&test_event);
	test_end();
}

static void test_expire_reclaim_workers(void)
{
	struct mirror_expire_reclaim *ctx;
	int fds[TEST_FILES], status;
	const char *dir = test_dir();
	unsigned int i, batch;
	bool all_closed = TRUE;

	test_begin("expire free: the workers get the files");
	test_event = event_create(NULL);
	if (mkdir(dir, 0700) < 0)
		i_fatal("mkdir(%s) failed: %m", dir);
	ctx = mirror_expire_reclaim_init(3, test_event);
	test_assert(ctx != NULL);
	batch = mirror_expire_reclaim_batch(ctx);
	test_assert(batch >= 16 && batch <= 8192);

	/* two flushes, as the scan makes one per batch */
	for (i = 0; i < TEST_FILES; i++) {
		fds[i] = test_held_file(dir, i);
		mirror_expire_reclaim_hold(ctx, fds[i]);
		if (i == TEST_FILES / 2)
			mirror_expire_reclaim_flush(ctx);
	}
	mirror_expire_reclaim_flush(ctx);
	/* this process holds none of them any more */
	for (i = 0; i < TEST_FILES; i++) {
		if (test_fd_open(fds[i]))
			all_closed = FALSE;
	}
	test_assert(all_closed);
	mirror_expire_reclaim_deinit(&ctx);
	test_assert(ctx == NULL);
	/* and every worker has been waited for */
	test_assert(waitpid(-1, &status, WNOHANG) == -1 && errno == ECHILD);

	/* a deinit without a flush hands over what is held */
	ctx = mirror_expire_reclaim_init(1, test_event);
	test_assert(ctx != NULL);
	fds[0] = test_held_file(dir, TEST_FILES);
	mirror_expire_reclaim_hold(ctx, fds[0]);
	mirror_expire_reclaim_deinit(&ctx);
	test_assert(!test_fd_open(fds[0]));
	test_assert(waitpid(-1, &status, WNOHANG) == -1 && errno == ECHILD);

	test_assert(rmdir(dir) == 0);
	event_unref(&test_event);
	test_end();
}

static void test_expire_reclaim_batch_limit(void)
{
	struct mirror_expire_reclaim *ctx;
	struct rlimit orig, lim, during;
	unsigned int batch;

	test_begin("expire free: the batch follows the descriptor limit");
	test_event = event_create(NULL);
	test_assert(getrlimit(RLIMIT_NOFILE, &orig) == 0);
	/* a low soft limit: init raises it as far as it may, and the
	   batch is half of what it got */
	lim = orig;
	lim.rlim_cur = I_MIN(orig.rlim_cur, 256);
	test_assert(setrlimit(RLIMIT_NOFILE, &lim) == 0);
	ctx = mirror_expire_reclaim_init(1, test_event);
	test_assert(ctx != NULL);
	test_assert(getrlimit(RLIMIT_NOFILE, &during) == 0);
	test_assert(during.rlim_cur >= lim.rlim_cur);
	batch = mirror_expire_reclaim_batch(ctx);
	test_assert(batch == I_MIN(8192, I_MAX(during.rlim_cur / 2, 16)));
	mirror_expire_reclaim_deinit(&ctx);
	/* and puts it back */
	test_assert(getrlimit(RLIMIT_NOFILE, &during) == 0);
	test_assert(during.rlim_cur == lim.rlim_cur);
	test_assert(setrlimit(RLIMIT_NOFILE, &orig) == 0);
	event_unref(&test_event);
	test_end();
}

int main(void)
{
	static void (*const test_functions[])(void) = {
		test_expire_reclaim_off,
		test_expire_reclaim_workers,
		test_expire_reclaim_batch_limit,
		NULL
	};
	return test_run(test_functions);
}
