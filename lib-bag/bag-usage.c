/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* Monthly usage against the soft limits: tiers, charges and the month
   format (bag-usage.h). */

#include "lib.h"
#include "strnum.h"
#include "str-sanitize.h"
#include "settings-parser.h"
#include "bag-usage.h"

#include <ctype.h>

void bag_usage_limits_default(struct bag_usage_limits *limits_r)
{
	limits_r->messages = BAG_USAGE_DEFAULT_MESSAGES;
	limits_r->bytes = BAG_USAGE_DEFAULT_BYTES;
	limits_r->price = BAG_USAGE_DEFAULT_PRICE;
}

int bag_usage_limits_parse(const char *messages, const char *bytes,
			   const char *price,
			   struct bag_usage_limits *limits_r,
			   const char **error_r)
{
	const char *error = "must be positive";
	uoff_t size = 0;

	bag_usage_limits_default(limits_r);
	if (messages != NULL && *messages != '\0' &&
	    (str_to_uint64(messages, &limits_r->messages) < 0 ||
	     limits_r->messages == 0)) {
		*error_r = t_strdup_printf("Invalid bag_usage_messages '%s': "
					   "not a positive number",
					   str_sanitize(messages, 40));
		return -1;
	}
	if (bytes != NULL && *bytes != '\0') {
		if (settings_get_size(bytes, &size, &error) < 0 || size == 0) {
			*error_r = t_strdup_printf(
				"Invalid bag_usage_bytes '%s': %s",
				str_sanitize(bytes, 40), error);
			return -1;
		}
		limits_r->bytes = size;
	}
	if (price != NULL && *price != '\0' &&
	    str_to_uint(price, &limits_r->price) < 0) {
		*error_r = t_strdup_printf("Invalid bag_usage_tier_price '%s': "
					   "not a whole number",
					   str_sanitize(price, 40));
		return -1;
	}
	return 0;
}

static uint64_t bag_usage_ceil_div(uint64_t n, uint64_t d)
{
	return n / d + (n % d != 0 ? 1 : 0);
}

uint64_t bag_usage_tiers(const struct bag_usage_limits *limits,
			 uint64_t messages, uint64_t bytes)
{
	uint64_t by_messages, by_bytes;

	if (messages <= limits->messages && bytes <= limits->bytes)
		return 0;
	by_messages = bag_usage_ceil_div(messages, limits->messages);
	by_bytes = bag_usage_ceil_div(bytes, limits->bytes);
	return I_MAX(by_messages, by_bytes);
}

uint64_t bag_usage_charge(const struct bag_usage_limits *limits,
			  uint64_t messages, uint64_t bytes)
{
	return bag_usage_tiers(limits, messages, bytes) * limits->price;
}

enum bag_usage_crossed
bag_usage_crossed(const struct bag_usage_limits *limits,
		  uint64_t old_messages, uint64_t old_bytes,
		  uint64_t messages, uint64_t bytes)
{
	enum bag_usage_crossed crossed = BAG_USAGE_CROSSED_NONE;

	if (old_messages <= limits->messages && messages > limits->messages)
		crossed |= BAG_USAGE_CROSSED_MESSAGES;
	if (old_bytes <= limits->bytes && bytes > limits->bytes)
		crossed |= BAG_USAGE_CROSSED_BYTES;
	return crossed;
}

bool bag_usage_month_is_valid(const char *month)
{
	unsigned int i;

	if (strlen(month) != 7 || month[4] != '-')
		return FALSE;
	for (i = 0; i < 7; i++) {
		if (i != 4 && !i_isdigit(month[i]))
			return FALSE;
	}
	return (month[5] == '0' && month[6] >= '1') ||
		(month[5] == '1' && month[6] <= '2');
}
