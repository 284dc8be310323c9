/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* The expiry scan's schedule: a local time of day in a tz database zone,
   turned into instants (see mirror-schedule.h for the rules at DST
   transitions and why TZ is switched). */

#include "lib.h"
#include "str-sanitize.h"
#include "env-util.h"
#include "time-util.h"
#include "utc-mktime.h"
#include "mirror-schedule.h"

#include <ctype.h>
#include <fcntl.h>
#include <unistd.h>

#define MIRROR_SCHEDULE_TIMEZONE_MAX_LEN 255
/* A day's run is at most this far from the same wall clock time read as
   UTC: larger than any zone's offset, smaller than a day minus it. */
#define MIRROR_SCHEDULE_DAY_SECS (24*60*60)

struct mirror_tz {
	char *old_tz;
};

struct mirror_date {
	int year, mon, mday;
};

static void mirror_tz_switch(const char *timezone, struct mirror_tz *tz_r)
{
	const char *old = getenv("TZ");

	/* ':' makes glibc read the name as a file of the tz database and
	   never as a POSIX TZ rule */
	tz_r->old_tz = old == NULL ? NULL : i_strdup(old);
	env_put("TZ", t_strconcat(":", timezone, NULL));
	tzset();
}

static void mirror_tz_restore(struct mirror_tz *tz)
{
	if (tz->old_tz == NULL)
		env_remove("TZ");
	else
		env_put("TZ", tz->old_tz);
	tzset();
	i_free(tz->old_tz);
}

/* The local wall clock time at t, as seconds counted like UTC's. */
static time_t mirror_wall(time_t t)
{
	struct tm tm;

	if (localtime_r(&t, &tm) == NULL)
		i_panic("localtime_r(%ld) failed", (long)t);
	return utc_mktime(&tm);
}

static void mirror_local_date(time_t t, struct mirror_date *date_r)
{
	struct tm tm;

	if (localtime_r(&t, &tm) == NULL)
		i_panic("localtime_r(%ld) failed", (long)t);
	date_r->year = tm.tm_year;
	date_r->mon = tm.tm_mon;
	date_r->mday = tm.tm_mday;
}

static void
mirror_date_add_days(const struct mirror_date *date, int days,
		     struct mirror_date *date_r)
{
	struct tm tm;
	time_t t;

	i_zero(&tm);
	tm.tm_year = date->year;
	tm.tm_mon = date->mon;
	tm.tm_mday = date->mday;
	tm.tm_hour = 12;
	t = utc_mktime(&tm) + (time_t)days * MIRROR_SCHEDULE_DAY_SECS;
	if (gmtime_r(&t, &tm) == NULL)
		i_panic("gmtime_r(%ld) failed", (long)t);
	date_r->year = tm.tm_year;
	date_r->mon = tm.tm_mon;
	date_r->mday = tm.tm_mday;
}

/* The run of one local day. TZ must be switched to the schedule's zone. */
static time_t
mirror_schedule_run_of_day(const struct mirror_schedule *sched,
			   const struct mirror_date *date)
{
	struct tm tm;
	time_t wall, before, after, lo, hi, mid;
	bool before_ok, after_ok;

	i_zero(&tm);
	tm.tm_year = date->year;
	tm.tm_mon = date->mon;
	tm.tm_mday = date->mday;
	tm.tm_hour = sched->hour;
	tm.tm_min = sched->min;
	tm.tm_sec = sched->sec;
	wall = utc_mktime(&tm);
	i_assert(wall != (time_t)-1);

	/* The run is the wall time minus the UTC offset in effect then:
	   either the offset of the day before or that of the day after
	   (zones change their offset at most once in two days). */
	before = wall - (mirror_wall(wall - MIRROR_SCHEDULE_DAY_SECS) -
			 (wall - MIRROR_SCHEDULE_DAY_SECS));
	after = wall - (mirror_wall(wall + MIRROR_SCHEDULE_DAY_SECS) -
			(wall + MIRROR_SCHEDULE_DAY_SECS));
	before_ok = mirror_wall(before) == wall;
	after_ok = mirror_wall(after) == wall;
	if (before_ok && after_ok) {
		/* repeated by a fall-back transition: the first one */
		return I_MIN(before, after);
	}
	if (before_ok)
		return before;
	if (after_ok)
		return after;

	/* Skipped by a spring-forward transition: run at the first instant
	   whose wall time is past it, i.e. at the transition. Read with the
	   later offset, the time is before the transition; read with the
	   earlier one, after it. */
	lo = I_MIN(before, after);
	hi = I_MAX(before, after);
	if (mirror_wall(lo) >= wall || mirror_wall(hi) < wall) {
		/* not a single transition between the two: no such zone in
		   the tz database, but don't loop on one */
		return hi;
	}
	while (hi - lo > 1) {
		mid = lo + (hi - lo) / 2;
		if (mirror_wall(mid) >= wall)
			hi = mid;
		else
			lo = mid;
	}
	return hi;
}

time_t mirror_schedule_next(const struct mirror_schedule *sched, time_t t)
{
	struct mirror_tz tz;
	struct mirror_date today, day;
	time_t run = 0;
	int i;

	mirror_tz_switch(sched->timezone, &tz);
	mirror_local_date(t, &today);
	/* runs are in the order of their days; the one after t is at
	   most two local days away (a day can last 47 hours when a zone
	   moves across the date line) */
	for (i = -1; i <= 3; i++) {
		mirror_date_add_days(&today, i, &day);
		run = mirror_schedule_run_of_day(sched, &day);
		if (run > t)
			break;
	}
	mirror_tz_restore(&tz);
	i_assert(run > t);
	return run;
}

time_t mirror_schedule_prev(const struct mirror_schedule *sched, time_t t)
{
	struct mirror_tz tz;
	struct mirror_date today, day;
	time_t run = 0;
	int i;

	mirror_tz_switch(sched->timezone, &tz);
	mirror_local_date(t, &today);
	for (i = 1; i >= -3; i--) {
		mirror_date_add_days(&today, i, &day);
		run = mirror_schedule_run_of_day(sched, &day);
		if (run <= t)
			break;
	}
	mirror_tz_restore(&tz);
	i_assert(run <= t);
	return run;
}

bool mirror_schedule_is_due(const struct mirror_schedule *sched,
			    time_t last_run, time_t now, time_t *run_r)
{
	time_t prev;

	if (last_run == 0)
		return FALSE;
	prev = mirror_schedule_prev(sched, now);
	if (last_run >= prev)
		return FALSE;
	*run_r = prev;
	return TRUE;
}

const char *mirror_schedule_format_utc(time_t t)
{
	return t_strfgmtime("%Y-%m-%d %H:%M:%S UTC", t);
}

const char *mirror_schedule_format_local(const struct mirror_schedule *sched,
					 time_t t)
{
	struct mirror_tz tz;
	struct tm tm;
	const char *str;

	mirror_tz_switch(sched->timezone, &tz);
	if (localtime_r(&t, &tm) == NULL)
		i_panic("localtime_r(%ld) failed", (long)t);
	/* %Z while TZ is still the zone's */
	str = t_strftime("%Y-%m-%d %H:%M:%S %Z", &tm);
	mirror_tz_restore(&tz);
	return str;
}

const char *mirror_schedule_time_str(const struct mirror_schedule *sched)
{
	return t_strdup_printf("%02u:%02u:%02u", sched->hour, sched->min,
			       sched->sec);
}

/* A number of one or two digits (first) or exactly two (the others). */
static int
mirror_schedule_parse_field(const char **p, bool first, unsigned int max,
			    unsigned int *value_r)
{
	const char *s = *p;
	unsigned int digits = 0, value = 0;

	while (i_isdigit(s[digits]) && digits < 3) {
		value = value * 10 + (s[digits] - '0');
		digits++;
	}
	if (digits == 0 || digits > 2 || (!first && digits != 2) ||
	    value > max)
		return -1;
	*p = s + digits;
	*value_r = value;
	return 0;
}

static int
mirror_schedule_parse_time(const char *str, struct mirror_schedule *sched,
			   const char **error_r)
{
	const char *p = str;
	bool ok;

	sched->sec = 0;
	ok = mirror_schedule_parse_field(&p, TRUE, 23, &sched->hour) == 0 &&
		*p++ == ':' &&
		mirror_schedule_parse_field(&p, FALSE, 59, &sched->min) == 0;
	if (ok && *p == ':') {
		p++;
		ok = mirror_schedule_parse_field(&p, FALSE, 59,
						 &sched->sec) == 0;
	}
	if (!ok || *p != '\0') {
		*error_r = t_strdup_printf(
			"Invalid mirror_expire_time '%s': expected HH:MM or "
			"HH:MM:SS, 00:00 to 23:59:59", str_sanitize(str, 40));
		return -1;
	}
	return 0;
}

static bool mirror_timezone_name_is_valid(const char *name)
{
	const char *p;

	if (*name == '\0' || strlen(name) > MIRROR_SCHEDULE_TIMEZONE_MAX_LEN)
		return FALSE;
	/* a relative path below the database, without . or .. */
	for (p = name; *p != '\0'; p++) {
		if (!i_isalnum(*p) && strchr("/_+-.", *p) == NULL)
			return FALSE;
		if ((p == name || p[-1] == '/') && (*p == '/' || *p == '.'))
			return FALSE;
	}
	return p[-1] != '/';
}

/* Whether the tz database has the zone: glibc would silently use UTC for
   a name it can't find. */
static int
mirror_schedule_check_timezone(const char *timezone, const char **error_r)
{
	const char *dir, *path;
	unsigned char magic[4];
	ssize_t ret;
	int fd;

	if (!mirror_timezone_name_is_valid(timezone)) {
		*error_r = t_strdup_printf(
			"Invalid mirror_expire_timezone '%s': expected a zone "
			"name of the tz database, e.g. America/Los_Angeles",
			str_sanitize(timezone, 60));
		return -1;
	}
	dir = getenv("TZDIR");
	if (dir == NULL || *dir == '\0')
		dir = MIRROR_SCHEDULE_ZONEINFO_DIR;
	path = t_strconcat(dir, "/", timezone, NULL);
	fd = open(path, O_RDONLY);
	if (fd < 0) {
		*error_r = t_strdup_printf(
			"Invalid mirror_expire_timezone '%s': not in the time "
			"zone database (open(%s) failed: %m)", timezone, path);
		return -1;
	}
	ret = read(fd, magic, sizeof(magic));
	i_close_fd(&fd);
	if (ret != sizeof(magic) || memcmp(magic, "TZif", 4) != 0) {
		*error_r = t_strdup_printf(
			"Invalid mirror_expire_timezone '%s': %s is not a "
			"time zone file", timezone, path);
		return -1;
	}
	return 0;
}

int mirror_schedule_parse(const char *time_str, const char *timezone,
			  pool_t pool, struct mirror_schedule *sched_r,
			  const char **error_r)
{
	i_zero(sched_r);
	if (time_str == NULL || *time_str == '\0')
		time_str = MIRROR_SCHEDULE_DEFAULT_TIME;
	if (timezone == NULL || *timezone == '\0')
		timezone = MIRROR_SCHEDULE_DEFAULT_TIMEZONE;
	if (mirror_schedule_parse_time(time_str, sched_r, error_r) < 0 ||
	    mirror_schedule_check_timezone(timezone, error_r) < 0)
		return -1;
	sched_r->timezone = p_strdup(pool, timezone);
	return 0;
}

void mirror_local_month_get(const char *timezone, time_t t,
			    struct mirror_month *month_r)
{
	struct mirror_tz tz;
	struct tm tm;

	mirror_tz_switch(timezone, &tz);
	if (localtime_r(&t, &tm) == NULL)
		i_panic("localtime_r(%ld) failed", (long)t);
	i_snprintf(month_r->name, sizeof(month_r->name), "%04d-%02d",
		   tm.tm_year + 1900, tm.tm_mon + 1);
	/* mktime() normalizes a midnight that a transition skips */
	tm.tm_mday = 1;
	tm.tm_hour = tm.tm_min = tm.tm_sec = 0;
	tm.tm_isdst = -1;
	month_r->start = mktime(&tm);
	tm.tm_mon++;
	tm.tm_mday = 1;
	tm.tm_hour = tm.tm_min = tm.tm_sec = 0;
	tm.tm_isdst = -1;
	month_r->end = mktime(&tm);
	mirror_tz_restore(&tz);
	i_assert(month_r->start <= t && t < month_r->end);
}

const char *mirror_local_month(const char *timezone, time_t t)
{
	struct mirror_month month;

	mirror_local_month_get(timezone, t, &month);
	return t_strdup(month.name);
}
