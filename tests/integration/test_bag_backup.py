"""Mail Bagging, part 2: Backup Domains. The bag service retries the
customer's MTA by itself (aiosmtpd, down and then back up), backs off,
survives restarts, bounces what waited longer than the retry period with a
notification a bounce parser reads, and warns about delays when told to."""

import email
import json
import os
import re
import socket
import subprocess
import time

import pytest
from flufl.bounce import all_failures

from conftest import REGISTRY, SANDBOX
from peers import CustomerMTA, free_port
from test_bag import (DOMAIN, LOCAL, bag_add, bag_messages, bag_show,
                      deliver, wait_until)

FAST = {"bag_enabled": "yes", "bag_backup_retry_min": "2s",
        "bag_backup_retry_max": "4s"}


def backup_add(sb, port, period=None, domain=DOMAIN):
    args = ["bag", "add", "-b", "-h", "127.0.0.1:%d" % port]
    if period is not None:
        args += ["-p", period]
    return sb.doveadm(*(args + [domain]), json_output=True).json[0]


def outbox_messages(sb):
    out = []
    for path in sb.outbox():
        with open(path, "rb") as f:
            data = f.read()
        out.append(email.message_from_bytes(data.split(b"\n", 1)[1]))
    return out


@pytest.mark.nosan
def test_backup_add_and_bad_input(make_sandbox):
    sb = make_sandbox(users=[LOCAL], settings=FAST)
    row = backup_add(sb, 2525, period="3d")
    assert row["modes"] == "backup" and row["retry_period"] == "259200"
    assert row["host"] == "127.0.0.1:2525"
    # a number of seconds, as the manual says, and with a unit
    for period, secs in (("3600", "3600"), ("20", "20"), ("60", "60"),
                         ("90s", "90"), ("2 mins", "120")):
        row = backup_add(sb, 2525, period=period, domain="p%s.test" % secs)
        assert row["retry_period"] == secs, (period, row)
    for args in (["-b", DOMAIN], ["-b", "-p", "0", "-h", "mx", "x.test"],
                 ["-b", "-p", "400d", "-h", "mx", "x.test"],
                 ["-p", "3d", "-h", "mx", "-a", "o@x.test", "x.test"],
                 ["-h", "mx", "x.test"]):
        r = sb.doveadm("bag", "add", *args, check=False)
        assert r.returncode == 64, (args, r.stderr)
    assert [r["domain"] for r in
            sb.doveadm("bag", "list", json_output=True).json] == [
        DOMAIN, "p120.test", "p20.test", "p3600.test", "p60.test",
        "p90.test"]


@pytest.mark.xdist_group("clock")
def test_outage_then_back_every_message_once(make_sandbox):
    sb = make_sandbox(users=[LOCAL], settings=FAST)
    port = free_port()
    backup_add(sb, port)
    for i in range(3):
        deliver(sb, ["a@" + DOMAIN, "b@" + DOMAIN], subject="o%d" % i)
    # the customer's MTA is down: the tries fail and back off
    wait_until(lambda: int(bag_show(sb)["failed_tries"]) >= 2,
               timeout=30, what="failed tries")
    show = bag_show(sb)
    assert show["messages"] == "3" and show["next_retry"] != ""
    assert "connect" in show["last_flush_result"]
    # back up: the next try delivers everything, once
    customer = CustomerMTA(port=port).start()
    try:
        customer.wait_for(3, timeout=30)
        wait_until(lambda: bag_messages(sb) == 0, what="an empty bag")
        time.sleep(3)
        msgs = customer.messages
        assert sorted(m.subject for m in msgs) == ["o0", "o1", "o2"]
        assert all(m.rcpts == ["a@" + DOMAIN, "b@" + DOMAIN]
                   for m in msgs)
        assert customer.handler.max_open == 1
        show = bag_show(sb)
        assert show["failed_tries"] == "0" and show["next_retry"] == ""
        sb.wait_log("(backup)")
    finally:
        customer.stop()


@pytest.mark.xdist_group("clock")
def test_retry_intervals_back_off(make_sandbox):
    """A customer that answers 451: the tries come 2, 4, 4 seconds apart
    (bag_backup_retry_min = 2s, doubling to bag_backup_retry_max = 4s)."""
    sb = make_sandbox(users=[LOCAL], settings=FAST)
    customer = CustomerMTA().start()
    try:
        customer.handler.rcpt_replies = {"a@" + DOMAIN: "451 4.3.0 later"}
        backup_add(sb, customer.port)
        deliver(sb, ["a@" + DOMAIN])
        wait_until(lambda: len(customer.handler.connect_times) >= 4,
                   timeout=40, what="four tries")
        t = customer.handler.connect_times
        gaps = [b - a for a, b in zip(t, t[1:])]
        # each within the scheduler's 1 s check interval of its target
        assert 1.5 <= gaps[0] <= 3.5, gaps
        assert 3.5 <= gaps[1] <= 5.5, gaps
        assert 3.5 <= gaps[2] <= 5.5, gaps
        assert customer.messages == [] and bag_messages(sb) == 1
        assert customer.handler.max_open == 1
    finally:
        customer.stop()


@pytest.mark.xdist_group("clock")
def test_give_up_bounces_with_4_4_7(make_sandbox):
    sb = make_sandbox(users=[LOCAL], settings=FAST)
    port = free_port()
    backup_add(sb, port, period="5s")
    deliver(sb, [("a@" + DOMAIN, "ORCPT=rfc822;a@cust.test")],
            subject="late", params=" ENVID=give-up-1")
    deliver(sb, [("never@" + DOMAIN, "NOTIFY=NEVER")], subject="quiet")
    wait_until(lambda: bag_messages(sb) == 0, timeout=40,
               what="the retry period to run out")
    wait_until(lambda: len(sb.outbox()) >= 1, what="the bounce")
    time.sleep(1)
    (dsn,) = outbox_messages(sb)
    temporary, permanent = all_failures(dsn)
    assert permanent == {b"a@cust.test"} and not temporary
    fields = "\n".join(str(p) for p in dsn.get_payload()[1].get_payload())
    assert "Status: 4.4.7" in fields and "Action: failed" in fields
    assert "Original-Envelope-Id: give-up-1" in fields
    # the last reason, a connection error: not an SMTP reply
    assert "Diagnostic-Code: smtp;" not in fields
    assert re.search(r"Diagnostic-Code: X-Dovecot-Bag; .*connect", fields,
                     re.IGNORECASE), fields
    assert "Remote-MTA" not in fields
    assert dsn["From"].startswith("Mail Delivery System <MAILER-DAEMON@")
    sb.wait_log("(backup)")
    # the bag is empty: no more tries at the dead host, and the bounces
    # stay in the last flush's result
    show = bag_show(sb)
    assert show["bounced"] == "2" and show["next_retry"] == ""
    tries = sb.log().count("backup cust.test: try")
    time.sleep(6)
    assert sb.log().count("backup cust.test: try") == tries
    show = bag_show(sb)
    assert show["bounced"] == "2" and show["failed_tries"] == "0"


def test_5xx_bounces_at_once(make_sandbox):
    sb = make_sandbox(users=[LOCAL], settings=FAST)
    customer = CustomerMTA().start()
    try:
        customer.handler.rcpt_replies = {
            "gone@" + DOMAIN: "550 5.1.1 no such user"}
        backup_add(sb, customer.port)
        deliver(sb, ["gone@" + DOMAIN, "ok@" + DOMAIN])
        customer.wait_for(1)
        wait_until(lambda: len(sb.outbox()) == 1, what="the bounce")
        (dsn,) = outbox_messages(sb)
        assert all_failures(dsn)[1] == {b"gone@cust.test"}
        wait_until(lambda: bag_messages(sb) == 0, what="an empty bag")
        assert [m.rcpts for m in customer.messages] == [["ok@" + DOMAIN]]
    finally:
        customer.stop()


@pytest.mark.xdist_group("clock")
def test_schedule_survives_a_restart(make_sandbox):
    sb = make_sandbox(users=[LOCAL], settings=dict(
        FAST, bag_backup_retry_min="3s", bag_backup_retry_max="60s"))
    # the customer's port stays bound (not listening: a connection is
    # refused) until the customer comes up, so that the restarted sandbox
    # can't take it for one of its own listeners
    port = free_port()
    holder = socket.socket()
    holder.bind(("127.0.0.1", port))
    backup_add(sb, port)
    deliver(sb, ["a@" + DOMAIN])
    wait_until(lambda: int(bag_show(sb)["failed_tries"]) >= 2,
               timeout=30, what="failed tries")
    before = bag_show(sb)
    subprocess.run([SANDBOX, "stop", sb.dir], check=True)
    r = subprocess.run([SANDBOX, "start", sb.dir] +
                       sum((["--set", "%s=%s" % kv] for kv in dict(
                           FAST, bag_backup_retry_min="3s",
                           bag_backup_retry_max="60s").items()), []),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    sb.info = json.loads(r.stdout)
    sb.conf = sb.info["conf"]
    after = bag_show(sb)
    # the schedule is where it was: the count goes on, not from zero
    assert int(after["failed_tries"]) >= int(before["failed_tries"])
    wait_until(lambda: int(bag_show(sb)["failed_tries"]) >
               int(before["failed_tries"]), timeout=30, what="a retry")
    holder.close()
    customer = CustomerMTA(port=port).start()
    try:
        customer.wait_for(1, timeout=90)
        wait_until(lambda: bag_messages(sb) == 0, what="an empty bag")
    finally:
        customer.stop()


@pytest.mark.xdist_group("clock")
def test_delay_warning_once(make_sandbox):
    sb = make_sandbox(users=[LOCAL], settings=dict(
        FAST, bag_backup_delay_warning="2s"))
    port = free_port()
    backup_add(sb, port, period="1h")
    deliver(sb, [("a@" + DOMAIN, "NOTIFY=DELAY,FAILURE")], subject="slow")
    deliver(sb, ["b@" + DOMAIN], subject="default")
    wait_until(lambda: len(sb.outbox()) >= 1, timeout=30,
               what="the delay notice")
    # more tries go by: still one notice, for the one that asked
    wait_until(lambda: int(bag_show(sb)["failed_tries"]) >= 4,
               timeout=40, what="more tries")
    (dsn,) = outbox_messages(sb)
    temporary, permanent = all_failures(dsn)
    assert temporary == {b"a@cust.test"} and not permanent
    fields = "\n".join(str(p) for p in dsn.get_payload()[1].get_payload())
    assert "Action: delayed" in fields and "Will-Retry-Until:" in fields
    assert dsn["Subject"] == "Delayed Mail (still being retried)"
    assert bag_messages(sb) == 2


@pytest.mark.xdist_group("clock")
def test_a_lost_message_counter_is_not_an_empty_bag(make_sandbox):
    """The scheduler tries a bag only when mail waits, by its counter; a
    counter that is gone (damage) means "unknown", not "empty": the retry
    stays due, and the try's flush sets the counter again."""
    sb = make_sandbox(users=[LOCAL], settings=FAST)
    port = free_port()
    backup_add(sb, port)
    deliver(sb, ["a@" + DOMAIN], subject="counted")
    wait_until(lambda: int(bag_show(sb)["failed_tries"]) >= 1,
               timeout=30, what="a failed try")
    sb.doveadm("dict", "unset", REGISTRY, "shared/bag/count/" + DOMAIN)
    customer = CustomerMTA(port=port).start()
    try:
        customer.wait_for(1, timeout=30)
        wait_until(lambda: bag_messages(sb) == 0, what="an empty bag")
        assert [m.subject for m in customer.messages] == ["counted"]
    finally:
        customer.stop()
