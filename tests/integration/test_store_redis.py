"""Several servers, one store: two private Dovecot instances whose registry
is one real redis-server (through each instance's dict server, as
`dict { mirror = redis:... }` on a real fleet). Mirrors added on one server
act on mail delivered through the other, the mirror users log in on both,
the counters add up, the expiry scan needs no dict iteration (Redis has
none), and a store outage follows the failure policy and loses nothing.

Each instance has its own mail directory here; on a fleet the mailboxes
live on shared storage (or behind a director), which this doesn't test."""

import imaplib
import threading

import pytest

from conftest import make_message

ALICE, BOB = "alice@example.com", "bob@example.com"
USERS = [ALICE, BOB]
DAY = 86400
PREFIX = "fleet/"


@pytest.fixture
def fleet(make_sandbox, redis_server):
    store = redis_server.uri(PREFIX)

    def start(settings=None):
        return make_sandbox(users=USERS, store=store, settings=settings)
    return start


def ok(replies):
    rcpt, data = replies
    assert all(code == 250 for code, _ in rcpt), rcpt
    assert data and all(code == 250 for code, _ in data), data


def listed(sb):
    return {m["id"]: m for m in
            sb.doveadm("mirror", "list", json_output=True).json}


def test_a_mirror_added_on_one_server_acts_on_the_other(fleet, redis_server):
    a, b = fleet(), fleet()
    m = a.mirror_add(ALICE)
    storage, password = m["storage"], m["password"]
    # the definition, the counters and the storage user are in Redis
    keys = redis_server.keys(PREFIX + "mirror/")
    assert PREFIX + "mirror/user/" + storage in keys, keys
    record = redis_server.command("GET", PREFIX + "mirror/user/" + storage)
    assert "{ARGON2ID}" in record and password not in record
    assert listed(b)[m["id"]]["storage"] == storage

    ok(b.deliver([ALICE], make_message(subject="through b")))
    # the storage user created on A logs in on B at once (Dovecot's dict
    # passdb/userdb reads the same store), over IMAP and POP3
    msgs = b.imap_messages(storage, password=password)
    assert len(msgs) == 1 and b"Subject: through b" in msgs[0]
    assert len(b.pop3_messages(storage, password=password)) == 1
    # and on A, where nothing was delivered yet
    assert a.imap_messages(storage, password=password) == []
    ok(a.deliver([ALICE], make_message(subject="through a")))
    assert len(a.imap_messages(storage, password=password)) == 1
    # one counter for the fleet
    assert listed(a)[m["id"]]["copies"] == "2"
    assert listed(b)[m["id"]]["copies"] == "2"
    # a mirror removed on B stops on A
    b.doveadm("mirror", "remove", str(m["id"]))
    ok(a.deliver([ALICE], make_message(subject="after remove")))
    assert listed(a) == {}


def test_two_servers_delivering_at_once(fleet):
    a, b = fleet(), fleet()
    m = a.mirror_add(ALICE)
    count = 15
    errors = []

    def deliver(sb, tag):
        try:
            for i in range(count):
                ok(sb.deliver([ALICE],
                              make_message(subject="%s %d" % (tag, i))))
        except Exception as e:  # reported below
            errors.append(e)
    threads = [threading.Thread(target=deliver, args=(sb, tag))
               for sb, tag in ((a, "a"), (b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    # atomic increments: no update lost between the servers
    assert listed(a)[m["id"]]["copies"] == str(2 * count)
    assert listed(a)[m["id"]]["failures"] == "0"
    stored = (len(a.imap_messages(m["storage"], password=m["password"])) +
              len(b.imap_messages(m["storage"], password=m["password"])))
    assert stored == 2 * count


def test_expiry_scan_without_dict_iteration(fleet, redis_server):
    a, b = fleet(), fleet()
    m = a.mirror_add(ALICE, days=1)
    for i in range(3):
        ok(b.deliver([ALICE], make_message(subject="old %d" % i)))
    index_key = PREFIX + "mirror/expire/" + m["storage"]
    oldest = int(redis_server.command("GET", index_key))
    # nothing is due yet: no storage is even opened
    r = b.doveadm("mirror", "expire", json_output=True)
    assert all(row["removed"] == "0" for row in r.json), r.stdout
    # two days later, on the server that holds the copies
    later = str(oldest + 2 * DAY)
    r = b.doveadm("mirror", "expire", "-T", later, json_output=True)
    assert [row["removed"] for row in r.json] == ["3"], r.stdout
    assert b.imap_messages(m["storage"], password=m["password"]) == []
    assert redis_server.command("GET", index_key) is None


def test_store_outage(fleet, redis_server):
    a = fleet()
    b = fleet(settings={"mirror_failure": "tempfail"})
    m = a.mirror_add(ALICE)
    ok(a.deliver([ALICE], make_message(subject="before")))
    assert a.maildir_count(m["storage"]) == 1

    redis_server.stop()
    # accept: the recipient gets the message, the failure is logged
    ok(a.deliver([ALICE], make_message(subject="during")))
    assert a.maildir_count(ALICE) == 2
    assert "mirror: Can't look up mirrors: " in a.log()
    # tempfail: 451, nothing kept, the MTA retries later
    rcpt, data = b.deliver([ALICE], make_message(subject="refused"))
    assert [code for code, _ in rcpt] == [250] and \
        [code for code, _ in data] == [451], (rcpt, data)
    assert b.maildir_count(ALICE) == 0
    # doveadm says why, with a temporary-failure exit code
    r = a.doveadm("mirror", "list", check=False)
    assert r.returncode == 75, (r.returncode, r.stderr)
    assert "redis" in r.stderr, r.stderr
    # IMAP and POP3 fail closed (README: the plugin can't tell which
    # users are read-only storages)
    with pytest.raises(imaplib.IMAP4.error):
        a.imap_messages(ALICE)

    redis_server.start()
    # nothing stored before the outage is lost, and copying resumes
    ok(a.deliver([ALICE], make_message(subject="after")))
    ok(b.deliver([ALICE], make_message(subject="retried")))
    assert a.maildir_count(m["storage"]) == 2
    assert b.maildir_count(m["storage"]) == 1
    assert len(a.imap_messages(ALICE)) == 3
    assert listed(a)[m["id"]]["copies"] == "3"
