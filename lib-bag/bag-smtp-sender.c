/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* What the two senders of a flush share (bag-smtp-sender.h). */

#include "lib.h"
#include "array.h"
#include "bag-smtp-sender.h"

void bag_smtp_params_mail_for(struct smtp_params_mail *dest,
			      const struct smtp_params_mail *src,
			      enum smtp_capability caps)
{
	*dest = *src;
	/* lib-smtp asserts BODY's extension rather than leave it out, and
	   BINARYMIME needs every message in BDAT chunks */
	if ((caps & SMTP_CAPABILITY_8BITMIME) == 0 ||
	    dest->body.type == SMTP_PARAM_MAIL_BODY_TYPE_BINARYMIME ||
	    dest->body.type == SMTP_PARAM_MAIL_BODY_TYPE_EXTENSION) {
		dest->body.type = SMTP_PARAM_MAIL_BODY_TYPE_UNSPECIFIED;
		dest->body.ext = NULL;
	}
	/* the bag's own sender never authenticated at the customer's */
	dest->auth = NULL;
	i_zero(&dest->extra_params);
}

void bag_smtp_params_rcpt_for(struct smtp_params_rcpt *dest,
			      const struct smtp_params_rcpt *src)
{
	*dest = *src;
	i_zero(&dest->extra_params);
}
