/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* Reading the suite's plugin settings (mirror-setting.h). */

#include "lib.h"
#include "str-sanitize.h"
#include "mail-user.h"
#include "mirror-setting.h"

bool mirror_setting_bool(struct mail_user *user, struct event *event,
			 const char *name, bool default_value)
{
	const char *value = mail_user_plugin_getenv(user, name);

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
