"""Verifiable export: `doveadm mirror export` writes a mirror's copies
with its chain and a manifest; `doveadm mirror verify-export` and the
standalone scripts/mirror-verify-export (Python's standard library only)
check them, and find a file added, removed or changed, an entry left out,
and a rewritten chain."""

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import TOP, make_message
from test_expire import DAY, expire, save_dates
from test_verify import ok

ALICE, AUDIT = "alice@example.com", "audit@example.com"
EX_USAGE, EX_DATAERR, EX_NOINPUT, EX_NOTFOUND, EX_CANTCREAT = \
    64, 65, 66, 68, 73
SCRIPT = os.path.join(TOP, "scripts", "mirror-verify-export")


@pytest.fixture
def out():
    d = tempfile.mkdtemp(prefix="mirror-export-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def deliver(sb, subject):
    ok(sb.deliver([ALICE], make_message(subject=subject)))


def verify_export(sb, d):
    """Both checkers: (doveadm's exit code, its row, its stderr, the
    script's exit code, its output)."""
    r = sb.doveadm("mirror", "verify-export", d, json_output=True,
                   check=False)
    rows = json.loads(r.stdout) if r.stdout.strip() else []
    row = rows[0] if rows else None
    s = subprocess.run([sys.executable, SCRIPT, d], capture_output=True,
                       text=True)
    # the same verdict, the same counts
    assert r.returncode == s.returncode, (r.stderr, s.stderr)
    if row is not None:
        summary = dict(f.split("=", 1) for f in s.stdout.split())
        assert summary == row, (summary, row)
    return r.returncode, row, r.stderr, s.returncode, s.stdout + s.stderr


def test_export_and_verify_it_inside_and_outside(make_sandbox, out):
    sb = make_sandbox(users=[ALICE, AUDIT])
    m = sb.mirror_add(ALICE, storage=AUDIT, days=1)
    deliver(sb, "old0")
    deliver(sb, "old1")
    # both expire: their records stay, with an expire record each
    rows, _ = expire(sb, "-T", str(max(save_dates(sb, AUDIT).values()) +
                                   2 * DAY))
    assert rows[0]["removed"] == "2"
    time.sleep(1.1)
    since = int(time.time())
    for i in range(3):
        deliver(sb, "new%d" % i)

    d = os.path.join(out, "all")
    r = sb.doveadm("mirror", "export", "-o", d, m["id"], json_output=True)
    row = r.json[0]
    assert (row["exported"], row["expired"], row["missing"],
            row["altered"]) == ("3", "2", "0", "0"), row
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    with open(os.path.join(d, "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["format"] == "dovecot-mirror-export/1"
    assert manifest["mirror_id"] == int(m["id"])
    assert manifest["chain"]["records"] == 7
    assert manifest["chain"]["head"] == row["head"]
    assert sorted(e["reason"] for e in manifest["not_exported"]) == \
        ["expired", "expired"]
    files = sorted(os.listdir(os.path.join(d, "messages")))
    assert len(files) == 3
    assert all(stat.S_IMODE(os.stat(os.path.join(d, "messages", f))
                            .st_mode) == 0o600 for f in files)
    with open(os.path.join(d, manifest["messages"][0]["file"]), "rb") as f:
        first = f.read()
    assert b"Subject: new0" in first and b"\r\n" not in first

    code, vrow, err, scode, sout = verify_export(sb, d)
    assert code == 0, err
    assert (vrow["messages"], vrow["added"], vrow["removed"],
            vrow["changed"], vrow["mismatched"], vrow["omitted"],
            vrow["withheld"], vrow["chain"], vrow["head"]) == \
        ("3", "0", "0", "0", "0", "0", "0", "ok", row["head"]), vrow
    assert scode == 0, sout
    assert "messages=3 added=0 removed=0 changed=0 mismatched=0 " \
        "omitted=0 withheld=0 chain=ok head=%s" % row["head"] in sout, sout

    # a period: only the copies made since then
    d2 = os.path.join(out, "since")
    r = sb.doveadm("mirror", "export", "-s", str(since), "-o", d2, m["id"],
                   json_output=True)
    assert (r.json[0]["exported"], r.json[0]["expired"]) == ("3", "0")
    assert verify_export(sb, d2)[0::3] == (0, 0)

    # a file changed, one removed, one added
    names = [e["file"] for e in manifest["messages"]]
    with open(os.path.join(d, names[0]), "ab") as f:
        f.write(b"x")
    os.unlink(os.path.join(d, names[1]))
    with open(os.path.join(d, "messages", "9-9.eml"), "wb") as f:
        f.write(b"Subject: planted\n\n")
    code, vrow, err, scode, sout = verify_export(sb, d)
    assert code == EX_DATAERR and scode == EX_DATAERR, (err, sout)
    assert (vrow["changed"], vrow["removed"], vrow["added"],
            vrow["chain"]) == ("1", "1", "1", "ok"), vrow
    for text in ("%s is changed" % names[0], "%s is removed" % names[1],
                 "messages/9-9.eml is added"):
        assert text in err and text in sout, (text, err, sout)
    # a file replaced by a symlink to it is not the file export wrote
    os.unlink(os.path.join(d, "messages", "9-9.eml"))
    target = os.path.join(out, "elsewhere")
    shutil.copy(os.path.join(d, names[2]), target)
    os.unlink(os.path.join(d, names[2]))
    os.symlink(target, os.path.join(d, names[2]))
    code, vrow, err, scode, sout = verify_export(sb, d)
    assert vrow["removed"] == "2", vrow
    assert "%s is removed" % names[2] in err


def test_an_export_with_missing_copies_is_not_whole(make_sandbox, out):
    """A copy missing from the storage is named in the manifest, and the
    export, though consistent, is not whole: both checkers say so."""
    sb = make_sandbox(users=[ALICE, AUDIT])
    m = sb.mirror_add(ALICE, storage=AUDIT)
    for i in range(3):
        deliver(sb, "m%d" % i)
    sb.doveadm("expunge", "-u", AUDIT, "mailbox", "INBOX", "uid", "2")
    d = os.path.join(out, "e")
    r = sb.doveadm("mirror", "export", "-o", d, m["id"], json_output=True,
                   check=False)
    assert r.returncode == EX_DATAERR, r.stderr
    code, vrow, err, scode, sout = verify_export(sb, d)
    assert code == EX_DATAERR
    assert (vrow["messages"], vrow["withheld"], vrow["omitted"]) == \
        ("2", "1", "0"), vrow
    assert "the copy of record 2 (UID 2) is not exported: it was missing" \
        in err, err


def test_an_export_left_short_or_rewritten_is_refused(make_sandbox, out):
    sb = make_sandbox(users=[ALICE, AUDIT])
    m = sb.mirror_add(ALICE, storage=AUDIT)
    for i in range(3):
        deliver(sb, "m%d" % i)
    d = os.path.join(out, "e")
    sb.doveadm("mirror", "export", "-o", d, m["id"])
    manifest_path = os.path.join(d, "manifest.json")
    with open(manifest_path) as f:
        manifest = json.load(f)

    # an entry and its file left out: the copy is omitted
    short = dict(manifest, messages=manifest["messages"][1:])
    with open(manifest_path, "w") as f:
        json.dump(short, f)
    os.unlink(os.path.join(d, manifest["messages"][0]["file"]))
    code, vrow, err, scode, sout = verify_export(sb, d)
    assert code == EX_DATAERR and scode == EX_DATAERR
    assert vrow["omitted"] == "1", vrow
    assert "the copy of record 1 (UID 1) is omitted" in err and \
        "the copy of record 1 (UID 1) is omitted" in sout

    # a chain rewritten: a record's time changed breaks its link
    with open(manifest_path, "w") as f:
        json.dump(manifest, f)
    chain_path = os.path.join(d, "chain")
    with open(chain_path) as f:
        lines = f.read().splitlines()
    fields = lines[1].split(" ")
    fields[2] = str(int(fields[2]) + 1)
    lines[1] = " ".join(fields)
    with open(chain_path, "w") as f:
        f.write("\n".join(lines) + "\n")
    code, vrow, err, scode, sout = verify_export(sb, d)
    assert code == EX_DATAERR and scode == EX_DATAERR
    assert vrow["chain"] == "broken", vrow
    assert "chain=broken" in sout, sout
    # not an export at all
    os.unlink(manifest_path)
    code, vrow, err, scode, sout = verify_export(sb, d)
    assert (code, scode) == (EX_NOINPUT, EX_NOINPUT), (err, sout)


def test_bad_exports_change_nothing(make_sandbox, out):
    sb = make_sandbox(users=[ALICE, AUDIT])
    m = sb.mirror_add(ALICE, storage=AUDIT)
    deliver(sb, "m")
    for args, code, text in (
            (["-o", out, m["id"]], EX_CANTCREAT,
             "(export into a new directory)"),
            ([m["id"]], EX_USAGE, "Usage: mirror export"),
            (["-o", out + "/x", "99"], EX_NOTFOUND, "Unknown mirror id 99"),
            (["-s", "x", "-o", out + "/x", m["id"]], EX_USAGE,
             "Invalid --since 'x'"),
            (["-s", "20", "-u", "10", "-o", out + "/x", m["id"]], EX_USAGE,
             "--since is after --until")):
        r = sb.doveadm("mirror", "export", *args, check=False)
        assert r.returncode == code, (args, r.stderr)
        assert text in r.stderr, (args, r.stderr)
    assert os.listdir(out) == []
