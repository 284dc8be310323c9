"""The expiry scan's schedule: the mirror-expire service fires at the
configured time (the real clock, a few seconds ahead), makes up a missed
run once when it starts, and `doveadm mirror schedule` shows the last and
next runs in UTC and in the zone, DST included.
"""

import json
import os
import re
import shutil
import subprocess
import time
import warnings
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from conftest import SANDBOX, Sandbox

LA = ZoneInfo("America/Los_Angeles")
REGISTRY_LAST_RUN = "shared/mirror/expire-last-run"


def utc(s):
    return int(datetime.strptime(s, "%Y-%m-%d %H:%M:%S")
               .replace(tzinfo=timezone.utc).timestamp())


def fmt_utc(t):
    return datetime.fromtimestamp(t, timezone.utc) \
        .strftime("%Y-%m-%d %H:%M:%S UTC")


def fmt_local(t, zone):
    return datetime.fromtimestamp(t, zone).strftime("%Y-%m-%d %H:%M:%S %Z")


def schedule(sb, *args, check=True):
    r = sb.doveadm("mirror", "schedule", *args, json_output=True,
                   check=check)
    if r.returncode == 0:
        assert len(r.json) == 1, r.stdout
        r.row = r.json[0]
    return r


def set_last_run(sb, t):
    sb.registry_set(REGISTRY_LAST_RUN[len("shared/"):], str(t))


def service_lines(sb, pattern):
    return [l for l in sb.log().splitlines()
            if "mirror-expire: " in l and re.search(pattern, l)]


def diagnose(sb):
    """What the instance's processes are doing: the mirror-expire
    process's state and stack, for a line that doesn't come."""
    out = []
    try:
        with open(os.path.join(sb.dir, "run", "master.pid")) as f:
            master = f.read().strip()
    except OSError as e:
        return "no master.pid: %s" % e
    ps = subprocess.run(["ps", "-o", "pid,stat,etime,wchan:24,args",
                         "--ppid", master], capture_output=True, text=True)
    out.append(ps.stdout)
    for line in ps.stdout.splitlines()[1:]:
        pid = line.split()[0]
        if "mirror-expire" in line and shutil.which("gdb"):
            bt = subprocess.run(["timeout", "20", "gdb", "-p", pid,
                                 "-batch", "-ex", "bt"],
                                capture_output=True, text=True)
            out.append("stack of %s:\n%s" % (pid, "\n".join(
                l for l in bt.stdout.splitlines() if l.startswith("#"))))
    for name in sorted(os.listdir(sb.dir)):
        if name in ("master.out", "sanitizer"):
            path = os.path.join(sb.dir, name)
            out.append("%s: %s" % (name, os.listdir(path)
                                   if os.path.isdir(path)
                                   else open(path).read()[-1000:]))
    return "\n".join(out)


def wait_for(sb, pattern, timeout, grace=0):
    """The service's log line matching pattern, within timeout seconds.
    With grace, a line that comes later, but within the grace period, is
    accepted with a warning that shows what delayed it: the first line of
    a service starting on a loaded machine (under the sanitizers)."""
    deadline = time.time() + timeout
    why = None
    while True:
        lines = service_lines(sb, pattern)
        if lines:
            if why is not None:
                warnings.warn("log line matching %r came after more than "
                              "%ds:\n%s" % (pattern, timeout, why))
            return lines
        if time.time() >= deadline:
            if why is None:
                why = diagnose(sb)
            if grace == 0:
                break
            deadline += grace
            grace = 0
        time.sleep(0.1)
    raise AssertionError("no log line matching %r in %ds; log:\n%s\n%s"
                         % (pattern, timeout, sb.log()[-3000:], why))


def restart(sb, settings):
    """Stop the instance and start it again on the same directory (the
    registry stays): the server was down."""
    subprocess.run([SANDBOX, "stop", sb.dir], check=True)
    args = [SANDBOX, "start", sb.dir]
    for k, v in settings.items():
        args += ["--set", "%s=%s" % (k, v)]
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return Sandbox(sb.dir, json.loads(r.stdout))


@pytest.mark.xdist_group("clock")
def test_service_fires_at_the_configured_time(make_sandbox):
    # a few seconds ahead, in the default zone (America/Los_Angeles)
    target = int(time.time()) + 8
    hms = datetime.fromtimestamp(target, LA).strftime("%H:%M:%S")
    sb = make_sandbox(settings={"mirror_expire_time": hms})
    # a new installation: no scan recorded, nothing to make up
    started = wait_for(sb, r"Info: Expiry scans at", 30)
    assert "Expiry scans at %s America/Los_Angeles; last scan: never; " \
        "next: %s (%s)" % (hms, fmt_local(target, LA), fmt_utc(target)) \
        in started[0], started
    next_run = schedule(sb).row["next_run_utc"]
    if time.time() < target:
        assert next_run == fmt_utc(target)
        assert not service_lines(sb, r"Running")
    else:
        # a slow machine (the sanitizers) reached the time during the
        # query: the scan may have started and moved the schedule on
        assert next_run in (fmt_utc(target), fmt_utc(target + 24 * 3600))

    lines = wait_for(sb, r"Info: Running the expiry scan", 20)
    # not before the time
    assert time.time() >= target
    assert lines[0].endswith("Running the expiry scan of %s (%s)"
                             % (fmt_local(target, LA), fmt_utc(target)))
    # the service ran doveadm and logged how it ended
    done = wait_for(sb, r"Expiry scan of .* (finished|failed)", 60)
    assert fmt_utc(target) in done[0]
    # the scan succeeded and recorded its time
    assert "finished" in done[0], done
    row = schedule(sb).row
    assert row["last_run_utc"] >= fmt_utc(target)
    assert row["next_run_utc"] == fmt_utc(target + 24 * 3600)
    # once
    time.sleep(2)
    assert len(service_lines(sb, r"Running")) == 1


@pytest.mark.xdist_group("clock")
def test_catch_up_runs_a_missed_scan_once(make_sandbox):
    now = int(time.time())
    # the scan's time of day was two hours ago
    scheduled = now - 2 * 3600
    hms = datetime.fromtimestamp(scheduled, LA).strftime("%H:%M:%S")
    settings = {"mirror_expire_time": hms}
    sb = make_sandbox(settings=settings)
    wait_for(sb, r"Info: Expiry scans at .* last scan: never", 30, grace=60)
    # a new installation doesn't make up the run of two hours ago
    time.sleep(1)
    assert not service_lines(sb, r"Running")
    assert schedule(sb).row["overdue"] == "no"

    # the last scan was three days ago: the server was down since
    three_days_ago = now - 3 * 24 * 3600
    set_last_run(sb, three_days_ago)
    row = schedule(sb).row
    assert row["last_run_utc"] == fmt_utc(three_days_ago)
    assert row["last_run_local"] == fmt_local(three_days_ago, LA)
    assert row["overdue"] == "yes"

    sb = restart(sb, settings)
    lines = wait_for(sb, r"Running the missed expiry scan", 30)
    assert lines[0].endswith("Running the missed expiry scan of %s (%s)"
                             % (fmt_local(scheduled, LA),
                                fmt_utc(scheduled))), lines
    done = wait_for(sb, r"Expiry scan of .* (finished|failed)", 60)
    assert "finished" in done[0], done
    time.sleep(2)
    # one scan for the three missed days, not three
    assert len(service_lines(sb, r"Running")) == 1
    # the scan recorded itself, nothing is overdue now
    row = schedule(sb).row
    assert row["last_run_utc"] >= fmt_utc(now)
    assert row["overdue"] == "no"

    # a scan after the latest scheduled time: nothing to make up
    set_last_run(sb, int(time.time()))
    sb = restart(sb, settings)
    wait_for(sb, r"Info: Expiry scans at .* next: 20", 30, grace=60)
    time.sleep(1)
    assert len(service_lines(sb, r"Running")) == 1


def test_schedule_in_utc_and_zone_across_dst(make_sandbox):
    # the defaults: 00:00 in America/Los_Angeles (the service isn't
    # started: no schedule setting)
    sb = make_sandbox()
    row = schedule(sb, "-T", str(utc("2026-03-07 12:00:00"))).row
    assert row["timezone"] == "America/Los_Angeles"
    assert row["time"] == "00:00:00"
    assert row["last_run_utc"] == row["last_run_local"] == "never"
    assert row["overdue"] == "no"
    assert row["next_run_local"] == "2026-03-08 00:00:00 PST"
    assert row["next_run_utc"] == "2026-03-08 08:00:00 UTC"
    # spring forward: -7 hours from here on
    row = schedule(sb, "-T", str(utc("2026-03-08 08:00:00"))).row
    assert row["next_run_local"] == "2026-03-09 00:00:00 PDT"
    assert row["next_run_utc"] == "2026-03-09 07:00:00 UTC"
    # fall back
    row = schedule(sb, "-T", str(utc("2026-10-31 12:00:00"))).row
    assert row["next_run_local"] == "2026-11-01 00:00:00 PDT"
    assert row["next_run_utc"] == "2026-11-01 07:00:00 UTC"
    row = schedule(sb, "-T", str(utc("2026-11-01 07:00:00"))).row
    assert row["next_run_local"] == "2026-11-02 00:00:00 PST"
    assert row["next_run_utc"] == "2026-11-02 08:00:00 UTC"
    # leap day
    row = schedule(sb, "-T", str(utc("2028-02-28 08:00:00"))).row
    assert row["next_run_local"] == "2028-02-29 00:00:00 PST"
    # now, without -T: the offset between the two columns is the zone's
    row = schedule(sb).row
    nxt = int(datetime.strptime(row["next_run_utc"],
                                "%Y-%m-%d %H:%M:%S UTC")
              .replace(tzinfo=timezone.utc).timestamp())
    assert 0 < nxt - time.time() <= 25 * 3600
    assert row["next_run_local"] == fmt_local(nxt, LA)
    assert row["next_run_local"].endswith(" 00:00:00 " +
                                          datetime.fromtimestamp(
                                              nxt, LA).tzname())
    # the last run, in both
    set_last_run(sb, utc("2026-07-01 07:00:05"))
    row = schedule(sb, "-T", str(utc("2026-07-01 12:00:00"))).row
    assert row["last_run_utc"] == "2026-07-01 07:00:05 UTC"
    assert row["last_run_local"] == "2026-07-01 00:00:05 PDT"
    assert row["overdue"] == "no"
    row = schedule(sb, "-T", str(utc("2026-07-04 12:00:00"))).row
    assert row["overdue"] == "yes"


def test_schedule_in_another_zone(make_sandbox):
    sb = make_sandbox(settings={"mirror_expire_time": "02:30",
                                "mirror_expire_timezone": "Europe/Berlin"})
    # 02:30 doesn't exist on 2026-03-29: the run is at 03:00 CEST
    row = schedule(sb, "-T", str(utc("2026-03-28 01:30:00"))).row
    assert row["timezone"] == "Europe/Berlin"
    assert row["time"] == "02:30:00"
    assert row["next_run_local"] == "2026-03-29 03:00:00 CEST"
    assert row["next_run_utc"] == "2026-03-29 01:00:00 UTC"
    # 02:30 happens twice on 2026-10-25: one run, at the first
    row = schedule(sb, "-T", str(utc("2026-10-24 00:30:00"))).row
    assert row["next_run_local"] == "2026-10-25 02:30:00 CEST"
    assert row["next_run_utc"] == "2026-10-25 00:30:00 UTC"
    row = schedule(sb, "-T", str(utc("2026-10-25 00:30:00"))).row
    assert row["next_run_local"] == "2026-10-26 02:30:00 CET"
    assert row["next_run_utc"] == "2026-10-26 01:30:00 UTC"
    wait_for(sb, r"Info: Expiry scans at 02:30:00 Europe/Berlin", 30, grace=60)


@pytest.mark.nosan
@pytest.mark.parametrize("setting,value,error", [
    ("mirror_expire_timezone", "Mars/Olympus_Mons",
     "Invalid mirror_expire_timezone 'Mars/Olympus_Mons': not in the time "
     "zone database"),
    ("mirror_expire_timezone", "../../etc/passwd",
     "Invalid mirror_expire_timezone '../../etc/passwd': expected a zone "
     "name of the tz database"),
    ("mirror_expire_time", "24:00",
     "Invalid mirror_expire_time '24:00': expected HH:MM or HH:MM:SS"),
    ("mirror_expire_time", "noon",
     "Invalid mirror_expire_time 'noon': expected HH:MM or HH:MM:SS"),
])
def test_invalid_settings(make_sandbox, setting, value, error):
    sb = make_sandbox(settings={setting: value})
    r = schedule(sb, check=False)
    assert r.returncode == 78, r.stderr  # EX_CONFIG
    assert error in r.stderr
    # the service says why it does nothing, and stays up (a restart
    # can't fix the configuration)
    lines = wait_for(sb, re.escape(error), 30, grace=60)
    assert "Error: " in lines[0]
    assert lines[0].endswith(": no expiry scans run until the "
                             "configuration is fixed")
    time.sleep(1)
    assert not service_lines(sb, r"Running|Fatal|killed")


@pytest.mark.nosan
def test_schedule_usage_errors(make_sandbox):
    sb = make_sandbox()
    r = schedule(sb, "-T", "yesterday", check=False)
    assert r.returncode == 64, r.stderr
    assert "Invalid -T 'yesterday'" in r.stderr
