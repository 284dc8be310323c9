"""Mail Bagging: exactly once, up to the one message in flight. A flush
killed with SIGKILL at each of its fault points (compiled only into test
builds: configure --enable-fault-points) may send again at most the
message whose 250 wasn't recorded yet, and never sends a delivery status
notification twice. The customer's MTA is aiosmtpd; the notifications
are read with flufl.bounce."""

import json
import os
import subprocess
import time

import pytest
from flufl.bounce import all_failures

from conftest import SANDBOX, master_pid, alive
from faults import needs_fault_points
from peers import CustomerMTA
from test_bag import (DOMAIN, LOCAL, SMTPSession, bag_add, bag_messages,
                      deliver, etrn_port, read_outbox, wait_until)

pytestmark = needs_fault_points


@pytest.fixture
def sb(make_sandbox, faults):
    return make_sandbox(users=[LOCAL], settings={"bag_enabled": "yes"},
                        config=faults.config)


@pytest.fixture
def customer():
    mta = CustomerMTA().start()
    yield mta
    mta.stop()


def killed_flush(sb, faults, name, nth=1):
    """doveadm bag flush with a fault point armed: the flush process
    kills itself there."""
    faults.arm(name, nth)
    r = sb.doveadm("bag", "flush", DOMAIN, check=False)
    assert faults.fired, "fault point %s not reached: %s" % (name, r.stderr)
    sb.wait_log("Fault point %s" % name)
    assert r.returncode == 75, r.stderr
    return r


def received(customer, rcpt):
    return [m.subject for m in customer.messages if rcpt in m.rcpts]


def test_kill_after_partial_delivery_resends_no_accepted_recipient(
        sb, faults, customer):
    """One recipient answers 250, the other 451: the flush records who is
    done and is killed before the message leaves its place; the next flush
    sends it to the waiting recipient only."""
    bag_add(sb, nets="127.0.0.1", host=customer.hostport)
    deliver(sb, ["a@" + DOMAIN, "b@" + DOMAIN], subject="partial")
    customer.handler.rcpt_replies = {"b@" + DOMAIN: "451 4.2.0 later"}
    killed_flush(sb, faults, "after-record")
    assert received(customer, "a@" + DOMAIN) == ["partial"]
    customer.handler.rcpt_replies = {}
    r = sb.doveadm("bag", "flush", DOMAIN, json_output=True).json[0]
    assert r["delivered"] == "1", r
    assert received(customer, "a@" + DOMAIN) == ["partial"]
    assert received(customer, "b@" + DOMAIN) == ["partial"]
    assert bag_messages(sb) == 0


def test_kill_after_the_notification_sends_it_once(sb, faults, customer):
    """A 550 for one recipient: the notification goes out, then the flush
    is killed. The next flush neither notifies again nor sends the message
    again to the recipient that took it."""
    bag_add(sb, nets="127.0.0.1", host=customer.hostport)
    deliver(sb, ["gone@" + DOMAIN, "ok@" + DOMAIN], subject="bounce")
    customer.handler.rcpt_replies = {
        "gone@" + DOMAIN: "550 5.1.1 no such user"}
    killed_flush(sb, faults, "after-dsn")
    read_outbox(sb, 1)
    sb.doveadm("bag", "flush", DOMAIN)
    assert bag_messages(sb) == 0
    (_, dsn), = read_outbox(sb, 1)
    assert all_failures(dsn)[1] == {b"gone@cust.test"}
    assert received(customer, "ok@" + DOMAIN) == ["bounce"]


def test_etrn_count_right_after_a_killed_flush(sb, faults, customer):
    """ETRN's "N pending" comes from the registry's counter: a flush
    killed midway leaves it right for what is left."""
    bag_add(sb, nets="127.0.0.1", host=customer.hostport)
    for i in range(5):
        deliver(sb, ["a@" + DOMAIN], subject="c%d" % i)
    # the counter is written at most every 100 ms: a customer that
    # answers as slowly as a real one over the Internet gets each removal
    # written
    customer.handler.delay = 0.2
    killed_flush(sb, faults, "after-commit", 2)
    customer.handler.delay = 0
    assert len(customer.messages) == 2 and bag_messages(sb) == 3
    s = SMTPSession(etrn_port(sb))
    s.cmd("EHLO client.test")
    code, text = s.cmd("ETRN " + DOMAIN)
    s.close()
    assert code == 253 and "3 pending messages" in text, text
    customer.wait_for(5)
    wait_until(lambda: bag_messages(sb) == 0, what="an empty bag")
    assert sorted(m.subject for m in customer.messages) == \
        ["c%d" % i for i in range(5)]


# Every fault point, at every time a flush of mixed outcomes reaches it:
# m0 plain; m1 with a refused recipient (a notification); m2 with a
# recipient that answers 451 in the first flush only; m3, m4 plain.
FAULTS = [("after-data", n) for n in range(1, 6)] + \
    [("after-record", n) for n in range(1, 3)] + \
    [("after-dsn", 1)] + [("after-commit", n) for n in range(1, 5)]


@pytest.mark.parametrize("point,nth", FAULTS,
                         ids=["%s:%d" % f for f in FAULTS])
def test_killed_anywhere(sb, faults, customer, point, nth):
    bag_add(sb, nets="127.0.0.1", host=customer.hostport)
    deliver(sb, ["a@" + DOMAIN], subject="m0")
    deliver(sb, ["a@" + DOMAIN, "gone@" + DOMAIN], subject="m1")
    deliver(sb, ["a@" + DOMAIN, "later@" + DOMAIN], subject="m2")
    deliver(sb, ["a@" + DOMAIN], subject="m3")
    deliver(sb, ["a@" + DOMAIN], subject="m4")
    customer.handler.rcpt_replies = {
        "gone@" + DOMAIN: "550 5.1.1 no such user",
        "later@" + DOMAIN: "451 4.2.0 later"}
    killed_flush(sb, faults, point, nth)
    customer.handler.rcpt_replies = {
        "gone@" + DOMAIN: "550 5.1.1 no such user"}
    r = sb.doveadm("bag", "flush", DOMAIN, json_output=True)
    assert r.json[0]["error"] == ""
    assert bag_messages(sb) == 0

    # everything arrived; again only what was in flight at the kill
    got = {}
    for m in customer.messages:
        for rcpt in m.rcpts:
            got.setdefault((m.subject, rcpt), 0)
            got[(m.subject, rcpt)] += 1
    want = {("m%d" % i, "a@" + DOMAIN) for i in range(5)} | \
        {("m2", "later@" + DOMAIN)}
    assert set(got) == want, got
    twice = {subject for (subject, _), n in got.items() if n > 1}
    assert len(twice) <= 1 and max(got.values()) <= 2, got
    if point != "after-data":
        # recorded before the kill: nothing at all came twice
        assert not twice, got

    # one notification about gone@, or none if the flush died while it
    # was being sent: never two
    time.sleep(0.5)
    dsns = [dsn for _, dsn in read_outbox(sb, 0)]
    assert len(dsns) <= 1
    if len(dsns) == 1:
        assert all_failures(dsns[0])[1] == {b"gone@cust.test"}
    else:
        assert point == "after-record" and nth == 1, "no notification"
        sb.wait_log("the notification about recipient 2 may not have "
                    "been sent (a flush died sending it): not sent again")


@pytest.mark.xdist_group("clock")
def test_dovecot_stop_ends_a_flush_cleanly(sb, customer):
    """dovecot stop in the middle of a flush: the flush ends at once, in
    order (no crash, its result recorded), what the customer confirmed
    stays confirmed and the rest waits for the next flush."""
    bag_add(sb, nets="127.0.0.1", host=customer.hostport)
    for i in range(6):
        deliver(sb, ["a@" + DOMAIN], subject="s%d" % i)
    # the flush would take 9 s: a stop that waited for it would let all 6
    # through
    customer.handler.delay = 1.5
    s = SMTPSession(etrn_port(sb))
    s.cmd("EHLO client.test")
    assert s.cmd("ETRN " + DOMAIN)[0] == 253
    s.close()
    customer.wait_for(2)
    pid = master_pid(sb.dir)
    subprocess.run([SANDBOX, "stop", sb.dir], check=True)
    assert not alive(pid)
    log = sb.log()
    assert "Flush of cust.test (etrn): " in log
    assert "stopped: The bag service is shutting down" in log, log[-2000:]
    sent = len(customer.messages)
    assert sent < 6
    r = subprocess.run([SANDBOX, "start", sb.dir, "--set",
                        "bag_enabled=yes"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    sb.info = json.loads(r.stdout)
    sb.conf = sb.info["conf"]
    # what was confirmed left the bag; the rest (and at most the one in
    # flight) is sent now
    assert bag_messages(sb) in (6 - sent, 6 - sent + 1)
    customer.handler.delay = 0
    sb.doveadm("bag", "flush", DOMAIN)
    subjects = [m.subject for m in customer.messages]
    assert sorted(set(subjects)) == ["s%d" % i for i in range(6)]
    assert len(subjects) <= 7
    assert bag_messages(sb) == 0
