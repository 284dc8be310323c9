/* Copyright (c) 2026 dovecot-mirror authors, see the included COPYING file */

/* Unit tests of Mail Bagging's pure parts: bag definitions, hosts,
   networks and recipients as the administrator gives them, and the
   envelope a bagged message keeps in its first header lines. */

#include "lib.h"
#include "array.h"
#include "str.h"
#include "strescape.h"
#include "istream.h"
#include "test-common.h"
#include "smtp-address.h"
#include "smtp-params.h"
#include "mirror-address.h"
#include "bag-registry.h"
#include "bag-flush-client.h"
#include "bag-envelope.h"
#include "bag-usage.h"
#include "mirror-schedule.h"
#include "bag-input.h"

static void test_bag_host_parse(void)
{
	static const struct {
		const char *input, *host;
		in_port_t port;
	} valid[] = {
		{ "mx.example.org", "mx.example.org", 25 },
		{ "MX.Example.org:2525", "mx.example.org", 2525 },
		{ "192.0.2.1:26", "192.0.2.1", 26 },
		{ "[2001:db8::1]", "2001:db8::1", 25 },
		{ "[2001:db8::1]:587", "2001:db8::1", 587 },
	};
	static const char *invalid[] = {
		"", ":25", "mx.example.org:", "mx.example.org:0",
		"mx.example.org:65536", "mx example.org", "mx.example.org:25x",
		"[2001:db8::1", "[192.0.2.1]:25", "[2001:db8::1]x",
		"mx/../etc", "a\r\nRCPT",
	};
	const char *host, *error;
	in_port_t port;
	unsigned int i;

	test_begin("bag_host_parse()");
	for (i = 0; i < N_ELEMENTS(valid); i++) {
		test_assert_idx(bag_host_parse(valid[i].input, &host, &port,
					       &error) == 0, i);
		test_assert_strcmp_idx(host, valid[i].host, i);
		test_assert_idx(port == valid[i].port, i);
	}
	for (i = 0; i < N_ELEMENTS(invalid); i++) {
		test_assert_idx(bag_host_parse(invalid[i], &host, &port,
					       &error) < 0, i);
	}
	test_end();
}

static void test_bag_nets(void)
{
	struct bag_def def;
	struct ip_addr ip;
	const char *net, *error;
	static const char *nets[] = { "192.0.2.0/24", "2001:db8::/32",
				      "198.51.100.7" };
	static const char *invalid[] = { "", "192.0.2.0/33", "example.org",
					 "192.0.2.0/", "::1/129" };
	unsigned int i;

	test_begin("bag ETRN networks");
	i_zero(&def);
	t_array_init(&def.etrn_nets, 4);
	for (i = 0; i < N_ELEMENTS(nets); i++) {
		test_assert_idx(bag_net_is_valid(nets[i], &error), i);
		net = nets[i];
		array_push_back(&def.etrn_nets, &net);
	}
	for (i = 0; i < N_ELEMENTS(invalid); i++)
		test_assert_idx(!bag_net_is_valid(invalid[i], &error), i);

	test_assert(net_addr2ip("192.0.2.200", &ip) == 0 &&
		    bag_def_allows_ip(&def, &ip));
	test_assert(net_addr2ip("192.0.3.1", &ip) == 0 &&
		    !bag_def_allows_ip(&def, &ip));
	test_assert(net_addr2ip("198.51.100.7", &ip) == 0 &&
		    bag_def_allows_ip(&def, &ip));
	test_assert(net_addr2ip("198.51.100.8", &ip) == 0 &&
		    !bag_def_allows_ip(&def, &ip));
	test_assert(net_addr2ip("2001:db8:ffff::1", &ip) == 0 &&
		    bag_def_allows_ip(&def, &ip));
	test_assert(net_addr2ip("2001:db9::1", &ip) == 0 &&
		    !bag_def_allows_ip(&def, &ip));
	/* an IPv4-mapped network is the IPv4 network it stands for, as a
	   mapped client address is IPv4 (found by fuzz-args) */
	array_clear(&def.etrn_nets);
	net = "::ffff:203.0.113.0/120";
	array_push_back(&def.etrn_nets, &net);
	test_assert(net_addr2ip("203.0.113.9", &ip) == 0 &&
		    bag_def_allows_ip(&def, &ip));
	test_assert(net_addr2ip("::ffff:203.0.113.10", &ip) == 0 &&
		    bag_def_allows_ip(&def, &ip));
	test_assert(net_addr2ip("203.0.114.9", &ip) == 0 &&
		    !bag_def_allows_ip(&def, &ip));
	/* and so does an IPv6 network holding the mapped range */
	array_clear(&def.etrn_nets);
	net = "::ffff:2.0.2.3/0";
	array_push_back(&def.etrn_nets, &net);
	test_assert(net_addr2ip("2.0.2.3", &ip) == 0 &&
		    bag_def_allows_ip(&def, &ip));
	test_assert(net_addr2ip("2001:db8::1", &ip) == 0 &&
		    bag_def_allows_ip(&def, &ip));
	array_clear(&def.etrn_nets);
	net = "2001:db8::/32";
	array_push_back(&def.etrn_nets, &net);
	test_assert(net_addr2ip("2.0.2.3", &ip) == 0 &&
		    !bag_def_allows_ip(&def, &ip));
	test_end();
}

static void test_bag_rcpt_parse(void)
{
	const char *addr, *error;

	test_begin("bag_rcpt_parse()");
	test_assert(bag_rcpt_parse("Alice@Example.org", "example.org", &addr,
				   &error) == 0);
	test_assert_strcmp(addr, "alice@example.org");
	test_assert(bag_rcpt_parse("alice@other.org", "example.org", &addr,
				   &error) < 0);
	test_assert(bag_rcpt_parse("alice", "example.org", &addr,
				   &error) < 0);
	test_assert(bag_rcpt_parse("a b@example.org", "example.org", &addr,
				   &error) < 0);
	test_assert(bag_rcpt_parse("@example.org", "example.org", &addr,
				   &error) < 0);
	test_end();
}

static void test_bag_retry_period_parse(void)
{
	static const struct {
		const char *str;
		unsigned int secs;
	} tests[] = {
		/* a number of seconds, as the manual says */
		{ "3600", 3600 }, { "20", 20 }, { "60", 60 }, { "1", 1 },
		{ "31536000", 31536000 },
		{ "5d", 5*24*3600 }, { "36h", 36*3600 }, { "90 s", 90 },
		{ "2 mins", 120 },
		/* refused */
		{ "0", 0 }, { "0s", 0 }, { "31536001", 0 }, { "366d", 0 },
		{ "", 0 }, { "-5", 0 }, { "5x", 0 }, { "99999999999", 0 },
		{ " 60", 0 },
	};
	const char *error;
	unsigned int i, secs;
	int ret;

	test_begin("bag_retry_period_parse()");
	for (i = 0; i < N_ELEMENTS(tests); i++) {
		secs = 0;
		ret = bag_retry_period_parse(tests[i].str, &secs, &error);
		test_assert_idx((ret == 0) == (tests[i].secs != 0), i);
		if (ret == 0)
			test_assert_idx(secs == tests[i].secs, i);
	}
	test_end();
}

static void test_bag_modes(void)
{
	enum bag_mode modes;
	const char *error;

	test_begin("bag modes");
	test_assert(bag_modes_parse("etrn, ATRN", &modes, &error) == 0 &&
		    modes == (BAG_MODE_ETRN | BAG_MODE_ATRN));
	test_assert_strcmp(bag_modes_to_str(modes), "etrn,atrn");
	test_assert(bag_modes_parse("atrn", &modes, &error) == 0 &&
		    modes == BAG_MODE_ATRN);
	test_assert(bag_modes_parse("etrn,uucp", &modes, &error) < 0);
	test_end();
}

static void test_bag_def_init(struct bag_def *def)
{
	const char *net = "192.0.2.0/24";

	i_zero(def);
	def->domain = "example.org";
	def->user = "_bag@example.org";
	def->modes = BAG_MODE_ETRN | BAG_MODE_ATRN;
	t_array_init(&def->etrn_nets, 2);
	array_push_back(&def->etrn_nets, &net);
	def->host = "mx.example.org:2525";
	def->atrn_identity = "odmr@example.org";
	def->auto_identity = TRUE;
	def->recipient_list = TRUE;
	def->created = 1795307667;
}

static void test_bag_def_roundtrip(void)
{
	struct bag_def def, decoded;
	const char *json, *error;

	test_begin("bag_def encode and decode");
	test_bag_def_init(&def);
	json = bag_def_encode(&def);
	test_assert(bag_def_decode(json, pool_datastack_create(), &decoded,
				   &error) == 0);
	test_assert_strcmp(decoded.domain, def.domain);
	test_assert_strcmp(decoded.user, def.user);
	test_assert(decoded.modes == def.modes);
	test_assert(array_count(&decoded.etrn_nets) == 1);
	test_assert_strcmp(array_idx_elem(&decoded.etrn_nets, 0),
			   "192.0.2.0/24");
	test_assert_strcmp(decoded.host, def.host);
	test_assert_strcmp(decoded.atrn_identity, def.atrn_identity);
	test_assert(decoded.auto_identity && decoded.recipient_list);
	test_assert(decoded.created == def.created);
	/* no TLS mode of its own: none written, bag_tls applies */
	test_assert(strstr(json, "\"tls\"") == NULL);
	test_assert(decoded.tls == BAG_TLS_DEFAULT);
	def.tls = BAG_TLS_VERIFY;
	json = bag_def_encode(&def);
	test_assert(strstr(json, "\"tls\":\"verify\"") != NULL);
	test_assert(bag_def_decode(json, pool_datastack_create(), &decoded,
				   &error) == 0);
	test_assert(decoded.tls == BAG_TLS_VERIFY);
	def.tls = BAG_TLS_DEFAULT;

	/* ATRN only: no ETRN fields */
	def.modes = BAG_MODE_ATRN;
	json = bag_def_encode(&def);
	test_assert(strstr(json, "etrn_nets") == NULL);
	test_assert(bag_def_decode(json, pool_datastack_create(), &decoded,
				   &error) == 0);
	test_assert(decoded.host == NULL &&
		    array_count(&decoded.etrn_nets) == 0);

	/* a POP3 connector, a box per account */
	def.modes = BAG_MODE_POP3;
	def.pop3_per_account = TRUE;
	json = bag_def_encode(&def);
	test_assert(bag_def_decode(json, pool_datastack_create(), &decoded,
				   &error) == 0);
	test_assert(decoded.modes == BAG_MODE_POP3 &&
		    decoded.pop3_per_account);

	/* found by fuzz-registry (tests/fuzz/crashes/registry/): a member
	   of another mode is ignored, as the encoder leaves it out, so
	   decoding the encoded bag gives the same bag */
	json = "{\"domain\":\"a.example\",\"user\":\"bag\","
		"\"modes\":\"atrn\",\"atrn_identity\":\"id\","
		"\"pop3_per_account\":true,\"created\":0}";
	test_assert(bag_def_decode(json, pool_datastack_create(), &decoded,
				   &error) == 0);
	test_assert(decoded.modes == BAG_MODE_ATRN &&
		    !decoded.pop3_per_account);
	test_end();
}

static void test_bag_box_user_name(void)
{
	test_begin("bag_box_user_name()");
	test_assert_strcmp(bag_box_user_name("alice@example.org"),
			   "_bag_alice@example.org");
	test_assert_strcmp(bag_box_user_name("B.c-d_e@example.org"),
			   "_bag_b.c-d_e@example.org");
	/* what a user name can't safely have (quoted local parts too) */
	test_assert_strcmp(bag_box_user_name("a b/c%d@example.org"),
			   "_bag_a-b-c-d@example.org");
	test_assert_strcmp(bag_box_user_name("\"x@y\"@example.org"),
			   "_bag_-x-y-@example.org");
	test_end();
}

static void test_bag_def_decode_broken(void)
{
	static const char *broken[] = {
		"",
		"[]",
		"{\"domain\":\"example.org\"",
		"{\"domain\":\"example.org\",\"user\":\"_bag@example.org\","
		"\"modes\":\"\",\"created\":1}",
		"{\"domain\":\"example.org\",\"user\":\"_bag@example.org\","
		"\"modes\":\"smtp\",\"created\":1}",
		/* etrn without its host and networks */
		"{\"domain\":\"example.org\",\"user\":\"_bag@example.org\","
		"\"modes\":\"etrn\",\"created\":1}",
		"{\"domain\":\"example.org\",\"user\":\"_bag@example.org\","
		"\"modes\":\"etrn\",\"host\":\"mx\",\"etrn_nets\":[],"
		"\"created\":1}",
		"{\"domain\":\"example.org\",\"user\":\"_bag@example.org\","
		"\"modes\":\"etrn\",\"host\":\"mx\",\"etrn_nets\":[\"x\"],"
		"\"created\":1}",
		"{\"domain\":\"example.org\",\"user\":\"_bag@example.org\","
		"\"modes\":\"atrn\",\"created\":1}",
		/* not normalized, or not a domain */
		"{\"domain\":\"Example.org\",\"user\":\"_bag@example.org\","
		"\"modes\":\"atrn\",\"atrn_identity\":\"o@example.org\","
		"\"created\":1}",
		"{\"domain\":\"example\",\"user\":\"_bag@example.org\","
		"\"modes\":\"atrn\",\"atrn_identity\":\"o@example.org\","
		"\"created\":1}",
		"{\"domain\":\"example.org\",\"user\":\"bad user\","
		"\"modes\":\"atrn\",\"atrn_identity\":\"o@example.org\","
		"\"created\":1}",
		"{\"domain\":\"example.org\",\"user\":\"_bag@example.org\","
		"\"modes\":\"atrn\",\"atrn_identity\":\"o@example.org\","
		"\"created\":-1}",
		/* pop3 goes with no other mode */
		"{\"domain\":\"example.org\",\"user\":\"_bag@example.org\","
		"\"modes\":\"pop3,atrn\",\"atrn_identity\":\"o@example.org\","
		"\"created\":1}",
		"{\"domain\":\"example.org\",\"user\":\"_bag@example.org\","
		"\"modes\":\"pop3\",\"pop3_per_account\":\"yes\","
		"\"created\":1}",
		/* a TLS mode that isn't one ("default" is never stored) */
		"{\"domain\":\"example.org\",\"user\":\"_bag@example.org\","
		"\"modes\":\"backup\",\"host\":\"mx\",\"retry_period\":60,"
		"\"tls\":\"sometimes\",\"created\":1}",
		"{\"domain\":\"example.org\",\"user\":\"_bag@example.org\","
		"\"modes\":\"backup\",\"host\":\"mx\",\"retry_period\":60,"
		"\"tls\":\"default\",\"created\":1}",
		"{\"domain\":\"example.org\",\"user\":\"_bag@example.org\","
		"\"modes\":\"backup\",\"host\":\"mx\",\"retry_period\":60,"
		"\"tls\":2,\"created\":1}",
	};
	struct bag_def def;
	const char *error;
	unsigned int i;

	test_begin("bag_def_decode() broken data");
	for (i = 0; i < N_ELEMENTS(broken); i++) {
		test_assert_idx(bag_def_decode(broken[i],
					       pool_datastack_create(), &def,
					       &error) < 0, i);
	}
	test_end();
}

static void test_mirror_key_unescape(void)
{
	string_t *str = t_str_new(64);
	static const char *values[] = {
		"alice@example.org", "a/b%c d", "\"quoted\"@example.org",
	};
	unsigned int i;

	test_begin("registry_key_unescape()");
	for (i = 0; i < N_ELEMENTS(values); i++) {
		str_truncate(str, 0);
		test_assert_idx(registry_key_unescape(
			registry_key_escape(values[i]), str) == 0, i);
		test_assert_strcmp_idx(str_c(str), values[i], i);
	}
	test_assert(registry_key_unescape("%2", str) < 0);
	test_assert(registry_key_unescape("%zz", str) < 0);
	test_assert(registry_key_unescape("%00", str) < 0);
	test_end();
}

static void
test_bag_envelope_rcpt(pool_t pool, struct bag_envelope_rcpt *rcpt,
		       const char *addr, const char *params)
{
	struct smtp_address *a;
	enum smtp_param_parse_error code;
	const char *error;

	i_zero(rcpt);
	test_assert(smtp_address_parse_mailbox(pool, addr, 0, &a,
					       &error) == 0);
	rcpt->addr = a;
	test_assert(smtp_params_rcpt_parse(pool, params, 0,
					   SMTP_CAPABILITY_DSN, NULL,
					   &rcpt->params, &code,
					   &error) == 0);
}

static struct istream *test_bag_input(const char *text)
{
	return i_stream_create_from_data(text, strlen(text));
}

static void test_bag_envelope_roundtrip(void)
{
	pool_t pool = pool_datastack_create();
	struct bag_envelope_rcpt rcpts[2];
	struct smtp_params_mail mparams;
	struct smtp_address *from;
	struct bag_envelope env;
	enum smtp_param_parse_error code;
	const struct bag_envelope_rcpt *r;
	struct istream *input;
	string_t *msg = t_str_new(512);
	const char *error, *line;

	test_begin("bag envelope write and read");
	test_assert(smtp_address_parse_mailbox(pool, "sender@example.net", 0,
					       &from, &error) == 0);
	test_assert(smtp_params_mail_parse(pool, "RET=HDRS ENVID=a+2Bb",
					   SMTP_CAPABILITY_DSN, NULL, NULL,
					   &mparams, &code, &error) == 0);
	test_bag_envelope_rcpt(pool, &rcpts[0], "alice@example.org",
			       "NOTIFY=FAILURE,DELAY ORCPT=rfc822;Alice@example.org");
	test_bag_envelope_rcpt(pool, &rcpts[1], "\"b b\"@example.org", "");
	bag_envelope_write(msg, from, &mparams, rcpts, 2);
	str_append(msg, "X-Bag-Rcpt-To: <mallory@evil.test>\r\n"
		   "Subject: hi\r\n\r\nbody\r\n");

	input = test_bag_input(str_c(msg));
	test_assert(bag_envelope_read(input, pool, &env, &error) == 0);
	test_assert(smtp_address_equals(env.mail_from, from));
	test_assert(env.mail_params.ret == SMTP_PARAM_MAIL_RET_HDRS);
	test_assert_strcmp(env.mail_params.envid, "a+b");
	test_assert(array_count(&env.rcpts) == 2);
	r = array_idx(&env.rcpts, 0);
	test_assert(smtp_address_equals(r->addr, rcpts[0].addr));
	test_assert(r->params.notify == (SMTP_PARAM_RCPT_NOTIFY_FAILURE |
					 SMTP_PARAM_RCPT_NOTIFY_DELAY));
	test_assert_strcmp(r->params.orcpt.addr_raw, "Alice@example.org");
	r = array_idx(&env.rcpts, 1);
	test_assert_strcmp(r->addr->localpart, "b b");
	/* the message's own header starts right after the end line: a
	   sender's X-Bag-Rcpt-To: there adds no recipient */
	test_assert(env.header_size == input->v_offset);
	line = i_stream_read_next_line(input);
	test_assert_strcmp(line, "X-Bag-Rcpt-To: <mallory@evil.test>");
	i_stream_unref(&input);

	/* the null sender */
	str_truncate(msg, 0);
	bag_envelope_write(msg, &(struct smtp_address){ .localpart = NULL },
			   &mparams, rcpts, 1);
	str_append(msg, "\r\nbody");
	input = test_bag_input(str_c(msg));
	test_assert(bag_envelope_read(input, pool, &env, &error) == 0);
	test_assert(smtp_address_isnull(env.mail_from));
	i_stream_unref(&input);
	test_end();
}

static void test_bag_envelope_broken(void)
{
	static const char *broken[] = {
		"",
		"Subject: not bagged\r\n\r\nbody\r\n",
		"X-Bag-Mail-From: <a@example.net>\r\n\r\nno recipients\r\n",
		"X-Bag-Mail-From: <a@example.net>\r\n",
		"X-Bag-Rcpt-To: <b@example.org>\r\n"
		"X-Bag-Mail-From: <a@example.net>\r\n\r\n",
		"X-Bag-Mail-From: a@example.net\r\n"
		"X-Bag-Rcpt-To: <b@example.org>\r\n\r\n",
		"X-Bag-Mail-From: <a@example.net> FOO=bar\r\n"
		"X-Bag-Rcpt-To: <b@example.org>\r\n\r\n",
		"X-Bag-Mail-From: <a@example.net>\r\n"
		"X-Bag-Rcpt-To: <>\r\n\r\n",
		"X-Bag-Mail-From: <a@example.net>\r\n"
		"X-Bag-Rcpt-To: <b@example.org> NOTIFY=SOMETIMES\r\n\r\n",
		"X-Bag-Mail-From: <a@example.net>\r\n"
		"X-Bag-Rcpt-To: <b@example.org",
		/* not ended */
		"X-Bag-Mail-From: <a@example.net>\r\n"
		"X-Bag-Rcpt-To: <b@example.org>\r\n"
		"Subject: x\r\n\r\n",
		"X-Bag-Mail-From: <a@example.net>\r\n"
		"X-Bag-Rcpt-To: <b@example.org>\r\n"
		"X-Bag-Envelope-End: no\r\n\r\n",
	};
	struct bag_envelope env;
	struct istream *input;
	string_t *longline = t_str_new(BAG_ENVELOPE_LINE_MAX + 64);
	const char *error;
	unsigned int i;

	test_begin("bag envelope: broken");
	for (i = 0; i < N_ELEMENTS(broken); i++) {
		input = test_bag_input(broken[i]);
		test_assert_idx(bag_envelope_read(input,
						  pool_datastack_create(),
						  &env, &error) < 0, i);
		i_stream_unref(&input);
	}
	str_append(longline, "X-Bag-Mail-From: <a@example.net> ENVID=");
	while (str_len(longline) < BAG_ENVELOPE_LINE_MAX + 10)
		str_append_c(longline, 'x');
	str_append(longline, "\r\nX-Bag-Rcpt-To: <b@example.org>\r\n"
		   "X-Bag-Envelope-End: ok\r\n\r\n");
	input = test_bag_input(str_c(longline));
	test_assert(bag_envelope_read(input, pool_datastack_create(), &env,
				      &error) < 0);
	test_assert(strstr(error, "too long") != NULL);
	i_stream_unref(&input);
	test_end();
}

static void test_bag_envelope_rcpt_fits(void)
{
	pool_t pool = pool_datastack_create();
	struct bag_envelope_rcpt rcpt;
	struct smtp_params_mail mparams;
	struct smtp_address *from;
	string_t *local = t_str_new(128), *orcpt = t_str_new(512);
	const char *error;

	test_begin("bag_envelope_rcpt_fits()");
	i_zero(&mparams);
	test_assert(smtp_address_parse_mailbox(pool, "s@example.net", 0,
					       &from, &error) == 0);
	test_bag_envelope_rcpt(pool, &rcpt, "a@example.org", "");
	test_assert(bag_envelope_rcpt_fits(from, &mparams, &rcpt, &error));
	while (str_len(local) < 65)
		str_append_c(local, 'a');
	str_append(local, "@example.org");
	test_bag_envelope_rcpt(pool, &rcpt, str_c(local), "");
	test_assert(!bag_envelope_rcpt_fits(from, &mparams, &rcpt, &error));
	/* lib-smtp refuses an ORCPT longer than RFC 3461's 500, so only a
	   long path can make a line too long */
	str_append(orcpt, "a@");
	while (str_len(orcpt) < BAG_PATH_MAX_LEN)
		str_append(orcpt, "abcdefghi.");
	str_append(orcpt, "example.org");
	test_bag_envelope_rcpt(pool, &rcpt, str_c(orcpt), "");
	test_assert(!bag_envelope_rcpt_fits(from, &mparams, &rcpt, &error));
	test_end();
}

static void test_bag_usage_tiers(void)
{
	static const struct {
		uint64_t messages, bytes, tiers, charge;
	} table[] = {
		{ 0, 0, 0, 0 },
		{ 100000, 0, 0, 0 },
		{ 100000, 1000000000ULL, 0, 0 },
		{ 100001, 0, 2, 20 },
		{ 200000, 0, 2, 20 },
		{ 200001, 0, 3, 30 },
		{ 350000, 0, 4, 40 },
		{ 10, 2500000000ULL, 3, 30 },
		{ 10, 1000000001ULL, 2, 20 },
		/* the larger of the two decides */
		{ 350000, 2500000000ULL, 4, 40 },
		{ 150000, 2500000000ULL, 3, 30 },
	};
	struct bag_usage_limits limits;
	unsigned int i;

	test_begin("bag usage: tiers and charges");
	bag_usage_limits_default(&limits);
	for (i = 0; i < N_ELEMENTS(table); i++) {
		test_assert_idx(bag_usage_tiers(&limits, table[i].messages,
						table[i].bytes) ==
				table[i].tiers, i);
		test_assert_idx(bag_usage_charge(&limits, table[i].messages,
						 table[i].bytes) ==
				table[i].charge, i);
	}
	test_end();
}

static void test_bag_usage_limits(void)
{
	struct bag_usage_limits limits;
	const char *error;

	test_begin("bag usage: limits and crossing them");
	test_assert(bag_usage_limits_parse("1000", "1M", "25", &limits,
					   &error) == 0);
	test_assert(limits.messages == 1000 && limits.bytes == 1024 * 1024 &&
		    limits.price == 25);
	test_assert(bag_usage_charge(&limits, 1001, 0) == 50);
	test_assert(bag_usage_limits_parse("0", NULL, NULL, &limits,
					   &error) < 0);
	test_assert(bag_usage_limits_parse(NULL, "lots", NULL, &limits,
					   &error) < 0);
	test_assert(bag_usage_limits_parse(NULL, NULL, "-1", &limits,
					   &error) < 0);
	test_assert(bag_usage_limits_parse("", "", "", &limits, &error) == 0 &&
		    limits.messages == BAG_USAGE_DEFAULT_MESSAGES);

	bag_usage_limits_default(&limits);
	test_assert(bag_usage_crossed(&limits, 99999, 0, 100000, 10) ==
		    BAG_USAGE_CROSSED_NONE);
	test_assert(bag_usage_crossed(&limits, 100000, 0, 100001, 10) ==
		    BAG_USAGE_CROSSED_MESSAGES);
	test_assert(bag_usage_crossed(&limits, 100001, 0, 100002, 10) ==
		    BAG_USAGE_CROSSED_NONE);
	test_assert(bag_usage_crossed(&limits, 5, 999999000, 6,
				      1000000100) ==
		    BAG_USAGE_CROSSED_BYTES);
	test_end();
}

static void test_bag_usage_month(void)
{
	test_begin("bag usage: months across a boundary");
	/* 2026-12-01 00:00 in Los Angeles is 08:00 UTC */
	test_assert_strcmp(mirror_local_month("America/Los_Angeles",
					      1796111999), "2026-11");
	test_assert_strcmp(mirror_local_month("America/Los_Angeles",
					      1796112000), "2026-12");
	test_assert_strcmp(mirror_local_month("UTC", 1796111999),
			   "2026-12");
	/* the year's end in Berlin: 2026-12-31 23:00 UTC is January */
	test_assert_strcmp(mirror_local_month("Europe/Berlin", 1798758000),
			   "2027-01");
	test_assert_strcmp(mirror_local_month("Europe/Berlin", 1798757999),
			   "2026-12");
	test_assert(bag_usage_month_is_valid("2026-12"));
	test_assert(bag_usage_month_is_valid("2027-01"));
	test_assert(!bag_usage_month_is_valid("2026-13"));
	test_assert(!bag_usage_month_is_valid("2026-00"));
	test_assert(!bag_usage_month_is_valid("2026-1"));
	test_assert(!bag_usage_month_is_valid("26-12-01"));
	test_assert(!bag_usage_month_is_valid("2026/12"));
	test_end();
}

static void test_bag_flush_reply(void)
{
	static const struct {
		const char *line;
		bool valid;
	} tests[] = {
		{ "DONE\t3\t1\t2\t0", TRUE },
		{ "DONE\t3\t1\t2\t0\tconnect() failed\\t", TRUE },
		{ "BUSY", TRUE },
		{ "FAIL\tx is not bagged", TRUE },
		{ "DONE\t3\t1\t2", FALSE },
		{ "DONE\t3\t1\t2\t-1", FALSE },
		{ "DONE\ta\t1\t2\t0", FALSE },
		{ "DONE\t1\t1\t1\t1\te\textra", FALSE },
		{ "BUSY\tnow", FALSE },
		{ "FAIL", FALSE },
		{ "OK", FALSE },
		{ "", FALSE },
	};
	struct bag_flush_reply reply;
	const char *error;
	string_t *str = t_str_new(64);
	unsigned int i;

	test_begin("bag_flush_reply_parse() + append()");
	for (i = 0; i < N_ELEMENTS(tests); i++) {
		const char *const *args = t_strsplit_tabescaped(tests[i].line);
		int ret = bag_flush_reply_parse(args, &reply, &error);

		test_assert_idx((ret == 0) == tests[i].valid, i);
		if (ret < 0)
			continue;
		/* written back, the same line */
		str_truncate(str, 0);
		bag_flush_reply_append(str, &reply);
		test_assert_strcmp_idx(str_c(str), tests[i].line, i);
	}
	test_end();
}

int main(void)
{
	static void (*const test_functions[])(void) = {
		test_bag_host_parse,
		test_bag_nets,
		test_bag_rcpt_parse,
		test_bag_retry_period_parse,
		test_bag_modes,
		test_bag_def_roundtrip,
		test_bag_def_decode_broken,
		test_bag_box_user_name,
		test_mirror_key_unescape,
		test_bag_envelope_roundtrip,
		test_bag_envelope_broken,
		test_bag_envelope_rcpt_fits,
		test_bag_usage_tiers,
		test_bag_usage_limits,
		test_bag_usage_month,
		test_bag_flush_reply,
		NULL
	};
	return test_run(test_functions);
}
