/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* bag: the Mail Bagging service (see bag-service.h). */

#include "lib.h"
#include "ioloop.h"
#include "hostpid.h"
#include "str-sanitize.h"
#include "restrict-access.h"
#include "settings-parser.h"
#include "dict.h"
#include "master-service.h"
#include "master-service-settings.h"
#include "mail-user.h"
#include "mail-storage-service.h"
#include "mirror-log.h"
#include "mirror-registry.h"
#include "bag-registry.h"
#include "bag-store.h"
#include "bag-flush.h"
#include "bag-service.h"

#define BAG_AUTH_SOCKET_DEFAULT "bag-auth"
/* Postfix's minimal_backoff_time and maximal_backoff_time */
#define BAG_BACKUP_RETRY_MIN_DEFAULT_SECS 300
#define BAG_BACKUP_RETRY_MAX_DEFAULT_SECS 4000

struct bag_service bag_service;

int bag_service_registry_open(struct registry **reg_r,
			      const char **error_r)
{
	if (bag_service.dict_uri == NULL) {
		*error_r = "mirror_dict is not set";
		return -1;
	}
	return registry_init(bag_service.dict_uri, bag_service.base_dir,
			     bag_service.event, reg_r, error_r);
}

void bag_service_client_destroyed(void)
{
	master_service_client_connection_destroyed(master_service);
}

static void client_connected(struct master_service_connection *conn)
{
	/* each listener speaks its own protocol */
	master_service_client_connection_accept(conn);
	if (strcmp(conn->name, "etrn") == 0)
		bag_etrn_client_create(conn);
	else if (strcmp(conn->name, "odmr") == 0)
		bag_odmr_client_create(conn);
	else if (strcmp(conn->name, "bag-flush") == 0)
		bag_flush_request_serve(conn);
	else {
		e_error(bag_service.event, "Connection to an unknown listener "
			"'%s' (etrn, odmr or bag-flush)",
			str_sanitize(conn->name, 40));
		i_close_fd(&conn->fd);
		bag_service_client_destroyed();
	}
}

/* A duration setting in seconds; invalid ones are logged and the default
   used. */
static unsigned int
bag_service_time(const struct mail_user_settings *user_set, const char *name,
		 unsigned int default_secs, unsigned int min_secs)
{
	const char *value = mail_user_set_plugin_getenv(user_set, name);
	const char *error;
	unsigned int secs;

	if (value == NULL || *value == '\0')
		return default_secs;
	if (settings_get_time(value, &secs, &error) < 0 || secs < min_secs) {
		e_error(bag_service.event, "Invalid %s '%s': using %u s", name,
			str_sanitize(value, 40), default_secs);
		return default_secs;
	}
	return secs;
}

static void bag_service_settings_init(void)
{
	const struct mail_user_settings *user_set;
	const char *value, *error;
	void **sets;

	mail_storage_service_init_settings(bag_service.storage_service, NULL);
	sets = master_service_settings_get_others(master_service);
	user_set = sets[0];
	bag_service.base_dir = i_strdup(
		master_service_settings_get(master_service)->base_dir);
	bag_service.hostname = i_strdup(my_hostdomain());

	/* copies: the storage service rereads the settings for each user */
	value = mail_user_set_plugin_getenv(user_set, "mirror_dict");
	bag_service.dict_uri = value == NULL || *value == '\0' ? NULL :
		i_strdup(value);
	if (bag_service.dict_uri == NULL) {
		e_error(bag_service.event, "mirror_dict is not set: "
			"no domain is bagged");
	}
	bag_service.timeout_msecs = BAG_TIMEOUT_DEFAULT_SECS * 1000;
	value = mail_user_set_plugin_getenv(user_set, "bag_timeout");
	if (value != NULL && *value != '\0' &&
	    (settings_get_time_msecs(value, &bag_service.timeout_msecs,
				     &error) < 0 ||
	     bag_service.timeout_msecs == 0)) {
		e_error(bag_service.event, "Invalid bag_timeout '%s': using "
			"%u s", str_sanitize(value, 40),
			BAG_TIMEOUT_DEFAULT_SECS);
		bag_service.timeout_msecs = BAG_TIMEOUT_DEFAULT_SECS * 1000;
	}
	value = mail_user_set_plugin_getenv(user_set, "bag_auth_socket");
	if (value == NULL || *value == '\0')
		value = BAG_AUTH_SOCKET_DEFAULT;
	bag_service.auth_socket_path = value[0] == '/' ? i_strdup(value) :
		i_strconcat(bag_service.base_dir, "/", value, NULL);
	bag_service.plaintext_auth = mail_user_set_plugin_getenv_bool(
		user_set, "bag_odmr_plaintext_auth");
	bag_service.retry_min = bag_service_time(user_set,
		"bag_backup_retry_min", BAG_BACKUP_RETRY_MIN_DEFAULT_SECS, 1);
	bag_service.retry_max = bag_service_time(user_set,
		"bag_backup_retry_max", BAG_BACKUP_RETRY_MAX_DEFAULT_SECS, 1);
	if (bag_service.retry_max < bag_service.retry_min)
		bag_service.retry_max = bag_service.retry_min;
	bag_service.delay_warning = bag_service_time(user_set,
		"bag_backup_delay_warning", 0, 0);
}

int main(int argc, char *argv[])
{
	const enum master_service_flags service_flags =
		MASTER_SERVICE_FLAG_DISABLE_SSL_SET |
		MASTER_SERVICE_FLAG_NO_SSL_INIT |
		/* the settings of each bag user are read after the
		   privileges are dropped */
		MASTER_SERVICE_FLAG_KEEP_CONFIG_OPEN;
	const enum mail_storage_service_flags storage_flags =
		MAIL_STORAGE_SERVICE_FLAG_USERDB_LOOKUP |
		MAIL_STORAGE_SERVICE_FLAG_NO_LOG_INIT;

	struct mirror_log_nudge *log_nudge;
	bool backup = FALSE;
	int c;

	master_service = master_service_init("bag", service_flags,
					     &argc, &argv, "b");
	while ((c = master_getopt(master_service)) > 0) {
		if (c == 'b')
			backup = TRUE;
		else
			return FATAL_DEFAULT;
	}
	master_service_init_log(master_service);

	bag_service.event = event_create(NULL);
	/* the process's log prefix is "bag: " already */
	event_add_category(bag_service.event, &event_category_bag);
	dict_drivers_register_builtin();
	bag_service.storage_service =
		mail_storage_service_init(master_service, bag_store_set_roots,
					  storage_flags);
	bag_service_settings_init();
	/* the settings are read: now the service's own user, a mail user
	   and never root */
	restrict_access_by_env(0, NULL);
	restrict_access_allow_coredumps(TRUE);
	master_service_init_finish(master_service);
	/* the settings' errors above may come before the log process reads */
	log_nudge = mirror_log_nudge_start();

	if (backup)
		bag_backup_run();
	else
		master_service_run(master_service, client_connected);
	bag_flush_request_deinit();
	mirror_log_nudge_stop(&log_nudge);

	mail_storage_service_deinit(&bag_service.storage_service);
	dict_drivers_unregister_builtin();
	i_free(bag_service.dict_uri);
	i_free(bag_service.base_dir);
	i_free(bag_service.hostname);
	i_free(bag_service.auth_socket_path);
	event_unref(&bag_service.event);
	master_service_deinit(&master_service);
	return 0;
}
