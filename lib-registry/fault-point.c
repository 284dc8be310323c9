/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* Fault points of test builds (fault-point.h). Compiled to nothing unless
   configure was given --enable-fault-points. */

#include "lib.h"
#include "fault-point.h"

#ifdef FAULT_POINTS

#include "array.h"
#include "strnum.h"
#include "str-sanitize.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#define FAULT_POINT_ENV "MIRROR_FAULT_AT"
#define FAULT_POINT_SPEC_MAX 128

struct fault_point_count {
	char *name;
	unsigned int count;
};

/* how often this process reached each point (there are few) */
static ARRAY(struct fault_point_count) fault_point_counts;

static unsigned int fault_point_reached(const char *name)
{
	struct fault_point_count *fc;

	if (!array_is_created(&fault_point_counts))
		i_array_init(&fault_point_counts, 8);
	array_foreach_modifiable(&fault_point_counts, fc) {
		if (strcmp(fc->name, name) == 0)
			return ++fc->count;
	}
	fc = array_append_space(&fault_point_counts);
	fc->name = i_strdup(name);
	fc->count = 1;
	return 1;
}

/* The armed point, NAME[:N], from the environment or its file. */
static const char *fault_point_spec(const char **path_r)
{
	const char *env = getenv(FAULT_POINT_ENV);
	char buf[FAULT_POINT_SPEC_MAX];
	ssize_t ret;
	int fd;

	*path_r = NULL;
	if (env == NULL || *env == '\0')
		return NULL;
	if (*env != '/')
		return env;
	fd = open(env, O_RDONLY);
	if (fd == -1)
		return NULL;
	ret = read(fd, buf, sizeof(buf) - 1);
	i_close_fd(&fd);
	if (ret <= 0)
		return NULL;
	buf[ret] = '\0';
	*path_r = env;
	return t_strcut(t_strdup(buf), '\n');
}

void fault_point(const char *name)
{
	const char *spec, *path, *count_str;
	unsigned int want = 1, count;

	spec = fault_point_spec(&path);
	if (spec == NULL)
		return;
	count_str = strchr(spec, ':');
	if (count_str != NULL) {
		if (str_to_uint(count_str + 1, &want) < 0 || want == 0)
			return;
		spec = t_strdup_until(spec, count_str);
	}
	if (strcmp(spec, name) != 0)
		return;

	count = fault_point_reached(name);
	if (count != want)
		return;

	if (path != NULL && unlink(path) < 0)
		i_error("unlink(%s) failed: %m", path);
	i_warning("Fault point %s (%u): killing this process",
		  str_sanitize(name, 64), count);
	(void)kill(getpid(), SIGKILL);
	/* SIGKILL can't be caught: not reached */
	i_unreached();
}

#endif
