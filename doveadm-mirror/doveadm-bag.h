#ifndef DOVEADM_BAG_H
#define DOVEADM_BAG_H

/* The doveadm bag commands (doveadm-bag.c), registered by the doveadm
   mirror module. */
void doveadm_bag_register(void);

#endif
