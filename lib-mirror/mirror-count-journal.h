#ifndef MIRROR_COUNT_JOURNAL_H
#define MIRROR_COUNT_JOURNAL_H

/* The journal of the copies that mirror-writer made and has not counted
   in the registry yet (it counts them once per
   mirror_writer_count_interval): base_dir/mirror-writer.counts, written
   only by the writer that holds its lock.

   One line of fixed width per mirror the writer has copied to since it
   started, "<id> <copies> <failures> <flushing copies> <flushing
   failures>", tab-separated, each number zero-padded to 10 digits. The
   writer rewrites the lines in place (a counted line goes back to zeros),
   so a reader never sees a line cut by a shorter rewrite. A flush first
   moves a line's numbers to its "flushing" ones, then counts them in the
   registry, then zeroes them: readers that show counters (doveadm mirror
   list, verify, check) add both to the registry's, reading the journal
   first, so a count is seen twice for a moment, never missed. A writer
   that starts counts only what a crashed one left not flushing: what was
   flushing may be counted already (a counter is then short, which
   `verify --reconcile` raises; never counted twice). */

#define MIRROR_COUNT_JOURNAL_NAME "mirror-writer.counts"
/* "%010u\t%010u\t%010u\t%010u\t%010u\n" */
#define MIRROR_COUNT_JOURNAL_LINE_LEN 55

struct mirror_count_pending {
	unsigned int id;
	/* not counted yet */
	unsigned int copies, failures;
	/* being counted now */
	unsigned int flushing_copies, flushing_failures;
};
ARRAY_DEFINE_TYPE(mirror_count_pending, struct mirror_count_pending);

/* The journal's path in base_dir */
const char *mirror_count_journal_path(const char *base_dir);
/* Append the journal's text for count entries to dest. */
void mirror_count_journal_format(string_t *dest,
				 const struct mirror_count_pending *pending,
				 unsigned int count);
/* Parse a journal's lines from input into pending (one entry per id,
   lines of the same id added up). A line that doesn't parse is skipped
   and counted in broken_r. Returns 0, or -1 with error_r if input
   failed (also for a line too long to read). */
int mirror_count_journal_parse(struct istream *input,
			       ARRAY_TYPE(mirror_count_pending) *pending,
			       unsigned int *broken_r, const char **error_r);
/* Append what the journal in base_dir holds to pending (nothing if it
   doesn't exist). It is read until two reads in a row agree, so that a
   line the writer is rewriting at that moment isn't taken half old, half
   new. Returns 0, or -1 with error_r (errno is set). */
int mirror_count_journal_read(const char *base_dir,
			      ARRAY_TYPE(mirror_count_pending) *pending,
			      const char **error_r);
/* Mirror id's entry in pending, or NULL. */
const struct mirror_count_pending *
mirror_count_pending_find(const ARRAY_TYPE(mirror_count_pending) *pending,
			  unsigned int id);

#endif
