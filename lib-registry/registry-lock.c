/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* The registry's write lock (registry-lock.h). */

#include "lib.h"
#include "ioloop.h"
#include "hostpid.h"
#include "randgen.h"
#include "sleep.h"
#include "strnum.h"
#include "str-sanitize.h"
#include "file-lock.h"
#include "time-util.h"
#include "registry-dict.h"
#include "registry-check.h"
#include "registry-lock.h"

#include <fcntl.h>
#include <unistd.h>

#define REGISTRY_LOCK_FILE "mirror-registry.lock"
#define REGISTRY_KEY_LOCK_GEN REGISTRY_KEY_MIRROR"lock/gen"
#define REGISTRY_KEY_LOCK_CLAIM REGISTRY_KEY_MIRROR"lock/claim/"
#define REGISTRY_KEY_LOCK_HOLDER REGISTRY_KEY_MIRROR"lock/holder/"
/* how long to sleep between looks at a lock held by another server */
#define REGISTRY_LOCK_POLL_MIN_MSECS 10
#define REGISTRY_LOCK_POLL_MAX_MSECS 50

static const char *registry_lock_claim_key(uint64_t gen)
{
	return t_strdup_printf(REGISTRY_KEY_LOCK_CLAIM"%"PRIu64, gen);
}

static const char *registry_lock_holder_key(uint64_t gen)
{
	return t_strdup_printf(REGISTRY_KEY_LOCK_HOLDER"%"PRIu64, gen);
}

void registry_lock_setup(struct dict_transaction_context *trans)
{
	unsigned int i;

	dict_set(trans, REGISTRY_KEY_LOCK_GEN, "1");
	for (i = 1; i <= REGISTRY_LOCK_AHEAD; i++)
		dict_set(trans, registry_lock_claim_key(i), "0");
}

void registry_lock_check(struct registry_check *check)
{
	const char *keys[REGISTRY_LOCK_AHEAD], *value, *problem;
	unsigned int i;
	uint64_t gen;

	value = registry_check_get(check, REGISTRY_KEY_LOCK_GEN);
	if (value == NULL || !registry_check_counter_is_valid(value) ||
	    str_to_uint64(value, &gen) < 0 || gen == 0) {
		if (registry_check_failed(check) != NULL)
			return;
		/* nobody can hold the lock without it: start again */
		problem = value == NULL ? "missing" :
			t_strconcat("not a generation: ",
				    registry_check_value(value), NULL);
		registry_check_set(check, REGISTRY_KEY_LOCK_GEN, "1");
		for (i = 1; i <= REGISTRY_LOCK_AHEAD; i++) {
			registry_check_set(check, registry_lock_claim_key(i),
					   "0");
		}
		registry_check_fixed(check, REGISTRY_KEY_LOCK_GEN, problem,
				     "made again, with its claim keys");
		return;
	}
	/* the generation's claim is what every locker increments; those
	   ahead are made as the lock moves on, and one missing only costs
	   a generation */
	for (i = 0; i < REGISTRY_LOCK_AHEAD; i++)
		keys[i] = registry_lock_claim_key(gen + i);
	registry_check_prefetch(check, keys, REGISTRY_LOCK_AHEAD);
	for (i = 0; i < REGISTRY_LOCK_AHEAD; i++) {
		value = registry_check_get(check, keys[i]);
		if (value == NULL && i > 0)
			continue;
		if (value != NULL && registry_check_counter_is_valid(value))
			continue;
		if (registry_check_failed(check) != NULL)
			return;
		registry_check_set(check, keys[i], "0");
		registry_check_fixed(check, keys[i], value == NULL ?
			"missing" : t_strconcat("not a counter: ",
				registry_check_value(value), NULL),
			"set to 0");
	}
}

/* The flock that keeps the holders of one server to one. */
static int
registry_lock_local(struct registry *reg, unsigned int timeout_msecs,
		    const char **error_r)
{
	struct file_lock_settings set = {
		.lock_method = FILE_LOCK_METHOD_FLOCK,
		.close_on_free = TRUE,
	};
	const char *path, *error;
	int fd, ret;

	path = t_strconcat(reg->base_dir, "/", REGISTRY_LOCK_FILE, NULL);
	fd = open(path, O_RDWR | O_CREAT, 0600);
	if (fd == -1) {
		*error_r = t_strdup_printf("open(%s) failed: %m", path);
		return -1;
	}
	ret = file_wait_lock(fd, path, F_WRLCK, &set,
			     (timeout_msecs + 999) / 1000, &reg->lock_file,
			     &error);
	if (ret <= 0) {
		i_close_fd(&fd);
		*error_r = ret < 0 ? error : t_strdup_printf(
			"Timed out after %u s waiting for the registry lock "
			"(%s): another doveadm holds it",
			(timeout_msecs + 999) / 1000, path);
		return -1;
	}
	return 0;
}

/* Move the lock past generation gen, whose holder is gone (or which
   nobody holds), unless someone did already. */
static int
registry_lock_move_past(struct registry *reg, uint64_t gen,
			const char **error_r)
{
	struct dict_transaction_context *trans;
	uint64_t now_gen;

	if (registry_get_counter(reg, REGISTRY_KEY_LOCK_GEN, &now_gen,
				 error_r) < 0)
		return -1;
	if (now_gen != gen)
		return 0;
	trans = registry_transaction_begin(reg);
	dict_atomic_inc(trans, REGISTRY_KEY_LOCK_GEN, 1);
	return registry_commit(reg, &trans, error_r);
}

/* Raise generation gen's claim counter: 1 if this made it 1 (the lock
   is ours), 0 if not, -1 on error. */
static int
registry_lock_claim(struct registry *reg, uint64_t gen, const char **error_r)
{
	struct dict_transaction_context *trans;
	const char *key = registry_lock_claim_key(gen);
	uint64_t value;
	int ret;

	trans = registry_transaction_begin(reg);
	dict_atomic_inc(trans, key, 1);
	ret = registry_transaction_commit(reg, &trans, error_r);
	if (ret == DICT_COMMIT_RET_NOTFOUND) {
		/* not made in advance (the file and SQL dicts don't make it
		   for an increment, Redis does): nobody can hold it */
		return registry_lock_move_past(reg, gen, error_r) < 0 ? -1 : 0;
	}
	if (ret < 0 || registry_get_counter(reg, key, &value, error_r) < 0)
		return -1;
	return value == 1 ? 1 : 0;
}

static int registry_lock_record(struct registry *reg, const char **error_r)
{
	struct dict_transaction_context *trans;

	/* a holder that works outside the ioloop (doveadm) renews from the
	   time it is now, not when the ioloop last ran */
	io_loop_time_refresh();
	trans = registry_transaction_begin(reg);
	dict_set(trans, registry_lock_holder_key(reg->lock_gen),
		 t_strdup_printf("%ld %s/%s", (long)(ioloop_time +
						    REGISTRY_LOCK_LEASE_SECS),
				 my_hostname, my_pid));
	return registry_commit(reg, &trans, error_r);
}

/* Make the claim counters of the generations ahead that are missing
   (a generation that was moved past made none): they are far enough
   ahead that nobody claims them yet. */
static int registry_lock_top_up(struct registry *reg, const char **error_r)
{
	struct dict_transaction_context *trans;
	const char *keys[REGISTRY_LOCK_AHEAD], *values[REGISTRY_LOCK_AHEAD];
	unsigned int i, count = 0, missing = 0;
	pool_t pool;
	int ret;

	for (i = 2; i <= REGISTRY_LOCK_AHEAD; i++)
		keys[count++] = registry_lock_claim_key(reg->lock_gen + i);
	pool = pool_alloconly_create("registry lock", 256);
	ret = registry_get_many(reg, pool, keys, count, values, error_r);
	for (i = 0; ret == 0 && i < count; i++) {
		if (values[i] == NULL)
			missing++;
	}
	if (ret == 0 && missing > 0) {
		trans = registry_transaction_begin(reg);
		for (i = 0; i < count; i++) {
			if (values[i] == NULL)
				dict_set(trans, keys[i], "0");
		}
		ret = registry_commit(reg, &trans, error_r);
	}
	pool_unref(&pool);
	return ret;
}

/* One look at the lock: 1 if it was taken, 0 if it is held by another
   (holder_r says who, if known), -1 on error. */
static int
registry_lock_try(struct registry *reg, uint64_t *nobody_gen,
		  time_t *nobody_since, const char **holder_r,
		  const char **error_r)
{
	const char *keys[2], *values[2], *p;
	uint64_t gen, claim, now_gen;
	long expires = 0;
	pool_t pool;
	int ret;

	*holder_r = NULL;
	if ((ret = registry_get_counter(reg, REGISTRY_KEY_LOCK_GEN, &gen,
					error_r)) <= 0) {
		if (ret == 0) {
			*error_r = "Broken registry: "REGISTRY_KEY_LOCK_GEN
				" is missing (doveadm mirror check --repair "
				"makes it again)";
		}
		return -1;
	}
	keys[0] = registry_lock_claim_key(gen);
	keys[1] = registry_lock_holder_key(gen);
	pool = pool_alloconly_create("registry lock", 256);
	ret = registry_get_many(reg, pool, keys, 2, values, error_r);
	claim = 0;
	if (ret == 0 && values[0] != NULL &&
	    str_to_uint64(values[0], &claim) < 0) {
		*error_r = t_strdup_printf("Broken registry data in %s: not "
					   "a number", keys[0]);
		ret = -1;
	}
	if (ret == 0 && values[1] != NULL) {
		p = strchr(values[1], ' ');
		if (p == NULL || str_to_long(t_strdup_until(values[1], p),
					     &expires) < 0)
			expires = 0;
		*holder_r = t_strdup(p == NULL ? values[1] : p + 1);
	}
	pool_unref(&pool);
	if (ret < 0)
		return -1;

	if (claim == 0) {
		if ((ret = registry_lock_claim(reg, gen, error_r)) <= 0)
			return ret;
		/* still the generation: it wasn't released or moved past
		   since it was read */
		if (registry_get_counter(reg, REGISTRY_KEY_LOCK_GEN,
					 &now_gen, error_r) < 0)
			return -1;
		if (now_gen != gen)
			return 0;
		reg->lock_gen = gen;
		reg->lock_held = TRUE;
		if (registry_lock_record(reg, error_r) < 0 ||
		    registry_lock_top_up(reg, error_r) < 0)
			return -1;
		return 1;
	}
	if (*holder_r != NULL) {
		/* held: unless its lease ran out */
		if (expires >= ioloop_time)
			return 0;
		return registry_lock_move_past(reg, gen, error_r) < 0 ? -1 : 0;
	}
	/* claimed, but nobody says it holds it (yet) */
	if (*nobody_gen != gen) {
		*nobody_gen = gen;
		*nobody_since = ioloop_time;
	} else if (ioloop_time - *nobody_since >= REGISTRY_LOCK_NOBODY_SECS) {
		return registry_lock_move_past(reg, gen, error_r) < 0 ? -1 : 0;
	}
	return 0;
}

int registry_lock(struct registry *reg, unsigned int timeout_msecs,
		  const char **error_r)
{
	struct timeval start;
	uint64_t nobody_gen = 0;
	time_t nobody_since = 0;
	const char *holder;
	unsigned int msecs;
	int ret;

	i_assert(!reg->lock_held && reg->lock_file == NULL);
	i_gettimeofday(&start);
	if (registry_lock_local(reg, timeout_msecs, error_r) < 0)
		return -1;
	for (;;) {
		io_loop_time_refresh();
		ret = registry_lock_try(reg, &nobody_gen, &nobody_since,
					&holder, error_r);
		if (ret > 0)
			return 0;
		if (ret < 0)
			break;
		if (timeval_diff_msecs(&ioloop_timeval, &start) >=
		    (int)timeout_msecs) {
			*error_r = t_strdup_printf(
				"Timed out after %u s waiting for the registry "
				"lock, held by %s", (timeout_msecs + 999) / 1000,
				holder == NULL ? "a server that didn't say" :
				str_sanitize(holder, 80));
			break;
		}
		msecs = REGISTRY_LOCK_POLL_MIN_MSECS +
			i_rand_limit(REGISTRY_LOCK_POLL_MAX_MSECS -
				     REGISTRY_LOCK_POLL_MIN_MSECS);
		i_sleep_msecs(msecs);
	}
	registry_unlock(reg);
	return -1;
}

int registry_lock_refresh(struct registry *reg, const char **error_r)
{
	i_assert(reg->lock_held);
	return registry_lock_record(reg, error_r);
}

void registry_unlock(struct registry *reg)
{
	struct dict_transaction_context *trans;
	const char *error;
	uint64_t gen;

	if (reg->lock_held && !reg->lock_lost &&
	    registry_get_counter(reg, REGISTRY_KEY_LOCK_GEN, &gen,
				 &error) > 0 && gen == reg->lock_gen) {
		trans = registry_transaction_begin(reg);
		dict_unset(trans, registry_lock_holder_key(gen));
		/* the claim stays (at 1 or more), so that a server that
		   read the generation before this release can't claim it
		   (Redis would make it again with 1); one long past goes */
		if (gen > REGISTRY_LOCK_AHEAD) {
			dict_unset(trans, registry_lock_claim_key(
				gen - REGISTRY_LOCK_AHEAD));
		}
		dict_set(trans, registry_lock_claim_key(
			gen + REGISTRY_LOCK_AHEAD), "0");
		dict_atomic_inc(trans, REGISTRY_KEY_LOCK_GEN, 1);
		/* the lock ends with this commit, whatever it says: at worst
		   the others wait for the lease to run out */
		reg->lock_held = FALSE;
		if (registry_commit(reg, &trans, &error) < 0)
			i_error("Releasing the registry lock failed: %s", error);
	}
	reg->lock_held = FALSE;
	reg->lock_lost = FALSE;
	file_lock_free(&reg->lock_file);
}
