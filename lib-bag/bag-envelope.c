/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* The envelope lines a bagged message starts with: written by LMTP,
   read back by the flush (bag-envelope.h has the format). */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "str-sanitize.h"
#include "istream.h"
#include "smtp-address.h"
#include "smtp-params.h"
#include "bag-envelope.h"

/* Everything the suite accepts over LMTP is kept (AUTH= is not: it names
   who submitted the message to us, not to the customer). */
#define BAG_ENVELOPE_CAPS \
	(SMTP_CAPABILITY_DSN | SMTP_CAPABILITY_SIZE | \
	 SMTP_CAPABILITY_8BITMIME | SMTP_CAPABILITY_BINARYMIME | \
	 SMTP_CAPABILITY_CHUNKING)

static void
bag_envelope_write_line(string_t *dest, const char *name,
			const struct smtp_address *addr, string_t *params)
{
	str_printfa(dest, "%s: ", name);
	smtp_address_write_path(dest, addr);
	if (str_len(params) > 0) {
		str_append_c(dest, ' ');
		str_append_str(dest, params);
	}
	str_append(dest, "\r\n");
}

void bag_envelope_write(string_t *dest, const struct smtp_address *mail_from,
			const struct smtp_params_mail *mail_params,
			const struct bag_envelope_rcpt *rcpts,
			unsigned int rcpt_count)
{
	struct smtp_params_mail mparams = *mail_params;
	string_t *params = t_str_new(128);
	unsigned int i;

	mparams.auth = NULL;
	smtp_params_mail_write(params, BAG_ENVELOPE_CAPS, NULL, &mparams);
	bag_envelope_write_line(dest, BAG_HEADER_MAIL_FROM, mail_from, params);
	for (i = 0; i < rcpt_count; i++) {
		str_truncate(params, 0);
		smtp_params_rcpt_write(params, BAG_ENVELOPE_CAPS, NULL,
				       &rcpts[i].params);
		bag_envelope_write_line(dest, BAG_HEADER_RCPT_TO,
					rcpts[i].addr, params);
	}
	str_append(dest, BAG_HEADER_END": ok\r\n");
}

bool bag_envelope_rcpt_fits(const struct smtp_address *mail_from,
			    const struct smtp_params_mail *mail_params,
			    const struct bag_envelope_rcpt *rcpt,
			    const char **error_r)
{
	string_t *lines = t_str_new(512);
	const char *p, *end;

	if (rcpt->addr->localpart != NULL &&
	    strlen(rcpt->addr->localpart) > BAG_LOCALPART_MAX_LEN) {
		*error_r = "local part longer than 64 octets";
		return FALSE;
	}
	if (strlen(smtp_address_encode_path(rcpt->addr)) > BAG_PATH_MAX_LEN) {
		*error_r = "path longer than 256 octets";
		return FALSE;
	}
	bag_envelope_write(lines, mail_from, mail_params, rcpt, 1);
	for (p = str_c(lines); *p != '\0'; p = end + 2) {
		end = strstr(p, "\r\n");
		i_assert(end != NULL);
		if ((size_t)(end - p) + 2 >= BAG_ENVELOPE_LINE_MAX) {
			*error_r = "address or parameters too long";
			return FALSE;
		}
	}
	return TRUE;
}

/* The value of "Name: value" if line is that header, else NULL. */
static const char *bag_envelope_value(const char *line, const char *name)
{
	size_t len = strlen(name);

	if (strncmp(line, name, len) != 0 || line[len] != ':' ||
	    line[len + 1] != ' ')
		return NULL;
	return line + len + 2;
}

/* Split "<path> params" */
static int
bag_envelope_parse_path(pool_t pool, const char *value, bool allow_null,
			struct smtp_address **addr_r, const char **params_r,
			const char **error_r)
{
	const char *endp, *error;

	if (smtp_address_parse_path_full(pool, value,
			allow_null ? SMTP_ADDRESS_PARSE_FLAG_ALLOW_EMPTY : 0,
			addr_r, &error, &endp) < 0) {
		*error_r = t_strdup_printf("invalid path: %s", error);
		return -1;
	}
	if (*endp == ' ')
		endp++;
	else if (*endp != '\0') {
		*error_r = "invalid path: trailing characters";
		return -1;
	}
	*params_r = endp;
	return 0;
}

static int
bag_envelope_parse_line(const char *line, pool_t pool,
			struct bag_envelope *env, bool *done_r,
			const char **error_r)
{
	struct bag_envelope_rcpt *rcpt;
	struct smtp_address *addr;
	enum smtp_param_parse_error code;
	const char *value, *params, *error;

	*done_r = FALSE;
	if (env->mail_from == NULL) {
		value = bag_envelope_value(line, BAG_HEADER_MAIL_FROM);
		if (value == NULL) {
			*error_r = "no "BAG_HEADER_MAIL_FROM" line first";
			return -1;
		}
		if (bag_envelope_parse_path(pool, value, TRUE, &addr, &params,
					    &error) < 0 ||
		    smtp_params_mail_parse(pool, params, BAG_ENVELOPE_CAPS,
					   NULL, NULL, &env->mail_params,
					   &code, &error) < 0) {
			*error_r = t_strdup_printf(BAG_HEADER_MAIL_FROM": %s",
						   error);
			return -1;
		}
		env->mail_from = addr;
		return 0;
	}
	value = bag_envelope_value(line, BAG_HEADER_RCPT_TO);
	if (value == NULL) {
		value = bag_envelope_value(line, BAG_HEADER_END);
		if (value == NULL || strcmp(value, "ok") != 0) {
			*error_r = "no "BAG_HEADER_END" line after the "
				"recipients";
			return -1;
		}
		*done_r = TRUE;
		return 0;
	}
	if (array_count(&env->rcpts) >= BAG_ENVELOPE_RCPTS_MAX) {
		*error_r = "too many recipients";
		return -1;
	}
	rcpt = array_append_space(&env->rcpts);
	if (bag_envelope_parse_path(pool, value, FALSE, &addr, &params,
				    &error) < 0 ||
	    smtp_params_rcpt_parse(pool, params, 0, BAG_ENVELOPE_CAPS, NULL,
				   &rcpt->params, &code, &error) < 0) {
		*error_r = t_strdup_printf(BAG_HEADER_RCPT_TO": %s", error);
		return -1;
	}
	rcpt->addr = addr;
	return 0;
}

/* The next line of input, peeked (not consumed): returns its length with
   the LF, or 0 with an error. */
static size_t
bag_envelope_peek_line(struct istream *input, const unsigned char **data_r,
		       const char **error_r)
{
	const unsigned char *data, *p;
	size_t size;
	ssize_t ret;

	for (;;) {
		data = i_stream_get_data(input, &size);
		p = memchr(data, '\n', I_MIN(size, BAG_ENVELOPE_LINE_MAX));
		if (p != NULL) {
			*data_r = data;
			return p - data + 1;
		}
		if (size >= BAG_ENVELOPE_LINE_MAX)
			break;
		if ((ret = i_stream_read(input)) == -1 || ret == -2)
			break;
	}
	if (input->stream_errno != 0) {
		*error_r = t_strdup_printf("read(%s) failed: %s",
					   i_stream_get_name(input),
					   i_stream_get_error(input));
	} else if (size >= BAG_ENVELOPE_LINE_MAX || !input->eof) {
		*error_r = "Broken bag envelope: a line is too long";
	} else {
		*error_r = "Broken bag envelope: the message ends in it";
	}
	return 0;
}

int bag_envelope_read(struct istream *input, pool_t pool,
		      struct bag_envelope *env_r, const char **error_r)
{
	const unsigned char *data;
	uoff_t start = input->v_offset;
	const char *line, *error;
	size_t len, line_len;
	bool done = FALSE;

	i_zero(env_r);
	p_array_init(&env_r->rcpts, pool, 4);
	while (!done) {
		if ((len = bag_envelope_peek_line(input, &data, error_r)) == 0)
			return -1;
		line_len = len - 1;
		if (line_len > 0 && data[line_len - 1] == '\r')
			line_len--;
		line = t_strndup(data, line_len);
		if (bag_envelope_parse_line(line, pool, env_r, &done,
					    &error) < 0) {
			*error_r = t_strdup_printf("Broken bag envelope: %s",
						   str_sanitize(error, 200));
			return -1;
		}
		i_stream_skip(input, len);
	}
	if (array_count(&env_r->rcpts) == 0) {
		*error_r = "Broken bag envelope: no recipients";
		return -1;
	}
	env_r->header_size = input->v_offset - start;
	return 0;
}
