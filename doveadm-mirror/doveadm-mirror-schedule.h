#ifndef DOVEADM_MIRROR_SCHEDULE_H
#define DOVEADM_MIRROR_SCHEDULE_H

/* Register `doveadm mirror schedule`. */
void doveadm_mirror_schedule_register(void);

#endif
