/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* doveadm mirror schedule [-T UNIX_TIME]: when the expiry scan last ran and
   when it runs next, in UTC and in the schedule's zone. -T computes the
   next run as if it were that time. */

#include "lib.h"
#include "doveadm.h"
#include "doveadm-cmd.h"
#include "doveadm-print.h"
#include "doveadm-settings.h"
#include "mirror-registry.h"
#include "mirror-schedule.h"
#include "doveadm-mirror.h"
#include "mirror-expire-index.h"

#include <sysexits.h>
#include <time.h>

static int mirror_schedule_last_run(time_t *last_run_r)
{
	struct registry *reg;
	const char *error;
	int ret;

	if ((reg = doveadm_mirror_registry_open()) == NULL)
		return -1;
	ret = mirror_registry_expire_last_run(reg, last_run_r, &error);
	registry_deinit(&reg);
	if (ret < 0) {
		doveadm_mirror_fail(EX_TEMPFAIL, error);
		return -1;
	}
	if (ret == 0)
		*last_run_r = 0;
	return 0;
}

static void
mirror_schedule_print_time(const struct mirror_schedule *sched, time_t t)
{
	if (t == 0) {
		doveadm_print("never");
		doveadm_print("never");
	} else {
		doveadm_print(mirror_schedule_format_utc(t));
		doveadm_print(mirror_schedule_format_local(sched, t));
	}
}

static void cmd_mirror_schedule(struct doveadm_cmd_context *cctx)
{
	struct mirror_schedule sched;
	const char *error;
	time_t now, last_run, missed;
	int ret;

	if ((ret = doveadm_mirror_param_time(cctx, "time", &now)) < 0)
		return;
	if (ret == 0)
		now = time(NULL);
	if (mirror_schedule_parse(doveadm_plugin_getenv("mirror_expire_time"),
			doveadm_plugin_getenv("mirror_expire_timezone"),
			pool_datastack_create(), &sched, &error) < 0) {
		doveadm_mirror_fail(EX_CONFIG, error);
		return;
	}
	if (mirror_schedule_last_run(&last_run) < 0)
		return;

	doveadm_print_init(DOVEADM_PRINT_TYPE_PAGER);
	doveadm_print_header_simple("timezone");
	doveadm_print_header_simple("time");
	doveadm_print_header_simple("last_run_utc");
	doveadm_print_header_simple("last_run_local");
	doveadm_print_header_simple("next_run_utc");
	doveadm_print_header_simple("next_run_local");
	/* a scheduled run was missed: the service makes it up when it
	   starts */
	doveadm_print_header_simple("overdue");

	doveadm_print(sched.timezone);
	doveadm_print(mirror_schedule_time_str(&sched));
	mirror_schedule_print_time(&sched, last_run);
	mirror_schedule_print_time(&sched, mirror_schedule_next(&sched, now));
	doveadm_print(mirror_schedule_is_due(&sched, last_run, now, &missed) ?
		      "yes" : "no");
}

static struct doveadm_cmd_ver2 doveadm_mirror_schedule_cmd = {
	.name = "mirror schedule",
	.cmd = cmd_mirror_schedule,
	.usage = "[-T <unix time>]",
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_PARAM('T', "time", CMD_PARAM_STR, 0)
DOVEADM_CMD_PARAMS_END
};

void doveadm_mirror_schedule_register(void)
{
	doveadm_cmd_register_ver2(&doveadm_mirror_schedule_cmd);
}
