#ifndef MIRROR_WRITER_CLIENT_H
#define MIRROR_WRITER_CLIENT_H

/* The client side of the mirror-writer protocol: LMTP hands the copies of
   a delivery to the mirror-writer service (mirror-writer/), which saves
   the copies of many concurrent deliveries into each storage in one
   transaction (group commit).

   Over the service's unix socket, after the VERSION handshake of
   connection.h, one delivery at a time per connection:

     SAVE <tag> <received> <count> [<storage> <ids> <naddr> <addr>...]...
         with the message's file descriptor attached (read from offset 0)
     SAVED <tag> [<error>]...      one field per target, empty if saved
     PREPARE <tag> <received> <count> [<storage> <ids> <naddr> <addr>...]...
                                   as SAVE, but no reply: the writer saves
                                   the copies now where a save that is
                                   never committed leaves nothing behind
                                   (maildir, sdbox), else (mdbox) once
                                   COMMIT came
     COMMIT <tag> [<since> <dev>...]
                                   the delivery kept the message; the
                                   devices of the filesystems it wrote
                                   to without syncing them, since
                                   <since>
     ABORT <tag>                   it didn't: nothing is kept, no reply
     DONE <tag> <synced> [<error> <size>]...
                                   after COMMIT, once every copy is
                                   committed, in its chains and counted;
                                   synced is 1 if every <dev> of the
                                   COMMIT was synced after it came, else 0

   <ids> is a comma-separated list of mirror ids. Fields are tab-escaped.
   A <dev> is a filesystem's st_dev, in decimal, and <since> the time
   (CLOCK_MONOTONIC, microseconds) before the delivery's first write to
   them: the writer syncs each with the copies' own filesystems when one
   of the storages it committed to is on it (one syncfs() for the
   delivery's writes and the copies), and says synced 0 otherwise, or if
   it can't be sure its sync saw every writeback error since <since>
   (mirror_copier_sync_add_dev()), when the delivery must sync itself.
   LMTP sends SAVE before the delivery's commit when it must know
   whether the copies can be saved (mirror_failure = tempfail); otherwise
   it sends PREPARE then, so that the copies are saved while the delivery
   commits, and SAVE and COMMIT together when it couldn't (a delivery
   kept by a Sieve redirect alone). */

#include "mirror-copy.h"

#define MIRROR_WRITER_SOCKET_NAME "mirror-writer"
#define MIRROR_WRITER_SERVICE_NAME "mirror-writer"
#define MIRROR_WRITER_PROTOCOL_MAJOR 2
#define MIRROR_WRITER_PROTOCOL_MINOR 1
/* the most targets of one delivery, and the longest line */
#define MIRROR_WRITER_MAX_TARGETS 256
#define MIRROR_WRITER_LINE_MAX (1024*1024)

struct mirror_writer_client;

/* What a delivery wrote without syncing it, for the writer to sync with
   the copies (COMMIT's devices) */
struct mirror_writer_sync {
	const dev_t *devs;
	unsigned int count;
	/* mirror_monotonic_usecs() before the delivery wrote to them */
	long long since_usecs;
	/* DONE came, and says every one of them was synced after the
	   COMMIT */
	bool answered, synced;
};

/* Connect to the writer's socket at path. Returns 0, or -1 with error_r. */
int mirror_writer_client_connect(const char *path,
				 unsigned int timeout_msecs,
				 struct mirror_writer_client **client_r,
				 const char **error_r);
void mirror_writer_client_deinit(struct mirror_writer_client **client);

/* Hand over the copies of one delivery of the message in fd (a regular
   file, read from offset 0).

   Without commit, wait until they are saved (or not: see each target's
   error); mirror_writer_client_commit() or _abort() follows. Returns 0,
   -1 if the writer can't be reached, or -2 if it didn't answer in time
   (error_r; the connection is closed then, and every later call
   fails).

   With commit, the delivery kept the message already: SAVE and COMMIT
   (with sync, which may be NULL) are sent at once, and the call returns
   as mirror_writer_client_commit() does. */
int mirror_writer_client_save(struct mirror_writer_client *client, int fd,
			      time_t received_date,
			      struct mirror_copy_target *targets,
			      unsigned int count, bool commit,
			      struct mirror_writer_sync *sync,
			      const char **error_r);
/* Hand over the copies of a delivery that is about to commit, as
   mirror_writer_client_save() without commit, but wait for nothing:
   mirror_writer_client_commit() or _abort() follows. Returns 0, or -1 if
   the writer can't be reached (error_r; the connection is closed). */
int mirror_writer_client_prepare(struct mirror_writer_client *client, int fd,
				 time_t received_date,
				 struct mirror_copy_target *targets,
				 unsigned int count, const char **error_r);
/* The delivery kept the message: wait until the copies are committed.
   Each target's error is NULL if its copy was made; its size is set.
   sync (may be NULL) lists what the delivery wrote without syncing it;
   its synced says whether the writer synced it. Returns 0; -1 if the connection to the writer broke (the writer died:
   some copies may be committed, none will be any more); -2 if it didn't
   answer in time (it may still commit them). error_r says what
   happened. The connection is closed after a failure. */
int mirror_writer_client_commit(struct mirror_writer_client *client,
				struct mirror_copy_target *targets,
				unsigned int count,
				struct mirror_writer_sync *sync,
				const char **error_r);
/* The delivery kept nothing: the writer drops the copies. */
void mirror_writer_client_abort(struct mirror_writer_client *client);

#endif
