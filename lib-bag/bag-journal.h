#ifndef BAG_JOURNAL_H
#define BAG_JOURNAL_H

/* The flush journal of a bag: what is known about the recipients of
   messages that are still in the bag, so that a flush cut off at any
   moment (a kill -9, a crash, dovecot stop) never sends a message again
   to a recipient that took it, and never sends a notification twice.

   A message leaves the bag (is expunged) once every recipient is done;
   the common case, every recipient taking it, needs no journal. The
   journal holds the rest: the recipients of a message that are done
   while others still wait (a 4xx), and the notification about refused
   recipients, written before it is sent and again when it was. It is a
   file in the bag user's home, dovecot-bag.journal, read when a flush
   starts and appended to (with fdatasync) under the bag's lock, one line
   per recipient:

     <message GUID> TAB <recipient number> TAB <state>

   The recipient number counts the message's stored envelope, which never
   changes. A message is known by its GUID, which stays the same however
   its index is rebuilt. */

struct bag_store;
struct bag_journal;

enum bag_journal_state {
	/* nothing recorded: the recipient waits */
	BAG_JOURNAL_WAITING = 0,
	/* the recipient's MTA took the message */
	BAG_JOURNAL_DELIVERED = 'd',
	/* refused for good, no notification wanted */
	BAG_JOURNAL_FAILED = 'f',
	/* refused for good, and its notification is being sent: if no 's'
	   follows, it may or may not have gone (a flush died sending it),
	   and is not sent again */
	BAG_JOURNAL_NOTIFYING = 'n',
	/* refused for good, its notification sent */
	BAG_JOURNAL_NOTIFIED = 's',
	/* the notification couldn't be sent: the recipient waits again */
	BAG_JOURNAL_UNDONE = 'u',
};

/* Whether a recipient in this state is done with (it isn't sent to). */
static inline bool bag_journal_state_is_done(enum bag_journal_state state)
{
	return state == BAG_JOURNAL_DELIVERED ||
		state == BAG_JOURNAL_FAILED ||
		state == BAG_JOURNAL_NOTIFYING ||
		state == BAG_JOURNAL_NOTIFIED;
}

/* Read the journal of the bag (none: empty). The caller holds the
   store's lock. Returns 0, or -1 with an error when it can't be read
   (then no flush can be trusted to skip what was done). */
int bag_journal_open(struct bag_store *store, struct bag_journal **journal_r,
		     const char **error_r);
void bag_journal_close(struct bag_journal **journal);

/* The state of each of count recipients of the message with guid
   (states_r from the data stack; all WAITING if none is recorded).
   Returns TRUE when something is recorded about the message. */
bool bag_journal_lookup(struct bag_journal *journal, const char *guid,
			unsigned int count,
			enum bag_journal_state **states_r);
/* Record the states of recipients, durably, before what follows may
   happen. idxs and states have count elements. */
int bag_journal_append(struct bag_journal *journal, const char *guid,
		       const unsigned int *idxs,
		       const enum bag_journal_state *states,
		       unsigned int count, const char **error_r);
/* The flush went through the whole bag: the records of messages it
   didn't meet are dropped (the file is rewritten, or removed when
   nothing is left). */
int bag_journal_compact(struct bag_journal *journal, const char **error_r);
/* How many messages the journal holds records of. */
unsigned int bag_journal_count(struct bag_journal *journal);

#endif
