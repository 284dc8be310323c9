/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* DSN in the suite's LMTP plugins (lmtp-dsn.h). */

#include "lib.h"
#include "ioloop.h"
#include "hostpid.h"
#include "istream.h"
#include "ostream.h"
#include "str-sanitize.h"
#include "master-service.h"
#include "master-service-ssl.h"
#include "smtp-address.h"
#include "smtp-server.h"
#include "smtp-submit.h"
#include "iostream-ssl.h"
#include "mail-user.h"
#include "mail-storage.h"
#include "lda-settings.h"
#include "lmtp-common.h"
#include "lmtp-client.h"
#include "lmtp-dsn.h"

void lmtp_dsn_offer(struct client *client)
{
	/* the capabilities LMTP gave the connection (lmtp-client.c, which
	   keeps them in no public place): setting them replaces them all */
	enum smtp_capability caps =
		SMTP_CAPABILITY_PIPELINING |
		SMTP_CAPABILITY_ENHANCEDSTATUSCODES |
		SMTP_CAPABILITY_8BITMIME |
		SMTP_CAPABILITY_CHUNKING |
		SMTP_CAPABILITY_XCLIENT |
		SMTP_CAPABILITY__ORCPT |
		SMTP_CAPABILITY_DSN;

	if (!smtp_server_connection_is_ssl_secured(client->conn) &&
	    master_service_ssl_is_enabled(master_service))
		caps |= SMTP_CAPABILITY_STARTTLS;
	smtp_server_connection_set_capabilities(client->conn, caps);
}

static int
lmtp_dsn_send(const struct bag_dsn *dsn, struct mail_user *user,
	      const struct smtp_submit_settings *smtp_set, struct event *event,
	      const char **error_r)
{
	struct ssl_iostream_settings ssl_set;
	struct smtp_submit_input input;
	struct smtp_submit *submit;
	struct ostream *output;
	const char *error;
	int ret;

	mail_user_init_ssl_client_settings(user, &ssl_set);
	i_zero(&input);
	input.ssl = &ssl_set;
	input.event_parent = event;
	/* from the null sender: nobody notifies about a notification */
	submit = smtp_submit_init_simple(&input, smtp_set, NULL);
	smtp_submit_add_rcpt(submit, dsn->return_path);
	output = smtp_submit_send(submit);
	if (bag_dsn_write(dsn, output, &error) < 0) {
		*error_r = error;
		smtp_submit_deinit(&submit);
		return -1;
	}
	ret = smtp_submit_run(submit, &error);
	if (ret <= 0)
		*error_r = error;
	smtp_submit_deinit(&submit);
	return ret > 0 ? 0 : -1;
}

void lmtp_dsn_success(struct smtp_server_transaction *trans,
		      struct smtp_server_recipient *rcpt,
		      struct lmtp_local_deliver_context *lldctx,
		      enum bag_dsn_action action, struct event *event)
{
	struct bag_dsn dsn;
	struct bag_dsn_recipient drcpt;
	struct istream *input;
	const char *error;

	if (!bag_dsn_wanted(trans->mail_from, &rcpt->params, action))
		return;
	/* once, whichever plugin comes first */
	rcpt->params.notify &= ENUM_NEGATE(SMTP_PARAM_RCPT_NOTIFY_SUCCESS);

	i_zero(&drcpt);
	drcpt.rcpt = rcpt->path;
	drcpt.params = &rcpt->params;
	drcpt.action = action;
	drcpt.status = "2.0.0";
	drcpt.last_attempt = ioloop_time;

	if (mail_get_stream(lldctx->src_mail, NULL, NULL, &input) < 0) {
		e_error(event, "Can't send the success notification to <%s>: "
			"Can't read the message: %s",
			smtp_address_encode(trans->mail_from),
			mailbox_get_last_internal_error(lldctx->src_mail->box,
							NULL));
		return;
	}
	i_stream_seek(input, 0);

	i_zero(&dsn);
	dsn.reporting_mta = lldctx->lda_set->hostname;
	dsn.from_address = t_strconcat("MAILER-DAEMON@",
				       lldctx->lda_set->hostname, NULL);
	dsn.return_path = trans->mail_from;
	dsn.mail_params = &trans->params;
	dsn.arrival_date = trans->timestamp.tv_sec;
	dsn.rcpts = &drcpt;
	dsn.rcpt_count = 1;
	dsn.message = input;

	if (lmtp_dsn_send(&dsn, lldctx->rcpt_user, lldctx->smtp_set, event,
			  &error) < 0) {
		e_error(event, "Can't send the success notification to <%s>: "
			"%s", smtp_address_encode(trans->mail_from),
			str_sanitize(error, 500));
		return;
	}
	e_debug(event, "Success notification (%s) sent to <%s>",
		action == BAG_DSN_ACTION_RELAYED ? "relayed" : "delivered",
		smtp_address_encode(trans->mail_from));
}
