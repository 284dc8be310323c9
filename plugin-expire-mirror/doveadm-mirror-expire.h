#ifndef DOVEADM_MIRROR_EXPIRE_H
#define DOVEADM_MIRROR_EXPIRE_H

/* Register `doveadm mirror expire`. Linked into the doveadm_mirror module,
   whose init function is given so that the command can keep that module
   loaded while it runs (see doveadm-mirror-verify.c). */
void doveadm_mirror_expire_register(void (*module_init)(struct module *));

#endif
