"""Tamper evidence: the per-mirror hash chain and `doveadm mirror verify`."""

import glob
import imaplib
import json
import os
import stat
import threading

import pytest

from conftest import PASSWORD, make_message

ALICE, BOB = "alice@example.com", "bob@example.com"
AUDIT = "audit@example.com"
EX_DATAERR, EX_NOTFOUND, EX_USAGE = 65, 68, 64
FIELDS = {"id", "storage", "records", "present", "expired", "missing",
          "altered", "unrecorded", "renumbered", "counted", "chain",
          "head", "witnessed"}


def ok(replies):
    rcpt, data = replies
    assert all(code == 250 for code, _ in rcpt), rcpt
    assert data and all(code == 250 for code, _ in data), data


def maildir(sandbox, user):
    local, domain = user.split("@")
    return os.path.join(sandbox.dir, "mail", domain, local, "Maildir")


def chain_path(sandbox, user, mirror_id):
    return os.path.join(maildir(sandbox, user),
                        "dovecot-mirror-chain.%s" % mirror_id)


def chain_lines(sandbox, user, mirror_id):
    with open(chain_path(sandbox, user, mirror_id)) as f:
        return f.read().splitlines()


def message_files(sandbox, user):
    base = maildir(sandbox, user)
    return sorted(glob.glob(os.path.join(base, "cur", "*")) +
                  glob.glob(os.path.join(base, "new", "*")))


def verify(sandbox, mirror_id, *options):
    """Run verify; returns (exit code, the one output row, stderr)."""
    r = sandbox.doveadm("mirror", "verify", *options, str(mirror_id),
                        json_output=True, check=False)
    rows = json.loads(r.stdout) if r.stdout.strip() else []
    row = None
    if rows:
        assert len(rows) == 1, r.stdout
        row = rows[0]
        assert set(row) == FIELDS, row
    return r.returncode, row, r.stderr


def counts(row):
    c = {k: int(row[k]) for k in
         ("records", "present", "expired", "missing", "altered")}
    # a copy no record covers is reported by the tests that make one
    assert row["unrecorded"] == "0" and row["renumbered"] == "0", row
    # every copy recorded was counted, once
    assert int(row["counted"]) == c["present"] + c["expired"] + \
        c["missing"] + c["altered"], row
    return c


def test_deliveries_verify_and_chain_file(sandbox):
    m = sandbox.mirror_add(ALICE, AUDIT)
    # no copies yet: OK with zeros
    code, row, err = verify(sandbox, m["id"])
    assert code == 0, err
    assert counts(row) == dict(records=0, present=0, expired=0, missing=0,
                               altered=0)
    assert row["chain"] == "ok" and row["head"] == "0" * 64
    assert row["id"] == m["id"] and row["storage"] == AUDIT

    for i in range(4):
        ok(sandbox.deliver([ALICE], make_message(subject="m%d" % i)))
    # mail that is not in the chain is ignored
    ok(sandbox.deliver([AUDIT]))
    code, row, err = verify(sandbox, m["id"])
    assert code == 0, err
    assert counts(row) == dict(records=4, present=4, expired=0, missing=0,
                               altered=0)
    assert row["chain"] == "ok"

    lines = chain_lines(sandbox, AUDIT, m["id"])
    assert len(lines) == 4
    fields = [l.split(" ") for l in lines]
    assert [f[0] for f in fields] == ["copy"] * 4
    assert [int(f[1]) for f in fields] == [1, 2, 3, 4]
    assert len({f[4] for f in fields}) == 4
    assert row["head"] == fields[-1][6]
    # created by the storage user, readable only by it
    st = os.stat(chain_path(sandbox, AUDIT, m["id"]))
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.stat(maildir(sandbox, AUDIT)).st_uid

    # the plain-text output has the same fields
    r = sandbox.doveadm("mirror", "verify", m["id"])
    assert r.stdout.split()[:13] == ["id", "storage", "records", "present",
                                     "expired", "missing", "altered",
                                     "unrecorded", "renumbered", "counted",
                                     "chain", "head", "witnessed"]


def test_shared_storage_has_one_chain_per_mirror(sandbox):
    m1 = sandbox.mirror_add(ALICE, AUDIT)
    m2 = sandbox.mirror_add(BOB, AUDIT)
    ok(sandbox.deliver([ALICE]))
    ok(sandbox.deliver([ALICE]))
    ok(sandbox.deliver([BOB]))
    # one copy serving both mirrors: a record in each chain
    ok(sandbox.deliver([ALICE, BOB]))
    assert len(sandbox.imap_messages(AUDIT)) == 4

    code, row, err = verify(sandbox, m1["id"])
    assert code == 0, err
    assert counts(row)["records"] == 3 and counts(row)["present"] == 3
    code, row2, err = verify(sandbox, m2["id"])
    assert code == 0, err
    assert counts(row2)["records"] == 2 and counts(row2)["present"] == 2
    assert row["head"] != row2["head"]
    last1 = chain_lines(sandbox, AUDIT, m1["id"])[-1].split(" ")
    last2 = chain_lines(sandbox, AUDIT, m2["id"])[-1].split(" ")
    # same message, same UID and content, different links
    assert last1[4:6] == last2[4:6] and last1[6] != last2[6]


def test_deleted_message_file_is_missing(sandbox):
    m = sandbox.mirror_add(ALICE, AUDIT)
    for _ in range(3):
        ok(sandbox.deliver([ALICE]))
    files = message_files(sandbox, AUDIT)
    assert len(files) == 3
    os.remove(files[1])
    sandbox.doveadm("force-resync", "-u", AUDIT, "INBOX")
    code, row, err = verify(sandbox, m["id"])
    assert code == EX_DATAERR, err
    assert counts(row) == dict(records=3, present=2, expired=0, missing=1,
                               altered=0)
    assert row["chain"] == "ok"
    assert "is missing" in err


def test_deleted_message_file_without_resync_is_missing(sandbox):
    m = sandbox.mirror_add(ALICE, AUDIT)
    ok(sandbox.deliver([ALICE]))
    ok(sandbox.deliver([ALICE]))
    os.remove(message_files(sandbox, AUDIT)[0])
    code, row, err = verify(sandbox, m["id"])
    assert code == EX_DATAERR, err
    assert counts(row)["missing"] == 1 and counts(row)["present"] == 1


def test_edited_message_is_altered(sandbox):
    m = sandbox.mirror_add(ALICE, AUDIT)
    ok(sandbox.deliver([ALICE], make_message(body="pay 100 dollars\r\n")))
    ok(sandbox.deliver([ALICE]))
    target = None
    for path in message_files(sandbox, AUDIT):
        with open(path, "rb") as f:
            if b"pay 100 dollars" in f.read():
                target = path
    assert target is not None
    # same size, so that the maildir file name's S= stays right
    with open(target, "r+b") as f:
        data = f.read().replace(b"pay 100 dollars", b"pay 900 dollars")
        f.seek(0)
        f.write(data)
    code, row, err = verify(sandbox, m["id"])
    assert code == EX_DATAERR, err
    assert counts(row) == dict(records=2, present=1, expired=0, missing=0,
                               altered=1)
    assert "is altered" in err


def test_imap_expunge_by_storage_user_is_missing(sandbox):
    m = sandbox.mirror_add(ALICE, AUDIT)
    for _ in range(3):
        ok(sandbox.deliver([ALICE]))
    imap = imaplib.IMAP4(sandbox.info["imap"]["host"],
                         sandbox.info["imap"]["port"])
    try:
        imap.login(AUDIT, PASSWORD)
        imap.select("INBOX")
        typ, data = imap.store("2", "+FLAGS", "(\\Deleted)")
        assert typ == "OK", data
        typ, data = imap.expunge()
        assert typ == "OK", data
    finally:
        imap.logout()
    code, row, err = verify(sandbox, m["id"])
    assert code == EX_DATAERR, err
    assert counts(row)["missing"] == 1 and counts(row)["present"] == 2


def test_edited_chain_line_breaks_the_chain(sandbox):
    m = sandbox.mirror_add(ALICE, AUDIT)
    for _ in range(3):
        ok(sandbox.deliver([ALICE]))
    path = chain_path(sandbox, AUDIT, m["id"])
    lines = chain_lines(sandbox, AUDIT, m["id"])
    # a well-formed line with a changed time
    f = lines[1].split(" ")
    f[2] = str(int(f[2]) - 86400)
    lines[1] = " ".join(f)
    with open(path, "w") as out:
        out.write("\n".join(lines) + "\n")
    code, row, err = verify(sandbox, m["id"])
    assert code == EX_DATAERR, err
    assert row["chain"] == "broken"
    # the messages themselves are still checked
    assert counts(row)["present"] == 3
    assert "broken" in err


def test_removed_chain_line_and_garbage_break_the_chain(sandbox):
    m = sandbox.mirror_add(ALICE, AUDIT)
    for _ in range(3):
        ok(sandbox.deliver([ALICE]))
    path = chain_path(sandbox, AUDIT, m["id"])
    lines = chain_lines(sandbox, AUDIT, m["id"])
    with open(path, "w") as out:
        out.write("\n".join([lines[0], lines[2]]) + "\n")
    code, row, _ = verify(sandbox, m["id"])
    assert code == EX_DATAERR and row["chain"] == "broken"

    with open(path, "w") as out:
        out.write("\n".join(lines) + "\nnot a record\n")
    code, row, _ = verify(sandbox, m["id"])
    assert code == EX_DATAERR and row["chain"] == "broken"
    # a broken chain is not appended to, but the copy is still made
    ok(sandbox.deliver([ALICE]))
    assert len(sandbox.imap_messages(AUDIT)) == 4
    sandbox.wait_log("chain append")


def test_chain_append_failure_keeps_the_copy(sandbox):
    m = sandbox.mirror_add(ALICE, AUDIT)
    ok(sandbox.deliver([ALICE]))
    # make the chain file impossible to open
    path = chain_path(sandbox, AUDIT, m["id"])
    os.remove(path)
    os.mkdir(path)
    ok(sandbox.deliver([ALICE]))
    assert len(sandbox.imap_messages(AUDIT)) == 2
    log = sandbox.log()
    assert "Mirror %s: chain append" % m["id"] in log
    code, _, err = verify(sandbox, m["id"])
    assert code == 75, err


@pytest.mark.nosan
def test_unknown_and_invalid_id(sandbox):
    code, row, err = verify(sandbox, 99)
    assert code == EX_NOTFOUND and row is None
    assert "Unknown mirror id 99" in err
    code, row, err = verify(sandbox, "x")
    assert code == EX_USAGE and row is None


def test_concurrent_deliveries_keep_one_chain(sandbox):
    m = sandbox.mirror_add(ALICE, AUDIT)
    per_session, sessions = 12, 3
    errors = []

    def run():
        try:
            for replies in sandbox.deliver_many([ALICE], per_session, "c"):
                ok(replies)
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    total = per_session * sessions
    assert len(sandbox.imap_messages(AUDIT)) == total

    code, row, err = verify(sandbox, m["id"])
    assert code == 0, err
    assert counts(row) == dict(records=total, present=total, expired=0,
                               missing=0, altered=0)
    fields = [l.split(" ") for l in chain_lines(sandbox, AUDIT, m["id"])]
    assert [int(f[1]) for f in fields] == list(range(1, total + 1))
    assert len({f[4] for f in fields}) == total


def test_long_connection_keeps_every_copy_in_its_chain(sandbox):
    """One LMTP connection reopens a storage after 256 copies (so that its
    process stays small): the copies after that go on, in the same chain."""
    m = sandbox.mirror_add(ALICE, AUDIT)
    replies = sandbox.deliver_many([ALICE], 300)
    for r in replies:
        ok(r)
    code, row, err = verify(sandbox, m["id"])
    assert code == 0, err
    assert counts(row) == dict(records=300, present=300, expired=0,
                               missing=0, altered=0)
    assert row["chain"] == "ok"
    assert [int(l.split(" ")[1]) for l in
            chain_lines(sandbox, AUDIT, m["id"])] == list(range(1, 301))


def test_a_copy_its_chain_does_not_record_is_reported(sandbox):
    """A copy committed whose chain record never came (LMTP killed in
    between): verify must not say "ok" about its storage. Mail that isn't
    a copy (the storage user's own, a forged X-Mirror-Id header below
    LMTP's own headers) is not one."""
    m = sandbox.mirror_add(ALICE, AUDIT)
    for i in range(2):
        ok(sandbox.deliver([ALICE], make_message(subject="m%d" % i)))
    forged = ("X-Mirror-Id: %s\r\n" % m["id"]).encode() + \
        make_message(subject="forged")
    ok(sandbox.deliver([AUDIT], forged))
    path = chain_path(sandbox, AUDIT, m["id"])
    lines = chain_lines(sandbox, AUDIT, m["id"])
    # the last record is lost, as if LMTP died after the commit
    with open(path, "w") as f:
        f.write(lines[0] + "\n")
    code, row, err = verify(sandbox, m["id"])
    assert code == EX_DATAERR, (code, err)
    assert row["chain"] == "ok" and row["unrecorded"] == "1", row
    assert (row["records"], row["present"]) == ("1", "1")
    assert "Mirror %s: UID 2 is a copy that the chain doesn't record" \
        % m["id"] in err, err


def test_a_renumbered_mailbox_is_found_by_content(sandbox):
    """A maildir whose dovecot-uidlist is lost (or repaired after a
    crash) gets its messages renumbered, with a new UIDVALIDITY: every
    copy is found again by its content hash, none is missing."""
    m = sandbox.mirror_add(ALICE, AUDIT)
    for i in range(3):
        ok(sandbox.deliver([ALICE], make_message(subject="m%d" % i)))
    base = maildir(sandbox, AUDIT)
    for name in os.listdir(base):
        if name == "dovecot-uidlist" or name.startswith("dovecot.index"):
            os.unlink(os.path.join(base, name))
    code, row, err = verify(sandbox, m["id"])
    assert code == 0, (row, err)
    assert (row["present"], row["missing"], row["altered"],
            row["unrecorded"], row["renumbered"]) == \
        ("0", "0", "0", "0", "3"), row
    assert err.count("is UID") == 3 and "renumbered by the mailbox" in err
    # a copy renumbered and then altered is altered (mirror-writer, whose
    # open mailbox the rebuild went under, commits it once all the same)
    ok(sandbox.deliver([ALICE], make_message(subject="m3")))
    assert sandbox.maildir_count(AUDIT) == 4
    path = [p for p in message_files(sandbox, AUDIT)
            if b"m3" in open(p, "rb").read()][0]
    with open(path, "ab") as f:
        f.write(b"tampered\n")
    code, row, err = verify(sandbox, m["id"])
    assert code == EX_DATAERR, err
    assert (row["altered"], row["renumbered"]) == ("1", "3"), row


def test_a_witnessed_head_is_found_until_the_chain_is_rewritten(sandbox):
    """verify --head: a link that someone else kept (a witnessed head) is
    in the chain as long as the chain wasn't rewritten or cut short."""
    m = sandbox.mirror_add(ALICE, AUDIT)
    for i in range(3):
        ok(sandbox.deliver([ALICE], make_message(subject="m%d" % i)))
    lines = chain_lines(sandbox, AUDIT, m["id"])
    witnessed = lines[1].split(" ")[6]
    code, row, err = verify(sandbox, m["id"], "--head", witnessed)
    assert code == 0, err
    assert row["witnessed"] == "2", row
    code, row, err = verify(sandbox, m["id"])
    assert row["witnessed"] == "", row
    # the chain cut back to its first record: the head is gone
    with open(chain_path(sandbox, AUDIT, m["id"]), "w") as f:
        f.write(lines[0] + "\n")
    code, row, err = verify(sandbox, m["id"], "--head", witnessed)
    assert code == EX_DATAERR, err
    assert row["witnessed"] == "no" and row["chain"] == "ok", row
    assert "Mirror %s: the witnessed head %s is not in the chain" \
        % (m["id"], witnessed) in err, err
    for bad in ("abc", witnessed + "0", "g" * 64):
        r = sandbox.doveadm("mirror", "verify", "--head", bad, m["id"],
                            check=False)
        assert r.returncode == EX_USAGE, (bad, r.stderr)
        assert "Invalid --head" in r.stderr, r.stderr
