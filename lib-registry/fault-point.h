#ifndef FAULT_POINT_H
#define FAULT_POINT_H

/* Fault points: named places (of a bag flush, of a mirror copy) where a
   test build can kill its own process with SIGKILL, as a crash or
   `kill -9` would at that very moment, so that the tests can check what
   survives it (no message sent twice but the one whose 250 wasn't
   recorded yet, no copy missing from its chain, ...).

   They exist only in a build configured with --enable-fault-points
   (FAULT_POINTS): elsewhere FAULT_POINT() is nothing at all. In such a
   build, the environment variable MIRROR_FAULT_AT arms one:

     MIRROR_FAULT_AT=NAME[:N]  at the Nth time (default 1) a process
                               reaches NAME
     MIRROR_FAULT_AT=/PATH     PATH holds NAME[:N]; it is removed when
                               the point fires, so that the point fires
                               once (a test arms it before a flush or a
                               delivery, and the next runs without it) */

#ifdef FAULT_POINTS
void fault_point(const char *name);
#  define FAULT_POINT(name) fault_point(name)
#else
#  define FAULT_POINT(name) STMT_START { } STMT_END
#endif

#endif
