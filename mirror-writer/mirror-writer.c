/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* mirror-writer: the Dovecot service that saves mirror copies for LMTP,
   with group commit.

   Every LMTP process hands the copies of a delivery over this service's
   socket (protocol: lib-mirror/mirror-writer-client.h) when the delivery
   is about to commit (PREPARE; with mirror_failure = tempfail SAVE, whose
   saves it waits for), and says whether it kept the message once its
   commit is over (COMMIT or ABORT). Meanwhile the writer saves the
   copies into storages where a save that is never committed leaves
   nothing behind (maildir, sdbox), so that the two commits overlap; into
   mdbox, whose index rebuild would restore such a save, once the
   delivery kept the message.

   The copies saved into a storage since its last commit form one batch:
   one transaction, one commit, one chain append per mirror and one count
   in the registry for all of them, however many LMTP processes they came
   from. With mirror_fsync and mirror_writer_syncfs, the batches
   committed at one moment are made durable together, by one syncfs() per
   filesystem, before any of their deliveries is answered; that sync also
   covers what the deliveries themselves wrote without syncing it
   (COMMIT's devices) where a storage is on the same filesystem, and DONE
   says whether it did. A batch is committed once all of its deliveries
   have decided, after the input that is ready at that moment (which may
   bring more copies); it takes new copies for WRITER_BATCH_LINGER_MSECS
   after its first delivery decided (at most WRITER_BATCH_MAX_COPIES),
   later ones start the next batch. A delivery that kept nothing (ABORT,
   or its LMTP process went away before it decided) is taken out: the
   batch's other copies are saved again without it before the commit, so
   no copy is ever committed for a message its recipient didn't keep.

   Like LMTP, the service runs as root and writes each storage as the
   storage's user (temporarily dropped privileges); one process serves
   every LMTP process (process_limit = 1), so that their copies meet in
   the same batches. */

#include "lib.h"
#include "array.h"
#include "env-util.h"
#include "str.h"
#include "strnum.h"
#include "strescape.h"
#include "str-sanitize.h"
#include "ioloop.h"
#include "time-util.h"
#include "istream.h"
#include "istream-unix.h"
#include "ostream.h"
#include "connection.h"
#include "restrict-access.h"
#include "master-service.h"
#include "master-service-settings.h"
#include "settings-parser.h"
#include "mail-user.h"
#include "mail-storage-service.h"
#include "dict.h"
#include "registry.h"
#include "fault-point.h"
#include "mirror-copy.h"
#include "mirror-event.h"
#include "mirror-log.h"
#include "mirror-privileges.h"
#include "mirror-setting.h"
#include "mirror-writer-client.h"
#include "mirror-count-journal.h"
#include "writer-counts.h"

#include <sys/stat.h>
#include <poll.h>

/* How long after its first delivery decided a batch takes new copies,
   and the most copies it takes */
#define WRITER_BATCH_LINGER_MSECS 5
#define WRITER_BATCH_MAX_COPIES 64
/* the most LMTP connections whose pending input a commit looks for */
#define WRITER_POLL_MAX_CLIENTS 64
/* mirror_writer_count_interval's default */
#define WRITER_COUNT_INTERVAL_DEFAULT_MSECS 1000

struct writer_delivery;

struct writer_client {
	struct connection conn;
	/* deliveries not yet done, in the order they came */
	ARRAY(struct writer_delivery *) deliveries;
};

/* The copies of one delivery are in as many batches as it has targets. */
struct writer_batch {
	/* mirror_writer_batch_finished, from the batch's first copy on */
	struct event *event;
	char *storage;
	struct mirror_copy_group *group;
	/* the group once committed, until it is counted */
	struct mirror_copy_group *committed;
	/* copies whose delivery hasn't decided yet */
	unsigned int undecided;
	/* when the first of its deliveries decided */
	struct timeval first_decided;
	/* the commit, once every delivery has decided: after the input
	   that is ready now, which may bring more copies */
	struct timeout *to_commit;
	/* once it has lingered: the copies whose delivery is still in its
	   commit move to a batch of their own */
	struct timeout *to_split;
	bool decided_any;
	/* no new copies */
	bool closed;
	/* its commit waits until the LMTP input that was ready is read */
	bool await_input;
	ARRAY(struct writer_copy *) copies;
};

struct writer_copy {
	struct writer_delivery *delivery;
	struct mirror_copy_target target;
	/* NULL once the copy is done (or wasn't saved) */
	struct writer_batch *batch;
};

/* What the delivery wrote without syncing it (COMMIT's devices) */
enum writer_sync_state {
	/* nothing, or what the writer can't sync: DONE says synced 0 */
	WRITER_SYNC_NONE = 0,
	/* asked for, not yet added to a sync */
	WRITER_SYNC_ASKED,
	/* in the next mirror_copier_sync() */
	WRITER_SYNC_PENDING,
	WRITER_SYNC_DONE,
};

struct writer_delivery {
	pool_t pool;
	/* NULL once its LMTP process is gone */
	struct writer_client *client;
	unsigned int tag;
	struct istream *input;
	struct writer_copy *copies;
	unsigned int count;
	/* copies still in a batch */
	unsigned int pending;
	dev_t *sync_devs;
	unsigned int sync_dev_count;
	long long sync_since_usecs;
	enum writer_sync_state sync_state;
	/* handed over with PREPARE: LMTP doesn't wait for the saves */
	bool prepared;
	bool decided, kept;
};

static struct connection_list *writer_clients;
static struct mail_storage_service_ctx *storage_service;
static struct registry *writer_registry;
static struct writer_counts *writer_counts;
static struct mirror_copier *writer_copier;
static struct event *writer_event;
/* the open batches (at most one per storage) and the closed ones */
static ARRAY(struct writer_batch *) writer_batches;
/* with mirror_writer_syncfs: the committed batches not synced yet, and
   the sync that answers them */
static bool writer_syncs;
static ARRAY(struct writer_batch *) writer_unsynced;
static struct timeout *writer_to_sync;

static void writer_delivery_unref_copy(struct writer_delivery *delivery);
static void writer_batch_commit_ready(struct writer_batch *batch);

/* Whether the batch has taken new copies for long enough since its first
   delivery decided (also if the clock went back meanwhile). */
static bool writer_batch_lingered(const struct writer_batch *batch)
{
	long long diff;

	if (!batch->decided_any)
		return FALSE;
	diff = timeval_diff_msecs(&ioloop_timeval, &batch->first_decided);
	return diff < 0 || diff >= WRITER_BATCH_LINGER_MSECS;
}

static struct writer_batch *writer_batch_new(const char *storage)
{
	struct writer_batch *batch;

	batch = i_new(struct writer_batch, 1);
	batch->event = event_create(writer_event);
	batch->storage = i_strdup(storage);
	batch->group = mirror_copy_group_begin(writer_copier, storage);
	i_array_init(&batch->copies, 8);
	array_push_back(&writer_batches, &batch);
	return batch;
}

/* The storage's open batch for a new copy. A copy whose delivery is still
   to commit (PREPARE) doesn't join a batch whose deliveries have all
   decided and that is about to commit: it would wait for that commit's
   decision. */
static struct writer_batch *
writer_batch_get(const char *storage, bool undecided)
{
	struct writer_batch *batch;

	array_foreach_elem(&writer_batches, batch) {
		if (batch->closed || strcmp(batch->storage, storage) != 0)
			continue;
		/* a batch takes new copies for a while after its first
		   delivery decided, so that the copies of concurrent
		   deliveries meet, but not for ever */
		if (array_count(&batch->copies) >= WRITER_BATCH_MAX_COPIES ||
		    writer_batch_lingered(batch)) {
			batch->closed = TRUE;
			continue;
		}
		if (undecided && batch->to_commit != NULL)
			continue;
		return batch;
	}
	return writer_batch_new(storage);
}

static void writer_batch_free(struct writer_batch *batch)
{
	struct writer_batch *const *batches;
	unsigned int i, count;

	batches = array_get(&writer_batches, &count);
	for (i = 0; i < count; i++) {
		if (batches[i] == batch) {
			array_delete(&writer_batches, i, 1);
			break;
		}
	}
	i_assert(batch->committed == NULL);
	timeout_remove(&batch->to_commit);
	timeout_remove(&batch->to_split);
	if (batch->group != NULL)
		mirror_copy_group_rollback(&batch->group);
	event_unref(&batch->event);
	array_free(&batch->copies);
	i_free(batch->storage);
	i_free(batch);
}

/* The batch's copies are done (committed and, if the copier defers
   syncs, synced): count them, and answer the deliveries that have no
   other copy pending. */
static void writer_batch_finish(struct writer_batch *batch)
{
	struct writer_copy *copy;

	/* counted before the 250s: `mirror list` shows them then */
	if (batch->committed != NULL)
		mirror_copy_group_end(&batch->committed);
	array_foreach_elem(&batch->copies, copy) {
		copy->batch = NULL;
		writer_delivery_unref_copy(copy->delivery);
	}
	writer_batch_free(batch);
}

/* The next sync also syncs what the batch's deliveries wrote themselves
   without syncing it, where a storage of this writer is on the same
   filesystem. */
static void writer_batch_sync_deliveries(struct writer_batch *batch)
{
	struct writer_delivery *delivery;
	struct writer_copy *copy;
	unsigned int i;

	array_foreach_elem(&batch->copies, copy) {
		delivery = copy->delivery;
		if (delivery->sync_state != WRITER_SYNC_ASKED)
			continue;
		delivery->sync_state = WRITER_SYNC_PENDING;
		for (i = 0; i < delivery->sync_dev_count; i++) {
			if (!mirror_copier_sync_add_dev(writer_copier,
					delivery->sync_devs[i],
					delivery->sync_since_usecs))
				delivery->sync_state = WRITER_SYNC_NONE;
		}
		if (delivery->sync_state == WRITER_SYNC_NONE) {
			e_debug(writer_event, "A delivery wrote to a "
				"filesystem that no storage is on, or whose "
				"errors since then this sync may not see: it "
				"syncs what it wrote itself");
		}
	}
}

static void writer_unsynced_sync_result(bool success)
{
	struct writer_batch *batch;
	struct writer_copy *copy;

	array_foreach_elem(&writer_unsynced, batch) {
		array_foreach_elem(&batch->copies, copy) {
			if (copy->delivery->sync_state != WRITER_SYNC_PENDING)
				continue;
			copy->delivery->sync_state = success ?
				WRITER_SYNC_DONE : WRITER_SYNC_NONE;
		}
	}
}

/* Sync what the committed batches wrote, once for all of them, then
   finish them. */
static void writer_sync_unsynced(void)
{
	struct writer_batch *batch;
	struct writer_copy *copy;
	const char *error;
	unsigned int count;

	timeout_remove(&writer_to_sync);
	count = array_count(&writer_unsynced);
	if (count == 0) {
		/* only storages closed since the last sync, which may have
		   written their indexes (no copy waits for it) */
		if (mirror_copier_sync_pending(writer_copier) &&
		    mirror_copier_sync(writer_copier, &error) < 0)
			e_error(writer_event, "%s: what closed storages "
				"wrote may not survive a power loss", error);
		return;
	}
	if (mirror_copier_sync(writer_copier, &error) < 0) {
		writer_unsynced_sync_result(FALSE);
		e_error(writer_event, "%s: %u batches may not survive a "
			"power loss", error, count);
		error = t_strdup_printf("Committed, but not synced: %s",
					error);
		array_foreach_elem(&writer_unsynced, batch) {
			array_foreach_elem(&batch->copies, copy) {
				if (copy->target.error == NULL) {
					copy->target.error = p_strdup(
						copy->delivery->pool, error);
				}
			}
		}
	} else {
		writer_unsynced_sync_result(TRUE);
	}
	FAULT_POINT("mirror-writer-synced");
	while (array_count(&writer_unsynced) > 0) {
		batch = array_idx_elem(&writer_unsynced, 0);
		array_delete(&writer_unsynced, 0, 1);
		writer_batch_finish(batch);
	}
}

static void writer_sync(void *context ATTR_UNUSED)
{
	ARRAY(struct writer_batch *) due;
	struct writer_batch *batch;

	/* the batches whose commit is due now join this sync */
	t_array_init(&due, 8);
	array_foreach_elem(&writer_batches, batch) {
		if (batch->to_commit != NULL && !batch->await_input &&
		    batch->undecided == 0)
			array_push_back(&due, &batch);
	}
	array_foreach_elem(&due, batch)
		writer_batch_commit_ready(batch);
	writer_sync_unsynced();
}

/* A storage closed with no copy committed after it (its user is gone,
   say) may have written its index: it is synced, and its filesystem let
   go, without waiting for the next copy. */
static void writer_sync_closed(void)
{
	if (writer_syncs && writer_to_sync == NULL &&
	    mirror_copier_sync_pending(writer_copier))
		writer_to_sync = timeout_add_short(0, writer_sync, NULL);
}

/* Every delivery of the batch has decided: commit what was kept. */
static void writer_batch_commit(struct writer_batch *batch)
{
	struct writer_copy *copy;
	unsigned int copies, failures = 0;

	i_assert(batch->closed && batch->undecided == 0);
	batch->committed = batch->group;
	batch->group = NULL;
	copies = mirror_copy_group_count(batch->committed);
	if (copies == 0) {
		mirror_copy_group_rollback(&batch->committed);
	} else {
		(void)mirror_copy_group_commit(batch->committed);
		array_foreach_elem(&batch->copies, copy) {
			/* the group's pool goes before a delivery with
			   copies in other batches is done */
			copy->target.error = p_strdup(copy->delivery->pool,
						      copy->target.error);
			if (copy->target.error != NULL &&
			    copy->delivery->kept)
				failures++;
		}
		e_debug(event_create_passthrough(batch->event)->
			set_name("mirror_writer_batch_finished")->
			add_str("storage", batch->storage)->
			add_int("copies", copies - failures)->
			add_int("failures", failures)->event(),
			"%s: %u copies committed in one transaction%s",
			batch->storage, copies - failures,
			failures == 0 ? "" : t_strdup_printf(
				", %u failed", failures));
	}
	if (copies > failures && writer_syncs) {
		/* answered once the filesystems are synced, with the other
		   batches committed by then */
		array_push_back(&writer_unsynced, &batch);
		writer_batch_sync_deliveries(batch);
		if (writer_to_sync == NULL)
			writer_to_sync = timeout_add_short(0, writer_sync, NULL);
		return;
	}
	writer_sync_closed();
	writer_batch_finish(batch);
}

/* Whether an LMTP process has sent something not read yet (what was
   read is handled already: a line at a time, as it came). */
static bool writer_input_pending(void)
{
	struct pollfd fds[WRITER_POLL_MAX_CLIENTS];
	struct connection *conn;
	unsigned int count = 0;

	for (conn = writer_clients->connections; conn != NULL;
	     conn = conn->next) {
		if (count == N_ELEMENTS(fds))
			break;
		fds[count].fd = conn->fd_in;
		fds[count].events = POLLIN;
		fds[count].revents = 0;
		count++;
	}
	return count > 0 && poll(fds, count, 0) > 0;
}

static void writer_batch_split(struct writer_batch *batch);

/* Every delivery of the batch has decided: it commits once the ioloop has
   read the input that is ready (writer_batch_commit_ready()). */
static void writer_batch_all_decided(struct writer_batch *batch)
{
	i_assert(batch->undecided == 0);
	timeout_remove(&batch->to_split);
	if (batch->to_commit == NULL) {
		batch->to_commit = timeout_add_short(0,
			writer_batch_commit_ready, batch);
	}
}

/* Some of the batch's deliveries decided, others haven't: those get as
   long as the batch lingers, then their copies move on. */
static void writer_batch_split_later(struct writer_batch *batch)
{
	if (batch->to_split == NULL) {
		batch->to_split = timeout_add_short(WRITER_BATCH_LINGER_MSECS,
						    writer_batch_split, batch);
	}
}

static void writer_batch_commit_ready(struct writer_batch *batch)
{
	timeout_remove(&batch->to_commit);
	batch->await_input = FALSE;
	if (batch->undecided > 0) {
		/* a copy joined meanwhile: its delivery's decision comes
		   back here, or its copy moves on */
		writer_batch_split_later(batch);
		return;
	}
	/* Copies that came while this one was read join it first: under
	   load a batch is then what came while the writer was busy, not
	   the first copy alone. Never longer than the batch lingers. The
	   commit comes back here once that input is read
	   (writer_client_input()); the 1 ms timeout is only a safety net:
	   a 0 ms one would run again before any input is read. */
	if (array_count(&batch->copies) < WRITER_BATCH_MAX_COPIES &&
	    !writer_batch_lingered(batch) && writer_input_pending()) {
		batch->await_input = TRUE;
		batch->to_commit = timeout_add_short(1,
			writer_batch_commit_ready, batch);
		return;
	}
	batch->closed = TRUE;
	writer_batch_commit(batch);
}

/* Input is about to be read: the batches that wait for it commit right
   after it. */
static void writer_batches_input_read(void)
{
	struct writer_batch *batch;

	array_foreach_elem(&writer_batches, batch) {
		if (!batch->await_input)
			continue;
		batch->await_input = FALSE;
		timeout_remove(&batch->to_commit);
		batch->to_commit = timeout_add_short(0,
			writer_batch_commit_ready, batch);
	}
}

/* The batch has lingered, and some of its deliveries are still in their
   commit (a recipient's mailbox may be slow, its lock held by someone
   else): their copies move to a new batch, so that the decided ones are
   committed and answered now. Not those of SAVE (mirror_failure =
   tempfail): their delivery commits because they were saved. */
static void writer_batch_split(struct writer_batch *batch)
{
	struct writer_batch *next;
	struct writer_copy *copy;
	unsigned int i, moved = 0;

	timeout_remove(&batch->to_split);
	if (batch->undecided == 0)
		return;
	batch->closed = TRUE;
	next = writer_batch_new(batch->storage);
	for (i = 0; i < array_count(&batch->copies); ) {
		copy = array_idx_elem(&batch->copies, i);
		if (copy->delivery->decided || !copy->delivery->prepared) {
			i++;
			continue;
		}
		array_delete(&batch->copies, i, 1);
		batch->undecided--;
		moved++;
		/* (an undecided delivery's LMTP process is still there) */
		if (mirror_copy_group_move(batch->group, next->group,
					   &copy->target,
					   copy->delivery->client->conn.event) < 0) {
			copy->target.error = p_strdup(copy->delivery->pool,
						      copy->target.error);
			copy->batch = NULL;
			writer_delivery_unref_copy(copy->delivery);
			continue;
		}
		copy->batch = next;
		array_push_back(&next->copies, &copy);
		next->undecided++;
	}
	if (moved > 0) {
		e_debug(writer_event, "%s: %u copies wait for their "
			"deliveries' commit in the next batch",
			batch->storage, moved);
	}
	if (array_count(&next->copies) == 0)
		writer_batch_free(next);
	if (batch->undecided == 0)
		writer_batch_all_decided(batch);
}

static void writer_batch_decided(struct writer_batch *batch)
{
	i_assert(batch->undecided > 0);
	batch->undecided--;
	if (!batch->decided_any) {
		batch->decided_any = TRUE;
		batch->first_decided = ioloop_timeval;
	}
	if (batch->undecided == 0)
		writer_batch_all_decided(batch);
	else
		writer_batch_split_later(batch);
}

static void writer_delivery_free(struct writer_delivery *delivery)
{
	struct writer_client *client = delivery->client;
	struct writer_delivery *const *deliveries;
	unsigned int i, count;

	if (client != NULL) {
		deliveries = array_get(&client->deliveries, &count);
		for (i = 0; i < count; i++) {
			if (deliveries[i] == delivery) {
				array_delete(&client->deliveries, i, 1);
				break;
			}
		}
	}
	i_stream_unref(&delivery->input);
	pool_unref(&delivery->pool);
}

static void writer_delivery_done(struct writer_delivery *delivery)
{
	struct writer_client *client = delivery->client;
	string_t *reply;
	unsigned int i;

	if (client != NULL && delivery->kept) {
		reply = t_str_new(128);
		str_printfa(reply, "DONE\t%u\t%c", delivery->tag,
			    delivery->sync_state == WRITER_SYNC_DONE ?
			    '1' : '0');
		for (i = 0; i < delivery->count; i++) {
			const struct mirror_copy_target *target =
				&delivery->copies[i].target;

			str_append_c(reply, '\t');
			if (target->error != NULL)
				str_append_tabescaped(reply, target->error);
			str_printfa(reply, "\t%"PRIuUOFF_T, target->size);
		}
		str_append_c(reply, '\n');
		o_stream_nsend(client->conn.output, str_data(reply),
			       str_len(reply));
	}
	writer_delivery_free(delivery);
}

static void writer_delivery_unref_copy(struct writer_delivery *delivery)
{
	i_assert(delivery->pending > 0);
	if (--delivery->pending == 0 && delivery->decided)
		writer_delivery_done(delivery);
}

static void
writer_delivery_decide(struct writer_delivery *delivery, bool kept)
{
	struct writer_copy *copy;
	unsigned int i;

	i_assert(!delivery->decided);
	if (kept)
		FAULT_POINT("mirror-delivery-committed");
	delivery->decided = TRUE;
	delivery->kept = kept;
	if (delivery->pending == 0) {
		writer_delivery_done(delivery);
		return;
	}
	/* deciding may commit a batch and end the delivery: count it as
	   pending until every batch has been told */
	delivery->pending++;
	for (i = 0; i < delivery->count; i++) {
		copy = &delivery->copies[i];
		if (copy->batch == NULL)
			continue;
		if (!kept)
			mirror_copy_group_drop(copy->batch->group,
					       &copy->target);
		writer_batch_decided(copy->batch);
	}
	writer_delivery_unref_copy(delivery);
}

static bool
writer_parse_target(pool_t pool, const char *const **_args,
		    struct mirror_copy_target *target)
{
	const char *const *args = *_args;
	const char *const *ids, *addr;
	unsigned int id, naddr, i;

	if (args[0] == NULL || args[1] == NULL || args[2] == NULL ||
	    args[0][0] == '\0' || str_to_uint(args[2], &naddr) < 0 ||
	    naddr > str_array_length(args + 3))
		return FALSE;
	target->storage = p_strdup(pool, args[0]);
	p_array_init(&target->mirror_ids, pool, 2);
	for (ids = t_strsplit(args[1], ","); *ids != NULL; ids++) {
		if (str_to_uint(*ids, &id) < 0 || id == 0)
			return FALSE;
		array_push_back(&target->mirror_ids, &id);
	}
	if (array_count(&target->mirror_ids) == 0)
		return FALSE;
	p_array_init(&target->envelope_to, pool, naddr);
	for (i = 0; i < naddr; i++) {
		addr = p_strdup(pool, args[3 + i]);
		array_push_back(&target->envelope_to, &addr);
	}
	*_args = args + 3 + naddr;
	return TRUE;
}

/* SAVE, or with prepare PREPARE: the delivery is about to commit, and
   waits for no reply. Its copies are saved now where a save that is
   never committed leaves nothing behind, else once it kept the message
   (mirror_copy_group_save()). */
static int
writer_client_save(struct writer_client *client, const char *const *args,
		   bool prepare)
{
	const char *cmd = prepare ? "PREPARE" : "SAVE";
	struct writer_delivery *delivery;
	struct writer_copy *copy;
	struct writer_batch *batch;
	struct istream *input;
	string_t *reply;
	unsigned int tag, count, i;
	long long received;
	struct stat st;
	int fd;
	pool_t pool;

	fd = i_stream_unix_get_read_fd(client->conn.input);
	i_stream_unix_set_read_fd(client->conn.input);
	if (fd == -1) {
		e_error(client->conn.event, "%s without the message's fd",
			cmd);
		return -1;
	}
	/* read from its start again for every save */
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		e_error(client->conn.event, "%s with a descriptor that is "
			"not a regular file", cmd);
		i_close_fd(&fd);
		return -1;
	}
	if (str_array_length(args) < 3 || str_to_uint(args[0], &tag) < 0 ||
	    str_to_llong(args[1], &received) < 0 ||
	    str_to_uint(args[2], &count) < 0 || count == 0 ||
	    count > MIRROR_WRITER_MAX_TARGETS) {
		e_error(client->conn.event, "Invalid %s", cmd);
		i_close_fd(&fd);
		return -1;
	}

	pool = pool_alloconly_create("mirror writer delivery", 1024);
	delivery = p_new(pool, struct writer_delivery, 1);
	delivery->pool = pool;
	delivery->client = client;
	delivery->tag = tag;
	delivery->prepared = prepare;
	/* LMTP wrote the whole message before sending the descriptor: its
	   end is known, and is not read() again at every save's end */
	input = i_stream_create_fd_autoclose(&fd, IO_BLOCK_SIZE);
	delivery->input = i_stream_create_limit(input, st.st_size);
	i_stream_unref(&input);
	delivery->count = count;
	delivery->copies = p_new(pool, struct writer_copy, count);
	args += 3;
	for (i = 0; i < count; i++) {
		if (!writer_parse_target(pool, &args,
					 &delivery->copies[i].target)) {
			e_error(client->conn.event, "Invalid %s target", cmd);
			i_stream_unref(&delivery->input);
			pool_unref(&pool);
			return -1;
		}
	}
	array_push_back(&client->deliveries, &delivery);

	for (i = 0; i < count; i++) {
		copy = &delivery->copies[i];
		copy->delivery = delivery;
		batch = writer_batch_get(copy->target.storage, prepare);
		if (mirror_copy_group_save(batch->group, &copy->target,
					   delivery->input,
					   (time_t)received, prepare,
					   client->conn.event) < 0) {
			copy->target.error =
				p_strdup(pool, copy->target.error);
			if (array_count(&batch->copies) == 0) {
				/* nothing to wait for: the storage isn't
				   kept open for it */
				writer_batch_free(batch);
			}
			writer_sync_closed();
			continue;
		}
		copy->batch = batch;
		array_push_back(&batch->copies, &copy);
		batch->undecided++;
		delivery->pending++;
	}
	if (prepare)
		return 1;

	reply = t_str_new(64);
	str_printfa(reply, "SAVED\t%u", tag);
	for (i = 0; i < count; i++) {
		str_append_c(reply, '\t');
		if (delivery->copies[i].target.error != NULL) {
			str_append_tabescaped(reply,
				delivery->copies[i].target.error);
		}
	}
	str_append_c(reply, '\n');
	o_stream_nsend(client->conn.output, str_data(reply), str_len(reply));
	return 1;
}

static struct writer_delivery *
writer_client_find(struct writer_client *client, const char *tag_str)
{
	struct writer_delivery *delivery;
	unsigned int tag;

	if (str_to_uint(tag_str, &tag) < 0)
		return NULL;
	array_foreach_elem(&client->deliveries, delivery) {
		if (delivery->tag == tag && !delivery->decided)
			return delivery;
	}
	return NULL;
}

static int
writer_client_input_args(struct connection *conn, const char *const *args)
{
	struct writer_client *client =
		container_of(conn, struct writer_client, conn);
	struct writer_delivery *delivery;
	unsigned long long dev;
	long long since;
	unsigned int i, count;
	bool kept;

	if (args[0] == NULL) {
		e_error(conn->event, "Empty command");
		return -1;
	}
	if (strcmp(args[0], "SAVE") == 0)
		return writer_client_save(client, args + 1, FALSE);
	if (strcmp(args[0], "PREPARE") == 0) {
		if (writer_client_save(client, args + 1, TRUE) < 0)
			return -1;
		FAULT_POINT("mirror-writer-prepared");
		return 1;
	}
	if (strcmp(args[0], "COMMIT") == 0)
		kept = TRUE;
	else if (strcmp(args[0], "ABORT") == 0)
		kept = FALSE;
	else {
		e_error(conn->event, "Unknown command: %s",
			str_sanitize(args[0], 40));
		return -1;
	}
	if (args[1] == NULL ||
	    (delivery = writer_client_find(client, args[1])) == NULL) {
		e_error(conn->event, "%s for an unknown delivery", args[0]);
		return -1;
	}
	count = str_array_length(args + 2);
	if (count > 0 && !kept) {
		e_error(conn->event, "ABORT with devices");
		return -1;
	}
	if (count > 0) {
		/* <since> <dev>... */
		if (count < 2 || str_to_llong(args[2], &since) < 0) {
			e_error(conn->event, "Invalid COMMIT devices");
			return -1;
		}
		count--;
		delivery->sync_since_usecs = since;
		delivery->sync_devs = p_new(delivery->pool, dev_t, count);
		for (i = 0; i < count; i++) {
			if (str_to_ullong(args[3 + i], &dev) < 0 ||
			    (unsigned long long)(dev_t)dev != dev) {
				e_error(conn->event, "Invalid COMMIT devices");
				return -1;
			}
			delivery->sync_devs[i] = (dev_t)dev;
		}
		delivery->sync_dev_count = count;
		delivery->sync_state = WRITER_SYNC_ASKED;
	}
	writer_delivery_decide(delivery, kept);
	return 1;
}

static void writer_client_destroy(struct connection *conn)
{
	struct writer_client *client =
		container_of(conn, struct writer_client, conn);
	struct writer_delivery *delivery;

	/* An LMTP process that goes away before its delivery decided didn't
	   reply to its MTA: the message comes again, and these copies must
	   not be kept. Decided ones still get committed. */
	while (array_count(&client->deliveries) > 0) {
		delivery = array_idx_elem(&client->deliveries, 0);
		array_delete(&client->deliveries, 0, 1);
		delivery->client = NULL;
		if (!delivery->decided)
			writer_delivery_decide(delivery, FALSE);
	}
	array_free(&client->deliveries);
	connection_deinit(conn);
	i_free(client);
	master_service_client_connection_destroyed(master_service);
}

static const struct connection_settings writer_client_set = {
	.service_name_in = MIRROR_WRITER_SERVICE_NAME,
	.service_name_out = MIRROR_WRITER_SERVICE_NAME,
	.major_version = MIRROR_WRITER_PROTOCOL_MAJOR,
	.minor_version = MIRROR_WRITER_PROTOCOL_MINOR,
	.input_max_size = MIRROR_WRITER_LINE_MAX,
	.output_max_size = SIZE_MAX,
	.client = FALSE,
};

static void writer_client_input(struct connection *conn)
{
	/* before the input: it may end the connection */
	writer_batches_input_read();
	connection_input_default(conn);
}

static const struct connection_vfuncs writer_client_vfuncs = {
	.destroy = writer_client_destroy,
	.input = writer_client_input,
	.input_args = writer_client_input_args,
};

static void client_connected(struct master_service_connection *mconn)
{
	struct writer_client *client;

	master_service_client_connection_accept(mconn);
	client = i_new(struct writer_client, 1);
	i_array_init(&client->deliveries, 4);
	client->conn.unix_socket = TRUE;
	connection_init_server(writer_clients, &client->conn, mconn->name,
			       mconn->fd, mconn->fd);
	/* the first SAVE brings a descriptor */
	i_stream_unix_set_read_fd(client->conn.input);
}

static void writer_count(const struct mirror_copy_result *results,
			 unsigned int count, void *context ATTR_UNUSED)
{
	writer_counts_add(writer_counts, results, count);
}

static void writer_settings_init(bool *fsync_r, bool *syncfs_r)
{
	const struct mail_user_settings *user_set;
	const char *base_dir, *dict_uri, *value, *error;
	unsigned int interval = WRITER_COUNT_INTERVAL_DEFAULT_MSECS;
	void **sets;

	mail_storage_service_init_settings(storage_service, NULL);
	sets = master_service_settings_get_others(master_service);
	user_set = sets[0];
	*fsync_r = mirror_set_bool(user_set, writer_event, "mirror_fsync",
				   TRUE);
	*syncfs_r = mirror_set_bool(user_set, writer_event,
				    "mirror_writer_syncfs", TRUE);
	value = mail_user_set_plugin_getenv(user_set,
					    "mirror_writer_count_interval");
	if (value != NULL && *value != '\0' &&
	    settings_get_time_msecs(value, &interval, &error) < 0) {
		e_error(writer_event, "Invalid mirror_writer_count_interval "
			"(%s): using %u ms", error,
			WRITER_COUNT_INTERVAL_DEFAULT_MSECS);
		interval = WRITER_COUNT_INTERVAL_DEFAULT_MSECS;
	}
	base_dir = master_service_settings_get(master_service)->base_dir;
	dict_uri = mail_user_set_plugin_getenv(user_set, "mirror_dict");
	if (dict_uri == NULL || *dict_uri == '\0') {
		e_error(writer_event, "mirror_dict is not set: copies are "
			"not counted");
	} else if (registry_init(dict_uri, base_dir, writer_event,
				 &writer_registry, &error) < 0) {
		e_error(writer_event, "%s: copies are not counted", error);
	} else {
		writer_counts = writer_counts_init(writer_registry,
			mirror_count_journal_path(base_dir),
			interval, writer_event);
	}
}

int main(int argc, char *argv[])
{
	const enum mail_storage_service_flags storage_flags =
		MAIL_STORAGE_SERVICE_FLAG_USERDB_LOOKUP |
		MAIL_STORAGE_SERVICE_FLAG_TEMP_PRIV_DROP |
		MAIL_STORAGE_SERVICE_FLAG_NO_LOG_INIT |
		MAIL_STORAGE_SERVICE_FLAG_NO_IDLE_TIMEOUT;
	struct mirror_log_nudge *log_nudge;
	struct writer_batch *batch;
	bool fsync, syncfs;

	master_service = master_service_init(MIRROR_WRITER_SERVICE_NAME,
					     MASTER_SERVICE_FLAG_KEEP_CONFIG_OPEN,
					     &argc, &argv, "");
	if (master_getopt(master_service) > 0)
		return FATAL_DEFAULT;
	master_service_init_log(master_service);
	/* Without TZ glibc reads the zone again at every localtime() and
	   mktime(): four stat("/etc/localtime") per copy, for the index
	   day headers of the storage and of mdbox's map. The master passes
	   its TZ on (import_environment); without one, the system's zone
	   is read once, as it is when the writer starts. */
	if (getenv("TZ") == NULL)
		env_put("TZ", ":/etc/localtime");
	/* root, as LMTP: each storage is written as its user */
	restrict_access_by_env(RESTRICT_ACCESS_FLAG_ALLOW_ROOT, NULL);
	restrict_access_allow_coredumps(TRUE);
	/* switching to a storage's user and back around every batch needs
	   no more than geteuid() and getegid() to know where it is: only
	   the copier and the storage service it calls change this process's
	   identity (mbox locking may change the effective gid, which is
	   noticed) */
	mirror_privileges_track();

	writer_event = event_create(NULL);
	event_add_category(writer_event, &event_category_mirror);
	dict_drivers_register_builtin();
	storage_service = mail_storage_service_init(master_service, NULL,
						    storage_flags);
	writer_settings_init(&fsync, &syncfs);
	writer_copier = mirror_copier_init(storage_service, writer_registry,
					   writer_event, fsync);
	if (fsync && syncfs) {
		/* one syncfs() per filesystem for the batches committed
		   together, not Dovecot's fsyncs for each */
		mirror_copier_set_deferred_sync(writer_copier);
		writer_syncs = TRUE;
	}
	/* not LMTP's settings: its mail_plugins are LMTP's own */
	mirror_copier_set_service(writer_copier, "lda",
				  MIRROR_WRITER_SERVICE_NAME);
	mirror_copier_set_revalidate(writer_copier);
	if (writer_counts != NULL) {
		mirror_copier_set_count_callback(writer_copier, writer_count,
						 NULL);
	}
	i_array_init(&writer_batches, 16);
	i_array_init(&writer_unsynced, 16);
	writer_clients = connection_list_init(&writer_client_set,
					      &writer_client_vfuncs);
	master_service_init_finish(master_service);
	log_nudge = mirror_log_nudge_start();

	master_service_run(master_service, client_connected);

	mirror_log_nudge_stop(&log_nudge);
	/* what is committed is answered */
	writer_sync_unsynced();
	connection_list_deinit(&writer_clients);
	/* what no delivery decided is not kept */
	while (array_count(&writer_batches) > 0) {
		batch = array_idx_elem(&writer_batches, 0);
		writer_batch_free(batch);
	}
	array_free(&writer_batches);
	array_free(&writer_unsynced);
	mirror_copier_deinit(&writer_copier);
	if (writer_counts != NULL)
		writer_counts_deinit(&writer_counts);
	registry_deinit(&writer_registry);
	mail_storage_service_deinit(&storage_service);
	dict_drivers_unregister_builtin();
	event_unref(&writer_event);
	master_service_deinit(&master_service);
	return 0;
}
