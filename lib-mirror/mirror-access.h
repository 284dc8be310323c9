#ifndef MIRROR_ACCESS_H
#define MIRROR_ACCESS_H

/* The access log of a mirror storage: who read or changed what in it over
   IMAP and POP3.

   The file dovecot-mirror-access.log in the root control directory of
   the storage user's mail (for maildir, Maildir/ itself) gets one line
   when a session closes a mailbox whose messages it looked at:
   tab-separated fields (tab-escaped)

     <time> <session> <service> <remote-ip> <user> <mailbox> <fetched>
     <changed> <expunged>

   time is a UNIX time; the last three are UID sets ("1:3,7"; empty for
   none): messages whose content was read (not answered from the index
   cache), whose flags changed, that were expunged. The storage user
   writes it; LMTP's copies and the expiry scan don't. */

#define MIRROR_ACCESS_FILE_NAME "dovecot-mirror-access.log"
/* No line is longer: UID sets are cut short (ending in ",..."), user and
   mailbox names at MIRROR_ACCESS_NAME_MAX. A reader skips a longer one. */
#define MIRROR_ACCESS_LINE_MAX 4096
#define MIRROR_ACCESS_NAME_MAX 200

struct mirror_access_record {
	time_t time;
	const char *session, *service, *remote_ip, *user, *mailbox;
	const char *fetched, *changed, *expunged;
};

/* Append rec as one line with its LF. */
void mirror_access_record_format(string_t *dest,
				 const struct mirror_access_record *rec);
/* Parse one line (without LF); strings are allocated from the data
   stack. */
int mirror_access_record_parse(const char *line,
			       struct mirror_access_record *rec_r,
			       const char **error_r);

#endif
