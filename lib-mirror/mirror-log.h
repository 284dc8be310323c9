#ifndef MIRROR_LOG_H
#define MIRROR_LOG_H

/* Dovecot 2.3's log process reads a service's log pipe for the first time
   only after the master has started every service. Lines that a service
   logged before that arrive together with the master's handshake, and the
   log process doesn't look at them again until more is written to the
   pipe: for a quiet service (the expiry scheduler, the bag's) that may be
   a day later. A nudge writes to the pipe a few more times early on (the
   log prefix, which is harmless to send again), so that they are logged.
   Start it when the service's log is set up, in its ioloop's context. */
struct mirror_log_nudge *mirror_log_nudge_start(void);
void mirror_log_nudge_stop(struct mirror_log_nudge **nudge);

#endif
