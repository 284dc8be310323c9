#ifndef DOVEADM_MIRROR_VERIFY_H
#define DOVEADM_MIRROR_VERIFY_H

/* Register `doveadm mirror verify`. */
void doveadm_mirror_verify_register(void);

#endif
