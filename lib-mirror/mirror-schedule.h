#ifndef MIRROR_SCHEDULE_H
#define MIRROR_SCHEDULE_H

/* When the expiry scan runs: a local time of day (mirror_expire_time) in a
   zone of the system's time zone database (mirror_expire_timezone).

   Every local day has exactly one run:
   - a time that a fall-back transition repeats runs at its first
     occurrence only;
   - a time that a spring-forward transition skips runs at the first
     instant after the gap (e.g. 02:30 runs at 03:00 on such a day).

   Local times come from the C library: the functions switch TZ to the
   zone (setenv() and tzset()) around localtime_r() and put the previous
   TZ back before they return. This needs nothing but libc and the tz
   database that glibc already reads, at the cost of not being
   thread-safe, which Dovecot's processes don't need. Nothing else may use
   local time while a function here runs; none of them calls back. */

#define MIRROR_SCHEDULE_DEFAULT_TIME "00:00"
#define MIRROR_SCHEDULE_DEFAULT_TIMEZONE "America/Los_Angeles"
/* Where glibc finds zones unless TZDIR says otherwise */
#define MIRROR_SCHEDULE_ZONEINFO_DIR "/usr/share/zoneinfo"

struct mirror_schedule {
	/* the zone's name in the tz database, e.g. "Europe/Berlin" */
	const char *timezone;
	unsigned int hour, min, sec;
};

/* Parse the settings' values: time_str is HH:MM or HH:MM:SS (24 hours),
   timezone a zone that exists in the tz database. NULL or "" means the
   default. Strings are allocated from pool. */
int mirror_schedule_parse(const char *time_str, const char *timezone,
			  pool_t pool, struct mirror_schedule *sched_r,
			  const char **error_r);

/* The first run strictly after t. */
time_t mirror_schedule_next(const struct mirror_schedule *sched, time_t t);
/* The latest run at or before t. */
time_t mirror_schedule_prev(const struct mirror_schedule *sched, time_t t);
/* Whether a scan is due at now when the last one ran at last_run. Runs
   missed meanwhile, however many, make one scan due: TRUE with run_r set
   to the latest scheduled time, which a scan now covers. A scan that never
   ran (last_run == 0) is not due: a new installation starts with the next
   scheduled run instead of making up for one it never had. */
bool mirror_schedule_is_due(const struct mirror_schedule *sched,
			    time_t last_run, time_t now, time_t *run_r);

/* "2026-11-23 08:00:00 UTC" */
const char *mirror_schedule_format_utc(time_t t);
/* "2026-11-23 00:00:00 PST": the time in the schedule's zone, with the
   zone's abbreviation at that time */
const char *mirror_schedule_format_local(const struct mirror_schedule *sched,
					 time_t t);
/* The month of t in a zone: "2026-11". */
const char *mirror_local_month(const char *timezone, time_t t);
/* The same, with the month's first instant and the next month's, so that
   a caller asking for every message (LMTP) switches zones once a month,
   not every time (see mirror_month_contains()). */
struct mirror_month {
	char name[8];
	time_t start, end;
};
void mirror_local_month_get(const char *timezone, time_t t,
			    struct mirror_month *month_r);
static inline bool
mirror_month_contains(const struct mirror_month *month, time_t t)
{
	return month->start <= t && t < month->end;
}

/* "00:00:00" */
const char *mirror_schedule_time_str(const struct mirror_schedule *sched);

#endif
