/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* The copy counters of mirror-writer (writer-counts.h), with their
   journal (lib-mirror/mirror-count-journal.h).

   The lines a batch changed are rewritten in place, without fsync: it
   has to survive the process, not the machine (whose crash loses the
   unsynced registry file dict as well). A flush moves what waits to the
   journal's "flushing" columns, counts it in the registry, and zeroes
   them: readers see a count in the journal until the registry has it,
   and a writer that starts after a crash drops what was flushing (it may
   be counted already), so a kill leaves a counter short at worst (`doveadm
   mirror verify --reconcile` raises it), never counts a copy twice. If
   the journal can't be written, nothing is counted until it can. A batch
   with a failure is counted at once, with the failure's reason (which the
   journal doesn't keep): a failure shows in `doveadm mirror list` when it
   happens.

   Without the journal's lock (another writer has it: the one before a
   reload, still serving its LMTP connections) each batch is counted at
   once, and the lock is tried again at most once per second. */

#include "lib.h"
#include "array.h"
#include "hash.h"
#include "str.h"
#include "ioloop.h"
#include "file-lock.h"
#include "istream.h"
#include "write-full.h"
#include "fault-point.h"
#include "mirror-registry.h"
#include "mirror-count-journal.h"
#include "writer-counts.h"

#include <unistd.h>
#include <fcntl.h>

#define WRITER_COUNTS_LOCK_RETRY_SECS 1

struct writer_count {
	/* id, what waits to be counted, and what is being counted */
	struct mirror_count_pending pending;
	time_t last_failure_time;
	char *last_failure;
	/* its journal line is to be written */
	bool dirty;
};

struct writer_counts {
	struct registry *reg;
	struct event *event;
	char *path;
	/* the journal, locked; -1 without it */
	int fd;
	struct file_lock *lock;
	time_t lock_tried;
	unsigned int interval_msecs;
	struct timeout *to;
	/* one per mirror copied to since the journal was opened, in the
	   journal's order (a counted one stays, with zeros), and the index
	   + 1 of each mirror id's */
	ARRAY(struct writer_count) counts;
	HASH_TABLE(void *, void *) ids;
	bool waiting;
	/* a journal write failed: logged once */
	bool journal_failed;
};

static void writer_counts_timeout(struct writer_counts *counts);

static struct writer_count *
writer_counts_get(struct writer_counts *counts, unsigned int id)
{
	struct writer_count *count;
	unsigned int idx;

	idx = POINTER_CAST_TO(hash_table_lookup(counts->ids,
						POINTER_CAST(id)),
			      unsigned int);
	if (idx > 0)
		return array_idx_modifiable(&counts->counts, idx - 1);
	count = array_append_space(&counts->counts);
	count->pending.id = id;
	hash_table_insert(counts->ids, POINTER_CAST(id),
			  POINTER_CAST(array_count(&counts->counts)));
	return count;
}

/* Write the journal's lines that changed, each in its place (all of them
   with all). Returns 0, or -1 if the journal couldn't be written (logged
   once; the lines stay to be written). */
static int writer_counts_journal_write(struct writer_counts *counts, bool all)
{
	struct writer_count *count;
	string_t *str;
	unsigned int i, n;
	int ret = 0;

	i_assert(counts->fd != -1);
	str = t_str_new(MIRROR_COUNT_JOURNAL_LINE_LEN);
	count = array_get_modifiable(&counts->counts, &n);
	for (i = 0; i < n && ret == 0; i++) {
		if (!count[i].dirty && !all)
			continue;
		str_truncate(str, 0);
		mirror_count_journal_format(str, &count[i].pending, 1);
		if (pwrite_full(counts->fd, str_data(str), str_len(str),
				(off_t)i * MIRROR_COUNT_JOURNAL_LINE_LEN) < 0)
			ret = -1;
		else
			count[i].dirty = FALSE;
	}
	if (ret < 0) {
		if (!counts->journal_failed) {
			e_error(counts->event, "write(%s) failed: %m "
				"(copies are not counted until it can be "
				"written)", counts->path);
		}
		counts->journal_failed = TRUE;
		return -1;
	}
	counts->journal_failed = FALSE;
	return 0;
}

/* The next flush, unless one is due already (without a journal, at the
   next batch) */
static void writer_counts_arm(struct writer_counts *counts)
{
	struct ioloop_context *ctx;

	if (counts->to != NULL || counts->fd == -1)
		return;
	/* outside the ioloop context of a storage being written: the flush
	   runs as the writer itself */
	ctx = io_loop_get_current_context(current_ioloop);
	if (ctx != NULL) {
		io_loop_context_ref(ctx);
		io_loop_context_deactivate(ctx);
	}
	counts->to = timeout_add(counts->interval_msecs > 0 ?
				 counts->interval_msecs : 1000,
				 writer_counts_timeout, counts);
	if (ctx != NULL) {
		io_loop_context_activate(ctx);
		io_loop_context_unref(&ctx);
	}
}

/* Count in the registry what waits. Returns 0, or -1 if it must wait. */
static int writer_counts_commit(struct writer_counts *counts)
{
	ARRAY(struct mirror_status_delta) deltas;
	struct mirror_status_delta *delta;
	struct writer_count *count;
	const char *error;
	int ret;

	t_array_init(&deltas, array_count(&counts->counts));
	array_foreach_modifiable(&counts->counts, count) {
		struct mirror_count_pending *p = &count->pending;

		if (p->copies == 0 && p->failures == 0)
			continue;
		delta = array_append_space(&deltas);
		delta->id = p->id;
		delta->copies = p->copies;
		delta->failures = p->failures;
		delta->last_failure_time = count->last_failure_time;
		delta->last_failure = t_strdup(count->last_failure);
		p->flushing_copies = p->copies;
		p->flushing_failures = p->failures;
		p->copies = p->failures = 0;
		count->dirty = TRUE;
	}
	if (array_count(&deltas) == 0)
		return 0;
	/* in the journal as flushing until the registry has them */
	if (counts->fd != -1 && writer_counts_journal_write(counts, FALSE) < 0)
		ret = -1;
	else {
		FAULT_POINT("mirror-count-flushing");
		ret = mirror_registry_status_add(counts->reg,
						 array_front(&deltas),
						 array_count(&deltas), &error);
		if (ret < 0) {
			e_error(counts->event, "Updating the copy counters "
				"failed (trying again): %s", error);
		}
	}
	array_foreach_modifiable(&counts->counts, count) {
		struct mirror_count_pending *p = &count->pending;

		if (p->flushing_copies == 0 && p->flushing_failures == 0)
			continue;
		if (ret < 0) {
			/* back to waiting, with what came meanwhile */
			p->copies += p->flushing_copies;
			p->failures += p->flushing_failures;
		} else {
			i_free(count->last_failure);
		}
		p->flushing_copies = p->flushing_failures = 0;
		count->dirty = TRUE;
	}
	if (counts->fd != -1)
		(void)writer_counts_journal_write(counts, FALSE);
	return ret;
}

void writer_counts_flush(struct writer_counts *counts)
{
	int ret;

	if (!counts->waiting)
		return;
	T_BEGIN {
		ret = writer_counts_commit(counts);
	} T_END;
	if (ret == 0)
		counts->waiting = FALSE;
	else
		writer_counts_arm(counts);
}

static void writer_counts_timeout(struct writer_counts *counts)
{
	timeout_remove(&counts->to);
	writer_counts_flush(counts);
}

static void writer_counts_journal_close(struct writer_counts *counts)
{
	file_lock_free(&counts->lock);
	i_close_fd(&counts->fd);
}

/* Count what a writer before this one left in the journal: what waited,
   not what was being flushed (it may be counted already). Returns 0, or
   -1 if the journal can't be used (left as it is). */
static int writer_counts_replay(struct writer_counts *counts)
{
	ARRAY_TYPE(mirror_count_pending) pending;
	const struct mirror_count_pending *p;
	struct istream *input;
	struct writer_count *c;
	const char *error;
	unsigned int broken, copies = 0, flushing = 0;
	int ret;

	input = i_stream_create_fd(counts->fd, IO_BLOCK_SIZE);
	t_array_init(&pending, 8);
	ret = mirror_count_journal_parse(input, &pending, &broken, &error);
	i_stream_destroy(&input);
	if (ret < 0) {
		e_error(counts->event, "read(%s) failed: %s", counts->path,
			error);
		return -1;
	}
	if (broken > 0) {
		e_error(counts->event, "%s: %u broken lines skipped",
			counts->path, broken);
	}
	/* this writer's lines only from now on */
	if (ftruncate(counts->fd, 0) < 0) {
		e_error(counts->event, "ftruncate(%s) failed: %m",
			counts->path);
		return -1;
	}
	array_foreach(&pending, p) {
		flushing += p->flushing_copies;
		if (p->copies == 0 && p->failures == 0)
			continue;
		c = writer_counts_get(counts, p->id);
		c->pending.copies += p->copies;
		c->pending.failures += p->failures;
		copies += p->copies;
		counts->waiting = TRUE;
	}
	if (flushing > 0) {
		e_warning(counts->event, "%u copies were being counted when "
			  "the writer before this one stopped: a counter that "
			  "they didn't reach is short (doveadm mirror verify "
			  "--reconcile raises it)", flushing);
	}
	if (counts->waiting) {
		e_info(counts->event, "Counting %u copies that the writer "
		       "before this one made and didn't count yet (%s)",
		       copies, counts->path);
	}
	return 0;
}

/* Open and lock the journal, and count what it holds. */
static void writer_counts_journal_open(struct writer_counts *counts)
{
	struct file_lock_settings lock_set = {
		.lock_method = FILE_LOCK_METHOD_FLOCK,
	};
	const char *error;
	int ret;

	i_assert(counts->fd == -1);
	counts->lock_tried = ioloop_time;
	counts->fd = open(counts->path, O_RDWR | O_CREAT, 0600);
	if (counts->fd == -1) {
		e_error(counts->event, "open(%s) failed: %m: copies are "
			"counted batch by batch", counts->path);
		return;
	}
	ret = file_try_lock(counts->fd, counts->path, F_WRLCK, &lock_set,
			    &counts->lock, &error);
	if (ret <= 0) {
		if (ret < 0) {
			e_error(counts->event, "%s: copies are counted batch "
				"by batch", error);
		} else {
			e_info(counts->event, "%s is locked by another "
			       "mirror-writer: copies are counted batch by "
			       "batch until it lets it go", counts->path);
		}
		i_close_fd(&counts->fd);
		return;
	}
	T_BEGIN {
		ret = writer_counts_replay(counts);
	} T_END;
	if (ret < 0) {
		e_error(counts->event, "%s left as it is: copies are counted "
			"batch by batch", counts->path);
		writer_counts_journal_close(counts);
	}
	if (counts->fd != -1 && array_count(&counts->counts) > 0) {
		T_BEGIN {
			(void)writer_counts_journal_write(counts, TRUE);
		} T_END;
	}
	writer_counts_flush(counts);
}

void writer_counts_add(struct writer_counts *counts,
		       const struct mirror_copy_result *results,
		       unsigned int count)
{
	struct writer_count *c;
	unsigned int i;
	bool failed = FALSE;

	if (counts->fd == -1 && counts->interval_msecs > 0 &&
	    ioloop_time - counts->lock_tried >= WRITER_COUNTS_LOCK_RETRY_SECS)
		writer_counts_journal_open(counts);
	for (i = 0; i < count; i++) {
		c = writer_counts_get(counts, results[i].id);
		c->dirty = TRUE;
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
	T_BEGIN {
		(void)writer_counts_journal_write(counts, FALSE);
	} T_END;
	writer_counts_arm(counts);
}

struct writer_counts *
writer_counts_init(struct registry *reg, const char *path,
		   unsigned int interval_msecs, struct event *event)
{
	struct writer_counts *counts;

	counts = i_new(struct writer_counts, 1);
	counts->reg = reg;
	counts->event = event;
	counts->path = i_strdup(path);
	counts->interval_msecs = interval_msecs;
	counts->fd = -1;
	i_array_init(&counts->counts, 8);
	hash_table_create_direct(&counts->ids, default_pool, 0);
	/* also with interval 0: what a writer before this one left is
	   counted */
	writer_counts_journal_open(counts);
	if (interval_msecs == 0 && counts->fd != -1)
		writer_counts_journal_close(counts);
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
	if (counts->fd != -1)
		writer_counts_journal_close(counts);
	array_foreach_modifiable(&counts->counts, count)
		i_free(count->last_failure);
	array_free(&counts->counts);
	hash_table_destroy(&counts->ids);
	i_free(counts->path);
	i_free(counts);
}
