/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* The access log's records (mirror-access.h). */

#include "lib.h"
#include "str.h"
#include "strnum.h"
#include "strescape.h"
#include "mirror-access.h"

#define MIRROR_ACCESS_FIELD_COUNT 9

void mirror_access_record_format(string_t *dest,
				 const struct mirror_access_record *rec)
{
	const char *fields[] = {
		rec->session, rec->service, rec->remote_ip, rec->user,
		rec->mailbox, rec->fetched, rec->changed, rec->expunged,
	};
	unsigned int i;

	str_printfa(dest, "%ld", (long)rec->time);
	for (i = 0; i < N_ELEMENTS(fields); i++) {
		str_append_c(dest, '\t');
		if (fields[i] != NULL)
			str_append_tabescaped(dest, fields[i]);
	}
	str_append_c(dest, '\n');
}

int mirror_access_record_parse(const char *line,
			       struct mirror_access_record *rec_r,
			       const char **error_r)
{
	const char *const *fields = t_strsplit_tabescaped(line);

	i_zero(rec_r);
	if (str_array_length(fields) != MIRROR_ACCESS_FIELD_COUNT) {
		*error_r = "Wrong number of fields";
		return -1;
	}
	if (str_to_time(fields[0], &rec_r->time) < 0) {
		*error_r = "Invalid time";
		return -1;
	}
	rec_r->session = fields[1];
	rec_r->service = fields[2];
	rec_r->remote_ip = fields[3];
	rec_r->user = fields[4];
	rec_r->mailbox = fields[5];
	rec_r->fetched = fields[6];
	rec_r->changed = fields[7];
	rec_r->expunged = fields[8];
	return 0;
}
