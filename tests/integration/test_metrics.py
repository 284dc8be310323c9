"""The example metrics (doc/example-config/conf.d/92-mirror-metrics.conf,
which every sandbox includes) read through Dovecot's OpenMetrics endpoint,
as Prometheus reads them: every event the suite sends has a metric, and
after traffic that sends each event, each metric counts it, with the
duration of the work it reports."""

import os
import re
import time
import urllib.request
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from conftest import TOP
from peers import SmtpSink
from ports import free_port
from test_bag import SMTPSession, bag_add, etrn_port, wait_until

METRICS_CONF = os.path.join(TOP, "doc", "example-config", "conf.d",
                            "92-mirror-metrics.conf")
ALICE, AUDIT = "alice@example.com", "audit@example.com"
AUDIT2 = "audit2@example.com"
DOMAIN = "cust.test"
LA = ZoneInfo("America/Los_Angeles")
# an LMTP session held open this long before its message: the events of
# the message must not last as long as the connection (not half as long)
HOLD = 2.0


def sent_events():
    """The names of the events the suite's C code sends."""
    names, macros, defines = set(), set(), {}
    for root, dirs, files in os.walk(TOP):
        dirs[:] = [d for d in dirs if not d.startswith((".", "_"))
                   and d not in ("tests", "debian")]
        for name in files:
            if not name.endswith((".c", ".h")):
                continue
            with open(os.path.join(root, name), errors="replace") as f:
                text = f.read()
            names.update(re.findall(r'set_name\("(\w+)"\)', text))
            macros.update(re.findall(r'set_name\(([A-Z_]+)\)', text))
            defines.update(re.findall(r'#define\s+([A-Z_]+)\s+"(\w+)"',
                                      text))
    return names | {defines[m] for m in macros}


def example_metrics():
    """{metric name: filter} of the example file."""
    with open(METRICS_CONF) as f:
        text = f.read()
    return dict(re.findall(r"^metric (\w+) \{\n  filter = (.*)$", text,
                           re.M))


def scrape(port):
    """{metric: (count, duration in seconds)} from /metrics (the totals of
    grouped metrics, which Dovecot names _count and _sum)."""
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port,
                                timeout=10) as r:
        assert r.status == 200
        text = r.read().decode()
    counts, durations = {}, {}
    for m in re.finditer(r"^dovecot_(\w+?)_(total|count) (\S+)$", text,
                         re.M):
        if not m.group(1).endswith("_duration_seconds"):
            counts[m.group(1)] = int(m.group(3))
    for m in re.finditer(r"^dovecot_(\w+)_duration_seconds_(total|sum) (\S+)$",
                         text, re.M):
        durations[m.group(1)] = float(m.group(3))
    return {name: (counts[name], durations.get(name)) for name in counts}


def stats_config(port):
    return "service stats {\n  inet_listener http {\n    port = %d\n  }\n}\n" \
        % port


def test_every_event_has_an_example_metric():
    events = sent_events()
    assert len(events) >= 6, events
    filtered = {re.match(r"event=(\w+)", f).group(1)
                for f in example_metrics().values()}
    assert events <= filtered, "events without a metric: %s" % (
        events - filtered)
    assert filtered <= events, "metrics of no event: %s" % (
        filtered - events)


def deliver_held(sb, rcpt, subject):
    """One message over an LMTP session that was open HOLD seconds."""
    s = sb.lmtp()
    try:
        time.sleep(HOLD)
        _, data = s.send([rcpt], ("From: a@remote.test\r\nSubject: %s\r\n\r\n"
                                  "body\r\n" % subject).encode())
        assert [code for code, _ in data] == [250], data
    finally:
        s.close()


@pytest.mark.xdist_group("clock")
def test_openmetrics_counts_every_event_with_its_duration(make_sandbox):
    port = free_port()
    # the expiry service's scan a few seconds ahead (after the traffic
    # below), a usage limit every message crosses
    target = int(time.time()) + 15
    sb = make_sandbox(users=[ALICE, AUDIT, AUDIT2],
                      config=stats_config(port),
                      settings={"bag_enabled": "yes", "bag_usage_bytes": "1",
                                "mirror_expire_time": datetime.fromtimestamp(
                                    target, LA).strftime("%H:%M:%S")})
    sink = SmtpSink()
    try:
        sb.mirror_add(ALICE, AUDIT)
        gone = sb.mirror_add(ALICE, AUDIT2)
        sb.remove_user(AUDIT2)
        bag_add(sb, DOMAIN, nets="127.0.0.1", host=sink.hostport)
        # a copy, and a failed one (its storage user is unknown)
        deliver_held(sb, ALICE, "mirrored")
        sb.wait_log("Mirror %s: copy to %s failed" % (gone["id"], AUDIT2))
        # a bagged message that takes the month past its byte limit
        deliver_held(sb, "bob@" + DOMAIN, "bagged")
        sb.wait_log("went past its monthly limit")
        # its flush, by ETRN
        s = SMTPSession(etrn_port(sb))
        s.cmd("EHLO customer.test")
        assert s.cmd("ETRN " + DOMAIN)[0] == 253
        s.close()
        sink.wait_for(1)
        sb.wait_log("Flush of %s (etrn): 1 delivered" % DOMAIN)
        # a scan run by hand, and the service's scheduled run
        sb.doveadm("mirror", "expire")
        finished = r"Expiry scan of .* finished in (\d+\.\d+) s"
        wait_until(lambda: re.search(finished, sb.log()), timeout=60,
                   what="the scheduled scan's end")
        run_secs = float(re.search(finished, sb.log()).group(1))
    finally:
        sink.stop()

    metrics = scrape(port)
    assert set(example_metrics()) <= set(metrics), metrics
    for name in example_metrics():
        if name in ("mirror_expire_run_failures", "bag_store_failures"):
            # nothing failed there: counted, as nothing
            assert metrics[name] == (0, 0.0), (name, metrics[name])
            continue
        count, duration = metrics[name]
        assert count >= 1, (name, metrics[name])
        assert duration > 0, (name, metrics[name])
    # the durations are the work's: a copy, a store, and a limit crossing
    # don't last as long as the LMTP session they came in, the service's
    # run lasts as long as the scan it ran
    assert metrics["mirror_copies"][1] < HOLD / 2, metrics["mirror_copies"]
    assert metrics["bag_stored"][1] < HOLD / 2, metrics["bag_stored"]
    assert metrics["bag_usage_limits_crossed"][1] < HOLD / 2, \
        metrics["bag_usage_limits_crossed"]
    assert metrics["mirror_expire_runs"][0] == 1, metrics
    assert abs(metrics["mirror_expire_runs"][1] - run_secs) < 0.5, \
        (metrics["mirror_expire_runs"], run_secs)


def test_openmetrics_bag_flush_duration_is_the_flush(make_sandbox):
    port = free_port()
    sb = make_sandbox(config=stats_config(port),
                      settings={"bag_enabled": "yes"})
    # the customer's MTA takes a second to answer DATA
    sink = SmtpSink(extra_args=["-w", "1"])
    try:
        bag_add(sb, DOMAIN, nets="127.0.0.1", host=sink.hostport)
        deliver_held(sb, "bob@" + DOMAIN, "bagged")
        s = SMTPSession(etrn_port(sb))
        s.cmd("EHLO customer.test")
        assert s.cmd("ETRN " + DOMAIN)[0] == 253
        s.close()
        sink.wait_for(1)
        sb.wait_log("Flush of %s (etrn): 1 delivered" % DOMAIN)
    finally:
        sink.stop()
    count, duration = scrape(port)["bag_flushes"]
    assert count == 1
    assert duration >= 1.0, duration
