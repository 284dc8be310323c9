#ifndef WRITER_COUNTS_H
#define WRITER_COUNTS_H

/* The copy counters of mirror-writer: the copies of many batches are
   added up in memory and counted in the registry once per interval
   (mirror_writer_count_interval): one registry transaction instead of one
   per batch, which with the file dict rewrites the whole registry file.
   Until then they are in the journal (lib-mirror/mirror-count-journal.h,
   locked by its writer), which the next writer counts first after a
   crash, and which doveadm adds to the counters it shows. With interval
   0, or when another process holds the journal, every batch is counted
   at once, and the lock is tried again once a second. */

struct registry;
struct mirror_copy_result;

struct writer_counts *
writer_counts_init(struct registry *reg, const char *path,
		   unsigned int interval_msecs, struct event *event);
/* Count at the next flush; at once with interval 0. */
void writer_counts_add(struct writer_counts *counts,
		       const struct mirror_copy_result *results,
		       unsigned int count);
/* Count what waits now. */
void writer_counts_flush(struct writer_counts *counts);
/* Flushes first. */
void writer_counts_deinit(struct writer_counts **counts);

#endif
