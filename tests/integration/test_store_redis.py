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
import re
import shutil
import tempfile
import threading
import time
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from conftest import eventually, make_message
from peers import CustomerMTA, fetchmail_etrn

# the registry is the test's own: run it once, in the sanitizer pass
pytestmark = pytest.mark.own_registry

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
    eventually(lambda: listed(a)[m["id"]]["copies"], "2")
    eventually(lambda: listed(b)[m["id"]]["copies"], "2")
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
    eventually(lambda: listed(a)[m["id"]]["copies"], str(2 * count))
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
    eventually(lambda: listed(a)[m["id"]]["copies"], "3")


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


# The nightly scan: once for the fleet

LA = ZoneInfo("America/Los_Angeles")


def expire_lines(sb, pattern):
    return [l for l in sb.log().splitlines()
            if "mirror-expire: " in l and re.search(pattern, l)]


def fleet_lines(sbs, pattern):
    return [l for sb in sbs for l in expire_lines(sb, pattern)]


def wait_lines(sbs, pattern, timeout, count=1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        lines = fleet_lines(sbs, pattern)
        if len(lines) >= count:
            return lines
        time.sleep(0.1)
    raise AssertionError("no %d lines matching %r in %ds:\n%s" % (
        count, pattern, timeout,
        "\n".join(sb.log()[-2000:] for sb in sbs)))


def schedule_in(secs, lease="4s"):
    target = int(time.time()) + secs
    return target, {"mirror_expire_time":
                    datetime.fromtimestamp(target, LA).strftime("%H:%M:%S"),
                    "mirror_expire_lease": lease}


@pytest.mark.xdist_group("clock")
def test_the_nightly_scan_runs_once_for_the_fleet(fleet, redis_server):
    target, settings = schedule_in(10)
    a, b = fleet(settings), fleet(settings)
    m = a.mirror_add(ALICE, days=1)
    ok(b.deliver([ALICE], make_message(subject="kept")))
    wait_lines([a, b], r"Expiry scan of .* finished", 60)
    # the other server lost the lease, or found the scan recorded already
    wait_lines([a, b], r"another server has taken it|: already done at", 30)
    time.sleep(1)
    assert len(wait_lines([a, b], r"Running the expiry scan", 1)) == 1
    last = int(redis_server.command("GET", PREFIX + "mirror/expire-last-run"))
    assert last >= target
    holder = redis_server.command(
        "GET", "%smirror/expire-lease/%d/holder" % (PREFIX, target))
    attempt = int(holder.split()[0])
    # Both servers may lose an attempt when they take it at the same
    # moment (each reads the other's ticket too): then one of them takes
    # the next. Never a takeover: the holder was alive and scanned.
    for k in range(1, attempt):
        lost = fleet_lines(
            [a, b], r"another server has taken it \(attempt %d\)" % k)
        assert len(lost) == 2, (holder, lost)
    assert not fleet_lines([a, b], "taking it over")
    assert a.maildir_count(m["storage"]) == 1


@pytest.mark.xdist_group("clock")
def test_a_server_waits_while_the_lease_holder_scans(fleet, redis_server):
    target, settings = schedule_in(10, lease="3s")
    lease = "%smirror/expire-lease/%d/" % (PREFIX, target)
    # another server took the run and is scanning: it refreshes its lease
    redis_server.command("SET", lease + "1", "1")
    stop = threading.Event()

    def refresh():
        while not stop.is_set():
            redis_server.command("SET", lease + "holder",
                                 "1 %d otherhost/7" % int(time.time()))
            stop.wait(0.5)
    refresher = threading.Thread(target=refresh)
    refresher.start()
    try:
        a = fleet(settings)
        wait_lines([a], r"another server has taken it \(attempt 1\)", 30)
        # it keeps waiting, longer than the lease, while the holder lives
        time.sleep(5)
        assert not expire_lines(a, r"Running|taking it over")
        # the holder's scan ends and is recorded
        redis_server.command("SET", PREFIX + "mirror/expire-last-run",
                             str(target + 1))
        wait_lines([a], r": already done at", 30)
    finally:
        stop.set()
        refresher.join()
    assert not expire_lines(a, r"Running|taking it over")


@pytest.mark.xdist_group("clock")
def test_a_silent_lease_holder_is_taken_over(fleet, redis_server):
    target, settings = schedule_in(10, lease="3s")
    # a server took the run and died before it scanned
    redis_server.command("SET", "%smirror/expire-lease/%d/1"
                         % (PREFIX, target), "1")
    redis_server.command("SET", "%smirror/expire-lease/%d/holder"
                         % (PREFIX, target),
                         "1 %d deadhost/42" % (target - 100))
    a = fleet(settings)
    lines = wait_lines([a], r"deadhost/42 has been silent for \d+ s: "
                       r"taking it over", 60)
    assert "Warning: " in lines[0]
    wait_lines([a], r"Expiry scan of .* finished", 60)
    holder = redis_server.command(
        "GET", "%smirror/expire-lease/%d/holder" % (PREFIX, target))
    assert holder.startswith("2 ") and "deadhost" not in holder, holder


def test_two_servers_lose_no_administrator_change(fleet):
    """Two administrators at once, one on each server: 50 mirror adds and
    50 bag recipient adds each (20 under the sanitizers), all kept, every
    id once (the registry's lock among servers,
    test_registry_integrity.py)."""
    from test_registry_integrity import lose_nothing
    a = fleet()
    b = fleet()
    a.add_user("audit@example.com")
    b.add_user("audit@example.com")
    lose_nothing([a, b])
