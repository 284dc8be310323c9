/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* mirror-expire: the Dovecot service that runs the expiry scan on schedule.

   One process without listeners (service mirror-expire { process_limit = 1
   process_min_avail = 1 }): it sleeps until the next run of the schedule
   (mirror_expire_time in mirror_expire_timezone), then runs
   `doveadm -c CONFIG mirror expire` and logs how it ended. The scan itself
   does the work and, when it succeeds, records its time in the registry
   (expire-last-run); this process only reads that.

   When the service starts and the last recorded scan is older than the
   latest scheduled run, that run was missed (the server was down) and the
   scan runs at once, one time however many runs were missed. With no scan
   recorded at all (a new installation) nothing is made up: the first scan
   is the next scheduled one.

   The sleep is cut into pieces of at most an hour, and the schedule
   recomputed after each, so that setting the clock or suspending the host
   can't make a long sleep miss a run. */

#include "lib.h"
#include "array.h"
#include "ioloop.h"
#include "time-util.h"
#include "child-wait.h"
#include "execv-const.h"
#include "restrict-access.h"
#include "settings-parser.h"
#include "dict.h"
#include "master-interface.h"
#include "master-service.h"
#include "master-service-settings.h"
#include "mirror-registry.h"
#include "mirror-schedule.h"

#include <unistd.h>
#include <sys/wait.h>

/* Recompute the next run at least this often. */
#define MIRROR_EXPIRE_MAX_SLEEP_SECS (60*60)

struct mirror_expire_settings {
	ARRAY(const char *) plugin_envs;
};

struct mirror_expire {
	pool_t pool;
	struct event *event;
	struct mirror_schedule sched;
	/* NULL: mirroring isn't configured */
	const char *dict_uri;
	const char *base_dir;
	const char *config_path;

	/* the latest scheduled run that has been taken care of: scanned,
	   or found scanned already */
	time_t covered;
	/* the latest scheduled run was missed while the service was down */
	bool missed;
	struct timeout *to;

	/* the running scan */
	pid_t pid;
	struct child_wait *child_wait;
	struct timeval started;
	time_t run_for;
	bool catch_up;
};

static const struct setting_define mirror_expire_setting_defines[] = {
	{ .type = SET_STRLIST, .key = "plugin",
	  .offset = offsetof(struct mirror_expire_settings, plugin_envs) },
	SETTING_DEFINE_LIST_END
};

static const struct mirror_expire_settings mirror_expire_default_settings = {
	.plugin_envs = ARRAY_INIT
};

static const struct setting_parser_info mirror_expire_setting_parser_info = {
	.module_name = "mirror-expire",
	.defines = mirror_expire_setting_defines,
	.defaults = &mirror_expire_default_settings,

	.type_offset = SIZE_MAX,
	.struct_size = sizeof(struct mirror_expire_settings),

	.parent_offset = SIZE_MAX,
};

static struct event_category event_category_mirror_expire = {
	.name = "mirror_expire",
};

static struct mirror_expire mirror_expire;

static void mirror_expire_check(struct mirror_expire *ctx);

static const char *
mirror_expire_plugin_getenv(const struct mirror_expire_settings *set,
			    const char *name)
{
	const char *const *envs;
	unsigned int i, count;

	if (!array_is_created(&set->plugin_envs))
		return NULL;
	envs = array_get(&set->plugin_envs, &count);
	for (i = 0; i + 1 < count; i += 2) {
		if (strcmp(envs[i], name) == 0)
			return envs[i+1];
	}
	return NULL;
}

static const struct mirror_expire_settings *mirror_expire_settings_read(void)
{
	static const struct setting_parser_info *set_roots[] = {
		&mirror_expire_setting_parser_info,
		NULL
	};
	struct master_service_settings_input input;
	struct master_service_settings_output output;
	const char *error;
	void **sets;

	i_zero(&input);
	input.roots = set_roots;
	/* plugin { } belongs to the mail settings: ask for those, and
	   ignore all but plugin { } */
	input.module = "mail";
	input.service = "mirror-expire";
	if (master_service_settings_read(master_service, &input, &output,
					 &error) < 0)
		i_fatal("Error reading configuration: %s", error);
	sets = master_service_settings_get_others(master_service);
	return sets[0];
}

/* 1 with the time of the last completed scan, 0 if there was none, -1 if
   the registry can't be read. */
static int mirror_expire_last_run(struct mirror_expire *ctx, time_t *last_r)
{
	struct mirror_registry *reg;
	const char *error;
	int ret;

	if (mirror_registry_init(ctx->dict_uri, ctx->base_dir, ctx->event,
				 &reg, &error) < 0) {
		e_error(ctx->event, "Can't read the last scan's time: %s",
			error);
		return -1;
	}
	ret = mirror_registry_expire_last_run(reg, last_r, &error);
	mirror_registry_deinit(&reg);
	if (ret < 0) {
		e_error(ctx->event, "Can't read the last scan's time: %s",
			error);
	}
	return ret;
}

static const char *
mirror_expire_time_str(struct mirror_expire *ctx, time_t t)
{
	return t_strdup_printf("%s (%s)",
			       mirror_schedule_format_local(&ctx->sched, t),
			       mirror_schedule_format_utc(t));
}

static void
mirror_expire_exited(const struct child_wait_status *status,
		     struct mirror_expire *ctx)
{
	struct event_passthrough *e;
	long long msecs;

	child_wait_free(&ctx->child_wait);
	ctx->pid = -1;
	msecs = timeval_diff_msecs(&ioloop_timeval, &ctx->started);
	e = event_create_passthrough(ctx->event)->
		set_name("mirror_expire_run_finished")->
		add_int("scheduled", ctx->run_for)->
		add_str("catch_up", ctx->catch_up ? "yes" : "no")->
		add_int("duration_msecs", msecs);
	if (WIFEXITED(status->status) && WEXITSTATUS(status->status) == 0) {
		e_info(e->add_int("exit_code", 0)->event(),
		       "Expiry scan of %s finished in %lld.%03lld s",
		       mirror_expire_time_str(ctx, ctx->run_for),
		       msecs / 1000, msecs % 1000);
	} else if (WIFEXITED(status->status)) {
		e->add_int("exit_code", WEXITSTATUS(status->status));
		e->add_str("error", "exit code");
		e_error(e->event(), "Expiry scan of %s failed: "
			"doveadm mirror expire exited with status %d",
			mirror_expire_time_str(ctx, ctx->run_for),
			WEXITSTATUS(status->status));
	} else if (WIFSIGNALED(status->status)) {
		e->add_str("error", "signal");
		e_error(e->event(), "Expiry scan of %s failed: "
			"doveadm mirror expire was killed by signal %d",
			mirror_expire_time_str(ctx, ctx->run_for),
			WTERMSIG(status->status));
	} else {
		e->add_str("error", "status");
		e_error(e->event(), "Expiry scan of %s failed: "
			"doveadm mirror expire ended with status %d",
			mirror_expire_time_str(ctx, ctx->run_for),
			status->status);
	}
	/* a scan that outlasted the next scheduled run makes that one run
	   now */
	mirror_expire_check(ctx);
}

static void
mirror_expire_run(struct mirror_expire *ctx, time_t run_for, bool catch_up)
{
	const char *const argv[] = {
		MIRROR_DOVEADM_PATH, "-c", ctx->config_path,
		"mirror", "expire", NULL
	};
	pid_t pid;

	i_assert(ctx->pid == -1);

	if (catch_up) {
		e_info(ctx->event, "Running the missed expiry scan of %s",
		       mirror_expire_time_str(ctx, run_for));
	} else {
		e_info(ctx->event, "Running the expiry scan of %s",
		       mirror_expire_time_str(ctx, run_for));
	}
	pid = fork();
	if (pid < 0) {
		e_error(ctx->event,
			"Expiry scan of %s failed: fork() failed: %m",
			mirror_expire_time_str(ctx, run_for));
		return;
	}
	if (pid == 0) {
		/* doveadm must see a standalone start: none of the master's
		   fds or environment, only import_environment */
		(void)close(MASTER_ANVIL_FD);
		(void)close(MASTER_STATUS_FD);
		(void)close(MASTER_DEAD_FD);
		master_service_env_clean();
		execv_const(argv[0], argv);
	}
	ctx->pid = pid;
	ctx->run_for = run_for;
	ctx->catch_up = catch_up;
	ctx->started = ioloop_timeval;
	ctx->child_wait = child_wait_new_with_pid(pid, mirror_expire_exited,
						  ctx);
}

static void mirror_expire_check(struct mirror_expire *ctx)
{
	time_t now, prev, next, last_run;
	unsigned int secs;

	timeout_remove(&ctx->to);
	if (ctx->pid != -1) {
		/* checked again when it ends */
		return;
	}
	now = time(NULL);
	prev = mirror_schedule_prev(&ctx->sched, now);
	if (prev > ctx->covered) {
		/* another server sharing the registry, or an administrator,
		   may have run the scan since */
		if (mirror_expire_last_run(ctx, &last_run) > 0 &&
		    last_run >= prev) {
			e_info(ctx->event, "Expiry scan of %s: already done "
			       "at %s", mirror_expire_time_str(ctx, prev),
			       mirror_schedule_format_utc(last_run));
			ctx->covered = prev;
			ctx->missed = FALSE;
		} else {
			/* covered before the scan ends: a failed scan isn't
			   repeated until the next scheduled run */
			mirror_expire_run(ctx, prev, ctx->missed);
			ctx->covered = prev;
			ctx->missed = FALSE;
			if (ctx->pid != -1)
				return;
		}
	}
	next = mirror_schedule_next(&ctx->sched, now);
	secs = (unsigned int)I_MIN(next - now, MIRROR_EXPIRE_MAX_SLEEP_SECS);
	ctx->to = timeout_add(secs * 1000, mirror_expire_check, ctx);
}

static void mirror_expire_start(struct mirror_expire *ctx)
{
	time_t now = time(NULL), prev, last_run = 0;
	int ret;

	timeout_remove(&ctx->to);
	prev = mirror_schedule_prev(&ctx->sched, now);
	ret = mirror_expire_last_run(ctx, &last_run);
	if (ret > 0 && last_run < prev) {
		/* missed: mirror_expire_check() runs it now */
		ctx->covered = last_run;
		ctx->missed = TRUE;
	} else {
		ctx->covered = prev;
	}
	e_info(ctx->event, "Expiry scans at %s %s; last scan: %s; next: %s",
	       mirror_schedule_time_str(&ctx->sched), ctx->sched.timezone,
	       ret > 0 ? mirror_expire_time_str(ctx, last_run) :
	       (ret == 0 ? "never" : "unknown"),
	       ctx->covered < prev ? "now (missed)" :
	       mirror_expire_time_str(ctx,
			mirror_schedule_next(&ctx->sched, now)));
	mirror_expire_check(ctx);
}

static void
mirror_expire_init(struct mirror_expire *ctx,
		   const struct mirror_expire_settings *set)
{
	const char *error;

	i_zero(ctx);
	ctx->pool = pool_alloconly_create("mirror-expire", 256);
	ctx->pid = -1;
	ctx->event = event_create(NULL);
	event_add_category(ctx->event, &event_category_mirror_expire);

	ctx->base_dir = master_service_settings_get(master_service)->base_dir;
	ctx->config_path = master_service_get_config_path(master_service);
	ctx->dict_uri = mirror_expire_plugin_getenv(set, "mirror_dict");
	if (ctx->dict_uri == NULL || *ctx->dict_uri == '\0') {
		e_info(ctx->event, "mirror_dict is not set: mirroring is not "
		       "configured, no expiry scans run");
		return;
	}
	if (mirror_schedule_parse(
			mirror_expire_plugin_getenv(set, "mirror_expire_time"),
			mirror_expire_plugin_getenv(set,
				"mirror_expire_timezone"),
			ctx->pool, &ctx->sched, &error) < 0) {
		/* the service stays up doing nothing: a restart can't fix
		   the configuration, `doveadm reload` after fixing it does */
		e_error(ctx->event, "%s: no expiry scans run until the "
			"configuration is fixed", error);
		return;
	}
	/* once the service is up and its log set */
	ctx->to = timeout_add_short(0, mirror_expire_start, ctx);
}

static void mirror_expire_deinit(struct mirror_expire *ctx)
{
	timeout_remove(&ctx->to);
	if (ctx->pid != -1) {
		/* the scan is a process of its own: let it finish */
		e_info(ctx->event, "Stopping while the expiry scan of %s runs "
		       "(pid %ld): it is left to finish",
		       mirror_expire_time_str(ctx, ctx->run_for),
		       (long)ctx->pid);
		child_wait_free(&ctx->child_wait);
	}
	event_unref(&ctx->event);
	pool_unref(&ctx->pool);
}

int main(int argc, char *argv[])
{
	const enum master_service_flags service_flags =
		MASTER_SERVICE_FLAG_DISABLE_SSL_SET |
		MASTER_SERVICE_FLAG_NO_SSL_INIT;
	const struct mirror_expire_settings *set;

	master_service = master_service_init("mirror-expire", service_flags,
					     &argc, &argv, "");
	if (master_getopt(master_service) > 0)
		return FATAL_DEFAULT;
	set = mirror_expire_settings_read();
	master_service_init_log(master_service);
	restrict_access_by_env(RESTRICT_ACCESS_FLAG_ALLOW_ROOT, NULL);
	restrict_access_allow_coredumps(TRUE);

	dict_drivers_register_builtin();
	child_wait_init();
	mirror_expire_init(&mirror_expire, set);
	master_service_init_finish(master_service);

	master_service_run(master_service, NULL);

	mirror_expire_deinit(&mirror_expire);
	child_wait_deinit();
	dict_drivers_unregister_builtin();
	master_service_deinit(&master_service);
	return 0;
}
