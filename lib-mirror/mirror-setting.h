#ifndef MIRROR_SETTING_H
#define MIRROR_SETTING_H

struct mail_user;

/* A yes/no plugin setting of user: default_value when unset or empty; an
   invalid value is logged to event and default_value used. */
bool mirror_setting_bool(struct mail_user *user, struct event *event,
			 const char *name, bool default_value);

#endif
