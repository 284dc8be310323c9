/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* Fuzz target: the bag envelope reader, bag_envelope_read(), on the first
   lines of a stored message (which a sender partly controls: they are
   written from its MAIL FROM and RCPT TO), and the round trip through
   bag_envelope_write().

   Input: one byte that cuts the rest into chunks of that many bytes (0:
   one chunk), so that lines cross the stream's reads, then the message.

   Asserts: the reader stops right after the end line and counts its
   bytes; an envelope it read and wrote again is read back the same
   (addresses, parameters, recipients), and writing that gives the same
   lines, unless a written line is longer than the reader takes. */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "istream.h"
#include "istream-concat.h"
#include "smtp-address.h"
#include "smtp-params.h"
#include "fuzz-common.h"
#include "bag-envelope.h"

/* the parameters the envelope keeps (bag-envelope.c) */
#define FUZZ_ENVELOPE_CAPS \
	(SMTP_CAPABILITY_DSN | SMTP_CAPABILITY_SIZE | \
	 SMTP_CAPABILITY_8BITMIME | SMTP_CAPABILITY_BINARYMIME | \
	 SMTP_CAPABILITY_CHUNKING)
/* more chunks than this: the rest is the last one */
#define FUZZ_MAX_CHUNKS 512

static struct istream *
fuzz_input_create(const unsigned char *data, size_t size, size_t chunk)
{
	struct istream *inputs[FUZZ_MAX_CHUNKS + 1], *input;
	unsigned int i, count = 0;
	size_t pos, len;

	if (chunk == 0 || size == 0)
		return i_stream_create_from_data(data, size);
	for (pos = 0; pos < size; pos += len) {
		len = count + 1 == FUZZ_MAX_CHUNKS ? size - pos :
			I_MIN(chunk, size - pos);
		inputs[count++] = i_stream_create_from_data(data + pos, len);
	}
	inputs[count] = NULL;
	input = i_stream_create_concat(inputs);
	for (i = 0; i < count; i++)
		i_stream_unref(&inputs[i]);
	return input;
}

static string_t *fuzz_envelope_write(const struct bag_envelope *env)
{
	string_t *str = t_str_new(256);

	bag_envelope_write(str, env->mail_from, &env->mail_params,
			   array_front(&env->rcpts), array_count(&env->rcpts));
	return str;
}

/* Whether every line fits what bag_envelope_read() takes (the LF within
   its first BAG_ENVELOPE_LINE_MAX bytes). */
static bool fuzz_lines_fit(string_t *lines)
{
	const char *p = str_c(lines), *end;

	for (; *p != '\0'; p = end + 1) {
		end = strchr(p, '\n');
		i_assert(end != NULL);
		if ((size_t)(end - p) + 1 > BAG_ENVELOPE_LINE_MAX)
			return FALSE;
	}
	return TRUE;
}

static const char *
fuzz_rcpt_params_str(const struct smtp_params_rcpt *params)
{
	string_t *str = t_str_new(128);

	smtp_params_rcpt_write(str, FUZZ_ENVELOPE_CAPS, NULL, params);
	return str_c(str);
}

static void
fuzz_envelope_assert_equal(const struct bag_envelope *env1,
			   const struct bag_envelope *env2)
{
	const struct bag_envelope_rcpt *rcpts1, *rcpts2;
	unsigned int i, count;

	i_assert(smtp_address_isnull(env1->mail_from) ==
		 smtp_address_isnull(env2->mail_from));
	i_assert(smtp_address_equals(env1->mail_from, env2->mail_from));
	i_assert(env1->mail_params.ret == env2->mail_params.ret);
	i_assert(null_strcmp(env1->mail_params.envid,
			     env2->mail_params.envid) == 0);
	i_assert(env1->mail_params.size == env2->mail_params.size);
	i_assert(env1->mail_params.body.type == env2->mail_params.body.type);

	rcpts1 = array_get(&env1->rcpts, &count);
	rcpts2 = array_get(&env2->rcpts, &i);
	i_assert(count == i);
	for (i = 0; i < count; i++) {
		i_assert(smtp_address_equals(rcpts1[i].addr, rcpts2[i].addr));
		i_assert(rcpts1[i].params.notify == rcpts2[i].params.notify);
		i_assert(strcmp(fuzz_rcpt_params_str(&rcpts1[i].params),
				fuzz_rcpt_params_str(&rcpts2[i].params)) == 0);
	}
}

static void
fuzz_envelope_read(const unsigned char *data, size_t size, size_t chunk)
{
	pool_t pool = pool_alloconly_create("fuzz bag envelope", 1024);
	struct bag_envelope env, env2;
	struct istream *input;
	string_t *lines, *lines2;
	const char *error;
	size_t end_len;

	input = fuzz_input_create(data, size, chunk);
	if (bag_envelope_read(input, pool, &env, &error) < 0) {
		i_assert(error != NULL);
		i_stream_unref(&input);
		pool_unref(&pool);
		return;
	}
	/* stopped just after the end line */
	i_assert(input->v_offset == env.header_size);
	i_assert(env.header_size <= size);
	end_len = strlen(BAG_HEADER_END": ok\n");
	i_assert(env.header_size >= end_len);
	i_assert(data[env.header_size - 1] == '\n');
	i_assert(array_count(&env.rcpts) > 0 &&
		 array_count(&env.rcpts) <= BAG_ENVELOPE_RCPTS_MAX);
	i_stream_unref(&input);

	/* write it and read it again */
	lines = fuzz_envelope_write(&env);
	if (fuzz_lines_fit(lines)) {
		input = i_stream_create_from_data(str_data(lines),
						  str_len(lines));
		if (bag_envelope_read(input, pool, &env2, &error) < 0) {
			i_panic("envelope written is not read back: %s\n%s",
				error, str_c(lines));
		}
		i_assert(env2.header_size == str_len(lines));
		i_assert(input->v_offset == str_len(lines));
		i_stream_unref(&input);
		fuzz_envelope_assert_equal(&env, &env2);
		lines2 = fuzz_envelope_write(&env2);
		i_assert(str_equals(lines, lines2));
	}
	pool_unref(&pool);
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
	if (size == 0)
		return 0;
	T_BEGIN {
		fuzz_envelope_read(data + 1, size - 1, data[0]);
	} T_END;
	return 0;
}
