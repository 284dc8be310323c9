/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* doveadm mirror access [-s SINCE] ID: who read or changed what in a
   mirror's storage over IMAP and POP3, from its access log
   (mirror-access.h). */

#include "lib.h"
#include "istream.h"
#include "str-sanitize.h"
#include "time-util.h"
#include "mail-storage-service.h"
#include "mail-namespace.h"
#include "mail-storage.h"
#include "doveadm.h"
#include "doveadm-cmd.h"
#include "doveadm-print.h"
#include "mirror-def.h"
#include "mirror-registry.h"
#include "mirror-access.h"
#include "mirror-privileges.h"
#include "doveadm-mirror.h"

#include <sysexits.h>
#include <fcntl.h>

static void access_print_line(const char *path, unsigned int line_num,
			      const char *line, time_t since)
{
	struct mirror_access_record rec;
	const char *error;

	if (mirror_access_record_parse(line, &rec, &error) < 0) {
		i_warning("%s line %u: %s: skipped", path, line_num, error);
		return;
	}
	if (rec.time < since)
		return;
	doveadm_print(t_strfgmtime("%Y-%m-%dT%H:%M:%SZ", rec.time));
	doveadm_print(rec.user);
	doveadm_print(rec.remote_ip);
	doveadm_print(rec.service);
	doveadm_print(rec.session);
	doveadm_print(rec.mailbox);
	doveadm_print(rec.fetched);
	doveadm_print(rec.changed);
	doveadm_print(rec.expunged);
}

/* Print the records of the log at path made at since or later, as the
   storage user. A line longer than any the plugin writes is skipped, with
   a warning, and the rest is read. 0, or -1 with error_r. */
static int access_print(const char *path, time_t since, const char **error_r)
{
	struct istream *input;
	const unsigned char *data, *lf;
	size_t size;
	unsigned int line_num = 0;
	bool skipping = FALSE;
	ssize_t ret;
	int fd;

	fd = open(path, O_RDONLY | O_NOFOLLOW);
	if (fd == -1) {
		if (errno == ENOENT)
			return 0;
		*error_r = t_strdup_printf("open(%s) failed: %m", path);
		return -1;
	}
	input = i_stream_create_fd_autoclose(&fd, MIRROR_ACCESS_LINE_MAX * 2);
	for (;;) {
		data = i_stream_get_data(input, &size);
		lf = memchr(data, '\n', size);
		if (lf == NULL) {
			ret = i_stream_read(input);
			if (ret > 0)
				continue;
			if (ret != -2)
				break;
			/* the buffer is full without a line end */
			if (!skipping) {
				i_warning("%s line %u: longer than %u bytes: "
					  "skipped", path, line_num + 1,
					  MIRROR_ACCESS_LINE_MAX * 2);
				skipping = TRUE;
			}
			i_stream_skip(input, size);
			continue;
		}
		line_num++;
		if (!skipping) T_BEGIN {
			access_print_line(path, line_num,
					  t_strndup(data, lf - data), since);
		} T_END;
		skipping = FALSE;
		i_stream_skip(input, lf - data + 1);
	}
	ret = input->stream_errno != 0 ? -1 : 0;
	if (ret < 0) {
		*error_r = t_strdup_printf("read(%s) failed: %s", path,
					   i_stream_get_error(input));
	}
	i_stream_destroy(&input);
	return ret;
}

static void cmd_mirror_access(struct doveadm_cmd_context *cctx)
{
	struct registry *reg;
	struct mirror_def def;
	struct mail_storage_service_ctx *service;
	struct doveadm_mirror_inbox inbox;
	struct mirror_privileges privs;
	const char *id_str, *root, *error = NULL;
	unsigned int id;
	time_t since = 0;
	bool found;
	int ret;

	if (!doveadm_mirror_param_str(cctx, "id", &id_str)) {
		doveadm_mirror_fail(EX_USAGE, "mirror access: Usage: mirror "
				    "access [-s SINCE] ID");
		return;
	}
	if (!doveadm_mirror_parse_id(id_str, &id) ||
	    doveadm_mirror_param_time(cctx, "since", &since) < 0)
		return;
	if ((reg = doveadm_mirror_registry_open()) == NULL)
		return;
	found = doveadm_mirror_get(reg, id, &def);
	registry_deinit(&reg);
	if (!found)
		return;

	doveadm_print_init(DOVEADM_PRINT_TYPE_TABLE);
	doveadm_print_header_simple("time");
	doveadm_print_header_simple("user");
	doveadm_print_header_simple("ip");
	doveadm_print_header_simple("service");
	doveadm_print_header_simple("session");
	doveadm_print_header_simple("mailbox");
	doveadm_print_header_simple("fetched");
	doveadm_print_header_simple("changed");
	doveadm_print_header_simple("expunged");

	mirror_privileges_get(pool_datastack_create(), &privs);
	service = doveadm_mirror_storage_service_init(NULL);
	ret = doveadm_mirror_inbox_open(service, def.storage, &inbox, &error);
	if (ret > 0) {
		if (!mailbox_list_get_root_path(
				mailbox_get_namespace(inbox.box)->list,
				MAILBOX_LIST_PATH_TYPE_CONTROL, &root)) {
			error = "The storage has no control directory";
			ret = -1;
		} else if (access_print(t_strconcat(root, "/"
				MIRROR_ACCESS_FILE_NAME, NULL), since,
				&error) < 0)
			ret = -1;
	}
	doveadm_mirror_inbox_close(&inbox);
	if (mirror_privileges_set(&privs, &error) < 0)
		i_fatal("%s", error);
	mail_storage_service_deinit(&service);
	if (ret <= 0) {
		doveadm_mirror_fail(ret == 0 ? EX_NOUSER : EX_TEMPFAIL,
				    t_strdup_printf("Mirror %u: %s", id, error));
	}
}

static struct doveadm_cmd_ver2 doveadm_mirror_access_cmd = {
	.name = "mirror access",
	.cmd = cmd_mirror_access,
	.usage = "[-s <since>] <id>",
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_PARAM('s', "since", CMD_PARAM_STR, 0)
DOVEADM_CMD_PARAM('\0', "id", CMD_PARAM_STR, CMD_PARAM_FLAG_POSITIONAL)
DOVEADM_CMD_PARAMS_END
};

void doveadm_mirror_access_register(void)
{
	doveadm_cmd_register_ver2(&doveadm_mirror_access_cmd);
}
