"""The registry in SQL: an SQLite database through Dovecot's dict-sql
(sandbox --store sqlite, set up from doc/example-config/
dovecot-mirror-dict-sql.conf.ext and mirror-dict.sql), with the suite's main paths on it: mirrors and
their storage users (Dovecot's dict passdb reading them from SQL), the
counters (dict_atomic_inc as SQL UPDATEs), a bag with a recipient list
flushed by ETRN (fetchmail), monthly usage, and the expiry scan.
MIRROR_TEST_STORE=sqlite runs the whole suite this way."""

import json
import os
import sqlite3
import time

import pytest

from conftest import eventually, make_message
from peers import CustomerMTA, fetchmail_etrn

# the registry is the test's own: run it once, in the sanitizer pass
pytestmark = pytest.mark.own_registry

ALICE = "alice@example.com"
DOMAIN = "cust.test"
DAY = 86400


@pytest.fixture
def sb(make_sandbox):
    return make_sandbox(users=[ALICE], store="sqlite",
                        settings={"bag_enabled": "yes"})


def rows(sb, ns, key_prefix):
    con = sqlite3.connect(os.path.join(sb.dir, "state", "mirror",
                                       "registry.sqlite"))
    try:
        return dict(con.execute(
            "SELECT key, value FROM mirror_registry WHERE ns = ? AND "
            "substr(key, 1, ?) = ?", (ns, len(key_prefix), key_prefix)))
    finally:
        con.close()


def ok(replies):
    rcpt, data = replies
    assert all(code == 250 for code, _ in rcpt), rcpt
    assert data and all(code == 250 for code, _ in data), data


def test_mirrors_and_storage_users_in_sql(sb):
    m = sb.mirror_add(ALICE, days=1)
    user_row = rows(sb, "mirror", "user/")[
        "user/" + m["storage"]]
    assert user_row.startswith('{"password":"{ARGON2ID}')
    assert m["password"] not in user_row
    for i in range(3):
        ok(sb.deliver([ALICE], make_message(subject="m%d" % i)))
    # Dovecot's dict passdb and userdb read the storage user from SQL
    msgs = sb.imap_messages(m["storage"], password=m["password"])
    assert len(msgs) == 3
    eventually(lambda: sb.doveadm("mirror", "list", json_output=True)
               .json[0]["copies"], "3")
    eventually(lambda: rows(sb, "mirror", "status/").get(
        "status/%s/copies" % m["id"]), "3")
    # the expiry scan reads the index rows, and removes what is due
    oldest = int(rows(sb, "mirror", "expire/")["expire/" + m["storage"]])
    r = sb.doveadm("mirror", "expire", "-T", str(oldest + 2 * DAY),
                   json_output=True)
    assert [row["removed"] for row in r.json] == ["3"], r.stdout
    assert "expire/" + m["storage"] not in rows(sb, "mirror", "expire/")
    sb.doveadm("mirror", "remove", "-p", str(m["id"]))
    assert rows(sb, "mirror", "source/") == {}


def test_a_bag_in_sql_flushed_by_etrn(sb):
    customer = CustomerMTA().start()
    try:
        sb.doveadm("bag", "add", "-e", "127.0.0.1", "-h", customer.hostport,
                   DOMAIN)
        sb.doveadm("bag", "recipient", "add", DOMAIN, "a@" + DOMAIN,
                   "b@" + DOMAIN)
        assert rows(sb, "bag", "rcpts/")["rcpts/" + DOMAIN] == \
            '["a@cust.test","b@cust.test"]'
        s = sb.lmtp()
        try:
            assert s.cmd("MAIL FROM:<s@remote.test>")[0] == 250
            assert s.cmd("RCPT TO:<nobody@%s>" % DOMAIN)[0] == 550
        finally:
            s.close()
        for rcpt in ("a@" + DOMAIN, "b@" + DOMAIN):
            ok(sb.deliver([rcpt], make_message(subject=rcpt)))
        r = fetchmail_etrn(sb.info["etrn"]["port"], [DOMAIN])
        assert "253 2.0.0 OK, 2 pending messages" in r.stdout + r.stderr, \
            r.stdout + r.stderr
        customer.wait_for(2)
        assert sorted(m.subject for m in customer.messages) == \
            ["a@" + DOMAIN, "b@" + DOMAIN]
        usage = sb.doveadm("bag", "usage", DOMAIN, json_output=True).json[0]
        assert usage["messages"] == "2"
        deadline = time.time() + 30
        while time.time() < deadline and sb.doveadm(
                "bag", "show", DOMAIN, json_output=True).json[0][
                    "messages"] != "0":
            time.sleep(0.1)
        sb.doveadm("bag", "remove", "-f", DOMAIN)
        # what stays: the (empty) list of bags, and the month's usage
        left = rows(sb, "bag", "")
        assert left.pop("domains") == "[]"
        assert all(k.startswith("usage/") for k in left), left
    finally:
        customer.stop()


def test_check_and_repair_in_sql(sb):
    """doveadm mirror check reads the table with dict-sql's iteration."""
    m = sb.mirror_add(ALICE)
    for i in range(2):
        ok(sb.deliver([ALICE], make_message(subject="m%d" % i)))
    # counted by mirror-writer (what it has yet to count is left out of
    # a reset)
    eventually(lambda: rows(sb, "mirror", "status/").get(
        "status/%s/copies" % m["id"]), "2")
    r = sb.doveadm("mirror", "check", json_output=True)
    assert r.json == []

    con = sqlite3.connect(os.path.join(sb.dir, "state", "mirror",
                                       "registry.sqlite"))
    try:
        with con:
            con.execute("UPDATE mirror_registry SET value = 'zz' WHERE "
                        "ns = 'mirror' AND key = ?",
                        ("status/%s/copies" % m["id"],))
            con.execute("DELETE FROM mirror_registry WHERE ns = 'mirror' "
                        "AND key = 'sources'")
            con.execute("INSERT INTO mirror_registry VALUES ('mirror', "
                        "'user/ghost@example.com', '{\"password\":\"x\"}')")
    finally:
        con.close()
    copies = "shared/mirror/status/%s/copies" % m["id"]
    ghost = ("shared/mirror/user/ghost@example.com",
             "a login of no mirror, bag, ATRN identity or POP3 box",
             "left: removing a login is the administrator's call "
             "(doveadm dict unset)")
    for args, code, done in (([], 65, "would be "),
                             (["--repair"], 65, ""), ([], 65, None)):
        r = sb.doveadm("mirror", "check", *args, json_output=True,
                       check=False)
        assert r.returncode == code, r.stderr
        found = [(x["key"], x["problem"], x["action"])
                 for x in json.loads(r.stdout)]
        assert found == ([] if done is None else [
            ("shared/mirror/sources", "missing",
             done + "rebuilt from the definitions"),
            (copies, "not a counter: 'zz'",
             done + "reset to 2 from the hash chain")]) + [ghost], found
    assert rows(sb, "mirror", "status/")[
        "status/%s/copies" % m["id"]] == "2"
    assert rows(sb, "mirror", "sources") == {"sources": '["%s"]' % ALICE}
