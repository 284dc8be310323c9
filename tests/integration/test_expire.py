"""Days to Mirror: the expire index (expire_mirror) and the expiry scan
(`doveadm mirror expire`).

Messages are made old by running the scan with -T, a "now" in the future:
the save date of a message can't honestly be moved back in maildir (it is
the index cache's date.save or the file's ctime), so the scan is moved
forward instead. The save dates themselves are read with doveadm fetch.

LMTP's copies and IMAP expunges update the index as the storage user,
through the mirror-registry service like every other process.
"""

import glob
import imaplib
import json
import os
import time

import pytest

from conftest import eventually, PASSWORD, REGISTRY, make_message

ALICE, BOB = "alice@example.com", "bob@example.com"
AUDIT, AUDIT2 = "audit@example.com", "audit2@example.com"
DAY = 86400
EX_USAGE = 64
DICT = REGISTRY
SETTINGS = {}
ROW_FIELDS = {"ids", "storage", "removed", "bytes", "oldest_kept",
              "held_by"}


# what sb starts (and the cases of shared_sandbox)
SANDBOX = {"users": [ALICE, BOB, AUDIT, AUDIT2], "settings": SETTINGS}


@pytest.fixture
def sb(make_sandbox):
    return make_sandbox(**SANDBOX)


def ok(replies):
    rcpt, data = replies
    assert all(code == 250 for code, _ in rcpt), rcpt
    assert data and all(code == 250 for code, _ in data), data


def registry_get(sb, key):
    r = sb.doveadm("dict", "get", DICT, "shared/mirror/" + key, check=False)
    return int(r.stdout.strip()) if r.returncode == 0 else None


def assert_index_at_save(sb, storage, save_date):
    """The index a delivery set: LMTP's time as the save began, which the
    maildir file's ctime (the save date Dovecot reports) may pass by a
    second, never the other way."""
    assert 0 <= save_date - index(sb, storage) <= 1, \
        (save_date, index(sb, storage))


def index(sb, storage):
    return registry_get(sb, "expire/" + storage)


def save_dates(sb, user):
    """{uid: save date} of the user's INBOX."""
    r = sb.doveadm("fetch", "-u", user, "uid date.saved.unixtime",
                   "mailbox", "INBOX", "ALL", json_output=True)
    return {int(m["uid"]): int(m["date.saved.unixtime"]) for m in r.json}


def expire(sb, *args, check=True, debug=False):
    """Run the scan; returns (rows, the doveadm result)."""
    r = sb.doveadm(*(["-D"] if debug else []), "mirror", "expire", *args,
                   json_output=True, check=check)
    rows = json.loads(r.stdout) if r.stdout.strip() else []
    for row in rows:
        assert set(row) == ROW_FIELDS, row
    return rows, r


def verify(sb, mirror_id):
    r = sb.doveadm("mirror", "verify", str(mirror_id), json_output=True,
                   check=False)
    return r.returncode, (r.json[0] if r.returncode == 0 else r.stderr)


def deliver(sb, rcpt, n=1, gap=0.0):
    for i in range(n):
        ok(sb.deliver([rcpt], make_message(subject="m%d" % i)))
        if gap:
            time.sleep(gap)


def iso(t):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def scan_line(r):
    """doveadm's info line about the scan (on stderr)."""
    lines = [l for l in r.stderr.splitlines() if "scan finished" in l]
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_boundary_one_second(sb):
    sb.mirror_add(ALICE, storage=AUDIT, days=1)
    deliver(sb, ALICE)
    time.sleep(1.1)
    deliver(sb, ALICE)
    dates = save_dates(sb, AUDIT)
    s1, s2 = dates[1], dates[2]
    assert s2 > s1
    assert_index_at_save(sb, AUDIT, s1)

    # the index is LMTP's clock as the save began, which the save date
    # may pass by a second: pin it to the save date, where the boundary is
    sb.doveadm("dict", "set", DICT, "shared/mirror/expire/" + AUDIT,
               str(s1))
    # exactly 1 day old is not older than 1 day; a second earlier neither
    for now in (s1 + DAY - 1, s1 + DAY):
        rows, _ = expire(sb, "-T", str(now))
        assert rows == []
    assert len(sb.imap_messages(AUDIT)) == 2

    rows, _ = expire(sb, "-T", str(s1 + DAY + 1))
    assert rows == [{"ids": "1", "storage": AUDIT, "removed": "1",
                     "bytes": rows[0]["bytes"], "oldest_kept": iso(s2),
                     "held_by": ""}]
    assert int(rows[0]["bytes"]) > 0
    assert list(save_dates(sb, AUDIT)) == [2]
    assert index(sb, AUDIT) == s2
    code, row = verify(sb, 1)
    assert code == 0, row
    assert (row["present"], row["expired"], row["missing"]) == ("1", "1", "0")

    # the scan's own time is recorded, not -T's
    last = registry_get(sb, "expire-last-run")
    assert last is not None and abs(last - time.time()) < 60


def test_dry_run_removes_nothing(sb):
    sb.mirror_add(ALICE, storage=AUDIT, days=2)
    deliver(sb, ALICE, 3)
    s = min(save_dates(sb, AUDIT).values())
    before = index(sb, AUDIT)
    rows, r = expire(sb, "-n", "-T", str(s + 2 * DAY + 3600))
    assert len(rows) == 1 and rows[0]["removed"] == "3"
    assert rows[0]["oldest_kept"] == ""
    assert len(save_dates(sb, AUDIT)) == 3
    assert index(sb, AUDIT) == before
    assert registry_get(sb, "expire-last-run") is None
    code, row = verify(sb, 1)
    assert code == 0 and row["expired"] == "0" and row["present"] == "3"
    assert "3 messages (" in scan_line(r) and "due in" in scan_line(r)


def test_expires_everything_and_unsets_index(sb):
    sb.mirror_add(ALICE, storage=AUDIT, days=1)
    deliver(sb, ALICE, 2)
    rows, _ = expire(sb, "-T", str(int(time.time()) + 2 * DAY))
    assert rows[0]["removed"] == "2" and rows[0]["oldest_kept"] == ""
    assert sb.imap_messages(AUDIT) == []
    assert index(sb, AUDIT) is None
    code, row = verify(sb, 1)
    assert code == 0 and row["expired"] == "2", row
    # a new copy sets the index again (within a second, if mirror-writer
    # read it in the same second)
    deliver(sb, ALICE)
    eventually(lambda: index(sb, AUDIT) is not None, True)
    assert_index_at_save(sb, AUDIT, min(save_dates(sb, AUDIT).values()))


def test_existing_mailbox_loses_all_old_mail(sb):
    # the storage's own mail, from before the mirror
    deliver(sb, AUDIT, 2)
    sb.mirror_add(ALICE, storage=AUDIT, days=1)
    deliver(sb, ALICE)
    assert len(save_dates(sb, AUDIT)) == 3
    rows, _ = expire(sb, "-T", str(int(time.time()) + DAY + 60))
    assert rows[0]["removed"] == "3"
    assert sb.imap_messages(AUDIT) == []
    code, row = verify(sb, 1)
    assert code == 0 and row["expired"] == "1", row


def test_shared_storage_uses_largest_days(sb):
    sb.mirror_add(ALICE, storage=AUDIT, days=1)
    sb.mirror_add(BOB, storage=AUDIT, days=3)
    deliver(sb, ALICE)
    deliver(sb, BOB)
    s = min(save_dates(sb, AUDIT).values())
    rows, _ = expire(sb, "-T", str(s + 2 * DAY))
    assert rows == []
    assert len(save_dates(sb, AUDIT)) == 2
    rows, _ = expire(sb, "-T", str(s + 3 * DAY + 60))
    assert len(rows) == 1
    assert rows[0]["ids"] == "1 2" and rows[0]["removed"] == "2"
    for mirror_id in (1, 2):
        code, row = verify(sb, mirror_id)
        assert code == 0 and row["expired"] == "1", row


def test_readonly_mirror_is_expired(sb):
    sb.mirror_add(ALICE, storage=AUDIT, days=1, readonly=True)
    deliver(sb, ALICE, 2)
    rows, _ = expire(sb, "-T", str(int(time.time()) + DAY + 60))
    assert rows[0]["removed"] == "2"
    assert sb.imap_messages(AUDIT) == []
    assert verify(sb, 1)[0] == 0


def test_index_kept_through_deliveries(sb):
    sb.mirror_add(ALICE, storage=AUDIT, days=5)
    deliver(sb, ALICE)
    s1 = index(sb, AUDIT)
    assert_index_at_save(sb, AUDIT, save_dates(sb, AUDIT)[1])
    time.sleep(1.1)
    deliver(sb, ALICE)
    # a younger copy leaves the oldest in place
    assert index(sb, AUDIT) == s1
    # an entry that is later than the truth is lowered by the next copy
    # (within a second: mirror-writer's storage trusts the entry it read
    # in the same second, and checks it a second later)
    future = int(time.time()) + 1000
    sb.doveadm("dict", "set", DICT, "shared/mirror/expire/" + AUDIT,
               str(future))
    deliver(sb, ALICE)
    eventually(lambda: index(sb, AUDIT) < future, True)
    # by the copy, to its save date, or, if it trusted the entry, by the
    # check a second later, to the oldest save date the storage holds
    dates = save_dates(sb, AUDIT).values()
    assert min(dates) - 1 <= index(sb, AUDIT) <= max(dates)
    # a user that is no storage gets no entry
    assert index(sb, ALICE) is None


def test_index_set_by_mail_delivered_to_the_storage_itself(sb):
    # An existing mailbox used as a storage gets mail of its own too.
    # Whether a recipient is a storage is looked up after its commit
    # without waiting; the index is set before the delivery's 250 all
    # the same (read right after it).
    sb.mirror_add(ALICE, storage=AUDIT, days=5)
    deliver(sb, AUDIT)
    assert_index_at_save(sb, AUDIT, save_dates(sb, AUDIT)[1])
    deliver(sb, BOB)
    assert index(sb, BOB) is None


def test_index_removed_under_a_busy_storage_comes_back(sb):
    # The scan (or an expunge) may remove the entry while mirror-writer
    # keeps the storage open and copies into it many times a second: a
    # copy that trusted the entry read in the same second checks it a
    # second later, and sets it again.
    sb.mirror_add(ALICE, storage=AUDIT, days=5)
    key = "shared/mirror/expire/" + AUDIT
    for _ in range(5):
        deliver(sb, ALICE)
        sb.doveadm("dict", "unset", DICT, key)
        deliver(sb, ALICE)
        eventually(lambda: index(sb, AUDIT) is not None, True)
        # never later than the copy after the removal
        assert index(sb, AUDIT) <= max(save_dates(sb, AUDIT).values())


def test_copies_the_scan_removed_leave_no_entry_behind(sb):
    # The scan removes a busy storage's copies, and its entry, before the
    # check of a copy that trusted the entry: the check finds the storage
    # empty and leaves no entry (one would send the next scans to an
    # empty storage).
    sb.mirror_add(ALICE, storage=AUDIT, days=1)
    deliver(sb, ALICE, 3)
    rows, _ = expire(sb, "-T", str(int(time.time()) + 2 * DAY))
    assert [r["removed"] for r in rows] == ["3"]
    assert index(sb, AUDIT) is None
    # past the check
    time.sleep(1.5)
    assert index(sb, AUDIT) is None


def imap_expunge(sb, user, seqs):
    imap = imaplib.IMAP4(sb.info["imap"]["host"], sb.info["imap"]["port"])
    try:
        imap.login(user, PASSWORD)
        imap.select("INBOX")
        for seq in seqs:
            typ, data = imap.store(str(seq), "+FLAGS", "(\\Deleted)")
            assert typ == "OK", data
        typ, data = imap.expunge()
        assert typ == "OK", data
    finally:
        imap.logout()


def test_index_recomputed_after_user_expunge(sb):
    sb.mirror_add(ALICE, storage=AUDIT, days=5)
    deliver(sb, ALICE, 3, gap=1.1)
    dates = save_dates(sb, AUDIT)
    assert_index_at_save(sb, AUDIT, dates[1])
    key = "shared/mirror/expire/" + AUDIT
    # mail saved more than a minute after the index is not the oldest:
    # nothing is read, nothing changes (an early index costs the scan a
    # visit, which corrects it)
    sb.doveadm("dict", "set", DICT, key, str(dates[1] - 100))
    imap_expunge(sb, AUDIT, [2])
    assert index(sb, AUDIT) == dates[1] - 100
    # the oldest, with the index a second before its save date, as a
    # delivery sets it when the clock ticks during the save: the next one
    # is, as the storage reports it
    sb.doveadm("dict", "set", DICT, key, str(dates[1] - 1))
    imap_expunge(sb, AUDIT, [1])
    assert index(sb, AUDIT) == dates[3]
    imap_expunge(sb, AUDIT, [1])
    assert index(sb, AUDIT) is None


def test_scan_skips_storages_not_due(sb):
    sb.mirror_add(ALICE, storage=AUDIT, days=1)
    sb.mirror_add(BOB, storage=AUDIT2, days=10)
    deliver(sb, ALICE)
    deliver(sb, BOB)
    rows, r = expire(sb, "-T", str(int(time.time()) + 2 * DAY))
    assert [row["storage"] for row in rows] == [AUDIT]
    assert "2 storages, 1 visited" in scan_line(r)
    assert len(save_dates(sb, AUDIT2)) == 1
    # nothing due anywhere: no storage is opened
    rows, r = expire(sb)
    assert rows == []
    assert "2 storages, 0 visited" in scan_line(r)


def test_rebuild_index(sb):
    sb.mirror_add(ALICE, storage=AUDIT, days=1)
    sb.mirror_add(BOB, storage=AUDIT2, days=1)
    deliver(sb, ALICE, 2)
    deliver(sb, BOB)
    # past the writer's check of the second copy, which would set the
    # entry again from the storage
    time.sleep(1.5)
    want = {AUDIT: index(sb, AUDIT), AUDIT2: index(sb, AUDIT2)}
    assert None not in want.values()
    for storage in want:
        sb.doveadm("dict", "unset", DICT, "shared/mirror/expire/" + storage)
    # without the index the scan finds nothing to do
    rows, _ = expire(sb, "-T", str(int(time.time()) + 2 * DAY))
    assert rows == []
    rows, _ = expire(sb, "--rebuild-index",
                     "-T", str(int(time.time()) + 2 * DAY))
    assert sorted(r["storage"] for r in rows) == sorted(want)
    assert all(r["removed"] == "0" for r in rows)
    # the index kept at delivery is the save time as LMTP began the save;
    # the rebuilt one is the oldest save date the storage reports (a
    # maildir file's ctime may be a second later)
    assert {s: index(sb, s) for s in want} == \
        {s: min(save_dates(sb, s).values()) for s in want}
    assert all(0 <= index(sb, s) - want[s] <= 1 for s in want)
    assert len(save_dates(sb, AUDIT)) == 2


@pytest.mark.nosan
@pytest.mark.parametrize("arg", ["0", "-5", "abc", "2026-12-03", "1e9", ""])
def test_bad_time(shared_sandbox, arg):
    """Refused, as mirror schedule refuses it: not taken for "now" (doveadm
    drops an integer option that isn't one, and the scan ran)."""
    sb = shared_sandbox(**SANDBOX)
    rows, r = expire(sb, "-n", "-T", arg, check=False)
    assert r.returncode == EX_USAGE, r.stderr
    assert "Invalid -T '%s': expected a UNIX time" % arg in r.stderr
    assert rows == [] and "Expiry scan" not in r.stderr


def deleted_files_open(directory):
    """Message files under directory that a process holds open after their
    last name is gone. A process with the mailbox open may still hold the
    dovecot-uidlist the removal replaced until its next sync, as Dovecot
    does; that is not a removed message."""
    held = []
    for fd in glob.glob("/proc/[0-9]*/fd/*"):
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(directory) and target.endswith(" (deleted)") \
                and not os.path.basename(target).startswith("dovecot"):
            held.append((fd, target))
    return held


# mirror-expire-reclaim.c: at least this many removals use the workers
FREE_MIN_MESSAGES = 64


def test_mdbox_copies_removed_are_gone_from_the_disk(make_sandbox):
    """In mdbox an expunge only drops a message's references: its bytes
    stay in the mail files it shares with other messages (m.*) until the
    storage is purged. The scan purges the storages it removed copies
    from, so an expired copy is gone from the disk, and one kept stays
    readable."""
    sb = make_sandbox(users=[ALICE])
    sb.add_user("%s:%s:mail=mdbox:~/mdbox" % (AUDIT, PASSWORD),
                password=None)
    m = sb.mirror_add(ALICE, storage=AUDIT, days=1)
    for i in range(3):
        ok(sb.deliver([ALICE], make_message(subject="old-%d" % i)))
    files = os.path.join(sb.dir, "mail", "example.com", "audit", "mdbox",
                         "storage", "m.*")

    def on_disk(text):
        n = 0
        for path in glob.glob(files):
            with open(path, "rb") as f:
                n += f.read().count(text)
        return n

    assert on_disk(b"Subject: old-") == 3
    time.sleep(1.1)
    ok(sb.deliver([ALICE], make_message(subject="kept")))
    # a day after the last one's save: the three older ones are due
    rows, _ = expire(sb, "-T", str(save_dates(sb, AUDIT)[4] + DAY))
    assert rows[0]["removed"] == "3", rows
    assert on_disk(b"Subject: old-") == 0
    assert on_disk(b"Subject: kept") == 1
    assert len(sb.imap_messages(AUDIT)) == 1
    code, row = verify(sb, m["id"])
    assert code == 0 and row["expired"] == "3" and row["present"] == "1", \
        row


@pytest.mark.parametrize("processes", [2, 0])
def test_removed_files_reclaimed(make_sandbox, processes):
    sb = make_sandbox(users=[ALICE, AUDIT], settings=dict(
        SETTINGS, mirror_expire_reclaim_processes=str(processes)))
    sb.mirror_add(ALICE, storage=AUDIT, days=1)
    n = FREE_MIN_MESSAGES + 6
    for replies in sb.deliver_many([ALICE], n):
        ok(replies)
    assert sb.maildir_count(AUDIT) == n
    rows, r = expire(sb, "-T", str(int(time.time()) + 2 * DAY), debug=True)
    assert rows[0]["removed"] == str(n)
    workers = "%d processes free the removed files" % processes
    if processes:
        assert workers in r.stderr
    else:
        assert "processes free the removed files" not in r.stderr
    # every file is gone, and no worker is left holding one
    assert sb.maildir_count(AUDIT) == 0
    assert deleted_files_open(os.path.join(sb.dir, "mail")) == []
    assert sb.imap_messages(AUDIT) == []
    code, row = verify(sb, 1)
    assert code == 0 and row["expired"] == str(n), row


@pytest.mark.nosan
def test_bad_reclaim_processes(make_sandbox):
    sb = make_sandbox(users=[ALICE, AUDIT], settings=dict(
        SETTINGS, mirror_expire_reclaim_processes="many"))
    sb.mirror_add(ALICE, storage=AUDIT, days=1)
    deliver(sb, ALICE, 2)
    rows, r = expire(sb, "-T", str(int(time.time()) + 2 * DAY), check=False)
    assert r.returncode != 0
    assert "Invalid mirror_expire_reclaim_processes 'many'" in r.stderr
    assert len(save_dates(sb, AUDIT)) == 2
