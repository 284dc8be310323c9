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
   can't make a long sleep miss a run.

   Servers sharing one registry (a fleet on Redis) scan once for all: each
   run is leased in the registry (mirror_registry_expire_lease_take()).
   The server that takes the lease scans and refreshes the lease while
   the scan runs; the others check back now and then until the scan is
   recorded, and take the next attempt when the holder has been silent
   for mirror_expire_lease (it died), or when nobody took the lease (two
   servers lost to each other). */

#include "lib.h"
#include "array.h"
#include "hostpid.h"
#include "ioloop.h"
#include "istream.h"
#include "fd-util.h"
#include "time-util.h"
#include "child-wait.h"
#include "execv-const.h"
#include "restrict-access.h"
#include "settings-parser.h"
#include "str-sanitize.h"
#include "dict.h"
#include "master-interface.h"
#include "master-service.h"
#include "master-service-settings.h"
#include "mirror-log.h"
#include "mirror-registry.h"
#include "mirror-schedule.h"
#include "mirror-expire-index.h"
#include "mirror-expire-lease.h"

#include <unistd.h>
#include <sys/wait.h>

/* Recompute the next run at least this often. */
#define MIRROR_EXPIRE_MAX_SLEEP_SECS (60*60)
/* mirror_expire_lease: a lease holder silent this long has died */
#define MIRROR_EXPIRE_LEASE_DEFAULT_SECS (10*60)
/* the registry couldn't be read at start: try again this often */
#define MIRROR_EXPIRE_START_RETRY_SECS 5
/* lease attempts of a past run whose keys are removed */
#define MIRROR_EXPIRE_LEASE_FORGET_ATTEMPTS 8

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

	/* the fleet's lease: the run it is for, the attempt this server
	   took or lost last (0: none yet) */
	const char *holder;
	unsigned int lease_secs;
	time_t lease_run;
	unsigned int lease_attempt;
	bool lease_held;
	struct timeout *to_refresh;

	struct mirror_log_nudge *log_nudge;

	/* the running scan, and what it logs (doveadm logs to stderr) */
	pid_t pid;
	int log_fd;
	struct istream *log_input;
	struct io *log_io;
	struct child_wait *child_wait;
	/* the run's event, created when it starts: the duration of
	   mirror_expire_run_finished is the run's */
	struct event *run_event;
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
static void mirror_expire_log_input(struct mirror_expire *ctx);

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
	struct registry *reg;
	const char *error;
	int ret;

	if (registry_init(ctx->dict_uri, ctx->base_dir, ctx->event,
				 &reg, &error) < 0) {
		e_error(ctx->event, "Can't read the last scan's time: %s",
			error);
		return -1;
	}
	ret = mirror_registry_expire_last_run(reg, last_r, &error);
	registry_deinit(&reg);
	if (ret < 0) {
		/* once for a run of failures */
		if (registry_failure_begin()) {
			e_error(ctx->event, "Can't read the last scan's time: "
				"%s (trying again; logged once)", error);
		}
	} else if (registry_failure_end()) {
		e_info(ctx->event, "The last scan's time can be read again");
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

static int
mirror_expire_registry(struct mirror_expire *ctx,
		       struct registry **reg_r)
{
	const char *error;

	if (registry_init(ctx->dict_uri, ctx->base_dir, ctx->event,
				 reg_r, &error) < 0) {
		e_error(ctx->event, "Expiry scan lease: %s", error);
		return -1;
	}
	return 0;
}

static void mirror_expire_lease_refresh(struct mirror_expire *ctx)
{
	struct registry *reg;
	const char *error;

	if (mirror_expire_registry(ctx, &reg) < 0)
		return;
	if (mirror_registry_expire_lease_refresh(reg, ctx->lease_run,
						 ctx->lease_attempt,
						 ctx->holder, &error) < 0) {
		e_error(ctx->event, "Can't refresh the lease of the expiry "
			"scan of %s: %s",
			mirror_expire_time_str(ctx, ctx->lease_run), error);
	}
	registry_deinit(&reg);
}

/* The lease of the scan of run: 1 taken (this server scans), 0 another
   server has it (check back later), -1 error (check back later). */
static int mirror_expire_lease(struct mirror_expire *ctx, time_t run)
{
	struct registry *reg;
	const char *holder, *error;
	unsigned int attempt = 0;
	time_t refreshed = 0, now = time(NULL);
	int ret;

	if (ctx->lease_run != run) {
		ctx->lease_run = run;
		ctx->lease_attempt = 0;
	}
	if (mirror_expire_registry(ctx, &reg) < 0)
		return -1;
	if (ctx->lease_attempt > 0) {
		/* lost before: is the holder alive? */
		ret = mirror_registry_expire_lease_holder(reg, run, &attempt,
				&refreshed, &holder, &error);
		if (ret < 0) {
			e_error(ctx->event, "Can't read the lease of the "
				"expiry scan of %s: %s",
				mirror_expire_time_str(ctx, run), error);
			registry_deinit(&reg);
			return -1;
		}
		if (ret > 0 && attempt >= ctx->lease_attempt &&
		    now - refreshed < (time_t)ctx->lease_secs) {
			ctx->lease_attempt = attempt;
			registry_deinit(&reg);
			return 0;
		}
		if (ret > 0) {
			e_warning(ctx->event, "Expiry scan of %s: %s has "
				  "been silent for %ld s: taking it over",
				  mirror_expire_time_str(ctx, run), holder,
				  (long)(now - refreshed));
		}
	}
	ctx->lease_attempt = I_MAX(ctx->lease_attempt, attempt) + 1;
	ret = mirror_registry_expire_lease_take(reg, run, ctx->lease_attempt,
						ctx->holder, &error);
	if (ret < 0) {
		e_error(ctx->event, "Can't take the lease of the expiry scan "
			"of %s: %s", mirror_expire_time_str(ctx, run), error);
	} else if (ret == 0) {
		e_info(ctx->event, "Expiry scan of %s: another server has "
		       "taken it (attempt %u)",
		       mirror_expire_time_str(ctx, run), ctx->lease_attempt);
	}
	registry_deinit(&reg);
	return ret;
}

/* After a scan: the lease keys of the run before are of no more use. */
static void mirror_expire_lease_done(struct mirror_expire *ctx)
{
	struct registry *reg;
	const char *error;
	time_t before;

	timeout_remove(&ctx->to_refresh);
	ctx->lease_held = FALSE;
	before = mirror_schedule_prev(&ctx->sched, ctx->lease_run - 1);
	if (mirror_expire_registry(ctx, &reg) < 0)
		return;
	if (mirror_registry_expire_lease_forget(reg, before,
			MIRROR_EXPIRE_LEASE_FORGET_ATTEMPTS, &error) < 0) {
		e_error(ctx->event, "Can't remove the lease of the expiry "
			"scan of %s: %s",
			mirror_expire_time_str(ctx, before), error);
	}
	registry_deinit(&reg);
}

/* How long a server that lost the lease waits before it looks again:
   jittered, so that two servers that lost to each other don't meet
   again */
static unsigned int mirror_expire_lease_recheck_msecs(struct mirror_expire *ctx)
{
	unsigned int base = I_MAX(I_MIN(ctx->lease_secs / 4, 60U), 1U) * 1000;

	return base + i_rand_limit(base);
}

static void
mirror_expire_exited(const struct child_wait_status *status,
		     struct mirror_expire *ctx)
{
	struct event_passthrough *e;
	struct timeval started;
	long long msecs;

	child_wait_free(&ctx->child_wait);
	ctx->pid = -1;
	if (ctx->log_input != NULL) {
		/* what doveadm logged last, before how it ended */
		i_stream_set_blocking(ctx->log_input, TRUE);
		mirror_expire_log_input(ctx);
	}
	if (ctx->lease_held)
		mirror_expire_lease_done(ctx);
	event_get_create_time(ctx->run_event, &started);
	msecs = timeval_diff_msecs(&ioloop_timeval, &started);
	e = event_create_passthrough(ctx->run_event)->
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
	event_unref(&ctx->run_event);
	/* a scan that outlasted the next scheduled run makes that one run
	   now */
	mirror_expire_check(ctx);
}

/* doveadm's log lines ("Info: ...", "Error: ...") into the service's
   log, at their own level */
static void mirror_expire_log_line(struct mirror_expire *ctx,
				   const char *line)
{
	static const struct {
		const char *prefix;
		enum log_type type;
	} levels[] = {
		{ "Debug: ", LOG_TYPE_DEBUG },
		{ "Info: ", LOG_TYPE_INFO },
		{ "Warning: ", LOG_TYPE_WARNING },
		{ "Error: ", LOG_TYPE_ERROR },
		{ "Fatal: ", LOG_TYPE_ERROR },
		{ "Panic: ", LOG_TYPE_ERROR },
	};
	enum log_type type = LOG_TYPE_ERROR;
	unsigned int i;

	if (*line == '\0')
		return;
	for (i = 0; i < N_ELEMENTS(levels); i++) {
		if (str_begins(line, levels[i].prefix)) {
			type = levels[i].type;
			line += strlen(levels[i].prefix);
			break;
		}
	}
	switch (type) {
	case LOG_TYPE_DEBUG:
		e_debug(ctx->event, "doveadm: %s", line);
		break;
	case LOG_TYPE_INFO:
		e_info(ctx->event, "doveadm: %s", line);
		break;
	case LOG_TYPE_WARNING:
		e_warning(ctx->event, "doveadm: %s", line);
		break;
	default:
		e_error(ctx->event, "doveadm: %s", line);
		break;
	}
}

static void mirror_expire_log_input(struct mirror_expire *ctx)
{
	const char *line;

	while ((line = i_stream_read_next_line(ctx->log_input)) != NULL) T_BEGIN {
		mirror_expire_log_line(ctx, str_sanitize(line, 1024));
	} T_END;
	if (ctx->log_input->eof || ctx->log_input->stream_errno != 0) {
		io_remove(&ctx->log_io);
		i_stream_destroy(&ctx->log_input);
		i_close_fd(&ctx->log_fd);
	}
}

static void
mirror_expire_run(struct mirror_expire *ctx, time_t run_for, bool catch_up)
{
	const char *const argv[] = {
		MIRROR_DOVEADM_PATH, "-c", ctx->config_path,
		"mirror", "expire", NULL
	};
	int fd[2];
	pid_t pid;

	i_assert(ctx->pid == -1);

	if (catch_up) {
		e_info(ctx->event, "Running the missed expiry scan of %s",
		       mirror_expire_time_str(ctx, run_for));
	} else {
		e_info(ctx->event, "Running the expiry scan of %s",
		       mirror_expire_time_str(ctx, run_for));
	}
	if (pipe(fd) < 0) {
		e_error(ctx->event,
			"Expiry scan of %s failed: pipe() failed: %m",
			mirror_expire_time_str(ctx, run_for));
		return;
	}
	pid = fork();
	if (pid < 0) {
		e_error(ctx->event,
			"Expiry scan of %s failed: fork() failed: %m",
			mirror_expire_time_str(ctx, run_for));
		i_close_fd(&fd[0]);
		i_close_fd(&fd[1]);
		return;
	}
	if (pid == 0) {
		/* doveadm must see a standalone start: none of the master's
		   fds or environment, only import_environment. Its log (to
		   stderr) comes to us; its table output is not needed. */
		(void)close(MASTER_ANVIL_FD);
		(void)close(MASTER_STATUS_FD);
		(void)close(MASTER_DEAD_FD);
		if (dup2(fd[1], STDERR_FILENO) < 0)
			i_fatal("dup2() failed: %m");
		(void)close(fd[0]);
		(void)close(fd[1]);
		master_service_env_clean();
		execv_const(argv[0], argv);
	}
	i_close_fd(&fd[1]);
	ctx->log_fd = fd[0];
	fd_close_on_exec(ctx->log_fd, TRUE);
	ctx->log_input = i_stream_create_fd(ctx->log_fd, 8192);
	ctx->log_io = io_add(ctx->log_fd, IO_READ, mirror_expire_log_input,
			     ctx);
	ctx->pid = pid;
	ctx->run_for = run_for;
	ctx->catch_up = catch_up;
	ctx->run_event = event_create(ctx->event);
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
		} else if (mirror_expire_lease(ctx, prev) <= 0) {
			/* another server scans (or the registry is down):
			   look again soon */
			ctx->to = timeout_add(
				mirror_expire_lease_recheck_msecs(ctx),
				mirror_expire_check, ctx);
			return;
		} else {
			/* covered before the scan ends: a failed scan isn't
			   repeated until the next scheduled run */
			ctx->lease_held = TRUE;
			mirror_expire_run(ctx, prev, ctx->missed);
			ctx->covered = prev;
			ctx->missed = FALSE;
			if (ctx->pid != -1) {
				ctx->to_refresh = timeout_add(
					I_MAX(ctx->lease_secs / 3, 1U) * 1000,
					mirror_expire_lease_refresh, ctx);
				return;
			}
			mirror_expire_lease_done(ctx);
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
	if (ret < 0) {
		/* whether a scan was missed can't be known yet: the registry
		   is down, or not set up yet (doveadm mirror init) */
		ctx->to = timeout_add(MIRROR_EXPIRE_START_RETRY_SECS * 1000,
				      mirror_expire_start, ctx);
		return;
	}
	if (ret > 0 && last_run < prev) {
		/* missed: mirror_expire_check() runs it now */
		ctx->covered = last_run;
		ctx->missed = TRUE;
	} else {
		ctx->covered = prev;
	}
	e_info(ctx->event, "Expiry scans at %s %s; last scan: %s; next: %s",
	       mirror_schedule_time_str(&ctx->sched), ctx->sched.timezone,
	       ret > 0 ? mirror_expire_time_str(ctx, last_run) : "never",
	       ctx->covered < prev ? "now (missed)" :
	       mirror_expire_time_str(ctx,
			mirror_schedule_next(&ctx->sched, now)));
	mirror_expire_check(ctx);
}

static void
mirror_expire_init(struct mirror_expire *ctx,
		   const struct mirror_expire_settings *set)
{
	const char *value, *error;

	i_zero(ctx);
	ctx->pool = pool_alloconly_create("mirror-expire", 256);
	ctx->pid = -1;
	ctx->log_fd = -1;
	ctx->event = event_create(NULL);
	event_add_category(ctx->event, &event_category_mirror_expire);
	/* the lines below may come before the log process reads */
	ctx->log_nudge = mirror_log_nudge_start();

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
	value = mirror_expire_plugin_getenv(set, "mirror_expire_lease");
	ctx->lease_secs = MIRROR_EXPIRE_LEASE_DEFAULT_SECS;
	if (value != NULL && *value != '\0' &&
	    (settings_get_time(value, &ctx->lease_secs, &error) < 0 ||
	     ctx->lease_secs == 0)) {
		e_error(ctx->event, "Invalid mirror_expire_lease '%s': "
			"expected a time, e.g. 10 min: no expiry scans run "
			"until the configuration is fixed",
			str_sanitize(value, 40));
		return;
	}
	ctx->holder = p_strdup_printf(ctx->pool, "%s/%s", my_hostname,
				      my_pid);
	/* once the service is up and its log set */
	ctx->to = timeout_add_short(0, mirror_expire_start, ctx);
}

static void mirror_expire_deinit(struct mirror_expire *ctx)
{
	timeout_remove(&ctx->to);
	timeout_remove(&ctx->to_refresh);
	mirror_log_nudge_stop(&ctx->log_nudge);
	io_remove(&ctx->log_io);
	i_stream_destroy(&ctx->log_input);
	i_close_fd(&ctx->log_fd);
	if (ctx->pid != -1) {
		/* the scan is a process of its own: let it finish */
		e_info(ctx->event, "Stopping while the expiry scan of %s runs "
		       "(pid %ld): it is left to finish",
		       mirror_expire_time_str(ctx, ctx->run_for),
		       (long)ctx->pid);
		child_wait_free(&ctx->child_wait);
	}
	if (ctx->run_event != NULL)
		event_unref(&ctx->run_event);
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
