#ifndef MIRROR_SEARCH_H
#define MIRROR_SEARCH_H

/* Exact searches with fts-xapian. fts-xapian answers every search key it
   is given as certain (definite), but it matches words by prefix and
   splits addresses into words: SEARCH FROM sender7@example.net also finds
   sender70@example.net, which IMAP's substring rule doesn't, and
   fts_no_autofuzzy is not supported by it. For the users whose fts setting
   is "xapian" (the suite's storages, bags and POP3 boxes), every message
   the index found for a header, BODY or TEXT key is checked against the
   message itself, as Dovecot does with a backend's "maybe" results: the
   index still narrows a search of many messages down to a few. */

struct module;

void mirror_search_hooks_add(struct module *module);
void mirror_search_hooks_remove(void);

#endif
