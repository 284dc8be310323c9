/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* bag: the Mail Bagging services (see bag-service.h). */

#include "lib.h"
#include "ioloop.h"
#include "hash.h"
#include "hostpid.h"
#include "write-full.h"
#include "str-sanitize.h"
#include "restrict-access.h"
#include "settings-parser.h"
#include "dict.h"
#include "master-service.h"
#include "master-service-settings.h"
#include "master-service-ssl-settings.h"
#include "mail-user.h"
#include "mail-storage-service.h"
#include "mirror-log.h"
#include "mirror-registry.h"
#include "bag-registry.h"
#include "bag-store.h"
#include "bag-flush.h"
#include "bag-service.h"

#define BAG_AUTH_SOCKET_DEFAULT "bag-auth"
#define BAG_CRAM_MD5_AUTH_SOCKET_DEFAULT "bag-cram-md5"
/* Postfix's minimal_backoff_time and maximal_backoff_time */
#define BAG_BACKUP_RETRY_MIN_DEFAULT_SECS 300
#define BAG_BACKUP_RETRY_MAX_DEFAULT_SECS 4000
/* Postfix's smtpd_timeout under stress (smtpd_timeout = ${stress?10}) */
#define BAG_FIRST_COMMAND_TIMEOUT_DEFAULT_SECS 10
#define BAG_MAX_CONNECTIONS_PER_IP_DEFAULT 10

enum bag_service_mode {
	BAG_SERVICE_LISTENERS = 0,
	BAG_SERVICE_FLUSH,
	BAG_SERVICE_BACKUP,
};

struct bag_service bag_service;

/* Connections per client address (the listeners) */
static HASH_TABLE(struct ip_addr *, void *) bag_service_ips;

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

static unsigned int bag_service_ip_count(const struct ip_addr *ip)
{
	void *value;

	if (!hash_table_is_created(bag_service_ips))
		return 0;
	value = hash_table_lookup(bag_service_ips, ip);
	return POINTER_CAST_TO(value, unsigned int);
}

static void bag_service_ip_add(const struct ip_addr *ip, int diff)
{
	struct ip_addr *key;
	void *value;
	unsigned int count;

	if (!hash_table_is_created(bag_service_ips)) {
		hash_table_create(&bag_service_ips, default_pool, 0,
				  net_ip_hash, net_ip_cmp);
	}
	if (!hash_table_lookup_full(bag_service_ips, ip, &key, &value)) {
		i_assert(diff > 0);
		key = i_new(struct ip_addr, 1);
		*key = *ip;
		hash_table_insert(bag_service_ips, key,
				  POINTER_CAST((unsigned int)diff));
		return;
	}
	count = POINTER_CAST_TO(value, unsigned int);
	i_assert(diff > 0 || count > 0);
	count += diff;
	if (count > 0) {
		hash_table_update(bag_service_ips, key, POINTER_CAST(count));
		return;
	}
	hash_table_remove(bag_service_ips, key);
	i_free(key);
}

void bag_service_client_destroyed(const struct ip_addr *remote_ip)
{
	if (remote_ip != NULL)
		bag_service_ip_add(remote_ip, -1);
	master_service_client_connection_destroyed(master_service);
}

static void bag_service_ips_deinit(void)
{
	struct hash_iterate_context *iter;
	struct ip_addr *key;
	void *value;

	if (!hash_table_is_created(bag_service_ips))
		return;
	iter = hash_table_iterate_init(bag_service_ips);
	while (hash_table_iterate(iter, bag_service_ips, &key, &value))
		i_free(key);
	hash_table_iterate_deinit(&iter);
	hash_table_destroy(&bag_service_ips);
}

/* Too many connections from one address: refused at once, with 421 on a
   plain connection (a TLS one can't be told). */
static void
bag_service_refuse(struct master_service_connection *conn)
{
	const char *line;

	e_info(bag_service.event, "%s: Refused a connection from %s: it "
	       "has %u already (bag_max_connections_per_ip)",
	       str_sanitize(conn->name, 40), net_ip2addr(&conn->remote_ip),
	       bag_service_ip_count(&conn->remote_ip));
	if (!conn->ssl) {
		line = t_strdup_printf("421 4.7.0 %s Too many connections "
				       "from your address\r\n",
				       bag_service.hostname);
		/* a fresh socket takes a line this short */
		if (write(conn->fd, line, strlen(line)) < 0) {
			/* the client is gone already */
		}
	}
	/* not accepted: master_service closes the connection */
}

static void client_connected(struct master_service_connection *conn)
{
	const unsigned int max = bag_service.max_connections_per_ip;

	if (max > 0 && bag_service_ip_count(&conn->remote_ip) >= max) {
		bag_service_refuse(conn);
		return;
	}
	/* each listener speaks its own protocol */
	master_service_client_connection_accept(conn);
	bag_service_ip_add(&conn->remote_ip, 1);
	if (str_begins(conn->name, "etrn"))
		bag_etrn_client_create(conn);
	else if (str_begins(conn->name, "odmr"))
		bag_odmr_client_create(conn);
	else {
		e_error(bag_service.event, "Connection to an unknown listener "
			"'%s' (etrn or odmr, and odmrs with ssl = yes)",
			str_sanitize(conn->name, 40));
		i_close_fd(&conn->fd);
		bag_service_client_destroyed(&conn->remote_ip);
	}
}

static void flush_client_connected(struct master_service_connection *conn)
{
	master_service_client_connection_accept(conn);
	bag_flush_request_serve(conn);
}

/* A duration setting; invalid ones are logged and the default used. */
static unsigned int
bag_service_msecs(const struct mail_user_settings *user_set, const char *name,
		  unsigned int default_msecs, unsigned int min_msecs)
{
	const char *value = mail_user_set_plugin_getenv(user_set, name);
	const char *error;
	unsigned int msecs;

	if (value == NULL || *value == '\0')
		return default_msecs;
	if (settings_get_time_msecs(value, &msecs, &error) < 0 ||
	    msecs < min_msecs) {
		e_error(bag_service.event, "Invalid %s '%s': using %u ms",
			name, str_sanitize(value, 40), default_msecs);
		return default_msecs;
	}
	return msecs;
}

static unsigned int
bag_service_time(const struct mail_user_settings *user_set, const char *name,
		 unsigned int default_secs, unsigned int min_secs)
{
	return bag_service_msecs(user_set, name, default_secs * 1000,
				 min_secs * 1000) / 1000;
}

static const char *
bag_service_socket_path(const struct mail_user_settings *user_set,
			const char *name, const char *default_value)
{
	const char *value = mail_user_set_plugin_getenv(user_set, name);

	if (value == NULL)
		value = default_value;
	if (*value == '\0')
		return NULL;
	return value[0] == '/' ? value :
		t_strconcat(bag_service.base_dir, "/", value, NULL);
}

static void bag_service_tls_settings_init(
	const struct mail_user_settings *user_set, bool with_ssl_settings)
{
	const struct master_service_ssl_settings *ssl_set;
	const char *value, *error;

	bag_service.tls = BAG_TLS_MAY;
	value = mail_user_set_plugin_getenv(user_set, "bag_tls");
	if (value != NULL && *value != '\0' &&
	    bag_tls_mode_parse(value, FALSE, &bag_service.tls, &error) < 0) {
		e_error(bag_service.event, "Invalid bag_tls: %s: using may",
			error);
		bag_service.tls = BAG_TLS_MAY;
	}
	value = mail_user_set_plugin_getenv(user_set, "bag_tls_ca_file");
	if (value != NULL && *value != '\0')
		bag_service.tls_ca_file = i_strdup(value);
	if (!with_ssl_settings)
		return;
	ssl_set = master_service_ssl_settings_get(master_service);
	if (bag_service.tls_ca_file == NULL && *ssl_set->ssl_client_ca_file != '\0')
		bag_service.tls_ca_file = i_strdup(ssl_set->ssl_client_ca_file);
	if (*ssl_set->ssl_client_ca_dir != '\0')
		bag_service.tls_ca_dir = i_strdup(ssl_set->ssl_client_ca_dir);
}

static void bag_service_settings_init(bool with_ssl_settings)
{
	const struct mail_user_settings *user_set;
	const char *value;
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
	bag_service.timeout_msecs = bag_service_msecs(user_set,
		"bag_timeout", BAG_TIMEOUT_DEFAULT_SECS * 1000, 1);
	bag_service.auth_socket_path = i_strdup(bag_service_socket_path(
		user_set, "bag_auth_socket", BAG_AUTH_SOCKET_DEFAULT));
	bag_service.cram_md5_auth_socket_path = i_strdup(
		bag_service_socket_path(user_set, "bag_cram_md5_auth_socket",
					BAG_CRAM_MD5_AUTH_SOCKET_DEFAULT));
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
	bag_service.first_command_timeout_msecs = bag_service_msecs(user_set,
		"bag_first_command_timeout",
		BAG_FIRST_COMMAND_TIMEOUT_DEFAULT_SECS * 1000, 1);
	bag_service.max_connections_per_ip = BAG_MAX_CONNECTIONS_PER_IP_DEFAULT;
	value = mail_user_set_plugin_getenv(user_set,
					    "bag_max_connections_per_ip");
	if (value != NULL && *value != '\0' &&
	    str_to_uint(value, &bag_service.max_connections_per_ip) < 0) {
		e_error(bag_service.event, "Invalid bag_max_connections_per_ip "
			"'%s': using %u", str_sanitize(value, 40),
			BAG_MAX_CONNECTIONS_PER_IP_DEFAULT);
		bag_service.max_connections_per_ip =
			BAG_MAX_CONNECTIONS_PER_IP_DEFAULT;
	}
	bag_service_tls_settings_init(user_set, with_ssl_settings);
}

/* The mode, before master_service_init() parses the options: its flags
   depend on it. */
static enum bag_service_mode bag_service_mode_get(int argc, char *argv[])
{
	int i;

	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "-b") == 0)
			return BAG_SERVICE_BACKUP;
		if (strcmp(argv[i], "-f") == 0)
			return BAG_SERVICE_FLUSH;
	}
	return BAG_SERVICE_LISTENERS;
}

int main(int argc, char *argv[])
{
	enum bag_service_mode mode = bag_service_mode_get(argc, argv);
	/* the settings of each bag user are read after the privileges are
	   dropped */
	enum master_service_flags service_flags =
		MASTER_SERVICE_FLAG_KEEP_CONFIG_OPEN;
	const enum mail_storage_service_flags storage_flags =
		MAIL_STORAGE_SERVICE_FLAG_USERDB_LOOKUP |
		MAIL_STORAGE_SERVICE_FLAG_NO_LOG_INIT;
	struct mirror_log_nudge *log_nudge;
	int c;

	switch (mode) {
	case BAG_SERVICE_LISTENERS:
		/* STARTTLS and implicit TLS with Dovecot's ssl_cert */
		break;
	case BAG_SERVICE_FLUSH:
		/* a TLS client: the CA settings, no certificate */
		service_flags |= MASTER_SERVICE_FLAG_NO_SSL_INIT;
		break;
	case BAG_SERVICE_BACKUP:
		service_flags |= MASTER_SERVICE_FLAG_DISABLE_SSL_SET |
			MASTER_SERVICE_FLAG_NO_SSL_INIT;
		break;
	}
	master_service = master_service_init("bag", service_flags,
					     &argc, &argv, "bf");
	while ((c = master_getopt(master_service)) > 0) {
		if (c != 'b' && c != 'f')
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
	bag_service_settings_init(mode != BAG_SERVICE_BACKUP);
	/* the settings are read: now the service's own user, a mail user
	   and never root */
	restrict_access_by_env(0, NULL);
	restrict_access_allow_coredumps(TRUE);
	master_service_init_finish(master_service);
	/* the settings' errors above may come before the log process reads */
	log_nudge = mirror_log_nudge_start();

	switch (mode) {
	case BAG_SERVICE_LISTENERS:
		master_service_run(master_service, client_connected);
		bag_etrn_deinit();
		bag_odmr_deinit();
		break;
	case BAG_SERVICE_FLUSH:
		master_service_run(master_service, flush_client_connected);
		bag_flush_request_deinit();
		break;
	case BAG_SERVICE_BACKUP:
		bag_backup_run();
		break;
	}
	mirror_log_nudge_stop(&log_nudge);
	bag_service_ips_deinit();

	mail_storage_service_deinit(&bag_service.storage_service);
	dict_drivers_unregister_builtin();
	i_free(bag_service.dict_uri);
	i_free(bag_service.base_dir);
	i_free(bag_service.hostname);
	i_free(bag_service.auth_socket_path);
	i_free(bag_service.cram_md5_auth_socket_path);
	i_free(bag_service.tls_ca_file);
	i_free(bag_service.tls_ca_dir);
	event_unref(&bag_service.event);
	master_service_deinit(&master_service);
	return 0;
}
