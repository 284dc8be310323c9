#ifndef BAG_FAULT_H
#define BAG_FAULT_H

/* Fault points: named places of a flush where a test build can kill its
   own process with SIGKILL, as a crash or `kill -9` would at that very
   moment, so that the tests can check what survives it (no message sent
   twice but the one whose 250 wasn't recorded yet, no notification sent
   twice).

   They exist only in a build configured with --enable-fault-points
   (BAG_FAULT_POINTS): elsewhere BAG_FAULT() is nothing at all. In such a
   build, the environment variable BAG_FAULT_AT arms one:

     BAG_FAULT_AT=NAME[:N]    at the Nth time (default 1) a process
                              reaches NAME
     BAG_FAULT_AT=/PATH       PATH holds NAME[:N]; it is removed when the
                              point fires, so that the point fires once
                              (a test arms it before a flush and the next
                              flush runs without it) */

#ifdef BAG_FAULT_POINTS
void bag_fault_point(const char *name);
#  define BAG_FAULT(name) bag_fault_point(name)
#else
#  define BAG_FAULT(name) STMT_START { } STMT_END
#endif

#endif
