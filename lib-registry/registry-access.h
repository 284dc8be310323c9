#ifndef REGISTRY_ACCESS_H
#define REGISTRY_ACCESS_H

/* Who may do what in the registry, as the mirror-registry service
   enforces it for the processes that reach the registry through its
   socket. Dovecot's dict service answers everything to everyone who can
   reach its socket, so it can't keep the password hashes from the mail
   uid, nor the mirror definitions from being rewritten by it.

   A request is one line of Dovecot's dict protocol (dict-client.h), the
   one lib-dict's proxy: driver speaks. */

enum registry_role {
	/* root and the service's own user (Dovecot's internal user: auth
	   reads the login records as it): everything */
	REGISTRY_ROLE_ADMIN,
	/* anyone else (the mail uid: IMAP, POP3, the bag service): reads
	   everything but the login records' secrets, and writes only what
	   mail processes keep up to date (counters, flush status, retry
	   schedules, the expire index) */
	REGISTRY_ROLE_MAIL,
};

enum registry_request_type {
	REGISTRY_REQUEST_LOOKUP,
	REGISTRY_REQUEST_ITERATE,
	REGISTRY_REQUEST_BEGIN,
	REGISTRY_REQUEST_COMMIT,
	REGISTRY_REQUEST_ROLLBACK,
	REGISTRY_REQUEST_SET,
	REGISTRY_REQUEST_UNSET,
	REGISTRY_REQUEST_ATOMIC_INC,
	REGISTRY_REQUEST_TIMESTAMP,
};

struct registry_request {
	enum registry_request_type type;
	/* the transaction of begin, commit, rollback, set, unset, inc,
	   timestamp */
	unsigned int trans_id;
	/* lookup, set, unset, inc: the key; iterate: the path */
	const char *key;
	/* set */
	const char *value;
	/* inc */
	long long diff;
	/* iterate */
	unsigned int iter_flags;
	uint64_t iter_max_rows;
	/* commit: the client asked with D (an async commit: the reply
	   starts with A) */
	bool async_commit;
};

/* Parse a request line (after the handshake). Strings are allocated from
   the data stack. 0, or -1 with error_r for a line that isn't one. */
int registry_request_parse(const char *line, struct registry_request *req_r,
			   const char **error_r);

/* The dict name a client gives (proxy:mirror-registry:<name>) to read
   the registry without its marker: doveadm mirror init and check, as
   root only. Any other name reads it as every process does. */
#define REGISTRY_NAME_UNCHECKED "mirror+unchecked"

/* Parse the handshake line (H<major> <minor> <value type> <user>
   <dict name>): 0 with the dict name, or -1 with error_r for a protocol
   this service doesn't speak. */
int registry_handshake_parse(const char *line, const char **name_r,
			     const char **error_r);

/* NULL if role may make the request, else why not. Requests without a
   key (begin, commit, ...) are always allowed. */
const char *registry_access_check(enum registry_role role,
				  const struct registry_request *req);

/* A counter's value: an integer that an increment of diff can't push
   out of the 63-bit range that every backend keeps. FALSE for anything
   else (Dovecot 2.3's file dict panics when it increments a value that
   isn't a number). */
bool registry_counter_value_is_valid(const char *value, long long diff);

#endif
