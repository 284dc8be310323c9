/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* The log nudge of the suite's services (mirror-log.h). */

#include "lib.h"
#include "ioloop.h"
#include "master-service.h"
#include "mirror-log.h"

static const unsigned int mirror_log_nudge_msecs[] = { 1000, 5000, 30000 };

struct mirror_log_nudge {
	struct timeout *to;
	char *prefix;
	unsigned int count;
};

static void mirror_log_nudge_timeout(struct mirror_log_nudge *nudge)
{
	timeout_remove(&nudge->to);
	i_set_failure_send_prefix(nudge->prefix);
	if (++nudge->count < N_ELEMENTS(mirror_log_nudge_msecs)) {
		nudge->to = timeout_add(mirror_log_nudge_msecs[nudge->count],
					mirror_log_nudge_timeout, nudge);
	}
}

struct mirror_log_nudge *mirror_log_nudge_start(void)
{
	struct mirror_log_nudge *nudge = i_new(struct mirror_log_nudge, 1);

	/* the prefix master_service_init_log() gave */
	nudge->prefix = i_strdup_printf("%s: ",
		master_service_get_configured_name(master_service));
	nudge->to = timeout_add(mirror_log_nudge_msecs[0],
				mirror_log_nudge_timeout, nudge);
	return nudge;
}

void mirror_log_nudge_stop(struct mirror_log_nudge **_nudge)
{
	struct mirror_log_nudge *nudge = *_nudge;

	if (nudge == NULL)
		return;
	*_nudge = NULL;
	timeout_remove(&nudge->to);
	i_free(nudge->prefix);
	i_free(nudge);
}
