/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* Fuzz target: the hash chain's record parser on what is on disk, which
   anyone with access to the storage's control directory can change:
   mirror_chain_record_parse(), and through files mirror_chain_read() (the
   whole chain, as verify reads it) and mirror_chain_append() (which reads
   the chain's last record back before it links a new one to it).

   Input: one selector byte, then
     '0': one record line: what parses is written back by
          mirror_chain_record_format() as exactly the same line;
     '1': a chain file for mirror_chain_read(): every record it returns
          is a parsed line of the file, and a chain it calls intact is
          exactly its records formatted, each linked to the one before;
     '2': a chain file to append to: the append either fails and leaves
          the file as it was (and then mirror_chain_read() didn't call the
          chain intact either), or adds one record, linked to the last one
          and read back by mirror_chain_read() after what was there.
   Any other selector picks one by its value. */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "unlink-directory.h"
#include "write-full.h"
#include "fuzz-common.h"
#include "mirror-chain.h"

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/stat.h>

#define FUZZ_CHAIN_MIRROR_ID 7

enum fuzz_chain_kind {
	FUZZ_CHAIN_RECORD = 0,
	FUZZ_CHAIN_READ,
	FUZZ_CHAIN_APPEND,

	FUZZ_CHAIN_KIND_COUNT
};

static char *fuzz_chain_dir, *fuzz_chain_path;

static void fuzz_chain_cleanup(void)
{
	const char *error;

	if (unlink_directory(fuzz_chain_dir, UNLINK_DIRECTORY_FLAG_RMDIR,
			     &error) < 0)
		i_error("%s", error);
	i_free(fuzz_chain_dir);
	i_free(fuzz_chain_path);
}

/* the chain files are written in a directory of this process */
static const char *fuzz_chain_path_get(void)
{
	const char *tmpdir = getenv("TMPDIR");
	char *dir;

	if (fuzz_chain_path != NULL)
		return fuzz_chain_path;
	dir = i_strconcat(tmpdir != NULL && *tmpdir != '\0' ? tmpdir : "/tmp",
			  "/fuzz-chain.XXXXXX", NULL);
	if (mkdtemp(dir) == NULL)
		i_fatal("mkdtemp(%s) failed: %m", dir);
	fuzz_chain_dir = dir;
	fuzz_chain_path = i_strconcat(dir, "/chain", NULL);
	if (atexit(fuzz_chain_cleanup) != 0)
		i_fatal("atexit() failed");
	return fuzz_chain_path;
}

static const char *
fuzz_chain_write(const unsigned char *data, size_t size)
{
	const char *path = fuzz_chain_path_get();
	int fd;

	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd == -1)
		i_fatal("open(%s) failed: %m", path);
	if (write_full(fd, data, size) < 0)
		i_fatal("write(%s) failed: %m", path);
	if (close(fd) < 0)
		i_fatal("close(%s) failed: %m", path);
	return path;
}

static string_t *fuzz_chain_read_file(const char *path)
{
	string_t *str = t_str_new(1024);
	unsigned char buf[4096];
	ssize_t ret;
	int fd;

	fd = open(path, O_RDONLY);
	if (fd == -1)
		i_fatal("open(%s) failed: %m", path);
	while ((ret = read(fd, buf, sizeof(buf))) > 0)
		str_append_data(str, buf, ret);
	if (ret < 0)
		i_fatal("read(%s) failed: %m", path);
	if (close(fd) < 0)
		i_fatal("close(%s) failed: %m", path);
	return str;
}

static void fuzz_chain_record(const unsigned char *data, size_t size)
{
	struct mirror_chain_record rec;
	const char *line = t_strndup(data, size), *error;
	string_t *str;

	if (mirror_chain_record_parse(line, &rec, &error) < 0) {
		i_assert(error != NULL);
		return;
	}
	i_assert(strlen(line) < MIRROR_CHAIN_LINE_MAX);
	/* a copy or an expiry names a message, a hold or a release none */
	i_assert(rec.seq > 0);
	i_assert((rec.uid_validity != 0) == mirror_chain_type_has_uid(rec.type));
	i_assert((rec.uid != 0) == mirror_chain_type_has_uid(rec.type));
	/* one spelling per record */
	str = t_str_new(MIRROR_CHAIN_LINE_MAX);
	mirror_chain_record_format(str, &rec);
	i_assert(str_len(str) == strlen(line) + 1);
	i_assert(memcmp(str_data(str), line, strlen(line)) == 0);
}

/* Read the chain at path: returns the records, and the file's text as they
   are written (the records formatted) in formatted_r. */
static ARRAY_TYPE(mirror_chain_record) *
fuzz_chain_read(const char *path, const char **broken_r,
		string_t **formatted_r)
{
	ARRAY_TYPE(mirror_chain_record) *records;
	const struct mirror_chain_record *rec, *prev = NULL;
	const char *error;

	records = t_new(ARRAY_TYPE(mirror_chain_record), 1);
	t_array_init(records, 16);
	if (mirror_chain_read(path, FUZZ_CHAIN_MIRROR_ID, records, broken_r,
			      &error) < 0)
		i_panic("mirror_chain_read() failed: %s", error);

	*formatted_r = t_str_new(1024);
	array_foreach(records, rec) {
		i_assert(rec->seq > 0);
		mirror_chain_record_format(*formatted_r, rec);
		if (*broken_r == NULL) {
			i_assert(mirror_chain_record_follows(
				FUZZ_CHAIN_MIRROR_ID, prev, rec, &error));
		}
		prev = rec;
	}
	return records;
}

static void fuzz_chain_file(const unsigned char *data, size_t size)
{
	const char *path = fuzz_chain_write(data, size);
	const char *broken;
	string_t *formatted;

	(void)fuzz_chain_read(path, &broken, &formatted);
	/* every record returned is a line of the file */
	i_assert(str_len(formatted) <= size);
	if (broken == NULL) {
		/* intact: nothing in the file but its records */
		i_assert(str_len(formatted) == size);
		i_assert(memcmp(str_data(formatted), data, size) == 0);
	}
	i_unlink(path);
}

static void fuzz_chain_append(const unsigned char *data, size_t size)
{
	static const unsigned char content_hash[MIRROR_CHAIN_HASH_SIZE] = {
		0x01, 0x02, 0x03,
	};
	ARRAY_TYPE(mirror_chain_record) *before, *after;
	const struct mirror_chain_record *last, *appended;
	struct mirror_chain_record rec;
	const char *path = fuzz_chain_write(data, size);
	const char *broken, *broken_after, *error;
	string_t *formatted, *formatted_after, *text;
	unsigned int count;

	before = fuzz_chain_read(path, &broken, &formatted);
	if (mirror_chain_append(path, FUZZ_CHAIN_MIRROR_ID,
				MIRROR_CHAIN_RECORD_COPY, 1767225600, 1, 1,
				content_hash, FALSE, &rec, &error) < 0) {
		/* a chain that verify calls intact can be added to */
		if (broken == NULL) {
			i_panic("append to an intact chain failed: %s",
				error);
		}
		/* the file stays as it was */
		text = fuzz_chain_read_file(path);
		i_assert(str_len(text) == size);
		i_assert(memcmp(str_data(text), data, size) == 0);
		i_unlink(path);
		return;
	}

	after = fuzz_chain_read(path, &broken_after, &formatted_after);
	count = array_count(after);
	i_assert(count > 0);
	appended = array_idx(after, count - 1);
	i_assert(memcmp(appended, &rec, sizeof(rec)) == 0);
	/* the new record follows the last one of the file */
	last = count == 1 ? NULL : array_idx(after, count - 2);
	i_assert(mirror_chain_record_follows(FUZZ_CHAIN_MIRROR_ID, last,
					     appended, &error));
	/* and only it was added */
	text = fuzz_chain_read_file(path);
	i_assert(str_len(text) > size);
	i_assert(memcmp(str_data(text), data, size) == 0);
	if (broken == NULL) {
		i_assert(broken_after == NULL);
		i_assert(count == array_count(before) + 1);
	}
	i_unlink(path);
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
	if (size == 0)
		return 0;
	T_BEGIN {
		switch (fuzz_select(data[0], FUZZ_CHAIN_KIND_COUNT)) {
		case FUZZ_CHAIN_RECORD:
			fuzz_chain_record(data + 1, size - 1);
			break;
		case FUZZ_CHAIN_READ:
			fuzz_chain_file(data + 1, size - 1);
			break;
		case FUZZ_CHAIN_APPEND:
			fuzz_chain_append(data + 1, size - 1);
			break;
		}
	} T_END;
	return 0;
}
