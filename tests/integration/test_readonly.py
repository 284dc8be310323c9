"""Read-only mirror storages over real IMAP, POP3 and LMTP clients."""

import imaplib
import os
import poplib
import re

import pytest

from conftest import PASSWORD, make_message

ALICE, BOB, AUDIT, AUDIT2 = ("alice@example.com", "bob@example.com",
                             "audit@example.com", "audit2@example.com")

# Python's imaplib knows COPY but not MOVE (RFC 6851)
imaplib.Commands.setdefault("MOVE", ("SELECTED",))


def ok(replies):
    rcpt, data = replies
    assert all(code == 250 for code, _ in rcpt), rcpt
    assert data and all(code == 250 for code, _ in data), data


def add_readonly(sb, source, storage):
    r = sb.doveadm("mirror", "add", "-r", "-s", storage, source,
                   json_output=True)
    assert len(r.json) == 1 and r.json[0]["readonly"] == "yes", r.stdout
    return r.json[0]


def imap_login(sb, user):
    imap = imaplib.IMAP4(sb.info["imap"]["host"], sb.info["imap"]["port"])
    imap.login(user, PASSWORD)
    return imap


def flags(imap, seq):
    typ, data = imap.fetch(seq, "(FLAGS)")
    assert typ == "OK", data
    found = re.search(rb"FLAGS \(([^)]*)\)", data[0]).group(1).decode()
    return [f for f in found.split() if f != "\\Recent"]


def refused(reply, code="NOPERM"):
    """A tagged NO with the mirror's reason (and not BAD or OK)."""
    typ, data = reply
    assert typ == "NO", reply
    # Dovecot appends the command's timing: "(0.001 + 0.000 secs)."
    assert data[0].decode().startswith(
        "[%s] Mirror storage is read-only" % code), reply


def imap_append(imap, mailbox):
    return imap.append(mailbox, None, None, make_message(subject="appended"))


def storage_with_mail(sb, count=3):
    """audit@ stores alice@'s mail read-only; a second folder exists."""
    m = add_readonly(sb, ALICE, AUDIT)
    for i in range(count):
        ok(sb.deliver([ALICE], make_message(subject="msg %d" % i)))
    sb.doveadm("mailbox", "create", "-u", AUDIT, "Other")
    assert sb.maildir_count(AUDIT) == count
    return m


def test_imap_reads_and_seen_only(sandbox):
    storage_with_mail(sandbox)
    imap = imap_login(sandbox, AUDIT)
    try:
        typ, data = imap.select("INBOX")
        assert typ == "OK" and data == [b"3"], data
        # clients are told up front which flags they can keep
        assert imap.response("PERMANENTFLAGS")[1] == [b"(\\Seen)"]
        typ, data = imap.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK" and len([d for d in data if isinstance(d, tuple)]) == 3
        typ, data = imap.search(None, "SUBJECT", "msg")
        assert typ == "OK" and data == [b"1 2 3"], data
        typ, data = imap.list()
        assert typ == "OK" and any(b"Other" in d for d in data), data

        # \Seen can be set and cleared, also by FETCH BODY[]
        assert imap.store("1", "+FLAGS", "(\\Seen)")[0] == "OK"
        assert flags(imap, "1") == ["\\Seen"]
        assert imap.store("1", "-FLAGS", "(\\Seen)")[0] == "OK"
        assert flags(imap, "1") == []
        assert imap.fetch("2", "(BODY[])")[0] == "OK"
        assert flags(imap, "2") == ["\\Seen"]
        assert imap.store("2", "FLAGS", "()")[0] == "OK"
        assert flags(imap, "2") == []

        # any other flag or keyword is refused, together with \Seen
        refused(imap.store("1", "+FLAGS", "(\\Deleted)"))
        refused(imap.store("1:3", "+FLAGS", "(\\Seen \\Deleted)"))
        refused(imap.store("1", "+FLAGS", "(\\Flagged)"))
        refused(imap.store("1", "FLAGS", "(\\Seen \\Answered)"))
        refused(imap.store("1", "+FLAGS", "(important)"))
        refused(imap.uid("STORE", "1", "+FLAGS.SILENT", "($Junk)"))
        assert [flags(imap, str(i)) for i in (1, 2, 3)] == [[], [], []]

        # nothing has \Deleted, so EXPUNGE has nothing to do
        assert imap.expunge()[0] == "OK"
        assert imap.noop()[0] == "OK"
        assert sandbox.maildir_count(AUDIT) == 3
    finally:
        imap.logout()


def test_imap_refuses_saves_and_mailbox_changes(sandbox):
    storage_with_mail(sandbox)
    imap = imap_login(sandbox, AUDIT)
    try:
        assert imap.select("INBOX")[0] == "OK"
        refused(imap_append(imap, "INBOX"))
        refused(imap_append(imap, "Other"))
        refused(imap.copy("1:*", "Other"))
        refused(imap.copy("1", "INBOX"))
        refused(imap._simple_command("MOVE", "1:2", "Other"))
        refused(imap._simple_command("MOVE", "1", "INBOX"))
        assert sandbox.maildir_count(AUDIT) == 3
        assert sandbox.maildir_count(AUDIT, ".Other") == 0

        refused(imap.create("New"))
        refused(imap.delete("Other"))
        refused(imap.rename("Other", "Renamed"))
        refused(imap.subscribe("Other"))
        typ, data = imap.list()
        names = b" ".join(data)
        assert b"Other" in names and b"New" not in names and \
            b"Renamed" not in names, data
        typ, data = imap.lsub()
        assert b"Other" not in b" ".join(d for d in data if d), data

        # the connection is still usable and nothing changed
        typ, data = imap.status("INBOX", "(MESSAGES)")
        assert typ == "OK" and b"MESSAGES 3" in data[0], data
        assert imap.noop()[0] == "OK"
    finally:
        imap.logout()
    assert sandbox.maildir_count(AUDIT) == 3
    assert sandbox.maildir_count(AUDIT, ".Other") == 0


def test_imap_expunge_refused_but_doveadm_and_delivery_work(sandbox):
    storage_with_mail(sandbox)
    # \Deleted set by the administrator: the client still can't expunge
    sandbox.doveadm("flags", "add", "-u", AUDIT, "\\Deleted",
                    "mailbox", "INBOX", "1:2")
    imap = imap_login(sandbox, AUDIT)
    try:
        assert imap.select("INBOX")[0] == "OK"
        refused(imap.expunge(), "CANNOT")
        refused(imap.uid("EXPUNGE", "1:*"), "CANNOT")
        # clearing \Deleted is a change too
        refused(imap.store("1", "-FLAGS", "(\\Deleted)"))
        assert flags(imap, "1") == ["\\Deleted"]
        # CLOSE always succeeds, but expunges nothing
        assert imap.close()[0] == "OK"
    finally:
        imap.logout()
    assert sandbox.maildir_count(AUDIT) == 3

    # mirror copies still arrive
    ok(sandbox.deliver([ALICE], make_message(subject="later")))
    assert sandbox.maildir_count(AUDIT) == 4
    # and doveadm (the expiry scan) still expunges
    sandbox.doveadm("expunge", "-u", AUDIT, "mailbox", "INBOX", "all")
    assert sandbox.maildir_count(AUDIT) == 0


def test_pop3_dele_is_a_no_op(sandbox):
    storage_with_mail(sandbox)
    pop = poplib.POP3(sandbox.info["pop3"]["host"], sandbox.info["pop3"]["port"])
    pop.user(AUDIT)
    pop.pass_(PASSWORD)
    assert pop.stat()[0] == 3
    pop.retr(3)
    assert pop.dele(1).startswith(b"+OK")
    assert pop.dele(2).startswith(b"+OK")
    assert pop.quit().startswith(b"+OK")
    assert sandbox.maildir_count(AUDIT) == 3
    # RETR still marks the message read
    imap = imap_login(sandbox, AUDIT)
    try:
        assert imap.select("INBOX", readonly=True)[0] == "OK"
        assert [flags(imap, str(i)) for i in (1, 2, 3)] == \
            [[], [], ["\\Seen"]]
    finally:
        imap.logout()
    assert len(sandbox.pop3_messages(AUDIT)) == 3


def test_set_readonly_no_lifts_it_at_next_login(sandbox):
    m = storage_with_mail(sandbox)
    imap = imap_login(sandbox, AUDIT)
    sandbox.doveadm("mirror", "set", "-r", "no", m["id"])
    try:
        # a session keeps what it was at login
        assert imap.select("INBOX")[0] == "OK"
        refused(imap.store("1", "+FLAGS", "(\\Deleted)"))
    finally:
        imap.logout()

    imap = imap_login(sandbox, AUDIT)
    try:
        assert imap.select("INBOX")[0] == "OK"
        assert imap.store("1", "+FLAGS", "(\\Deleted \\Flagged)")[0] == "OK"
        assert imap.expunge()[0] == "OK"
        assert imap_append(imap, "Other")[0] == "OK"
    finally:
        imap.logout()
    assert sandbox.maildir_count(AUDIT) == 2
    assert sandbox.maildir_count(AUDIT, ".Other") == 1

    sandbox.doveadm("mirror", "set", "-r", "yes", m["id"])
    imap = imap_login(sandbox, AUDIT)
    try:
        assert imap.select("INBOX")[0] == "OK"
        refused(imap.store("1", "+FLAGS", "(\\Deleted)"))
    finally:
        imap.logout()


def test_other_storages_and_users_are_unaffected(sandbox):
    storage_with_mail(sandbox, count=1)
    sandbox.mirror_add(BOB, AUDIT2)             # not read-only
    ok(sandbox.deliver([BOB]))
    for user in (AUDIT2, BOB):
        imap = imap_login(sandbox, user)
        try:
            assert imap.select("INBOX")[0] == "OK"
            assert imap.store("1", "+FLAGS", "(\\Deleted)")[0] == "OK"
            assert imap.expunge()[0] == "OK"
            assert imap.create("New")[0] == "OK"
            assert imap_append(imap, "New")[0] == "OK"
        finally:
            imap.logout()
        assert sandbox.maildir_count(user) == 0
        assert sandbox.maildir_count(user, ".New") == 1
    # POP3 DELE works for them
    ok(sandbox.deliver([BOB]))
    pop = poplib.POP3(sandbox.info["pop3"]["host"], sandbox.info["pop3"]["port"])
    pop.user(BOB)
    pop.pass_(PASSWORD)
    pop.dele(1)
    pop.quit()
    assert sandbox.maildir_count(BOB) == 0
    # the read-only one still is
    assert sandbox.maildir_count(AUDIT) == 1


def login_fails(sb, user):
    """Dovecot's answer to a session it could not set up: IMAP says OK to
    LOGIN (the password was right) and then BYE, POP3 says -ERR [SYS/TEMP]."""
    with pytest.raises(imaplib.IMAP4.abort, match="Internal error"):
        imap = imap_login(sb, user)
        try:
            imap.select("INBOX")
        finally:
            try:
                imap.logout()
            except (imaplib.IMAP4.error, OSError, EOFError):
                pass
    pop = poplib.POP3(sb.info["pop3"]["host"], sb.info["pop3"]["port"])
    try:
        pop.user(user)
        with pytest.raises(poplib.error_proto, match=r"\[SYS/TEMP\]"):
            pop.pass_(PASSWORD)
    finally:
        pop.close()


def test_broken_registry_data_fails_closed(sandbox):
    storage_with_mail(sandbox, count=1)
    sandbox.registry_set("mirror/storage/" + AUDIT, "garbage")
    login_fails(sandbox, AUDIT)
    log = sandbox.log()
    assert "mirror: Can't tell whether the user is a read-only mirror " \
        "storage: Broken registry data for storage %s" % AUDIT in log, log
    assert sandbox.maildir_count(AUDIT) == 1
    # other users don't depend on that key
    imap = imap_login(sandbox, BOB)
    assert imap.select("INBOX")[0] == "OK"
    imap.logout()


def test_unreachable_registry_fails_closed(sandbox):
    storage_with_mail(sandbox, count=1)
    # the mail processes (as the mail uid) can't reach the registry
    socket = os.path.join(sandbox.dir, "run", "mirror-registry")
    mode = os.stat(socket).st_mode & 0o777
    os.chmod(socket, 0)
    try:
        # nobody's status is known: every IMAP and POP3 login fails
        login_fails(sandbox, AUDIT)
        login_fails(sandbox, BOB)
        sandbox.wait_log("dict lookup of shared/mirror/storage/")
    finally:
        os.chmod(socket, mode)
    imap = imap_login(sandbox, BOB)
    assert imap.select("INBOX")[0] == "OK"
    imap.logout()


@pytest.mark.parametrize("location", [None, "mdbox:~/mdbox"])
def test_empty_storage_can_be_selected(sandbox, location):
    """Opening the INBOX creates it: allowed, it changes no mail."""
    storage = "fresh@example.com"
    sandbox.add_user("%s:%s%s" % (storage, PASSWORD,
                                  ":mail=" + location if location else ""),
                     password=None)
    add_readonly(sandbox, ALICE, storage)
    imap = imap_login(sandbox, storage)
    try:
        typ, data = imap.select("INBOX")
        assert typ == "OK" and data == [b"0"], data
        refused(imap.create("Sent"))
        refused(imap_append(imap, "INBOX"))
    finally:
        imap.logout()
    ok(sandbox.deliver([ALICE]))
    imap = imap_login(sandbox, storage)
    try:
        assert imap.select("INBOX")[0] == "OK"
        refused(imap.store("1", "+FLAGS", "(\\Deleted)"))
        assert imap.store("1", "+FLAGS", "(\\Seen)")[0] == "OK"
        assert flags(imap, "1") == ["\\Seen"]
        refused(imap.copy("1", "INBOX"))
    finally:
        imap.logout()
