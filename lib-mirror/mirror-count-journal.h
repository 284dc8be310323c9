#ifndef MIRROR_COUNT_JOURNAL_H
#define MIRROR_COUNT_JOURNAL_H

/* The journal of the copies that mirror-writer made and has not counted
   in the registry yet (it counts them once per
   mirror_writer_count_interval): base_dir/mirror-writer.counts, written
   only by the writer that holds its lock.

   One line of fixed width per mirror the writer has copied to since it
   started, "<id> TAB <copies> TAB <failures> LF", each number zero-padded
   to 10 digits. The writer rewrites the lines in place (a counted line
   goes back to zeros), so a reader never sees a line cut by a shorter
   rewrite. Readers that show counters (doveadm mirror list, verify) add
   the journal's numbers to the registry's, reading the journal first: a
   count that moves from the journal to the registry in between is then
   seen twice, never missed. */

#define MIRROR_COUNT_JOURNAL_NAME "mirror-writer.counts"
/* "%010u\t%010u\t%010u\n" */
#define MIRROR_COUNT_JOURNAL_LINE_LEN 33

struct mirror_count_pending {
	unsigned int id;
	unsigned int copies, failures;
};
ARRAY_DEFINE_TYPE(mirror_count_pending, struct mirror_count_pending);

/* Append the journal's text for count entries to dest. */
void mirror_count_journal_format(string_t *dest,
				 const struct mirror_count_pending *pending,
				 unsigned int count);
/* Parse a journal's lines from input into pending (one entry per id,
   lines of the same id added up). A line that doesn't parse is skipped
   and counted in broken_r. Returns 0, or -1 with error_r if input
   failed. */
int mirror_count_journal_parse(struct istream *input,
			       ARRAY_TYPE(mirror_count_pending) *pending,
			       unsigned int *broken_r, const char **error_r);
/* Append what the journal in base_dir holds to pending (nothing if it
   doesn't exist). Returns 0, or -1 with error_r. */
int mirror_count_journal_read(const char *base_dir,
			      ARRAY_TYPE(mirror_count_pending) *pending,
			      const char **error_r);
/* Mirror id's entry in pending, or NULL. */
const struct mirror_count_pending *
mirror_count_pending_find(const ARRAY_TYPE(mirror_count_pending) *pending,
			  unsigned int id);

#endif
