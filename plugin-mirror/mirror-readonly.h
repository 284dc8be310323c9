#ifndef MIRROR_READONLY_H
#define MIRROR_READONLY_H

/* Read-only mirror storages. When the user of an IMAP or POP3 session is
   the storage of a read-only mirror, its mailboxes can be listed, read and
   searched, and only the \Seen flag can be changed. Every other change is
   refused: over IMAP with a permission error (the command gets a NO), over
   POP3 silently (DELE and QUIT succeed and the messages stay). Other
   services (LMTP saving mirror copies, doveadm) are never restricted. */

enum mirror_readonly_mode {
	MIRROR_READONLY_NONE = 0,
	/* refuse changes with an error (IMAP) */
	MIRROR_READONLY_REFUSE,
	/* ignore expunges and flag changes other than \Seen (POP3) */
	MIRROR_READONLY_IGNORE,
};

#define MIRROR_READONLY_ERROR "Mirror storage is read-only"

struct mail_user;
struct module;

/* How the user's session is restricted (mirror-plugin.c). */
enum mirror_readonly_mode mirror_user_get_readonly(struct mail_user *user);

void mirror_readonly_hooks_add(struct module *module);
void mirror_readonly_hooks_remove(void);

#endif
