/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* Unit tests of the expiry scan's schedule: parsing, next and previous
   runs across DST transitions, leap days and year ends, and when a missed
   run is due. They read the system's tz database (Debian's tzdata). */

#include "lib.h"
#include "env-util.h"
#include "utc-mktime.h"
#include "test-common.h"
#include "mirror-schedule.h"

#include <stdio.h>

/* "YYYY-MM-DD HH:MM:SS" in UTC */
static time_t utc(const char *str)
{
	struct tm tm;
	time_t t;

	i_zero(&tm);
	if (sscanf(str, "%d-%d-%d %d:%d:%d", &tm.tm_year, &tm.tm_mon,
		   &tm.tm_mday, &tm.tm_hour, &tm.tm_min, &tm.tm_sec) != 6)
		i_panic("bad test time %s", str);
	tm.tm_year -= 1900;
	tm.tm_mon--;
	t = utc_mktime(&tm);
	i_assert(t != (time_t)-1);
	return t;
}

static struct mirror_schedule
test_schedule(const char *time_str, const char *timezone)
{
	struct mirror_schedule sched;
	const char *error;

	if (mirror_schedule_parse(time_str, timezone, pool_datastack_create(),
				  &sched, &error) < 0)
		i_panic("%s", error);
	return sched;
}

#define test_assert_time(got, expected) \
	test_assert_strcmp(mirror_schedule_format_utc(got), \
			   mirror_schedule_format_utc(expected))

static void test_mirror_schedule_parse(void)
{
	static const struct {
		const char *time_str;
		unsigned int hour, min, sec;
	} valid[] = {
		{ NULL, 0, 0, 0 },
		{ "", 0, 0, 0 },
		{ "00:00", 0, 0, 0 },
		{ "0:00", 0, 0, 0 },
		{ "23:59", 23, 59, 0 },
		{ "23:59:59", 23, 59, 59 },
		{ "02:30:05", 2, 30, 5 },
		{ "7:05", 7, 5, 0 },
	};
	static const char *invalid_times[] = {
		"24:00", "12", "12:", "12:5", "12:60", "12:00:60", "12:00:",
		"-1:00", "12:00 ", " 12:00", "012:00", "12:000", "12h00",
		"12:00:00:00", "noon",
	};
	static const char *invalid_zones[] = {
		"Mars/Olympus_Mons", "america/los_angeles", "/etc/passwd",
		"../../etc/passwd", "America/../Europe/Berlin", "America/",
		"America", ".", "America/Los_Angeles ",
		"PST8PDT,M3.2.0,M11.1.0", "Europe/Berlin\n",
	};
	struct mirror_schedule sched;
	const char *error;
	unsigned int i;

	test_begin("mirror_schedule_parse()");
	for (i = 0; i < N_ELEMENTS(valid); i++) {
		test_assert_idx(mirror_schedule_parse(valid[i].time_str, NULL,
			pool_datastack_create(), &sched, &error) == 0, i);
		test_assert_idx(sched.hour == valid[i].hour &&
				sched.min == valid[i].min &&
				sched.sec == valid[i].sec, i);
		test_assert_strcmp_idx(sched.timezone,
				       "America/Los_Angeles", i);
	}
	test_assert_strcmp(mirror_schedule_time_str(&sched), "07:05:00");
	for (i = 0; i < N_ELEMENTS(invalid_times); i++) {
		error = NULL;
		test_assert_idx(mirror_schedule_parse(invalid_times[i], NULL,
			pool_datastack_create(), &sched, &error) < 0, i);
		test_assert_idx(error != NULL &&
				str_begins(error, "Invalid mirror_expire_time"),
				i);
	}
	for (i = 0; i < N_ELEMENTS(invalid_zones); i++) {
		error = NULL;
		test_assert_idx(mirror_schedule_parse("00:00", invalid_zones[i],
			pool_datastack_create(), &sched, &error) < 0, i);
		test_assert_idx(error != NULL &&
				str_begins(error,
					   "Invalid mirror_expire_timezone") &&
				strchr(error, '\n') == NULL, i);
	}
	test_assert(mirror_schedule_parse("00:00", "Europe/Berlin",
		pool_datastack_create(), &sched, &error) == 0);
	test_assert(mirror_schedule_parse("00:00", "UTC",
		pool_datastack_create(), &sched, &error) == 0);
	test_end();
}

/* Midnight in Los Angeles around DST: 2026-03-08 lasts 23 hours,
   2026-11-01 lasts 25. */
static void test_mirror_schedule_la_midnight(void)
{
	struct mirror_schedule sched = test_schedule("00:00", NULL);

	test_begin("mirror_schedule: midnight in Los Angeles across DST");
	/* PST: 08:00 UTC */
	test_assert_time(mirror_schedule_next(&sched,
		utc("2026-03-07 12:00:00")), utc("2026-03-08 08:00:00"));
	/* the spring-forward day is 23 hours long; PDT: 07:00 UTC */
	test_assert_time(mirror_schedule_next(&sched,
		utc("2026-03-08 08:00:00")), utc("2026-03-09 07:00:00"));
	test_assert_time(mirror_schedule_prev(&sched,
		utc("2026-03-09 06:59:59")), utc("2026-03-08 08:00:00"));
	/* the fall-back day is 25 hours long */
	test_assert_time(mirror_schedule_next(&sched,
		utc("2026-10-31 07:00:00")), utc("2026-11-01 07:00:00"));
	test_assert_time(mirror_schedule_next(&sched,
		utc("2026-11-01 07:00:00")), utc("2026-11-02 08:00:00"));
	test_assert_time(mirror_schedule_prev(&sched,
		utc("2026-11-02 07:59:59")), utc("2026-11-01 07:00:00"));
	test_assert_strcmp(mirror_schedule_format_local(&sched,
		utc("2026-11-01 07:00:00")), "2026-11-01 00:00:00 PDT");
	test_assert_strcmp(mirror_schedule_format_local(&sched,
		utc("2026-11-02 08:00:00")), "2026-11-02 00:00:00 PST");
	test_assert_strcmp(mirror_schedule_format_local(&sched,
		utc("2026-11-23 08:00:00")), "2026-11-23 00:00:00 PST");
	test_assert_strcmp(mirror_schedule_format_utc(
		utc("2026-11-23 08:00:00")), "2026-11-23 08:00:00 UTC");
	test_end();
}

/* A run time inside the hour that DST skips or repeats. */
static void test_mirror_schedule_la_transitions(void)
{
	struct mirror_schedule gap = test_schedule("02:30", NULL);
	struct mirror_schedule overlap = test_schedule("01:30", NULL);

	test_begin("mirror_schedule: Los Angeles, run time in the DST gap");
	/* 2026-03-07 02:30 PST, then 02:30 doesn't exist on 03-08: the run
	   is at the first instant after the gap, 03:00 PDT */
	test_assert_time(mirror_schedule_next(&gap,
		utc("2026-03-07 00:00:00")), utc("2026-03-07 10:30:00"));
	test_assert_time(mirror_schedule_next(&gap,
		utc("2026-03-07 10:30:00")), utc("2026-03-08 10:00:00"));
	test_assert_strcmp(mirror_schedule_format_local(&gap,
		utc("2026-03-08 10:00:00")), "2026-03-08 03:00:00 PDT");
	test_assert_time(mirror_schedule_next(&gap,
		utc("2026-03-08 10:00:00")), utc("2026-03-09 09:30:00"));
	test_assert_time(mirror_schedule_prev(&gap,
		utc("2026-03-08 09:59:59")), utc("2026-03-07 10:30:00"));
	test_assert_time(mirror_schedule_prev(&gap,
		utc("2026-03-08 10:00:00")), utc("2026-03-08 10:00:00"));
	test_end();

	test_begin("mirror_schedule: Los Angeles, run time repeated by DST");
	/* 01:30 happens at 08:30 UTC (PDT) and 09:30 UTC (PST) on 11-01:
	   one run, at the first */
	test_assert_time(mirror_schedule_next(&overlap,
		utc("2026-10-31 08:30:00")), utc("2026-11-01 08:30:00"));
	test_assert_time(mirror_schedule_next(&overlap,
		utc("2026-11-01 08:30:00")), utc("2026-11-02 09:30:00"));
	test_assert_time(mirror_schedule_next(&overlap,
		utc("2026-11-01 09:30:00")), utc("2026-11-02 09:30:00"));
	test_assert_time(mirror_schedule_prev(&overlap,
		utc("2026-11-01 09:30:00")), utc("2026-11-01 08:30:00"));
	test_assert_strcmp(mirror_schedule_format_local(&overlap,
		utc("2026-11-01 08:30:00")), "2026-11-01 01:30:00 PDT");
	test_end();
}

static void test_mirror_schedule_berlin(void)
{
	struct mirror_schedule sched = test_schedule("02:30", "Europe/Berlin");
	struct mirror_schedule midnight =
		test_schedule("00:00", "Europe/Berlin");

	test_begin("mirror_schedule: Europe/Berlin across DST");
	/* 2026-03-29 02:00 CET becomes 03:00 CEST */
	test_assert_time(mirror_schedule_next(&sched,
		utc("2026-03-28 01:30:00")), utc("2026-03-29 01:00:00"));
	test_assert_strcmp(mirror_schedule_format_local(&sched,
		utc("2026-03-29 01:00:00")), "2026-03-29 03:00:00 CEST");
	test_assert_time(mirror_schedule_next(&sched,
		utc("2026-03-29 01:00:00")), utc("2026-03-30 00:30:00"));
	/* 2026-10-25 03:00 CEST becomes 02:00 CET: 02:30 twice */
	test_assert_time(mirror_schedule_next(&sched,
		utc("2026-10-24 00:30:00")), utc("2026-10-25 00:30:00"));
	test_assert_time(mirror_schedule_next(&sched,
		utc("2026-10-25 00:30:00")), utc("2026-10-26 01:30:00"));
	test_assert_time(mirror_schedule_next(&midnight,
		utc("2026-10-24 22:00:00")), utc("2026-10-25 23:00:00"));
	test_assert_time(mirror_schedule_prev(&midnight,
		utc("2026-10-24 22:00:00")), utc("2026-10-24 22:00:00"));
	test_end();
}

static void test_mirror_schedule_calendar(void)
{
	struct mirror_schedule sched = test_schedule("00:00", NULL);
	struct mirror_schedule late = test_schedule("23:59:59", NULL);

	test_begin("mirror_schedule: leap day, month and year ends");
	test_assert_time(mirror_schedule_next(&sched,
		utc("2028-02-28 08:00:00")), utc("2028-02-29 08:00:00"));
	test_assert_time(mirror_schedule_next(&sched,
		utc("2028-02-29 08:00:00")), utc("2028-03-01 08:00:00"));
	test_assert_strcmp(mirror_schedule_format_local(&sched,
		utc("2028-02-29 08:00:00")), "2028-02-29 00:00:00 PST");
	test_assert_time(mirror_schedule_prev(&sched,
		utc("2028-03-01 07:59:59")), utc("2028-02-29 08:00:00"));
	/* 2027 has no leap day */
	test_assert_time(mirror_schedule_next(&sched,
		utc("2027-02-28 08:00:00")), utc("2027-03-01 08:00:00"));
	test_assert_time(mirror_schedule_next(&sched,
		utc("2026-12-31 08:00:00")), utc("2027-01-01 08:00:00"));
	test_assert_time(mirror_schedule_prev(&sched,
		utc("2027-01-01 07:59:59")), utc("2026-12-31 08:00:00"));
	test_assert_time(mirror_schedule_next(&late,
		utc("2026-12-31 08:00:00")), utc("2027-01-01 07:59:59"));
	test_assert_strcmp(mirror_schedule_format_local(&late,
		utc("2027-01-01 07:59:59")), "2026-12-31 23:59:59 PST");
	test_assert_time(mirror_schedule_next(&late,
		utc("2027-01-01 07:59:59")), utc("2027-01-02 07:59:59"));
	test_end();
}

static void test_mirror_schedule_edges(void)
{
	struct mirror_schedule sched = test_schedule("00:00", NULL);
	time_t run = utc("2026-11-23 08:00:00");

	test_begin("mirror_schedule: just before, at and after a run");
	test_assert_time(mirror_schedule_next(&sched, run - 1), run);
	test_assert_time(mirror_schedule_prev(&sched, run - 1),
			 run - 24*60*60);
	test_assert_time(mirror_schedule_next(&sched, run), run + 24*60*60);
	test_assert_time(mirror_schedule_prev(&sched, run), run);
	test_assert_time(mirror_schedule_next(&sched, run + 1),
			 run + 24*60*60);
	test_assert_time(mirror_schedule_prev(&sched, run + 1), run);
	test_end();
}

static void test_mirror_schedule_is_due(void)
{
	struct mirror_schedule sched = test_schedule("00:00", NULL);
	time_t run = utc("2026-11-23 08:00:00"), due_run = 0;

	test_begin("mirror_schedule_is_due()");
	/* never run: not due, the first scan is the next scheduled one */
	test_assert(!mirror_schedule_is_due(&sched, 0, run + 3600, &due_run));
	/* ran at the scheduled time (or later): not due until the next */
	test_assert(!mirror_schedule_is_due(&sched, run, run, &due_run));
	test_assert(!mirror_schedule_is_due(&sched, run + 5, run + 3600,
					    &due_run));
	test_assert(!mirror_schedule_is_due(&sched, run, run + 24*60*60 - 1,
					    &due_run));
	/* the last run was before it */
	test_assert(mirror_schedule_is_due(&sched, run - 1, run, &due_run));
	test_assert_time(due_run, run);
	test_assert(mirror_schedule_is_due(&sched, run - 24*60*60, run + 60,
					   &due_run));
	/* missed by three days: due once, for the latest run ... */
	due_run = 0;
	test_assert(mirror_schedule_is_due(&sched, run - 3*24*60*60 + 10,
					   run + 3600, &due_run));
	test_assert_time(due_run, run);
	/* ... and once the scan has run, not again */
	test_assert(!mirror_schedule_is_due(&sched, run + 3600 + 2,
					    run + 3600 + 60, &due_run));
	test_end();
}

static void test_mirror_schedule_tz_restored(void)
{
	struct mirror_schedule sched = test_schedule("00:00", NULL);
	struct tm tm;
	time_t t = utc("2026-07-01 12:00:00");

	test_begin("mirror_schedule: TZ is restored");
	env_put("TZ", ":Asia/Tokyo");
	tzset();
	(void)mirror_schedule_next(&sched, t);
	(void)mirror_schedule_format_local(&sched, t);
	test_assert_strcmp(getenv("TZ"), ":Asia/Tokyo");
	test_assert(localtime_r(&t, &tm) != NULL && tm.tm_hour == 21);
	env_remove("TZ");
	tzset();
	(void)mirror_schedule_prev(&sched, t);
	test_assert(getenv("TZ") == NULL);
	test_end();
}

static void test_mirror_local_month(void)
{
	struct mirror_month month;

	test_begin("mirror_local_month_get()");
	/* the month of a DST change, in the zone */
	mirror_local_month_get("America/Los_Angeles",
			       utc("2026-03-15 12:00:00"), &month);
	test_assert_strcmp(month.name, "2026-03");
	test_assert(month.start == utc("2026-03-01 08:00:00"));
	test_assert(month.end == utc("2026-04-01 07:00:00"));
	test_assert(mirror_month_contains(&month, month.start));
	test_assert(!mirror_month_contains(&month, month.end));
	test_assert(!mirror_month_contains(&month, month.start - 1));
	/* still December in the zone, January in UTC */
	mirror_local_month_get("America/Los_Angeles",
			       utc("2027-01-01 07:59:59"), &month);
	test_assert_strcmp(month.name, "2026-12");
	test_assert(month.end == utc("2027-01-01 08:00:00"));
	test_assert_strcmp(mirror_local_month("America/Los_Angeles",
					      utc("2027-01-01 08:00:00")),
			   "2027-01");
	/* an empty month contains nothing */
	i_zero(&month);
	test_assert(!mirror_month_contains(&month, utc("2026-03-15 12:00:00")));
	test_end();
}

int main(void)
{
	static void (*const test_functions[])(void) = {
		test_mirror_schedule_parse,
		test_mirror_schedule_la_midnight,
		test_mirror_schedule_la_transitions,
		test_mirror_schedule_berlin,
		test_mirror_schedule_calendar,
		test_mirror_schedule_edges,
		test_mirror_schedule_is_due,
		test_mirror_schedule_tz_restored,
		test_mirror_local_month,
		NULL
	};
	return test_run(test_functions);
}
