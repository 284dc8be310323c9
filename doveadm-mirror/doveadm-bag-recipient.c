/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* doveadm bag recipient add|remove|list|clear: a bag's recipient list, and
   the boxes of a POP3 connector with a box per account. */

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
#include "doveadm-mirror.h"
#include "doveadm-bag.h"

#include <sysexits.h>
#include <sodium.h>

/* Boxes for new recipients of a bag with a box per account: created with
   a password, shown once (passwords_r: one per address, "" if the box
   existed). */
static int
doveadm_bag_boxes_add(struct registry *reg, const struct bag_def *def,
		      const ARRAY_TYPE(const_string) *addrs,
		      ARRAY_TYPE(const_string) *passwords_r)
{
	const char *addr, *user, *hash, *old, *error, *none = "";
	char *password;
	int ret;

	array_foreach_elem(addrs, addr) {
		if (addr == NULL)
			break;
		ret = bag_registry_box_get(reg, def->domain, addr, &old,
					   &error);
		if (ret < 0) {
			doveadm_mirror_fail(EX_TEMPFAIL, error);
			return -1;
		}
		if (ret > 0) {
			array_push_back(passwords_r, &none);
			continue;
		}
		user = bag_box_user_name(addr);
		if ((ret = doveadm_bag_name_free(reg, user)) <= 0) {
			if (ret == 0) {
				doveadm_mirror_fail(DOVEADM_EX_NOTPOSSIBLE,
					t_strdup_printf("The box name %s of %s "
							"is taken", user,
							addr));
			}
			return -1;
		}
		if (doveadm_mirror_password_new(
				DOVEADM_MIRROR_PASSWORD_ARGON2ID, &password,
				&hash) < 0)
			return -1;
		if (bag_registry_box_add(reg, def->domain, addr, user, hash,
					 &error) < 0) {
			doveadm_mirror_fail(EX_TEMPFAIL, error);
			sodium_memzero(password, strlen(password));
			return -1;
		}
		/* the data stack copy is printed, then wiped with the rest
		   when the command ends */
		array_push_back(passwords_r, (const char **)&password);
	}
	return 0;
}

static void cmd_bag_recipient(struct doveadm_cmd_context *cctx)
{
	struct registry *reg;
	ARRAY_TYPE(const_string) addrs, added, passwords, box_addrs, box_users;
	struct bag_def def;
	const char *const *args = NULL, *domain, *addr, *box, *error;
	const char *verb = strrchr(cctx->cmd->name, ' ') + 1;
	bool list = strcmp(verb, "list") == 0;
	bool clear = strcmp(verb, "clear") == 0;
	bool add = strcmp(verb, "add") == 0;
	unsigned int i, j;
	int ret = 0;

	if ((domain = doveadm_bag_domain_param(cctx)) == NULL)
		return;
	t_array_init(&addrs, 16);
	t_array_init(&passwords, 16);
	t_array_init(&box_addrs, 16);
	t_array_init(&box_users, 16);
	if (!list && !clear) {
		if (!doveadm_cmd_param_array(cctx, "address", &args) ||
		    args[0] == NULL) {
			doveadm_bag_usage(cctx);
			return;
		}
		for (; *args != NULL; args++) {
			if (bag_rcpt_parse(*args, domain, &addr, &error) < 0) {
				doveadm_mirror_fail(EX_USAGE, error);
				return;
			}
			array_push_back(&addrs, &addr);
		}
		array_append_zero(&addrs);
	}
	reg = list ? doveadm_mirror_registry_open() :
		doveadm_mirror_registry_open_locked();
	if (reg == NULL)
		return;
	if (!doveadm_bag_get(reg, domain, &def)) {
		registry_deinit(&reg);
		return;
	}
	t_array_init(&added, 16);
	array_append_array(&added, &addrs);
	if (add && def.pop3_per_account &&
	    doveadm_bag_boxes_add(reg, &def, &added, &passwords) < 0) {
		registry_deinit(&reg);
		return;
	}
	if (clear)
		ret = bag_registry_rcpt_clear(reg, &def, &error);
	else if (!list) {
		ret = bag_registry_rcpt_update(reg, &def, array_front(&addrs),
					       add, &error);
	}
	if (ret == 0) {
		array_clear(&addrs);
		ret = bag_registry_rcpt_list(reg, domain,
					     pool_datastack_create(), &addrs,
					     &error);
	}
	if (ret == 0 && def.pop3_per_account) {
		ret = bag_registry_box_list(reg, domain,
					    pool_datastack_create(),
					    &box_addrs, &box_users, &error);
	}
	registry_deinit(&reg);
	if (ret < 0) {
		doveadm_mirror_fail(EX_TEMPFAIL, error);
		return;
	}
	doveadm_print_init(DOVEADM_PRINT_TYPE_TABLE);
	doveadm_print_header_simple("domain");
	doveadm_print_header_simple("recipient");
	doveadm_print_header_simple("box");
	doveadm_print_header_simple("password");
	for (i = 0; i < array_count(&addrs); i++) {
		addr = array_idx_elem(&addrs, i);
		box = "";
		for (j = 0; j < array_count(&box_addrs); j++) {
			if (strcmp(array_idx_elem(&box_addrs, j), addr) == 0)
				box = array_idx_elem(&box_users, j);
		}
		doveadm_print(domain);
		doveadm_print(addr);
		doveadm_print(box);
		for (j = 0; j < array_count(&passwords); j++) {
			if (strcmp(array_idx_elem(&added, j), addr) == 0)
				break;
		}
		doveadm_print(j < array_count(&passwords) ?
			      array_idx_elem(&passwords, j) : "");
	}
	for (j = 0; j < array_count(&passwords); j++) {
		const char *pw = array_idx_elem(&passwords, j);

		sodium_memzero((void *)pw, strlen(pw));
	}
}

static struct doveadm_cmd_ver2 doveadm_bag_recipient_commands[] = {
{
	.name = "bag recipient add",
	.cmd = cmd_bag_recipient,
	.usage = "<domain> <address> [...]",
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_PARAM('\0', "domain", CMD_PARAM_STR, CMD_PARAM_FLAG_POSITIONAL)
DOVEADM_CMD_PARAM('\0', "address", CMD_PARAM_ARRAY, CMD_PARAM_FLAG_POSITIONAL)
DOVEADM_CMD_PARAMS_END
},
{
	.name = "bag recipient remove",
	.cmd = cmd_bag_recipient,
	.usage = "<domain> <address> [...]",
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_PARAM('\0', "domain", CMD_PARAM_STR, CMD_PARAM_FLAG_POSITIONAL)
DOVEADM_CMD_PARAM('\0', "address", CMD_PARAM_ARRAY, CMD_PARAM_FLAG_POSITIONAL)
DOVEADM_CMD_PARAMS_END
},
{
	.name = "bag recipient list",
	.cmd = cmd_bag_recipient,
	.usage = "<domain>",
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_PARAM('\0', "domain", CMD_PARAM_STR, CMD_PARAM_FLAG_POSITIONAL)
DOVEADM_CMD_PARAMS_END
},
{
	.name = "bag recipient clear",
	.cmd = cmd_bag_recipient,
	.usage = "<domain>",
DOVEADM_CMD_PARAMS_START
DOVEADM_CMD_PARAM('\0', "domain", CMD_PARAM_STR, CMD_PARAM_FLAG_POSITIONAL)
DOVEADM_CMD_PARAMS_END
},
};

void doveadm_bag_recipient_register(void)
{
	unsigned int i;

	for (i = 0; i < N_ELEMENTS(doveadm_bag_recipient_commands); i++)
		doveadm_cmd_register_ver2(&doveadm_bag_recipient_commands[i]);
}
