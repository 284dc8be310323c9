#ifndef MIRROR_SETTING_H
#define MIRROR_SETTING_H

struct mail_user;
struct mail_user_settings;

/* A yes/no plugin setting of user: default_value when unset or empty; an
   invalid value is logged to event and default_value used. */
bool mirror_setting_bool(struct mail_user *user, struct event *event,
			 const char *name, bool default_value);

/* The same from settings, where there is no mail user (services). */
bool mirror_set_bool(const struct mail_user_settings *set,
		     struct event *event, const char *name,
		     bool default_value);

#endif
