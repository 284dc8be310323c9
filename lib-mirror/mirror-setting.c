/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* Reading the suite's plugin settings (mirror-setting.h). */

#include "lib.h"
#include "str-sanitize.h"
#include "mail-user.h"
#include "mirror-setting.h"

static bool
mirror_setting_bool_value(const char *value, struct event *event,
			  const char *name, bool default_value)
{
	if (value == NULL || *value == '\0')
		return default_value;
	if (strcmp(value, "yes") == 0)
		return TRUE;
	if (strcmp(value, "no") == 0)
		return FALSE;
	e_error(event, "Invalid %s=%s (expected yes or no): using %s", name,
		str_sanitize(value, 40), default_value ? "yes" : "no");
	return default_value;
}

bool mirror_setting_bool(struct mail_user *user, struct event *event,
			 const char *name, bool default_value)
{
	return mirror_setting_bool_value(mail_user_plugin_getenv(user, name),
					 event, name, default_value);
}

bool mirror_set_bool(const struct mail_user_settings *set,
		     struct event *event, const char *name,
		     bool default_value)
{
	return mirror_setting_bool_value(
		mail_user_set_plugin_getenv(set, name), event, name,
		default_value);
}
