/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* doveadm bag flush: send a bag to its customer's MTA now, through the bag
   service (which sends it as the mail user, as for ETRN) and wait for the
   result. */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "str-sanitize.h"
#include "ioloop.h"
#include "mail-storage-service.h"
#include "doveadm.h"
#include "doveadm-cmd.h"
#include "doveadm-print.h"
#include "doveadm-settings.h"
#include "registry.h"
#include "bag-registry.h"
#include "bag-input.h"
#include "bag-flush-client.h"
#include "doveadm-mirror.h"
#include "doveadm-bag.h"

#include <sysexits.h>

static void cmd_bag_flush(struct doveadm_cmd_context *cctx)
{
	struct registry *reg;
	struct bag_def def;
	struct bag_flush_reply reply;
	const char *domain, *host_str = NULL, *host, *error;
	in_port_t port;

	if ((domain = doveadm_bag_domain_param(cctx)) == NULL)
		return;
	if (doveadm_mirror_param_str(cctx, "host", &host_str) &&
	    bag_host_parse(host_str, &host, &port, &error) < 0) {
		doveadm_mirror_fail(EX_USAGE, error);
		return;
	}
	if ((reg = doveadm_mirror_registry_open()) == NULL)
		return;
	if (!doveadm_bag_get(reg, domain, &def)) {
		registry_deinit(&reg);
		return;
	}
	registry_deinit(&reg);
	if (host_str == NULL && def.host == NULL) {
		doveadm_mirror_fail(EX_USAGE, t_strdup_printf(
			"%s has no ETRN host: say where to send it with -h",
			domain));
		return;
	}

	/* the bag service sends it, as the mail user, as for ETRN */
	if (bag_flush_client_run(doveadm_settings->base_dir, domain, host_str,
				 0, &reply, &error) < 0) {
		doveadm_mirror_fail(EX_TEMPFAIL, t_strdup_printf(
			"Can't reach the bag service: %s", error));
		return;
	}
	switch (reply.status) {
	case BAG_FLUSH_REPLY_BUSY:
		doveadm_mirror_fail(EX_TEMPFAIL, t_strdup_printf(
			"%s is being flushed by another process", domain));
		return;
	case BAG_FLUSH_REPLY_FAIL:
		doveadm_mirror_fail(EX_TEMPFAIL, reply.error);
		return;
	case BAG_FLUSH_REPLY_DONE:
		break;
	}
	if (reply.error != NULL)
		doveadm_mirror_fail(EX_TEMPFAIL, reply.error);
	doveadm_print_init(DOVEADM_PRINT_TYPE_TABLE);
	doveadm_print_header_simple("domain");
	doveadm_print_header_simple("delivered");
	doveadm_print_header_simple("deferred");
	doveadm_print_header_simple("bounced");
	doveadm_print_header_simple("broken");
	doveadm_print_header_simple("error");
	doveadm_print(domain);
	doveadm_print(dec2str(reply.delivered));
	doveadm_print(dec2str(reply.deferred));
	doveadm_print(dec2str(reply.bounced));
	doveadm_print(dec2str(reply.broken));
	doveadm_print(reply.error == NULL ? "" : reply.error);
}

static struct doveadm_cmd_ver2 doveadm_bag_flush_commands[] = {
{
	.name = "bag flush",
	.cmd = cmd_bag_flush,
	.usage = "[-h <host>[:<port>]] <domain>",
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_PARAM('h', "host", CMD_PARAM_STR, 0)
DOVEADM_CMD_PARAM('\0', "domain", CMD_PARAM_STR, CMD_PARAM_FLAG_POSITIONAL)
DOVEADM_CMD_PARAMS_END
},
};

void doveadm_bag_flush_register(void)
{
	unsigned int i;

	for (i = 0; i < N_ELEMENTS(doveadm_bag_flush_commands); i++)
		doveadm_cmd_register_ver2(&doveadm_bag_flush_commands[i]);
}
