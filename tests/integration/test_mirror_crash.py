"""Mail Mirror: LMTP (copying in its own process, mirror_writer = no) or
mirror-writer killed with SIGKILL at every step of a mirrored delivery (the
fault points of lib-mirror/mirror-copy.h, compiled only into test builds:
configure --enable-fault-points), then the MTA's retry if there was no
reply.

What must hold after each: every message answered 250 is in the
recipient's INBOX and in every mirror; a mirror never holds a message more
often than the recipient does, unless the copy is one that mdbox restored
after a crash and verify reports it; `doveadm mirror verify` says "ok" only if
every copy is in its chain, and reports the one copy a crash left
unrecorded; `verify --reconcile` makes each copy counter the copies the
chain and the storage account for, which are the copies on disk."""

import os
import random
import signal
import threading
import time

import pytest

from conftest import PASSWORD, header_values, make_message, master_pid
from faults import needs_fault_points
from test_verify import EX_DATAERR, ok, verify

ALICE = "alice@example.com"
STORAGES = ["audit@example.com", "audit2@example.com"]

# point: (the killed message's copies in the INBOX, its copies in the
# first storage of the batch and in the second, whether the first has a
# copy the chain doesn't record, whether the first's counter is short).
# The batch saves every copy, then commits and records them one storage
# after the other, then counts them all at once.
POINTS = {
    # the delivery itself never committed: the retry makes everything
    "mirror-copy-saved": (1, 1, 1, False, False),
    # the recipient's commit came first; the copies never did
    "mirror-delivery-committed": (2, 1, 1, False, False),
    # the first copy committed, its chain record not appended
    "mirror-copy-committed": (2, 2, 1, True, True),
    # the first copy committed and recorded, not counted
    "mirror-chain-appended": (2, 2, 1, False, True),
    # every copy counted: only the 250 is missing
    "mirror-copy-counted": (2, 2, 2, False, False),
}


def subjects(sb, user):
    return sorted(header_values(m, "Subject")[0]
                  for m in sb.imap_messages(user))


@needs_fault_points
@pytest.mark.parametrize("point", sorted(POINTS))
def test_lmtp_killed_while_mirroring(make_sandbox, faults, point):
    sb = make_sandbox(users=[ALICE] + STORAGES, config=faults.config,
                      settings={"mirror_writer": "no"})
    mirrors = {s: sb.mirror_add(ALICE, s)["id"] for s in STORAGES}
    ok(sb.deliver([ALICE], make_message(subject="before")))

    faults.arm(point)
    with pytest.raises(ConnectionError):
        sb.deliver([ALICE], make_message(subject="killed"))
    assert faults.fired, "fault point %s not reached" % point
    sb.wait_log("Fault point %s (1): killing this process" % point)
    # the MTA had no reply: it retries, and goes on
    ok(sb.deliver([ALICE], make_message(subject="killed")))
    ok(sb.deliver([ALICE], make_message(subject="after")))

    inbox_killed, first, second, unrecorded, short = POINTS[point]
    inbox = subjects(sb, ALICE)
    assert inbox == sorted(["before", "after"] + ["killed"] * inbox_killed)
    copies = {s: subjects(sb, s) for s in STORAGES}
    # which storage the batch took first is the plan's business
    assert sorted(c.count("killed") for c in copies.values()) == \
        sorted([first, second]), copies
    for storage, mirror_id in mirrors.items():
        c = copies[storage]
        # every message answered 250, never more often than the INBOX
        assert sorted(set(c)) == ["after", "before", "killed"], c
        assert c.count("killed") <= inbox.count("killed"), (c, inbox)
        is_first = c.count("killed") == first and first != second

        code, row, err = verify(sb, mirror_id)
        if unrecorded and is_first:
            # never "ok" about a copy the chain doesn't record
            assert code == EX_DATAERR, (code, err)
            assert row["unrecorded"] == "1", row
            assert "UID 2 is a copy that the chain doesn't record" \
                in err, err
        else:
            assert code == 0, (code, row, err)
            assert row["unrecorded"] == "0", row
        assert row["chain"] == "ok" and row["missing"] == "0" and \
            row["altered"] == "0", row
        assert int(row["records"]) + int(row["unrecorded"]) == len(c), row
        if short and is_first:
            assert int(row["counted"]) == len(c) - 1, row
            assert "doveadm mirror verify --reconcile %s raises it" \
                % mirror_id in err, err
        else:
            assert int(row["counted"]) == len(c), row

        # reconciled: the counter is the copies on disk, and stays so
        code, row, err = verify(sb, mirror_id, "--reconcile")
        assert int(row["counted"]) == len(c), row
        assert ("copy counter raised from %d to %d" % (len(c) - 1, len(c))
                in err) == (short and is_first), err
        status = sb.doveadm("mirror", "list", json_output=True).json
        assert [int(m["copies"]) for m in status
                if m["id"] == mirror_id] == [len(c)], status


# point: whether the first storage's copy was committed by mirror-writer
# before it died (LMTP finds it by its content and appends its chain
# record if it is missing), and whether it was counted. The writer's batch
# of each storage commits as soon as its deliveries have decided, one
# storage after the other: the second storage's copy is never committed
# when the writer dies at the first's commit, and LMTP makes it itself.
# Then one syncfs() makes the committed batches durable
# (mirror-writer-synced: both storages' copies are committed), and each
# is counted.
WRITER_POINTS = {
    "mirror-copy-saved": (False, False),
    "mirror-delivery-committed": (False, False),
    "mirror-copy-committed": (True, False),
    "mirror-chain-appended": (True, False),
    "mirror-writer-synced": (True, False),
    "mirror-copy-counted": (True, True),
}


@needs_fault_points
@pytest.mark.parametrize("point", sorted(WRITER_POINTS))
def test_writer_killed_while_mirroring(make_sandbox, faults, point):
    """mirror-writer killed at each step: LMTP answers 250 all the same,
    and every message is in the INBOX and in every mirror exactly once,
    in its chain."""
    sb = make_sandbox(users=[ALICE] + STORAGES, config=faults.config)
    mirrors = {s: sb.mirror_add(ALICE, s)["id"] for s in STORAGES}
    ok(sb.deliver([ALICE], make_message(subject="before")))

    faults.arm(point)
    ok(sb.deliver([ALICE], make_message(subject="killed")))
    assert faults.fired, "fault point %s not reached" % point
    sb.wait_log("Fault point %s (1): killing this process" % point)
    # logged by LMTP before its 250; the log process may lag
    sb.wait_log("copying in the LMTP process")
    ok(sb.deliver([ALICE], make_message(subject="after")))

    committed, counted = WRITER_POINTS[point]
    if committed:
        sb.wait_log("was made by mirror-writer before it failed")
    assert subjects(sb, ALICE) == ["after", "before", "killed"]
    for storage, mirror_id in mirrors.items():
        c = subjects(sb, storage)
        assert c == ["after", "before", "killed"], (storage, c)
        code, row, err = verify(sb, mirror_id)
        assert code == 0, (code, row, err)
        assert (row["chain"], row["records"], row["missing"],
                row["altered"], row["unrecorded"]) == \
            ("ok", "3", "0", "0", "0"), row
        # a copy the writer made and didn't count is counted by reconcile
        assert int(row["counted"]) in (2, 3), row
        code, row, err = verify(sb, mirror_id, "--reconcile")
        assert int(row["counted"]) == 3, row
    if not committed:
        # nothing was found: LMTP made every copy itself
        assert "was made by mirror-writer before it failed" not in \
            sb.log()


def lmtp_pids(sb, min_age):
    """The LMTP processes of the sandbox (children of its master) that
    have run for min_age seconds at least. (The master throttles a service
    whose processes die before they finish starting: an MTA's retries
    would then wait a minute.)"""
    master = master_pid(sb.dir)
    hz = os.sysconf("SC_CLK_TCK")
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                stat = f.read()
        except OSError:
            continue
        comm, rest = stat.split("(", 1)[1].rsplit(") ", 1)
        fields = rest.split()
        if comm == "lmtp" and int(fields[1]) == master and \
                uptime - int(fields[19]) / hz >= min_age:
            pids.append(int(entry))
    return pids


def test_lmtp_killed_at_random_during_a_burst(make_sandbox):
    """Three MTA connections deliver (40 messages each at least, and on
    until LMTP was killed 8 times), retrying on a new connection whatever
    got no reply, while LMTP processes are killed with SIGKILL at random
    moments: the same holds as at each fault point, but for the copies
    mdbox's rebuild restores after a kill (see below). The mailboxes are
    mdbox, as the README recommends for mirror storage: a maildir whose
    uidlist dotlock a killed process left behind is locked for up to two
    minutes (Dovecot's stale timeout), which stalls the retries; maildir
    after kills is covered by the fault points above."""
    sb = make_sandbox(users=[])
    for user in [ALICE] + STORAGES:
        sb.add_user("%s:%s:mail=mdbox:~/mdbox" % (user, PASSWORD),
                    password=None)
    mirrors = {s: sb.mirror_add(ALICE, s)["id"] for s in STORAGES}
    # The mailboxes exist before the burst: three first deliveries that
    # create one mdbox INBOX at once can make Dovecot's own locks deadlock
    # (EDEADLK from fcntl, a panic), which is not what this test is about.
    ok(sb.deliver([ALICE], make_message(subject="first")))
    acked, sent, kills = ["first"], ["first"], []
    enough, done = threading.Event(), threading.Event()

    def mta(n):
        s = None
        i = 0
        while (i < 40 or not enough.is_set()) and i < 1000:
            subject = "c%d-m%d" % (n, i)
            sent.append(subject)
            for attempt in range(50):
                try:
                    if s is None:
                        s = sb.lmtp()
                    ok(s.send([ALICE], make_message(subject=subject)))
                    acked.append(subject)
                    break
                except (ConnectionError, OSError):
                    # an MTA retries a little later
                    s = None
                    time.sleep(0.1)
            i += 1
        if s is not None:
            s.close()

    def killer():
        rnd = random.Random(20)
        while not done.wait(rnd.uniform(0.01, 0.08)):
            # a process killed before it has started makes the master
            # throttle the service for a minute: only those that run
            pids = lmtp_pids(sb, 1.5)
            if pids:
                try:
                    os.kill(rnd.choice(pids), signal.SIGKILL)
                    kills.append(1)
                except ProcessLookupError:
                    pass
            if len(kills) >= 8:
                enough.set()

    threads = [threading.Thread(target=mta, args=(n,)) for n in range(3)]
    k = threading.Thread(target=killer)
    k.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    k.join()
    assert len(kills) >= 8, kills
    # every message was answered 250 in the end (an ok() that failed
    # would have ended its thread early)
    assert sorted(acked) == sorted(sent) and len(sent) >= 121

    inbox = subjects(sb, ALICE)
    assert set(inbox) == set(acked)
    for storage, mirror_id in mirrors.items():
        c = subjects(sb, storage)
        assert set(c) == set(acked), storage
        code, row, err = verify(sb, mirror_id)
        # A copy more than the INBOX has is one that a killed delivery
        # saved and never committed, which mdbox's rebuild (after
        # "Inconsistency in map index") restored: never recorded in the
        # chain, and verify reports it.
        extra = sum(max(0, c.count(subj) - inbox.count(subj))
                    for subj in set(c))
        assert extra <= int(row["unrecorded"]), (extra, row, err)
        assert code == (EX_DATAERR if row["unrecorded"] != "0" else 0), \
            (code, row, err)
        assert row["chain"] == "ok" and row["missing"] == "0" and \
            row["altered"] == "0", (row, err)
        assert int(row["records"]) + int(row["unrecorded"]) == len(c), row
        assert int(row["counted"]) <= len(c), row
        code, row, err = verify(sb, mirror_id, "--reconcile")
        assert int(row["counted"]) == len(c), row
