/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* The flush journal of a bag (bag-journal.h). */

#include "lib.h"
#include "array.h"
#include "hash.h"
#include "str.h"
#include "strnum.h"
#include "strescape.h"
#include "str-sanitize.h"
#include "istream.h"
#include "write-full.h"
#include "mail-user.h"
#include "bag-store.h"
#include "bag-journal.h"

#include <stdio.h>
#include <fcntl.h>
#include <unistd.h>

#define BAG_JOURNAL_FILE "dovecot-bag.journal"
/* the most recipients a record may name (an envelope has fewer) */
#define BAG_JOURNAL_MAX_RCPTS 100000
/* a line longer than this is broken */
#define BAG_JOURNAL_MAX_LINE 1024

struct bag_journal_msg {
	char *guid;
	ARRAY(enum bag_journal_state) states;
	/* a flush met the message (compaction keeps it) */
	bool seen;
};

struct bag_journal {
	pool_t pool;
	char *path;
	int fd;
	HASH_TABLE(char *, struct bag_journal_msg *) msgs;
};

static struct bag_journal_msg *
bag_journal_msg_get(struct bag_journal *journal, const char *guid)
{
	struct bag_journal_msg *msg;

	msg = hash_table_lookup(journal->msgs, guid);
	if (msg == NULL) {
		msg = p_new(journal->pool, struct bag_journal_msg, 1);
		msg->guid = p_strdup(journal->pool, guid);
		p_array_init(&msg->states, journal->pool, 4);
		hash_table_insert(journal->msgs, msg->guid, msg);
	}
	return msg;
}

static void
bag_journal_msg_set(struct bag_journal_msg *msg, unsigned int idx,
		    enum bag_journal_state state)
{
	if (state == BAG_JOURNAL_UNDONE)
		state = BAG_JOURNAL_WAITING;
	array_idx_set(&msg->states, idx, &state);
}

static bool bag_journal_state_valid(char chr)
{
	switch (chr) {
	case BAG_JOURNAL_DELIVERED:
	case BAG_JOURNAL_FAILED:
	case BAG_JOURNAL_NOTIFYING:
	case BAG_JOURNAL_NOTIFIED:
	case BAG_JOURNAL_UNDONE:
		return TRUE;
	}
	return FALSE;
}

static int
bag_journal_parse_line(struct bag_journal *journal, const char *line,
		       const char **error_r)
{
	const char *const *args = t_strsplit_tabescaped(line);
	unsigned int idx;

	if (str_array_length(args) != 3 || args[0][0] == '\0' ||
	    str_to_uint(args[1], &idx) < 0 || idx >= BAG_JOURNAL_MAX_RCPTS ||
	    strlen(args[2]) != 1 || !bag_journal_state_valid(args[2][0])) {
		*error_r = t_strdup_printf("Broken line '%s'",
					   str_sanitize(line, 80));
		return -1;
	}
	bag_journal_msg_set(bag_journal_msg_get(journal, args[0]), idx,
			    args[2][0]);
	return 0;
}

static int bag_journal_read(struct bag_journal *journal, const char **error_r)
{
	struct istream *input;
	const char *line, *error;
	int fd, ret = 0;

	fd = open(journal->path, O_RDONLY);
	if (fd == -1) {
		if (errno == ENOENT)
			return 0;
		*error_r = t_strdup_printf("open(%s) failed: %m",
					   journal->path);
		return -1;
	}
	input = i_stream_create_fd_autoclose(&fd, BAG_JOURNAL_MAX_LINE);
	while ((line = i_stream_read_next_line(input)) != NULL) {
		if (bag_journal_parse_line(journal, line, &error) < 0) {
			*error_r = t_strdup_printf("%s: %s", journal->path,
						   error);
			ret = -1;
			break;
		}
	}
	if (ret == 0 && input->stream_errno != 0) {
		*error_r = t_strdup_printf("read(%s) failed: %s",
			journal->path, input->stream_errno == ENOBUFS ?
			"Line too long" : i_stream_get_error(input));
		ret = -1;
	}
	i_stream_unref(&input);
	return ret;
}

int bag_journal_open(struct bag_store *store, struct bag_journal **journal_r,
		     const char **error_r)
{
	struct bag_journal *journal;
	const char *home;
	pool_t pool;

	if (mail_user_get_home(store->user, &home) <= 0) {
		*error_r = t_strdup_printf("Bag user %s has no home",
					   store->username);
		return -1;
	}
	pool = pool_alloconly_create("bag journal", 1024);
	journal = p_new(pool, struct bag_journal, 1);
	journal->pool = pool;
	journal->fd = -1;
	journal->path = p_strconcat(pool, home, "/"BAG_JOURNAL_FILE, NULL);
	hash_table_create(&journal->msgs, pool, 0, str_hash, strcmp);
	if (bag_journal_read(journal, error_r) < 0) {
		bag_journal_close(&journal);
		return -1;
	}
	*journal_r = journal;
	return 0;
}

void bag_journal_close(struct bag_journal **_journal)
{
	struct bag_journal *journal = *_journal;

	if (journal == NULL)
		return;
	*_journal = NULL;
	i_close_fd_path(&journal->fd, journal->path);
	hash_table_destroy(&journal->msgs);
	pool_unref(&journal->pool);
}

bool bag_journal_lookup(struct bag_journal *journal, const char *guid,
			unsigned int count,
			enum bag_journal_state **states_r)
{
	struct bag_journal_msg *msg;
	const enum bag_journal_state *states;
	unsigned int i, n;

	*states_r = t_new(enum bag_journal_state, count);
	msg = hash_table_lookup(journal->msgs, guid);
	if (msg == NULL)
		return FALSE;
	msg->seen = TRUE;
	states = array_get(&msg->states, &n);
	for (i = 0; i < n && i < count; i++)
		(*states_r)[i] = states[i];
	return TRUE;
}

static void
bag_journal_append_line(string_t *str, const char *guid, unsigned int idx,
			enum bag_journal_state state)
{
	str_append_tabescaped(str, guid);
	str_printfa(str, "\t%u\t%c\n", idx, (char)state);
}

int bag_journal_append(struct bag_journal *journal, const char *guid,
		       const unsigned int *idxs,
		       const enum bag_journal_state *states,
		       unsigned int count, const char **error_r)
{
	struct bag_journal_msg *msg;
	string_t *str = t_str_new(128);
	unsigned int i;
	off_t end;

	i_assert(*guid != '\0');
	for (i = 0; i < count; i++) {
		i_assert(bag_journal_state_valid(states[i]));
		bag_journal_append_line(str, guid, idxs[i], states[i]);
	}
	if (journal->fd == -1) {
		journal->fd = open(journal->path,
				   O_WRONLY | O_APPEND | O_CREAT, 0600);
		if (journal->fd == -1) {
			*error_r = t_strdup_printf("open(%s) failed: %m",
						   journal->path);
			return -1;
		}
	}
	/* O_APPEND, one write(), and a write cut short (a full disk) is cut
	   off again: the lines stay whole, and the next append starts a
	   line of its own */
	end = lseek(journal->fd, 0, SEEK_END);
	if (end < 0) {
		*error_r = t_strdup_printf("lseek(%s) failed: %m",
					   journal->path);
		return -1;
	}
	if (write_full(journal->fd, str_data(str), str_len(str)) < 0 ||
	    fdatasync(journal->fd) < 0) {
		*error_r = t_strdup_printf("write(%s) failed: %m",
					   journal->path);
		if (ftruncate(journal->fd, end) < 0) {
			*error_r = t_strdup_printf(
				"%s, and ftruncate() failed: %m", *error_r);
		}
		return -1;
	}
	msg = bag_journal_msg_get(journal, guid);
	msg->seen = TRUE;
	for (i = 0; i < count; i++)
		bag_journal_msg_set(msg, idxs[i], states[i]);
	return 0;
}

unsigned int bag_journal_count(struct bag_journal *journal)
{
	return hash_table_count(journal->msgs);
}

int bag_journal_compact(struct bag_journal *journal, const char **error_r)
{
	struct hash_iterate_context *iter;
	struct bag_journal_msg *msg;
	const enum bag_journal_state *states;
	char *guid;
	string_t *str;
	const char *tmp_path;
	unsigned int i, count, dropped = 0;
	int fd;

	str = t_str_new(256);
	iter = hash_table_iterate_init(journal->msgs);
	while (hash_table_iterate(iter, journal->msgs, &guid, &msg)) {
		if (!msg->seen) {
			dropped++;
			continue;
		}
		states = array_get(&msg->states, &count);
		for (i = 0; i < count; i++) {
			if (states[i] != BAG_JOURNAL_WAITING) {
				bag_journal_append_line(str, guid, i,
							states[i]);
			}
		}
	}
	hash_table_iterate_deinit(&iter);
	if (dropped == 0)
		return 0;

	i_close_fd_path(&journal->fd, journal->path);
	if (str_len(str) == 0) {
		if (unlink(journal->path) < 0 && errno != ENOENT) {
			*error_r = t_strdup_printf("unlink(%s) failed: %m",
						   journal->path);
			return -1;
		}
		return 0;
	}
	tmp_path = t_strconcat(journal->path, ".tmp", NULL);
	fd = open(tmp_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd == -1) {
		*error_r = t_strdup_printf("open(%s) failed: %m", tmp_path);
		return -1;
	}
	if (write_full(fd, str_data(str), str_len(str)) < 0 ||
	    fdatasync(fd) < 0) {
		*error_r = t_strdup_printf("write(%s) failed: %m", tmp_path);
		i_close_fd(&fd);
		i_unlink(tmp_path);
		return -1;
	}
	i_close_fd(&fd);
	if (rename(tmp_path, journal->path) < 0) {
		*error_r = t_strdup_printf("rename(%s, %s) failed: %m",
					   tmp_path, journal->path);
		i_unlink(tmp_path);
		return -1;
	}
	return 0;
}
