#ifndef BAG_USAGE_H
#define BAG_USAGE_H

/* Monthly usage of a bagged domain: the messages and bytes its bag took in
   one calendar month (in the suite's zone), against soft limits. Mail is
   never refused for them: past a limit, every started tier is charged.

   A tier is one limit's worth of the larger of messages/limit and
   bytes/limit: within both limits nothing is charged; past either, the
   charge is the number of started tiers times the price. With the
   defaults (100,000 messages, 1,000,000,000 bytes, 10 a tier):
   100,000 messages cost 0, 100,001 cost 20, 350,000 cost 40, and
   2.5 GB in few messages cost 30. */

#define BAG_USAGE_DEFAULT_MESSAGES 100000
#define BAG_USAGE_DEFAULT_BYTES 1000000000ULL
#define BAG_USAGE_DEFAULT_PRICE 10

struct bag_usage_limits {
	uint64_t messages, bytes;
	/* per started tier, in whole currency units */
	unsigned int price;
};

enum bag_usage_crossed {
	BAG_USAGE_CROSSED_NONE = 0,
	BAG_USAGE_CROSSED_MESSAGES = 0x01,
	BAG_USAGE_CROSSED_BYTES = 0x02,
};

void bag_usage_limits_default(struct bag_usage_limits *limits_r);
/* Settings: bag_usage_messages, bag_usage_bytes (a size: "1G" is 2^30,
   so give a number for the decimal gigabyte), bag_usage_tier_price; NULL
   or "" for the default. */
int bag_usage_limits_parse(const char *messages, const char *bytes,
			   const char *price,
			   struct bag_usage_limits *limits_r,
			   const char **error_r);

/* Started tiers: 0 within both limits. */
uint64_t bag_usage_tiers(const struct bag_usage_limits *limits,
			 uint64_t messages, uint64_t bytes);
uint64_t bag_usage_charge(const struct bag_usage_limits *limits,
			  uint64_t messages, uint64_t bytes);
/* Which limits a month's usage went past when it grew from (old_messages,
   old_bytes) to (messages, bytes). */
enum bag_usage_crossed
bag_usage_crossed(const struct bag_usage_limits *limits,
		  uint64_t old_messages, uint64_t old_bytes,
		  uint64_t messages, uint64_t bytes);

/* "YYYY-MM" with a real month. */
bool bag_usage_month_is_valid(const char *month);

#endif
