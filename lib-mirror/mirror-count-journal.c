/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

#include "lib.h"
#include "array.h"
#include "buffer.h"
#include "str.h"
#include "strnum.h"
#include "istream.h"
#include "mirror-count-journal.h"

#include <fcntl.h>
#include <unistd.h>

/* how often a reader reads the journal again when two reads differ */
#define MIRROR_COUNT_JOURNAL_READ_TRIES 5
/* the largest journal a reader takes: a line per mirror */
#define MIRROR_COUNT_JOURNAL_MAX_SIZE (64*1024*1024)

const char *mirror_count_journal_path(const char *base_dir)
{
	return t_strconcat(base_dir, "/", MIRROR_COUNT_JOURNAL_NAME, NULL);
}

void mirror_count_journal_format(string_t *dest,
				 const struct mirror_count_pending *pending,
				 unsigned int count)
{
	unsigned int i;

	for (i = 0; i < count; i++) {
		str_printfa(dest, "%010u\t%010u\t%010u\t%010u\t%010u\n",
			    pending[i].id, pending[i].copies,
			    pending[i].failures, pending[i].flushing_copies,
			    pending[i].flushing_failures);
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
	return str_array_length(args) == 5 &&
		str_to_uint(args[0], &entry_r->id) == 0 && entry_r->id != 0 &&
		str_to_uint(args[1], &entry_r->copies) == 0 &&
		str_to_uint(args[2], &entry_r->failures) == 0 &&
		str_to_uint(args[3], &entry_r->flushing_copies) == 0 &&
		str_to_uint(args[4], &entry_r->flushing_failures) == 0;
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
			p[i].flushing_copies += entry.flushing_copies;
			p[i].flushing_failures += entry.flushing_failures;
		}
	}
	if (input->stream_errno != 0) {
		*error_r = i_stream_get_error(input);
		return -1;
	}
	return 0;
}

static int
mirror_count_journal_read_file(int fd, const char *path, buffer_t *buf,
			       const char **error_r)
{
	unsigned char data[IO_BLOCK_SIZE];
	off_t offset = 0;
	ssize_t ret;

	buffer_set_used_size(buf, 0);
	while ((ret = pread(fd, data, sizeof(data), offset)) > 0) {
		if (buf->used + ret > MIRROR_COUNT_JOURNAL_MAX_SIZE) {
			errno = EFBIG;
			*error_r = t_strdup_printf("%s is too large", path);
			return -1;
		}
		buffer_append(buf, data, ret);
		offset += ret;
	}
	if (ret < 0) {
		*error_r = t_strdup_printf("read(%s) failed: %m", path);
		return -1;
	}
	return 0;
}

int mirror_count_journal_read(const char *base_dir,
			      ARRAY_TYPE(mirror_count_pending) *pending,
			      const char **error_r)
{
	struct istream *input;
	buffer_t *buf, *prev;
	const char *path, *error;
	unsigned int i, broken;
	int fd, ret = 0;

	path = mirror_count_journal_path(base_dir);
	fd = open(path, O_RDONLY);
	if (fd == -1) {
		int open_errno = errno;

		if (errno == ENOENT)
			return 0;
		*error_r = t_strdup_printf("open(%s) failed: %m", path);
		errno = open_errno;
		return -1;
	}
	buf = t_buffer_create(1024);
	prev = t_buffer_create(1024);
	for (i = 0; ret == 0; i++) {
		buffer_t *tmp = prev;

		prev = buf;
		buf = tmp;
		ret = mirror_count_journal_read_file(fd, path, buf, error_r);
		if (ret == 0 && i > 0 && buffer_cmp(buf, prev))
			break;
		if (ret == 0 && i + 1 == MIRROR_COUNT_JOURNAL_READ_TRIES) {
			errno = EAGAIN;
			*error_r = t_strdup_printf(
				"%s changed at every read", path);
			ret = -1;
		}
	}
	i_close_fd(&fd);
	if (ret < 0)
		return -1;
	input = i_stream_create_from_data(buf->data, buf->used);
	ret = mirror_count_journal_parse(input, pending, &broken, &error);
	i_stream_unref(&input);
	if (ret < 0) {
		errno = EIO;
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
