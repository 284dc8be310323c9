#ifndef DOVEADM_MIRROR_H
#define DOVEADM_MIRROR_H

/* What the doveadm mirror commands share (doveadm-mirror.c). */

struct mirror_registry;
struct mail_storage_service_ctx;
struct module;

/* Log error on stderr and set doveadm's exit code. */
void doveadm_mirror_fail(int exit_code, const char *error);
/* Open the registry of mirror_dict, or fail the command (EX_CONFIG if it
   is not set, EX_TEMPFAIL if it can't be opened) and return NULL. */
struct mirror_registry *doveadm_mirror_registry_open(void);

/* A storage service for opening mirror storage users from a command, with
   a temporary privilege drop (restore the identity afterwards with
   mirror_privileges_set()). Deinit keeps this module loaded. */
struct mail_storage_service_ctx *doveadm_mirror_storage_service_init(void);
void doveadm_mirror_storage_service_deinit(struct mail_storage_service_ctx **service);

void doveadm_mirror_plugin_init(struct module *module);

#endif
