/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* The copy counters of mirror-writer (writer-counts.h), with their
   journal (lib-mirror/mirror-count-journal.h).

   The journal is rewritten in place after every batch, without fsync: it
   has to survive the process, not the machine (whose crash loses the
   unsynced registry file dict as well). A flush zeroes the journal's
   lines before the registry transaction that counts them, so a kill
   between the two leaves a counter short, as a kill between a commit and
   its count always did (`doveadm mirror verify --reconcile` raises it),
   and never counts a copy twice. A batch with a failure is counted at
   once, with the failure's reason (which the journal doesn't keep): a
   failure shows in `doveadm mirror list` when it happens. */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "ioloop.h"
#include "file-lock.h"
#include "istream.h"
#include "write-full.h"
#include "mirror-registry.h"
#include "mirror-count-journal.h"
#include "writer-counts.h"

#include <unistd.h>
#include <fcntl.h>

struct writer_count {
	/* id, and what waits to be counted */
	struct mirror_count_pending pending;
	time_t last_failure_time;
	char *last_failure;
};

struct writer_counts {
	struct registry *reg;
	struct event *event;
	char *path;
	int fd;
	struct file_lock *lock;
	unsigned int interval_msecs;
	struct timeout *to;
	/* one per mirror copied to since the start, in the journal's order
	   (a counted one stays, with zeros) */
	ARRAY(struct writer_count) counts;
	bool waiting;
	/* a journal write failed: logged once */
	bool journal_failed;
};

static struct writer_count *
writer_counts_get(struct writer_counts *counts, unsigned int id)
{
	struct writer_count *count;

	array_foreach_modifiable(&counts->counts, count) {
		if (count->pending.id == id)
			return count;
	}
	count = array_append_space(&counts->counts);
	count->pending.id = id;
	return count;
}

static void writer_counts_journal_write(struct writer_counts *counts)
{
	const struct writer_count *count;
	string_t *str;

	if (counts->fd == -1)
		return;
	str = t_str_new(MIRROR_COUNT_JOURNAL_LINE_LEN *
			(array_count(&counts->counts) + 1));
	array_foreach(&counts->counts, count)
		mirror_count_journal_format(str, &count->pending, 1);
	if (pwrite_full(counts->fd, str_data(str), str_len(str), 0) < 0) {
		if (!counts->journal_failed) {
			e_error(counts->event, "write(%s) failed: %m "
				"(copies not counted yet are lost if the "
				"process dies)", counts->path);
		}
		counts->journal_failed = TRUE;
	} else {
		counts->journal_failed = FALSE;
	}
}

static void writer_counts_timeout(struct writer_counts *counts);

/* The next flush, unless one is due already (with interval 0, at the
   next batch) */
static void writer_counts_arm(struct writer_counts *counts)
{
	struct ioloop_context *ctx;

	if (counts->to != NULL || counts->interval_msecs == 0 ||
	    counts->fd == -1)
		return;
	/* outside the ioloop context of the storage being written: the
	   flush runs as the writer itself */
	ctx = io_loop_get_current_context(current_ioloop);
	if (ctx != NULL)
		io_loop_context_deactivate(ctx);
	counts->to = timeout_add(counts->interval_msecs,
				 writer_counts_timeout, counts);
	if (ctx != NULL)
		io_loop_context_activate(ctx);
}

void writer_counts_flush(struct writer_counts *counts)
{
	ARRAY(struct mirror_status_delta) deltas;
	struct mirror_status_delta *delta;
	struct writer_count *count;
	const char *error;
	int ret;

	if (!counts->waiting)
		return;
	T_BEGIN {
		t_array_init(&deltas, array_count(&counts->counts));
		array_foreach_modifiable(&counts->counts, count) {
			if (count->pending.copies == 0 &&
			    count->pending.failures == 0)
				continue;
			delta = array_append_space(&deltas);
			delta->id = count->pending.id;
			delta->copies = count->pending.copies;
			delta->failures = count->pending.failures;
			delta->last_failure_time = count->last_failure_time;
			delta->last_failure = t_strdup(count->last_failure);
			count->pending.copies = 0;
			count->pending.failures = 0;
			i_free(count->last_failure);
		}
		counts->waiting = FALSE;
		/* zeroed first: a kill before the commit leaves the
		   counters short, never counts them twice */
		writer_counts_journal_write(counts);
		ret = mirror_registry_status_add(counts->reg,
						 array_front(&deltas),
						 array_count(&deltas), &error);
		if (ret < 0) {
			e_error(counts->event, "Updating the copy counters "
				"failed (trying again): %s", error);
			/* back into the journal, with what came since */
			array_foreach_modifiable(&deltas, delta) {
				count = writer_counts_get(counts, delta->id);
				count->pending.copies += delta->copies;
				count->pending.failures += delta->failures;
				if (delta->last_failure != NULL &&
				    count->last_failure == NULL) {
					count->last_failure_time =
						delta->last_failure_time;
					count->last_failure =
						i_strdup(delta->last_failure);
				}
			}
			counts->waiting = TRUE;
			writer_counts_journal_write(counts);
		}
	} T_END;
	if (counts->waiting)
		writer_counts_arm(counts);
}

static void writer_counts_timeout(struct writer_counts *counts)
{
	timeout_remove(&counts->to);
	writer_counts_flush(counts);
}

void writer_counts_add(struct writer_counts *counts,
		       const struct mirror_copy_result *results,
		       unsigned int count)
{
	struct writer_count *c;
	unsigned int i;
	bool failed = FALSE;

	for (i = 0; i < count; i++) {
		c = writer_counts_get(counts, results[i].id);
		if (results[i].error == NULL)
			c->pending.copies++;
		else {
			c->pending.failures++;
			i_free(c->last_failure);
			c->last_failure = i_strdup(results[i].error);
			c->last_failure_time = ioloop_time;
			failed = TRUE;
		}
	}
	counts->waiting = TRUE;
	/* a failure is shown at once, with its reason */
	if (failed || counts->interval_msecs == 0 || counts->fd == -1) {
		writer_counts_flush(counts);
		return;
	}
	writer_counts_journal_write(counts);
	writer_counts_arm(counts);
}

/* Count what a writer before this one left in the journal. */
static void writer_counts_replay(struct writer_counts *counts)
{
	ARRAY_TYPE(mirror_count_pending) pending;
	const struct mirror_count_pending *p;
	struct istream *input;
	struct writer_count *c;
	const char *error;
	unsigned int broken, copies = 0;

	input = i_stream_create_fd(counts->fd, IO_BLOCK_SIZE);
	t_array_init(&pending, 8);
	if (mirror_count_journal_parse(input, &pending, &broken,
				       &error) < 0) {
		e_error(counts->event, "read(%s) failed: %s", counts->path,
			error);
	}
	i_stream_destroy(&input);
	if (broken > 0) {
		e_error(counts->event, "%s: %u broken lines skipped",
			counts->path, broken);
	}
	/* this writer's lines only from now on */
	if (ftruncate(counts->fd, 0) < 0)
		e_error(counts->event, "ftruncate(%s) failed: %m", counts->path);
	array_foreach(&pending, p) {
		if (p->copies == 0 && p->failures == 0)
			continue;
		c = writer_counts_get(counts, p->id);
		c->pending.copies += p->copies;
		c->pending.failures += p->failures;
		copies += p->copies;
		counts->waiting = TRUE;
	}
	if (counts->waiting) {
		e_info(counts->event, "Counting %u copies that the writer "
		       "before this one made and didn't count yet (%s)",
		       copies, counts->path);
		writer_counts_journal_write(counts);
		writer_counts_flush(counts);
	}
}

struct writer_counts *
writer_counts_init(struct registry *reg, const char *path,
		   unsigned int interval_msecs, struct event *event)
{
	struct file_lock_settings lock_set = {
		.lock_method = FILE_LOCK_METHOD_FLOCK,
	};
	struct writer_counts *counts;
	const char *error;
	int ret;

	counts = i_new(struct writer_counts, 1);
	counts->reg = reg;
	counts->event = event;
	counts->path = i_strdup(path);
	counts->interval_msecs = interval_msecs;
	i_array_init(&counts->counts, 8);

	counts->fd = open(path, O_RDWR | O_CREAT, 0600);
	if (counts->fd == -1) {
		e_error(event, "open(%s) failed: %m: copies are counted "
			"batch by batch", path);
		return counts;
	}
	ret = file_try_lock(counts->fd, path, F_WRLCK, &lock_set,
			    &counts->lock, &error);
	if (ret <= 0) {
		e_error(event, "%s: copies are counted batch by batch",
			ret < 0 ? error : t_strdup_printf(
			"%s is locked by another mirror-writer", path));
		i_close_fd(&counts->fd);
		return counts;
	}
	writer_counts_replay(counts);
	return counts;
}

void writer_counts_deinit(struct writer_counts **_counts)
{
	struct writer_counts *counts = *_counts;
	struct writer_count *count;

	*_counts = NULL;
	timeout_remove(&counts->to);
	writer_counts_flush(counts);
	/* a failed flush left them in the journal, for the next writer */
	timeout_remove(&counts->to);
	file_lock_free(&counts->lock);
	i_close_fd(&counts->fd);
	array_foreach_modifiable(&counts->counts, count)
		i_free(count->last_failure);
	array_free(&counts->counts);
	i_free(counts->path);
	i_free(counts);
}
