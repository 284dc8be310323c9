#ifndef MIRROR_EXPIRE_RECLAIM_H
#define MIRROR_EXPIRE_RECLAIM_H

/* Reclaiming the disk space of removed messages in parallel.

   A file's blocks are freed when its last name and its last open
   descriptor are gone, and the process that drops the last one waits for
   the filesystem to free them: on ext4 mounted with online discard, on
   network filesystems, and for large messages that wait is most of an
   unlink(), and an expunge of many messages pays it once per message, one
   after the other.

   So the scan opens each message it is about to expunge and holds the
   descriptor while Dovecot unlinks the name (which is then quick), and
   then passes the descriptors (fd_send()) to a few worker processes that
   close them, so the waits overlap. The workers have the scan's effective
   identity (the storage user) and nothing else to do; the scan waits for
   them before it returns, so when the scan is done the space is free. */

struct mirror_expire_reclaim;

#define MIRROR_EXPIRE_RECLAIM_DEFAULT_PROCESSES 4
#define MIRROR_EXPIRE_RECLAIM_MAX_PROCESSES 16

/* Fork up to `processes` workers. Returns NULL if processes is 0 or no
   worker could be started (logged to event): then nothing is held, and
   the scan's own unlink() frees the files. */
struct mirror_expire_reclaim *
mirror_expire_reclaim_init(unsigned int processes, struct event *event);
/* How many descriptors may be held before mirror_expire_reclaim_flush():
   what the process's descriptor limit leaves. */
unsigned int mirror_expire_reclaim_batch(struct mirror_expire_reclaim *ctx);
/* Keep fd (taken over) until the next flush; at most batch at once. */
void mirror_expire_reclaim_hold(struct mirror_expire_reclaim *ctx, int fd);
/* Hand the held descriptors to the workers (or close them here, if a
   worker is gone). Call after the names are unlinked. */
void mirror_expire_reclaim_flush(struct mirror_expire_reclaim *ctx);
/* Flush, let the workers finish and wait for them. */
void mirror_expire_reclaim_deinit(struct mirror_expire_reclaim **ctx);

#endif
