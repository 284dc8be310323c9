"""The access log of mirror storages: every IMAP and POP3 session of a
storage user records the mailboxes it opens and what it read, changed
and expunged, and `doveadm mirror access` lists who (user, address) did
what and when."""

import imaplib
import os
import poplib
import time

from conftest import PASSWORD, make_message
from test_verify import maildir, ok

ALICE, AUDIT = "alice@example.com", "audit@example.com"
EX_USAGE, EX_NOTFOUND = 64, 68


def access(sb, *args):
    return sb.doveadm("mirror", "access", *args, json_output=True).json


def test_sessions_of_a_storage_are_logged(make_sandbox):
    sb = make_sandbox(users=[ALICE, AUDIT])
    m = sb.mirror_add(ALICE, AUDIT, readonly=True)
    for i in range(3):
        ok(sb.deliver([ALICE], make_message(subject="m%d" % i)))
    before = int(time.time())
    assert access(sb, m["id"]) == []

    imap = imaplib.IMAP4(sb.info["imap"]["host"], sb.info["imap"]["port"])
    imap.login(AUDIT, PASSWORD)
    imap.select("INBOX")
    typ, _ = imap.uid("FETCH", "1:2", "(BODY.PEEK[])")
    assert typ == "OK"
    typ, _ = imap.uid("STORE", "3", "+FLAGS", "(\\Seen)")
    assert typ == "OK"
    imap.logout()

    pop = poplib.POP3(sb.info["pop3"]["host"], sb.info["pop3"]["port"])
    pop.user(AUDIT)
    pop.pass_(PASSWORD)
    pop.retr(3)
    pop.quit()

    # the recipient's own sessions are not a storage's: not logged
    imap = imaplib.IMAP4(sb.info["imap"]["host"], sb.info["imap"]["port"])
    imap.login(ALICE, PASSWORD)
    imap.select("INBOX")
    imap.uid("FETCH", "1", "(BODY.PEEK[])")
    imap.logout()
    assert not os.path.exists(os.path.join(maildir(sb, ALICE),
                                           "dovecot-mirror-access.log"))

    rows = access(sb, m["id"])
    assert all(r["user"] == AUDIT and r["ip"] == "127.0.0.1" and
               r["mailbox"] == "INBOX" and r["session"] != "" and
               r["time"] >= time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                          time.gmtime(before))
               for r in rows), rows
    got = [(r["service"], r["fetched"], r["changed"], r["expunged"])
           for r in rows]
    assert got == [("imap", "1:2", "3", ""), ("pop3", "3", "", "")], got
    assert rows[0]["session"] != rows[1]["session"]
    st = os.stat(os.path.join(maildir(sb, AUDIT),
                              "dovecot-mirror-access.log"))
    assert st.st_mode & 0o777 == 0o600

    # since a time after them: none
    assert access(sb, "-s", str(int(time.time()) + 60), m["id"]) == []
    for args, code, text in ((["0"], EX_USAGE, "Invalid mirror id"),
                             (["99"], EX_NOTFOUND, "Unknown mirror id 99"),
                             (["-s", "x", m["id"]], EX_USAGE,
                              "Invalid --since 'x'")):
        r = sb.doveadm("mirror", "access", *args, check=False)
        assert r.returncode == code, (args, r.stderr)
        assert text in r.stderr, r.stderr


def test_expunges_of_a_writable_storage_are_logged(make_sandbox):
    sb = make_sandbox(users=[ALICE, AUDIT])
    m = sb.mirror_add(ALICE, AUDIT)
    for i in range(2):
        ok(sb.deliver([ALICE], make_message(subject="m%d" % i)))
    imap = imaplib.IMAP4(sb.info["imap"]["host"], sb.info["imap"]["port"])
    imap.login(AUDIT, PASSWORD)
    imap.select("INBOX")
    imap.uid("STORE", "1", "+FLAGS", "(\\Deleted)")
    imap.expunge()
    imap.logout()
    rows = access(sb, m["id"])
    assert [(r["changed"], r["expunged"]) for r in rows] == \
        [("1", "1")], rows


def test_a_long_mailbox_name_hides_nothing(make_sandbox):
    """A storage user names its own mailboxes: a long name is cut in its
    line, and what comes after it is listed. A STATUS writes nothing."""
    sb = make_sandbox(users=[ALICE, AUDIT])
    m = sb.mirror_add(ALICE, AUDIT)
    ok(sb.deliver([ALICE], make_message(subject="m")))
    long_name = "L" * 250
    imap = imaplib.IMAP4(sb.info["imap"]["host"], sb.info["imap"]["port"])
    imap.login(AUDIT, PASSWORD)
    typ, data = imap.create(long_name)
    assert typ == "OK", data
    imap.select("INBOX", readonly=True)
    typ, data = imap.uid("COPY", "1", long_name)
    assert typ == "OK", data
    imap.close()
    imap.status(long_name, "(MESSAGES)")
    imap.select(long_name)
    imap.uid("FETCH", "1", "(BODY.PEEK[])")
    imap.select("INBOX")
    imap.uid("FETCH", "1", "(BODY.PEEK[])")
    imap.logout()
    rows = access(sb, m["id"])
    # the COPY looked at both mailboxes, read nothing; the STATUS isn't
    # there; then the two reads
    assert [r["fetched"] for r in rows] == ["", "", "1", "1"], rows
    short = [r["mailbox"] if r["mailbox"] == "INBOX" else "long"
             for r in rows]
    assert sorted(short[:2]) == ["INBOX", "long"] and \
        short[2:] == ["long", "INBOX"], short
    cut = rows[2]["mailbox"]
    assert len(cut) <= 200 and cut.startswith("LLLL") and \
        cut.endswith("..."), cut
