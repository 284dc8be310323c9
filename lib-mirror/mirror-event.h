#ifndef MIRROR_EVENT_H
#define MIRROR_EVENT_H

/* The category of the suite's events (log prefix "mirror: "). Each module
   that links the library has its own copy; Dovecot registers them all as
   the one category "mirror". */
extern struct event_category event_category_mirror;

#endif
