/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* The suite's event category (mirror-event.h). */

#include "lib.h"
#include "mirror-event.h"

struct event_category event_category_mirror = {
	.name = "mirror",
};
