#ifndef DOVEADM_MIRROR_EXPIRE_H
#define DOVEADM_MIRROR_EXPIRE_H

/* Register `doveadm mirror expire`. Linked into the doveadm_mirror module
   (it uses doveadm-mirror.h). */
void doveadm_mirror_expire_register(void);

#endif
