#ifndef MIRROR_CHAIN_H
#define MIRROR_CHAIN_H

/* Tamper evidence: a per-mirror hash chain of the copies written to it.

   The chain of mirror <id> is the text file dovecot-mirror-chain.<id> in
   the control directory of the storage's INBOX. It is append-only, one
   record per line:

     <type> <seq> <time> <uidvalidity> <uid> <content-hash> <link>

   type is "copy" or "expire", or "hold" or "release" (a legal hold put
   on the mirror or taken off: uidvalidity and uid are 0, and the content
   hash is that of the reason given, as UTF-8 text), seq counts records
   from 1, time is a UNIX time, the hashes are 64 lowercase hex digits.
   The content hash of a copy is BLAKE2b-256 of the message as stored,
   with line endings normalized to LF. The link is BLAKE2b-256 over a fixed binary encoding of (type,
   previous link (zeros for the first record), content hash, time, mirror
   id, uidvalidity, uid, seq), so changing, removing or reordering a record
   breaks every later link. */

struct hash_method;

#define MIRROR_CHAIN_HASH_SIZE 32
#define MIRROR_CHAIN_FILE_PREFIX "dovecot-mirror-chain."
/* Longer than any valid record line */
#define MIRROR_CHAIN_LINE_MAX 512
/* How long an append waits for another process's append */
#define MIRROR_CHAIN_LOCK_TIMEOUT_SECS 30

enum mirror_chain_record_type {
	MIRROR_CHAIN_RECORD_COPY = 1,
	MIRROR_CHAIN_RECORD_EXPIRE = 2,
	MIRROR_CHAIN_RECORD_HOLD = 3,
	MIRROR_CHAIN_RECORD_RELEASE = 4,
};

struct mirror_chain_record {
	enum mirror_chain_record_type type;
	uint64_t seq;
	/* UNIX time of the record */
	uint64_t time;
	uint32_t uid_validity, uid;
	unsigned char content_hash[MIRROR_CHAIN_HASH_SIZE];
	unsigned char link[MIRROR_CHAIN_HASH_SIZE];
};
ARRAY_DEFINE_TYPE(mirror_chain_record, struct mirror_chain_record);

/* BLAKE2b-256 (libsodium's crypto_generichash) as a Dovecot hash method,
   for i_stream_create_hash(). The caller allocates context_size bytes;
   any alignment will do. */
extern const struct hash_method mirror_chain_hash_method;

const char *mirror_chain_type_to_str(enum mirror_chain_record_type type);
/* Whether records of the type name a message (uidvalidity and uid are
   set): copy and expire do, hold and release don't. */
bool mirror_chain_type_has_uid(enum mirror_chain_record_type type);
/* The chain file's name (not path) for a mirror id. */
const char *mirror_chain_file_name(unsigned int mirror_id);

/* Compute rec's link from the previous record's link (NULL for the first
   record). rec->link is not read. */
void mirror_chain_link(unsigned int mirror_id, const unsigned char *prev_link,
		       const struct mirror_chain_record *rec,
		       unsigned char link_r[MIRROR_CHAIN_HASH_SIZE]);
/* Append rec as one line, with its trailing LF. */
void mirror_chain_record_format(string_t *dest,
				const struct mirror_chain_record *rec);
/* Parse one line (without LF). Only the exact form that
   mirror_chain_record_format() writes is accepted. */
int mirror_chain_record_parse(const char *line,
			      struct mirror_chain_record *rec_r,
			      const char **error_r);
/* Check that rec follows prev (NULL for the first record): its seq is the
   next one and its link is right. */
bool mirror_chain_record_follows(unsigned int mirror_id,
				 const struct mirror_chain_record *prev,
				 const struct mirror_chain_record *rec,
				 const char **error_r);

/* Append one record to the chain file at path, creating it (mode 0600) if
   needed. The file is locked (fcntl) while its last record is read and the
   new one written, so concurrent appends stay one chain. With fsync, the
   record is on disk on return. rec_r (may be NULL) gets the record.
   Returns 0, or -1 on error. */
int mirror_chain_append(const char *path, unsigned int mirror_id,
			enum mirror_chain_record_type type, time_t time,
			uint32_t uid_validity, uint32_t uid,
			const unsigned char content_hash[MIRROR_CHAIN_HASH_SIZE],
			bool fsync, struct mirror_chain_record *rec_r,
			const char **error_r);

/* Append count records at once: one lock, one write() and at most one
   fdatasync(). Each record's type, time, uid_validity, uid and
   content_hash are given; seq and link are filled in. Returns 0, or -1 on
   error (then nothing was appended). */
int mirror_chain_append_records(const char *path, unsigned int mirror_id,
				struct mirror_chain_record *recs,
				unsigned int count, bool fsync,
				const char **error_r);

/* Read only the last record of the chain file at path (its head): 1, 0
   if the chain is empty or doesn't exist, -1 if it can't be read or its
   last record is broken. Its link is not checked (read the whole chain
   for that). */
int mirror_chain_read_head(const char *path,
			   struct mirror_chain_record *rec_r,
			   const char **error_r);

/* A message's key in sorted sets of records: its UIDVALIDITY and UID */
static inline uint64_t mirror_chain_uid_key(uint32_t uid_validity, uint32_t uid)
{
	return ((uint64_t)uid_validity << 32) | uid;
}
/* The keys of the messages that records' expire records name, sorted,
   appended to keys (for array_bsearch() with uint64_cmp). */
void mirror_chain_expired_keys(const ARRAY_TYPE(mirror_chain_record) *records,
			       ARRAY_TYPE(uint64_t) *keys);

/* Read a whole chain file and check every link. Every record that parses
   is appended to records. A file that doesn't exist is an empty chain.
   broken_r is NULL if the chain is intact, else why it isn't (the first
   problem). Returns 0, or -1 if the file can't be read. */
int mirror_chain_read(const char *path, unsigned int mirror_id,
		      ARRAY_TYPE(mirror_chain_record) *records,
		      const char **broken_r, const char **error_r);

#endif
