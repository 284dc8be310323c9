/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* doveadm bag usage: each bagged domain's messages and bytes in a month,
   with the tiers and the charge of the soft limits. */

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
#include "bag-usage.h"
#include "mirror-schedule.h"
#include "doveadm-mirror.h"
#include "doveadm-bag.h"

#include <sysexits.h>

static int
doveadm_bag_usage_settings(struct bag_usage_limits *limits_r,
			   const char **timezone_r)
{
	struct mirror_schedule sched;
	const char *error;

	if (bag_usage_limits_parse(doveadm_plugin_getenv("bag_usage_messages"),
				   doveadm_plugin_getenv("bag_usage_bytes"),
				   doveadm_plugin_getenv("bag_usage_tier_price"),
				   limits_r, &error) < 0) {
		doveadm_mirror_fail(EX_CONFIG, error);
		return -1;
	}
	if (mirror_schedule_parse(NULL,
				  doveadm_plugin_getenv("bag_usage_timezone"),
				  pool_datastack_create(), &sched,
				  &error) < 0) {
		doveadm_mirror_fail(EX_CONFIG, t_strdup_printf(
			"bag_usage_timezone: %s", error));
		return -1;
	}
	*timezone_r = sched.timezone;
	return 0;
}

static void cmd_bag_usage(struct doveadm_cmd_context *cctx)
{
	struct registry *reg;
	struct bag_usage_limits limits;
	ARRAY_TYPE(const_string) domains;
	ARRAY_TYPE(bag_def) defs;
	const struct bag_def *d;
	const char *domain_str, *domain, *month = NULL, *timezone, *error;
	uint64_t messages, bytes;
	int ret;

	t_array_init(&domains, 16);
	if (doveadm_mirror_param_str(cctx, "domain", &domain_str)) {
		if (bag_domain_parse(domain_str, &domain, &error) < 0) {
			doveadm_mirror_fail(EX_USAGE, error);
			return;
		}
		array_push_back(&domains, &domain);
	}
	if (doveadm_mirror_param_str(cctx, "month", &month) &&
	    !bag_usage_month_is_valid(month)) {
		doveadm_mirror_fail(EX_USAGE, t_strdup_printf(
			"Invalid month '%s' (YYYY-MM)",
			str_sanitize(month, 20)));
		return;
	}
	if (doveadm_bag_usage_settings(&limits, &timezone) < 0)
		return;
	if (month == NULL)
		month = mirror_local_month(timezone, ioloop_time);
	if ((reg = doveadm_mirror_registry_open()) == NULL)
		return;
	if (array_count(&domains) == 0) {
		t_array_init(&defs, 16);
		if (bag_registry_list(reg, pool_datastack_create(), &defs,
				      &error) < 0) {
			doveadm_mirror_fail(EX_TEMPFAIL, error);
			registry_deinit(&reg);
			return;
		}
		array_foreach(&defs, d)
			array_push_back(&domains, &d->domain);
	}
	doveadm_print_init(DOVEADM_PRINT_TYPE_TABLE);
	doveadm_print_header_simple("domain");
	doveadm_print_header_simple("month");
	doveadm_print_header_simple("messages");
	doveadm_print_header_simple("bytes");
	doveadm_print_header_simple("tiers");
	doveadm_print_header_simple("charge");
	array_foreach_elem(&domains, domain) {
		ret = bag_registry_usage_get(reg, domain, month, &messages,
					     &bytes, &error);
		if (ret < 0) {
			doveadm_mirror_fail(EX_TEMPFAIL, error);
			break;
		}
		doveadm_print(domain);
		doveadm_print(month);
		doveadm_print(dec2str(messages));
		doveadm_print(dec2str(bytes));
		doveadm_print(dec2str(bag_usage_tiers(&limits, messages,
						      bytes)));
		doveadm_print(dec2str(bag_usage_charge(&limits, messages,
						       bytes)));
	}
	registry_deinit(&reg);
}

static struct doveadm_cmd_ver2 doveadm_bag_usage_commands[] = {
{
	.name = "bag usage",
	.cmd = cmd_bag_usage,
	.usage = "[-m <YYYY-MM>] [<domain>]",
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_PARAM('m', "month", CMD_PARAM_STR, 0)
DOVEADM_CMD_PARAM('\0', "domain", CMD_PARAM_STR, CMD_PARAM_FLAG_POSITIONAL)
DOVEADM_CMD_PARAMS_END
},
};

void doveadm_bag_usage_register(void)
{
	unsigned int i;

	for (i = 0; i < N_ELEMENTS(doveadm_bag_usage_commands); i++)
		doveadm_cmd_register_ver2(&doveadm_bag_usage_commands[i]);
}
