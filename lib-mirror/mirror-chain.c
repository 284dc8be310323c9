/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* The hash chain of a mirror: its records, their links, and the file
   they are appended to (mirror-chain.h). */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "sort.h"
#include "str-sanitize.h"
#include "hex-binary.h"
#include "byteorder.h"
#include "hash-method.h"
#include "istream.h"
#include "file-lock.h"
#include "mirror-chain.h"

#include <sodium.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/stat.h>

/* type, previous link, content hash, time, mirror id, uidvalidity, uid,
   seq: the fixed encoding a link is computed over */
#define MIRROR_CHAIN_LINK_INPUT_SIZE \
	(1 + MIRROR_CHAIN_HASH_SIZE * 2 + 8 + 4 + 4 + 4 + 8)
/* crypto_generichash_state asks for more alignment than malloc() or a
   pool gives: the hash method aligns its context itself. */
#define MIRROR_CHAIN_STATE_ALIGN 64
#define MIRROR_CHAIN_FIELD_COUNT 7
#define MIRROR_CHAIN_READ_BUFFER_SIZE (64 * 1024)

static crypto_generichash_state *mirror_chain_hash_state(void *context)
{
	uintptr_t p = (uintptr_t)context;

	p = (p + MIRROR_CHAIN_STATE_ALIGN - 1) &
		~(uintptr_t)(MIRROR_CHAIN_STATE_ALIGN - 1);
	return (crypto_generichash_state *)p;
}

static void mirror_chain_hash_init(void *context)
{
	if (sodium_init() < 0)
		i_fatal("mirror: sodium_init() failed");
	if (crypto_generichash_init(mirror_chain_hash_state(context), NULL, 0,
				    MIRROR_CHAIN_HASH_SIZE) < 0)
		i_unreached();
}

static void mirror_chain_hash_loop(void *context, const void *data,
				   size_t size)
{
	(void)crypto_generichash_update(mirror_chain_hash_state(context),
					data, size);
}

static void mirror_chain_hash_result(void *context, unsigned char *digest_r)
{
	crypto_generichash_state *state = mirror_chain_hash_state(context);

	if (crypto_generichash_final(state, digest_r,
				     MIRROR_CHAIN_HASH_SIZE) < 0)
		i_unreached();
	sodium_memzero(state, sizeof(*state));
}

const struct hash_method mirror_chain_hash_method = {
	.name = "mirror-blake2b-256",
	/* BLAKE2b works on blocks of 128 bytes */
	.block_size = 128,
	.context_size = sizeof(crypto_generichash_state) +
		MIRROR_CHAIN_STATE_ALIGN - 1,
	.digest_size = MIRROR_CHAIN_HASH_SIZE,

	.init = mirror_chain_hash_init,
	.loop = mirror_chain_hash_loop,
	.result = mirror_chain_hash_result,
};

const char *mirror_chain_type_to_str(enum mirror_chain_record_type type)
{
	switch (type) {
	case MIRROR_CHAIN_RECORD_COPY:
		return "copy";
	case MIRROR_CHAIN_RECORD_EXPIRE:
		return "expire";
	case MIRROR_CHAIN_RECORD_HOLD:
		return "hold";
	case MIRROR_CHAIN_RECORD_RELEASE:
		return "release";
	}
	i_unreached();
}

bool mirror_chain_type_has_uid(enum mirror_chain_record_type type)
{
	return type == MIRROR_CHAIN_RECORD_COPY ||
		type == MIRROR_CHAIN_RECORD_EXPIRE;
}

const char *mirror_chain_file_name(unsigned int mirror_id)
{
	return t_strdup_printf(MIRROR_CHAIN_FILE_PREFIX"%u", mirror_id);
}

void mirror_chain_link(unsigned int mirror_id, const unsigned char *prev_link,
		       const struct mirror_chain_record *rec,
		       unsigned char link_r[MIRROR_CHAIN_HASH_SIZE])
{
	unsigned char input[MIRROR_CHAIN_LINK_INPUT_SIZE], *p = input;

	*p++ = (unsigned char)rec->type;
	if (prev_link == NULL)
		memset(p, 0, MIRROR_CHAIN_HASH_SIZE);
	else
		memcpy(p, prev_link, MIRROR_CHAIN_HASH_SIZE);
	p += MIRROR_CHAIN_HASH_SIZE;
	memcpy(p, rec->content_hash, MIRROR_CHAIN_HASH_SIZE);
	p += MIRROR_CHAIN_HASH_SIZE;
	cpu64_to_be_unaligned(rec->time, p); p += 8;
	cpu32_to_be_unaligned(mirror_id, p); p += 4;
	cpu32_to_be_unaligned(rec->uid_validity, p); p += 4;
	cpu32_to_be_unaligned(rec->uid, p); p += 4;
	cpu64_to_be_unaligned(rec->seq, p); p += 8;
	i_assert(p == input + sizeof(input));

	if (sodium_init() < 0)
		i_fatal("mirror: sodium_init() failed");
	if (crypto_generichash(link_r, MIRROR_CHAIN_HASH_SIZE,
			       input, sizeof(input), NULL, 0) < 0)
		i_unreached();
}

void mirror_chain_record_format(string_t *dest,
				const struct mirror_chain_record *rec)
{
	str_printfa(dest, "%s %"PRIu64" %"PRIu64" %u %u ",
		    mirror_chain_type_to_str(rec->type), rec->seq, rec->time,
		    rec->uid_validity, rec->uid);
	binary_to_hex_append(dest, rec->content_hash, MIRROR_CHAIN_HASH_SIZE);
	str_append_c(dest, ' ');
	binary_to_hex_append(dest, rec->link, MIRROR_CHAIN_HASH_SIZE);
	str_append_c(dest, '\n');
}

/* The records are parsed without allocating and without formatting them
   again: a chain has a record per copy. Each field must be in the one form
   mirror_chain_record_format() writes (no sign, no leading zeros, lowercase
   hex), so a record has exactly one valid spelling. */
struct mirror_chain_field {
	const char *str;
	size_t len;
};

static bool mirror_chain_uint_parse(const struct mirror_chain_field *field,
				    uint64_t max, uint64_t *num_r)
{
	uint64_t num = 0;
	size_t i;

	if (field->len == 0 || (field->str[0] == '0' && field->len > 1))
		return FALSE;
	for (i = 0; i < field->len; i++) {
		unsigned int digit = field->str[i] - '0';

		if (field->str[i] < '0' || field->str[i] > '9' ||
		    num > (max - digit) / 10)
			return FALSE;
		num = num * 10 + digit;
	}
	*num_r = num;
	return TRUE;
}

/* A lowercase hex digit's value plus one; 0 for anything else */
static const unsigned char mirror_chain_hex_values[256] = {
	['0'] = 1, ['1'] = 2, ['2'] = 3, ['3'] = 4, ['4'] = 5,
	['5'] = 6, ['6'] = 7, ['7'] = 8, ['8'] = 9, ['9'] = 10,
	['a'] = 11, ['b'] = 12, ['c'] = 13, ['d'] = 14, ['e'] = 15,
	['f'] = 16,
};

static bool mirror_chain_hash_parse(const struct mirror_chain_field *field,
				    unsigned char *hash_r)
{
	const unsigned char *p = (const unsigned char *)field->str;
	unsigned int i, hi, lo;

	if (field->len != MIRROR_CHAIN_HASH_SIZE * 2)
		return FALSE;
	for (i = 0; i < MIRROR_CHAIN_HASH_SIZE; i++) {
		hi = mirror_chain_hex_values[p[i * 2]];
		lo = mirror_chain_hex_values[p[i * 2 + 1]];
		if (hi == 0 || lo == 0)
			return FALSE;
		hash_r[i] = ((hi - 1) << 4) | (lo - 1);
	}
	return TRUE;
}

static bool mirror_chain_type_parse(const struct mirror_chain_field *field,
				    enum mirror_chain_record_type *type_r)
{
	if (field->len == 4 && memcmp(field->str, "copy", 4) == 0)
		*type_r = MIRROR_CHAIN_RECORD_COPY;
	else if (field->len == 6 && memcmp(field->str, "expire", 6) == 0)
		*type_r = MIRROR_CHAIN_RECORD_EXPIRE;
	else if (field->len == 4 && memcmp(field->str, "hold", 4) == 0)
		*type_r = MIRROR_CHAIN_RECORD_HOLD;
	else if (field->len == 7 && memcmp(field->str, "release", 7) == 0)
		*type_r = MIRROR_CHAIN_RECORD_RELEASE;
	else
		return FALSE;
	return TRUE;
}

int mirror_chain_record_parse(const char *line,
			      struct mirror_chain_record *rec_r,
			      const char **error_r)
{
	struct mirror_chain_field fields[MIRROR_CHAIN_FIELD_COUNT];
	const char *p = line, *end;
	uint64_t num;
	unsigned int i;

	i_zero(rec_r);
	if (strlen(line) >= MIRROR_CHAIN_LINE_MAX) {
		*error_r = "Record too long";
		return -1;
	}
	/* exactly one space between fields, none around them */
	for (i = 0;; i++) {
		end = strchr(p, ' ');
		if (i == N_ELEMENTS(fields)) {
			*error_r = "Wrong number of fields";
			return -1;
		}
		fields[i].str = p;
		fields[i].len = end == NULL ? strlen(p) : (size_t)(end - p);
		if (end == NULL)
			break;
		p = end + 1;
	}
	if (i + 1 != N_ELEMENTS(fields)) {
		*error_r = "Wrong number of fields";
		return -1;
	}
	if (!mirror_chain_type_parse(&fields[0], &rec_r->type)) {
		*error_r = t_strdup_printf("Unknown record type '%s'",
			str_sanitize(t_strndup(fields[0].str, fields[0].len),
				     20));
		return -1;
	}
	if (!mirror_chain_uint_parse(&fields[1], UINT64_MAX, &rec_r->seq) ||
	    rec_r->seq == 0) {
		*error_r = "Invalid seq";
		return -1;
	}
	if (!mirror_chain_uint_parse(&fields[2], UINT64_MAX, &rec_r->time)) {
		*error_r = "Invalid time";
		return -1;
	}
	/* a copy's or an expiry's UID, none for a hold's or a release's */
	if (!mirror_chain_uint_parse(&fields[3], UINT32_MAX, &num) ||
	    (num != 0) != mirror_chain_type_has_uid(rec_r->type)) {
		*error_r = "Invalid uidvalidity";
		return -1;
	}
	rec_r->uid_validity = num;
	if (!mirror_chain_uint_parse(&fields[4], UINT32_MAX, &num) ||
	    (num != 0) != mirror_chain_type_has_uid(rec_r->type)) {
		*error_r = "Invalid uid";
		return -1;
	}
	rec_r->uid = num;
	if (!mirror_chain_hash_parse(&fields[5], rec_r->content_hash)) {
		*error_r = "Invalid content hash";
		return -1;
	}
	if (!mirror_chain_hash_parse(&fields[6], rec_r->link)) {
		*error_r = "Invalid link";
		return -1;
	}
	return 0;
}

bool mirror_chain_record_follows(unsigned int mirror_id,
				 const struct mirror_chain_record *prev,
				 const struct mirror_chain_record *rec,
				 const char **error_r)
{
	unsigned char link[MIRROR_CHAIN_HASH_SIZE];
	uint64_t seq = prev == NULL ? 1 : prev->seq + 1;

	if (rec->seq != seq) {
		*error_r = t_strdup_printf("Expected seq %"PRIu64", found %"
					   PRIu64, seq, rec->seq);
		return FALSE;
	}
	mirror_chain_link(mirror_id, prev == NULL ? NULL : prev->link, rec,
			  link);
	if (memcmp(link, rec->link, sizeof(link)) != 0) {
		*error_r = t_strdup_printf("Link of seq %"PRIu64" doesn't "
					   "match", rec->seq);
		return FALSE;
	}
	return TRUE;
}

/* Read the last record of a locked chain file of size bytes. Returns 1 if
   found, 0 if the file is empty, -1 if it can't be read or is broken. */
static int
mirror_chain_read_last(int fd, const char *path, uoff_t size,
		       struct mirror_chain_record *rec_r, const char **error_r)
{
	char buf[MIRROR_CHAIN_LINE_MAX + 1];
	size_t len, start;
	off_t offset;
	ssize_t ret;
	const char *error;

	if (size == 0)
		return 0;
	len = size < MIRROR_CHAIN_LINE_MAX ? size : MIRROR_CHAIN_LINE_MAX;
	offset = (off_t)(size - len);
	ret = pread(fd, buf, len, offset);
	if (ret < 0) {
		*error_r = t_strdup_printf("pread(%s) failed: %m", path);
		return -1;
	}
	if ((size_t)ret != len) {
		*error_r = t_strdup_printf("pread(%s) returned %zd of %zu "
					   "bytes", path, ret, len);
		return -1;
	}
	if (buf[len - 1] != '\n') {
		*error_r = t_strdup_printf(
			"Chain %s is broken: its last record is incomplete",
			path);
		return -1;
	}
	buf[len - 1] = '\0';
	for (start = len - 1; start > 0; start--) {
		if (buf[start - 1] == '\n')
			break;
	}
	if (start == 0 && offset != 0) {
		*error_r = t_strdup_printf(
			"Chain %s is broken: its last record is too long",
			path);
		return -1;
	}
	/* the parser sees the line up to a NUL only */
	if (strlen(buf + start) != len - 1 - start) {
		*error_r = t_strdup_printf(
			"Chain %s is broken: its last record contains a NUL",
			path);
		return -1;
	}
	if (mirror_chain_record_parse(buf + start, rec_r, &error) < 0) {
		*error_r = t_strdup_printf(
			"Chain %s is broken: its last record: %s", path,
			error);
		return -1;
	}
	return 1;
}

static int
mirror_chain_append_locked(int fd, const char *path, unsigned int mirror_id,
			   struct mirror_chain_record *recs, unsigned int count,
			   bool fsync, const char **error_r)
{
	struct mirror_chain_record prev;
	const struct mirror_chain_record *prevp;
	struct stat st;
	string_t *line;
	unsigned int i;
	ssize_t ret;
	int prev_ret;

	if (fstat(fd, &st) < 0) {
		*error_r = t_strdup_printf("fstat(%s) failed: %m", path);
		return -1;
	}
	prev_ret = mirror_chain_read_last(fd, path, st.st_size, &prev,
					  error_r);
	if (prev_ret < 0)
		return -1;
	prevp = prev_ret == 0 ? NULL : &prev;

	line = t_str_new(MIRROR_CHAIN_LINE_MAX);
	for (i = 0; i < count; i++) {
		recs[i].seq = prevp == NULL ? 1 : prevp->seq + 1;
		mirror_chain_link(mirror_id, prevp == NULL ? NULL : prevp->link,
				  &recs[i], recs[i].link);
		mirror_chain_record_format(line, &recs[i]);
		prevp = &recs[i];
	}
	/* one write(): a reader never sees half of another's record */
	ret = write(fd, str_data(line), str_len(line));
	if (ret != (ssize_t)str_len(line)) {
		*error_r = ret < 0 ?
			t_strdup_printf("write(%s) failed: %m", path) :
			t_strdup_printf("write(%s) wrote %zd of %zu bytes",
					path, ret, str_len(line));
		/* leave no partial record behind */
		if (ret > 0 && ftruncate(fd, st.st_size) < 0) {
			i_error("mirror: ftruncate(%s) failed: %m", path);
		}
		return -1;
	}
	if (fsync && fdatasync(fd) < 0) {
		*error_r = t_strdup_printf("fdatasync(%s) failed: %m", path);
		return -1;
	}
	return 0;
}

int mirror_chain_append_records(const char *path, unsigned int mirror_id,
				struct mirror_chain_record *recs,
				unsigned int count, bool fsync,
				const char **error_r)
{
	struct file_lock_settings lock_set = {
		.lock_method = FILE_LOCK_METHOD_FCNTL,
	};
	struct file_lock *lock;
	const char *error;
	unsigned int i;
	int fd, ret;

	for (i = 0; i < count; i++) {
		bool has_uid = mirror_chain_type_has_uid(recs[i].type);

		i_assert((recs[i].uid_validity != 0) == has_uid &&
			 (recs[i].uid != 0) == has_uid);
	}
	if (count == 0)
		return 0;

	fd = open(path, O_RDWR | O_APPEND | O_CREAT, 0600);
	if (fd == -1) {
		*error_r = t_strdup_printf("open(%s) failed: %m", path);
		return -1;
	}
	ret = file_wait_lock(fd, path, F_WRLCK, &lock_set,
			     MIRROR_CHAIN_LOCK_TIMEOUT_SECS, &lock, &error);
	if (ret <= 0) {
		*error_r = ret < 0 ? error : t_strdup_printf(
			"Timed out locking %s: %s", path, error);
		i_close_fd(&fd);
		return -1;
	}
	ret = mirror_chain_append_locked(fd, path, mirror_id, recs, count,
					 fsync, error_r);
	file_unlock(&lock);
	if (close(fd) < 0 && ret == 0) {
		*error_r = t_strdup_printf("close(%s) failed: %m", path);
		ret = -1;
	}
	return ret;
}

int mirror_chain_append(const char *path, unsigned int mirror_id,
			enum mirror_chain_record_type type, time_t time,
			uint32_t uid_validity, uint32_t uid,
			const unsigned char content_hash[MIRROR_CHAIN_HASH_SIZE],
			bool fsync, struct mirror_chain_record *rec_r,
			const char **error_r)
{
	struct mirror_chain_record rec;

	i_zero(&rec);
	rec.type = type;
	rec.time = time < 0 ? 0 : (uint64_t)time;
	rec.uid_validity = uid_validity;
	rec.uid = uid;
	memcpy(rec.content_hash, content_hash, MIRROR_CHAIN_HASH_SIZE);
	if (mirror_chain_append_records(path, mirror_id, &rec, 1, fsync,
					error_r) < 0)
		return -1;
	if (rec_r != NULL)
		*rec_r = rec;
	return 0;
}

void mirror_chain_expired_keys(const ARRAY_TYPE(mirror_chain_record) *records,
			       ARRAY_TYPE(uint64_t) *keys)
{
	const struct mirror_chain_record *rec;
	uint64_t key;

	array_foreach(records, rec) {
		if (rec->type != MIRROR_CHAIN_RECORD_EXPIRE)
			continue;
		key = mirror_chain_uid_key(rec->uid_validity, rec->uid);
		array_push_back(keys, &key);
	}
	array_sort(keys, uint64_cmp);
}

int mirror_chain_read_head(const char *path,
			   struct mirror_chain_record *rec_r,
			   const char **error_r)
{
	struct file_lock_settings lock_set = {
		.lock_method = FILE_LOCK_METHOD_FCNTL,
	};
	struct file_lock *lock;
	struct stat st;
	const char *error;
	int fd, ret;

	fd = open(path, O_RDONLY);
	if (fd == -1) {
		if (errno == ENOENT)
			return 0;
		*error_r = t_strdup_printf("open(%s) failed: %m", path);
		return -1;
	}
	/* shared with other readers, not with an append in progress */
	ret = file_wait_lock(fd, path, F_RDLCK, &lock_set,
			     MIRROR_CHAIN_LOCK_TIMEOUT_SECS, &lock, &error);
	if (ret <= 0) {
		*error_r = ret < 0 ? error : t_strdup_printf(
			"Timed out locking %s: %s", path, error);
		i_close_fd(&fd);
		return -1;
	}
	if (fstat(fd, &st) < 0) {
		*error_r = t_strdup_printf("fstat(%s) failed: %m", path);
		ret = -1;
	} else {
		ret = mirror_chain_read_last(fd, path, st.st_size, rec_r,
					     error_r);
	}
	file_unlock(&lock);
	i_close_fd(&fd);
	return ret;
}

int mirror_chain_read(const char *path, unsigned int mirror_id,
		      ARRAY_TYPE(mirror_chain_record) *records,
		      const char **broken_r, const char **error_r)
{
	struct mirror_chain_record rec, prev;
	struct istream *input;
	const char *line, *error;
	char broken[128];
	unsigned int line_num = 0, broken_line = 0;
	uoff_t line_offset = 0;
	bool have_prev = FALSE;
	int fd, ret = 0;

	*broken_r = NULL;
	fd = open(path, O_RDONLY);
	if (fd == -1) {
		if (errno == ENOENT)
			return 0;
		*error_r = t_strdup_printf("open(%s) failed: %m", path);
		return -1;
	}
	/* a large buffer: reading a long chain MIRROR_CHAIN_LINE_MAX bytes
	   at a time costs a syscall per few records. Longer lines are
	   still refused by the record parser. */
	input = i_stream_create_fd_autoclose(&fd, MIRROR_CHAIN_READ_BUFFER_SIZE);
	while ((line = i_stream_read_next_line(input)) != NULL) {
		/* the line is all that was read: the stream drops a CR
		   before the LF, and the parser stops at a NUL */
		bool exact = input->v_offset - line_offset == strlen(line) + 1;
		bool parsed;

		line_offset = input->v_offset;
		line_num++;
		/* a chain has a record per copy: parse each in its own
		   frame, or the data stack grows with the chain */
		T_BEGIN {
			if (!exact) {
				parsed = FALSE;
				error = "Record contains a CR or NUL";
			} else {
				parsed = mirror_chain_record_parse(line, &rec,
							&error) == 0;
			}
			/* a record that doesn't follow is kept: verify
			   reports the first break */
			if (parsed && mirror_chain_record_follows(
					mirror_id, have_prev ? &prev : NULL,
					&rec, &error))
				error = NULL;
			if (error != NULL && broken_line == 0) {
				broken_line = line_num;
				i_strocpy(broken, error, sizeof(broken));
			}
		} T_END;
		if (!parsed)
			continue;
		array_push_back(records, &rec);
		prev = rec;
		have_prev = TRUE;
	}
	if (broken_line != 0) {
		*broken_r = t_strdup_printf("line %u: %s", broken_line,
					    broken);
	}
	if (input->stream_errno == ENOBUFS) {
		if (*broken_r == NULL) {
			*broken_r = t_strdup_printf(
				"line %u: Record too long", line_num + 1);
		}
	} else if (input->stream_errno != 0) {
		*error_r = t_strdup_printf("read(%s) failed: %s", path,
					   i_stream_get_error(input));
		ret = -1;
	} else if (i_stream_get_data_size(input) > 0 && *broken_r == NULL) {
		*broken_r = t_strdup_printf("line %u: Incomplete record",
					    line_num + 1);
	}
	i_stream_unref(&input);
	return ret;
}
