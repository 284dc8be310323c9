"""Several servers, one store: two private Dovecot instances whose registry
is one real redis-server (through each instance's dict server, as
`dict { mirror = redis:... }` on a real fleet). Mirrors added on one server
act on mail delivered through the other, the mirror users log in on both,
the counters add up, the expiry scan needs no dict iteration (Redis has
none), and a store outage follows the failure policy and loses nothing.

The two instances share one mail directory, as the servers of a fleet
share their mail storage: one mirror storage, one bag (and its flush lock,
an fcntl lock beside it) for both."""

import imaplib
import shutil
import tempfile
import threading
import time

import pytest

from conftest import make_message
from peers import CustomerMTA, fetchmail_etrn

ALICE, BOB = "alice@example.com", "bob@example.com"
USERS = [ALICE, BOB]
DAY = 86400
PREFIX = "fleet/"


@pytest.fixture
def fleet(make_sandbox, redis_server):
    store = redis_server.uri(PREFIX)
    mail = tempfile.mkdtemp(prefix="mirror-fleet-mail-")

    def start(settings=None):
        return make_sandbox(users=USERS, store=store, settings=settings,
                            mail_dir=mail)
    yield start
    shutil.rmtree(mail, ignore_errors=True)


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
    # and on A: one storage for the fleet
    assert len(a.imap_messages(storage, password=password)) == 1
    ok(a.deliver([ALICE], make_message(subject="through a")))
    assert len(b.imap_messages(storage, password=password)) == 2
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
    msgs = a.imap_messages(m["storage"], password=m["password"])
    subjects = sorted(x.split(b"Subject: ")[1].split(b"\r\n")[0]
                      for x in msgs)
    assert subjects == sorted(b"%s %d" % (t, i) for t in (b"a", b"b")
                              for i in range(count))


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
    assert b.maildir_count(ALICE) == 2
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
    assert a.maildir_count(m["storage"]) == 3
    assert len(a.imap_messages(ALICE)) == 4
    assert listed(a)[m["id"]]["copies"] == "3"


# Mail Bagging on the fleet

DOMAIN = "cust.test"
BAG_SETTINGS = {"bag_enabled": "yes"}


@pytest.fixture
def customer():
    mta = CustomerMTA().start()
    yield mta
    mta.stop()


def bag_deliver(sb, rcpt, subject):
    ok(sb.deliver([rcpt], make_message(subject=subject)))


def subjects_of(messages):
    return sorted(m.subject for m in messages)


def bag_messages(sb):
    return int(sb.doveadm("bag", "show", DOMAIN,
                          json_output=True).json[0]["messages"])


def test_a_bag_filled_through_one_server_is_flushed_by_etrn_at_the_other(
        fleet, customer):
    a, b = fleet(BAG_SETTINGS), fleet(BAG_SETTINGS)
    a.doveadm("bag", "add", "-e", "127.0.0.1", "-h", customer.hostport,
              DOMAIN)
    for i in range(3):
        bag_deliver(a, "u%d@%s" % (i, DOMAIN), "via a %d" % i)
    bag_deliver(b, "x@" + DOMAIN, "via b")
    # one counter for the fleet: ETRN at B knows what A took
    r = fetchmail_etrn(b.info["etrn"]["port"], [DOMAIN])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "253 2.0.0 OK, 4 pending messages for node cust.test started" \
        in r.stdout + r.stderr
    customer.wait_for(4)
    assert subjects_of(customer.messages) == \
        ["via a 0", "via a 1", "via a 2", "via b"]
    deadline = time.time() + 30
    while bag_messages(a) != 0 and time.time() < deadline:
        time.sleep(0.1)
    assert bag_messages(a) == 0
    # the month's usage adds up across the servers
    usage = a.doveadm("bag", "usage", DOMAIN, json_output=True).json[0]
    assert usage["messages"] == "4", usage


def test_two_etrns_at_two_servers_send_each_message_once(fleet, customer):
    a, b = fleet(BAG_SETTINGS), fleet(BAG_SETTINGS)
    a.doveadm("bag", "add", "-e", "127.0.0.1", "-h", customer.hostport,
              DOMAIN)
    count = 12
    for i in range(count):
        bag_deliver(a if i % 2 else b, "u@" + DOMAIN, "m%02d" % i)
    # the customer is slow, so that both flushes overlap
    customer.handler.delay = 0.2
    results = []

    def etrn(sb):
        results.append(fetchmail_etrn(sb.info["etrn"]["port"], [DOMAIN]))
    threads = [threading.Thread(target=etrn, args=(sb,)) for sb in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.returncode == 0 for r in results), \
        [r.stdout + r.stderr for r in results]
    customer.wait_for(count, timeout=60)
    deadline = time.time() + 30
    while bag_messages(b) != 0 and time.time() < deadline:
        time.sleep(0.1)
    # a late duplicate would come after the bag is empty
    time.sleep(1)
    assert subjects_of(customer.messages) == \
        ["m%02d" % i for i in range(count)]
    assert bag_messages(a) == 0
