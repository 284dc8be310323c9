#ifndef DOVEADM_BAG_H
#define DOVEADM_BAG_H

/* What the doveadm bag commands share (doveadm-bag.c). */

#include "bag-def.h"

struct doveadm_cmd_context;
struct registry;

/* Fail the command with its usage line. */
void doveadm_bag_usage(struct doveadm_cmd_context *cctx);
/* The DOMAIN parameter, normalized; fails the command if missing or
   invalid. */
const char *doveadm_bag_domain_param(struct doveadm_cmd_context *cctx);
/* The bag of domain into def (from the data stack), or FALSE with the
   command failed. */
bool doveadm_bag_get(struct registry *reg, const char *domain,
		     struct bag_def *def_r);
/* 1 if name has no login record and no userdb user, 0 if taken, -1 with
   the command failed. */
int doveadm_bag_name_free(struct registry *reg, const char *name);
/* Print a login just given a new password (its only showing). */
void doveadm_bag_print_login(const char *user, const char *password);

#endif
