#ifndef MIRROR_EXPIRE_H
#define MIRROR_EXPIRE_H

/* The expiry scan: Days to Mirror.

   For every mirror storage (the largest Days to Mirror among the mirrors
   that share it), read the expire index; open only the storages whose
   oldest message is older than now - days * 86400, expunge from INBOX
   every message saved before that second, append an expire record per
   removed copy to the chain of every mirror that recorded the copy, and
   set the index to the oldest message kept. A storage that one of its
   mirrors holds (a legal hold, mirror-def.h) is due all the same, but it
   is not opened: nothing is removed from it, and the report says so. The
   holds are read again right before each storage is opened, so that a
   hold made while the scan runs stops it too. */

struct mail_storage_service_ctx;

#define MIRROR_EXPIRE_SECS_PER_DAY (24*60*60)
/* doveadm and the scan's events: "expire" fields */
#define MIRROR_EXPIRE_EVENT_FINISHED "mirror_expire_finished"

struct mirror_expire_settings {
	const char *dict_uri;
	const char *base_dir;
	/* ages are computed as if it were this time */
	time_t now;
	/* report only: remove nothing, append nothing, keep the index */
	bool dry_run;
	/* open every storage and rewrite its index entry; expire nothing */
	bool rebuild_index;
	/* debug logging of the scan and of the storage users */
	bool debug;
};

/* One storage the scan visited, or found due and held */
struct mirror_expire_storage_result {
	const char *storage;
	/* the mirrors that store into it, "1 3" */
	const char *mirror_ids;
	unsigned int days;
	unsigned int removed;
	uint64_t bytes;
	/* save date of the oldest message kept, 0 if none */
	time_t oldest_kept;
	/* NULL if the visit succeeded */
	const char *error;
	/* due, and not visited: the mirrors of held_ids ("1 3") are on
	   legal hold */
	const char *held_ids;
};

struct mirror_expire_result {
	/* mirror storages in the registry */
	unsigned int storages;
	/* storages opened */
	unsigned int visited;
	/* storages whose visit failed */
	unsigned int failed;
	/* storages due and not visited, because they are held */
	unsigned int held;
	unsigned int removed;
	uint64_t bytes;
	/* the whole scan, wall clock */
	long long usecs;
};

typedef void
mirror_expire_storage_callback_t(const struct mirror_expire_storage_result *res,
				 void *context);

/* A storage is due when its oldest message was saved before cutoff. */
static inline time_t
mirror_expire_cutoff(time_t now, unsigned int days)
{
	return now - (time_t)days * MIRROR_EXPIRE_SECS_PER_DAY;
}

/* Run the scan with the storage users from service (created with
   MAIL_STORAGE_SERVICE_FLAG_TEMP_PRIV_DROP when run as root; the identity
   the scan started with is restored on return). callback is called for
   each storage visited. Returns 0 if every visit succeeded, -1 if the
   registry failed (error_r) or a visit failed (result_r->failed > 0).
   A successful scan that is neither a dry run nor a rebuild records the
   time of the run (the real time, not set->now) in the registry. */
int mirror_expire_run(const struct mirror_expire_settings *set,
		      struct mail_storage_service_ctx *service,
		      struct event *event_parent,
		      mirror_expire_storage_callback_t *callback,
		      void *context, struct mirror_expire_result *result_r,
		      const char **error_r);

/* What --rebuild-index finds for one storage, without setting its entry:
   the oldest save date in its INBOX (0 if it is empty). The identity the
   caller had is restored on return. 0, or -1 with error_r. */
int mirror_expire_storage_oldest(struct mail_storage_service_ctx *service,
				 struct event *event_parent,
				 const char *storage, time_t *oldest_r,
				 const char **error_r);

#endif
