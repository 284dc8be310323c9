#ifndef MIRROR_ACCESS_LOG_H
#define MIRROR_ACCESS_LOG_H

/* The access log that the IMAP and POP3 sessions of mirror storage users
   write (mirror-access.h). */

struct module;

void mirror_access_hooks_add(struct module *module);
void mirror_access_hooks_remove(void);

#endif
