#ifndef MIRROR_LOG_H
#define MIRROR_LOG_H

/* Write to the log pipe again 1, 5 and 30 s after a service starts, so
   that Dovecot 2.3's log process takes the lines that came with the
   service's handshake (an upstream bug: doc/development.md, "Upstream
   bugs"). Start it in the service's ioloop once its log is set up. */
struct mirror_log_nudge *mirror_log_nudge_start(void);
void mirror_log_nudge_stop(struct mirror_log_nudge **nudge);

#endif
