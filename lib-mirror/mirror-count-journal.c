/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "strnum.h"
#include "istream.h"
#include "mirror-count-journal.h"

#include <fcntl.h>
#include <unistd.h>

void mirror_count_journal_format(string_t *dest,
				 const struct mirror_count_pending *pending,
				 unsigned int count)
{
	unsigned int i;

	for (i = 0; i < count; i++) {
		str_printfa(dest, "%010u\t%010u\t%010u\n", pending[i].id,
			    pending[i].copies, pending[i].failures);
	}
}

static bool
mirror_count_journal_parse_line(const char *line,
				struct mirror_count_pending *entry_r)
{
	const char *const *args;

	if (strlen(line) != MIRROR_COUNT_JOURNAL_LINE_LEN - 1)
		return FALSE;
	args = t_strsplit(line, "\t");
	return str_array_length(args) == 3 &&
		str_to_uint(args[0], &entry_r->id) == 0 && entry_r->id != 0 &&
		str_to_uint(args[1], &entry_r->copies) == 0 &&
		str_to_uint(args[2], &entry_r->failures) == 0;
}

int mirror_count_journal_parse(struct istream *input,
			       ARRAY_TYPE(mirror_count_pending) *pending,
			       unsigned int *broken_r, const char **error_r)
{
	struct mirror_count_pending entry, *p;
	const char *line;
	unsigned int i, count;

	*broken_r = 0;
	while ((line = i_stream_read_next_line(input)) != NULL) {
		if (!mirror_count_journal_parse_line(line, &entry)) {
			*broken_r += 1;
			continue;
		}
		p = array_get_modifiable(pending, &count);
		for (i = 0; i < count; i++) {
			if (p[i].id == entry.id)
				break;
		}
		if (i == count)
			array_push_back(pending, &entry);
		else {
			p[i].copies += entry.copies;
			p[i].failures += entry.failures;
		}
	}
	if (input->stream_errno != 0) {
		*error_r = i_stream_get_error(input);
		return -1;
	}
	return 0;
}

int mirror_count_journal_read(const char *base_dir,
			      ARRAY_TYPE(mirror_count_pending) *pending,
			      const char **error_r)
{
	struct istream *input;
	const char *path, *error;
	unsigned int broken;
	int fd, ret;

	path = t_strconcat(base_dir, "/", MIRROR_COUNT_JOURNAL_NAME, NULL);
	fd = open(path, O_RDONLY);
	if (fd == -1) {
		if (errno == ENOENT)
			return 0;
		*error_r = t_strdup_printf("open(%s) failed: %m", path);
		return -1;
	}
	input = i_stream_create_fd_autoclose(&fd, IO_BLOCK_SIZE);
	ret = mirror_count_journal_parse(input, pending, &broken, &error);
	i_stream_unref(&input);
	if (ret < 0) {
		*error_r = t_strdup_printf("read(%s) failed: %s", path, error);
		return -1;
	}
	return 0;
}

const struct mirror_count_pending *
mirror_count_pending_find(const ARRAY_TYPE(mirror_count_pending) *pending,
			  unsigned int id)
{
	const struct mirror_count_pending *p;

	array_foreach(pending, p) {
		if (p->id == id)
			return p;
	}
	return NULL;
}
