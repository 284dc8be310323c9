"""Mail Bagging, part 1: the bag (doveadm bag, LMTP), its flush to the
customer's MTA, ETRN (fetchmail, msmtp) and ATRN/ODMR (fetchmail), on a
sandbox with real clients and real peers."""

import email
import imaplib
import json
import os
import re
import signal
import socket
import subprocess
import time

import pytest
from flufl.bounce import all_failures

from conftest import REGISTRY, make_message
from peers import (CustomerMTA, SmtpSink, fetchmail_etrn, fetchmail_odmr,
                   msmtp_etrn)

DOMAIN = "cust.test"
LOCAL = "alice@example.com"


class SMTPSession:
    """A line-exact client for the bag service's listeners."""

    def __init__(self, port, timeout=30):
        self.sock = socket.create_connection(("127.0.0.1", port),
                                             timeout=timeout)
        self.file = self.sock.makefile("rb")
        self.greeting = self.reply()

    def reply(self):
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError("connection closed")
            lines.append(line.decode(errors="replace").rstrip("\r\n"))
            if line[3:4] != b"-":
                return int(lines[-1][:3]), "\n".join(l[4:] for l in lines)

    def send_raw(self, data):
        self.sock.sendall(data)

    def cmd(self, line):
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reply()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# what bag_sandbox starts here, in test_bag_hostile and test_bag_pop3
# (and the cases of shared_sandbox)
BAG_SANDBOX = {"users": [LOCAL], "settings": {"bag_enabled": "yes"}}


@pytest.fixture
def bag_sandbox(make_sandbox):
    return make_sandbox(**BAG_SANDBOX)


@pytest.fixture
def customer():
    mta = CustomerMTA().start()
    yield mta
    mta.stop()


def bag_add(sb, domain=DOMAIN, nets=None, host=None, identity=None,
            check=True):
    args = ["bag", "add"]
    if nets is not None:
        args += ["-e", nets]
    if host is not None:
        args += ["-h", host]
    if identity is not None:
        args += ["-a", identity]
    r = sb.doveadm(*(args + [domain]), json_output=True, check=check)
    return r.json[0] if check else r


def bag_show(sb, domain=DOMAIN):
    return sb.doveadm("bag", "show", domain, json_output=True).json[0]


def bag_messages(sb, domain=DOMAIN):
    return int(bag_show(sb, domain)["messages"])


def deliver(sb, rcpts, subject="hello", mail_from="sender@remote.test",
            params=""):
    s = sb.lmtp()
    try:
        code, text = s.cmd("MAIL FROM:<%s>%s" % (mail_from, params))
        assert code == 250, text
        replies = [s.cmd("RCPT TO:<%s>" % r if isinstance(r, str) else
                         "RCPT TO:<%s> %s" % r) for r in rcpts]
        accepted = [r for r in replies if r[0] == 250]
        if not accepted:
            s.cmd("RSET")
            return replies, []
        code, text = s.cmd("DATA")
        assert code == 354
        s.sock.sendall(make_message(subject) + b".\r\n")
        return replies, [s.reply() for _ in accepted]
    finally:
        s.close()


def wait_until(cond, timeout=30, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError("timed out waiting for " + what)


def bag_files(sb, user="_bag@" + DOMAIN):
    local, domain = user.split("@")
    base = os.path.join(sb.dir, "mail", domain, local, "Maildir")
    out = []
    for sub in ("new", "cur"):
        d = os.path.join(base, sub)
        if os.path.isdir(d):
            out += [os.path.join(d, f) for f in sorted(os.listdir(d))]
    return out


def bag_journal(sb, user="_bag@" + DOMAIN):
    """The flush journal of a bag: {recipient number: last state}, for
    its only message (lib-bag/bag-journal.h)."""
    local, domain = user.split("@")
    path = os.path.join(sb.dir, "mail", domain, local, "dovecot-bag.journal")
    states = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                _, idx, state = line.rstrip("\n").split("\t")
                states[int(idx)] = state
    return states


def etrn_port(sb):
    return sb.info["etrn"]["port"]


def odmr_port(sb):
    return sb.info["odmr"]["port"]


# doveadm bag


def test_bag_add_list_show_remove(bag_sandbox, customer):
    sb = bag_sandbox
    row = bag_add(sb, nets="127.0.0.1,10.0.0.0/8", host=customer.hostport,
                  identity="odmr@" + DOMAIN)
    assert row["domain"] == DOMAIN and row["user"] == "_bag@" + DOMAIN
    assert row["modes"] == "etrn,atrn"
    assert row["etrn_nets"] == "127.0.0.1 10.0.0.0/8"
    assert len(row["password"]) == 24 and len(row["atrn_password"]) == 24
    # an identity may pull several domains: the second gets no password
    row2 = bag_add(sb, "other.test", identity="odmr@" + DOMAIN)
    assert row2["atrn_password"] == ""
    rows = sb.doveadm("bag", "list", json_output=True).json
    assert [r["domain"] for r in rows] == [DOMAIN, "other.test"]
    show = bag_show(sb)
    assert show["messages"] == "0" and show["last_flush"] == ""
    assert show["recipient_list"] == "no"

    # the bag user logs in (read-only) with the printed password
    deliver(sb, ["x@" + DOMAIN])
    imap = imaplib.IMAP4(sb.info["imap"]["host"], sb.info["imap"]["port"])
    imap.login("_bag@" + DOMAIN, row["password"])
    typ, data = imap.select("INBOX")
    assert typ == "OK" and data == [b"1"]
    typ, _ = imap.store("1", "+FLAGS", "\\Deleted")
    assert typ == "NO"
    imap.logout()
    assert bag_messages(sb) == 1

    # mail waits: refused unless forced, and then the mail goes too
    r = sb.doveadm("bag", "remove", DOMAIN, check=False)
    assert r.returncode == 65 and "wait in the bag" in r.stderr
    assert bag_messages(sb) == 1
    r = sb.doveadm("bag", "remove", "-f", DOMAIN, json_output=True)
    assert r.json[0]["messages_deleted"] == "1"
    assert not os.path.exists(os.path.join(sb.dir, "mail", DOMAIN, "_bag"))
    r = sb.doveadm("bag", "show", DOMAIN, check=False)
    assert r.returncode == 68
    # the other domain still has the identity
    assert sb.doveadm("bag", "list", json_output=True).json[0][
        "atrn_identity"] == "odmr@" + DOMAIN


@pytest.mark.nosan
@pytest.mark.parametrize("args,code", [
    (["bag", "add", DOMAIN], 64),
    (["bag", "add", "-e", "127.0.0.1", DOMAIN], 64),
    (["bag", "add", "-h", "mx.cust.test", DOMAIN], 64),
    (["bag", "add", "-e", "127.0.0.1/99", "-h", "mx", DOMAIN], 64),
    (["bag", "add", "-e", "127.0.0.1", "-h", "mx:0", DOMAIN], 64),
    (["bag", "add", "-e", "127.0.0.1", "-h", "mx\r\nRCPT", DOMAIN], 64),
    (["bag", "add", "-a", "odmr", "nodots"], 64),
    (["bag", "add", "-a", "bad user@x.test", DOMAIN], 64),
    (["bag", "add", "-a", "odmr@x.test", "-bad-.test"], 64),
    (["bag", "show", "unknown.test"], 68),
    (["bag", "remove", "unknown.test"], 68),
    (["bag", "recipient", "add", "unknown.test", "a@unknown.test"], 68),
    (["bag", "flush", "unknown.test"], 68),
    (["bag", "password", "unknown.test"], 68),
    (["bag", "password", "-a", "nobody@unknown.test"], 68),
])
def test_bag_commands_bad_input(shared_sandbox, args, code):
    sb = shared_sandbox(**BAG_SANDBOX)
    r = sb.doveadm(*args, check=False)
    assert r.returncode == code, r.stderr
    assert r.stderr.strip() and "Panic" not in r.stderr
    # nothing was created
    assert sb.doveadm("bag", "list", json_output=True).json == []


@pytest.mark.nosan
def test_bag_add_refuses_duplicates_and_taken_names(bag_sandbox):
    sb = bag_sandbox
    bag_add(sb, identity="odmr@" + DOMAIN)
    r = bag_add(sb, identity="odmr@" + DOMAIN, check=False)
    assert r.returncode == 65 and "bagged already" in r.stderr
    # a Dovecot user of the site can be the identity: no password made
    row = bag_add(sb, "site.test", identity=LOCAL)
    assert row["atrn_password"] == ""
    # a storage user of the suite can't
    r = bag_add(sb, "third.test", identity="_bag@" + DOMAIN, check=False)
    assert r.returncode == 65
    # a bag user name that is taken gets a number
    sb.add_user("_bag@fourth.test")
    row = bag_add(sb, "fourth.test", identity="odmr@" + DOMAIN)
    assert row["user"] == "_bag-2@fourth.test"


def test_bag_password_rotation(bag_sandbox):
    sb = bag_sandbox
    row = bag_add(sb, identity="odmr@" + DOMAIN)
    new = sb.doveadm("bag", "password", DOMAIN, json_output=True).json[0]
    assert new["user"] == "_bag@" + DOMAIN
    assert new["password"] not in (row["password"], "")
    imap = imaplib.IMAP4(sb.info["imap"]["host"], sb.info["imap"]["port"])
    with pytest.raises(imaplib.IMAP4.error):
        imap.login("_bag@" + DOMAIN, row["password"])
    imap = imaplib.IMAP4(sb.info["imap"]["host"], sb.info["imap"]["port"])
    imap.login("_bag@" + DOMAIN, new["password"])
    imap.logout()
    ident = sb.doveadm("bag", "password", "-a", "odmr@" + DOMAIN,
                       json_output=True).json[0]
    assert ident["user"] == "odmr@" + DOMAIN
    # the hash in the registry is CRAM-MD5's, never the password
    text = sb.registry_get("mirror/user/odmr@" + DOMAIN)
    assert ident["password"] not in text and "{CRAM-MD5}" in text


# LMTP


def test_lmtp_bags_once_per_domain_with_the_envelope(bag_sandbox):
    sb = bag_sandbox
    bag_add(sb, identity="odmr@" + DOMAIN)
    bag_add(sb, "two.test", identity="odmr@" + DOMAIN)
    rcpt, data = deliver(sb, [
        ("a@" + DOMAIN, "NOTIFY=FAILURE ORCPT=rfc822;A@cust.test"),
        "B+detail@CUST.test", "c@two.test", LOCAL, "a@" + DOMAIN],
        params=" RET=HDRS ENVID=id+2B1")
    assert [c for c, _ in rcpt] == [250] * 5
    assert [c for c, _ in data] == [250] * 5, data
    assert "Held for cust.test" in data[0][1]
    # one copy in each bag, one for the local user
    files = bag_files(sb)
    assert len(files) == 1 and len(bag_files(sb, "_bag@two.test")) == 1
    assert sb.maildir_count(LOCAL) == 1
    with open(files[0], "rb") as f:
        head = f.read().split(b"\n\n")[0].decode()
    lines = head.split("\n")
    assert lines[0] == ("X-Bag-Mail-From: <sender@remote.test> "
                        "ENVID=id+2B1 RET=HDRS")
    assert lines[1] == ("X-Bag-Rcpt-To: <a@cust.test> NOTIFY=FAILURE "
                        "ORCPT=rfc822;A@cust.test")
    assert lines[2] == "X-Bag-Rcpt-To: <B+detail@CUST.test>"
    assert lines[3] == "X-Bag-Envelope-End: ok"
    assert lines[4].startswith("Received: from")
    # the duplicate recipient is there once, the other domain not at all
    assert head.count("X-Bag-Rcpt-To") == 2 and "two.test" not in head
    # recipients of non-bagged domains still need a user
    rcpt, _ = deliver(sb, ["nobody@example.com"])
    assert rcpt[0][0] == 550


def test_lmtp_recipient_list(bag_sandbox):
    sb = bag_sandbox
    bag_add(sb, identity="odmr@" + DOMAIN)
    sb.doveadm("bag", "recipient", "add", DOMAIN, "a@" + DOMAIN,
               "B@" + DOMAIN)
    rows = sb.doveadm("bag", "recipient", "list", DOMAIN,
                      json_output=True).json
    assert [r["recipient"] for r in rows] == ["a@" + DOMAIN, "b@" + DOMAIN]
    rcpt, data = deliver(sb, ["a@" + DOMAIN, "b+x@" + DOMAIN,
                              "stranger@" + DOMAIN])
    assert [c for c, _ in rcpt] == [250, 250, 550]
    assert rcpt[2][1].startswith("5.1.1")
    assert len(data) == 2 and bag_messages(sb) == 1
    sb.doveadm("bag", "recipient", "remove", DOMAIN, "a@" + DOMAIN)
    rcpt, _ = deliver(sb, ["a@" + DOMAIN])
    assert rcpt[0][0] == 550
    sb.doveadm("bag", "recipient", "clear", DOMAIN)
    assert bag_show(sb)["recipient_list"] == "no"
    rcpt, _ = deliver(sb, ["anyone@" + DOMAIN])
    assert rcpt[0][0] == 250


def test_broken_registry_lists(bag_sandbox):
    """The JSON lists of the registry: a bad entry is a clear error."""
    sb = bag_sandbox
    bag_add(sb, nets="127.0.0.1", host="127.0.0.1")
    sb.doveadm("bag", "recipient", "add", DOMAIN, "a@" + DOMAIN)
    key = "shared/bag/rcpts/" + DOMAIN
    good = sb.doveadm("dict", "get", REGISTRY, key).stdout.strip()
    sb.doveadm("dict", "set", REGISTRY, key, '["a@elsewhere.test"]')
    r = sb.doveadm("bag", "recipient", "list", DOMAIN, check=False)
    assert r.returncode == 75, r.stderr
    assert "Broken registry data in %s: invalid address" % key in r.stderr
    sb.doveadm("dict", "set", REGISTRY, key, good)
    rows = sb.doveadm("bag", "recipient", "list", DOMAIN,
                      json_output=True).json
    assert [row["recipient"] for row in rows] == ["a@" + DOMAIN]

    key = "shared/bag/domains"
    sb.doveadm("dict", "set", REGISTRY, key, '["not a domain"]')
    r = sb.doveadm("bag", "list", check=False)
    assert r.returncode == 75, r.stderr
    assert "Broken registry data in %s: invalid domain" % key in r.stderr


def test_lmtp_broken_registry_data_tempfails(bag_sandbox):
    sb = bag_sandbox
    sb.doveadm("dict", "set", REGISTRY, "shared/bag/domain/" + DOMAIN,
               "{broken")
    rcpt, _ = deliver(sb, ["a@" + DOMAIN, LOCAL])
    assert rcpt[0][0] == 451 and rcpt[1][0] == 250
    sb.wait_log("Can't look up the bag of cust.test")
    # doveadm refuses to act on it too
    r = sb.doveadm("bag", "show", DOMAIN, check=False)
    assert r.returncode == 75 and "Broken registry data" in r.stderr


# flushes


def test_doveadm_flush_delivers_everything_once(bag_sandbox, customer):
    sb = bag_sandbox
    bag_add(sb, nets="127.0.0.1", host=customer.hostport)
    for i in range(5):
        deliver(sb, ["a@" + DOMAIN, "b@" + DOMAIN], subject="m%d" % i)
    assert bag_messages(sb) == 5
    r = sb.doveadm("bag", "flush", DOMAIN, json_output=True)
    assert r.json[0]["delivered"] == "5" and r.json[0]["error"] == ""
    msgs = customer.messages
    assert sorted(m.subject for m in msgs) == ["m%d" % i for i in range(5)]
    for m in msgs:
        assert m.mail_from == "sender@remote.test"
        assert m.rcpts == ["a@" + DOMAIN, "b@" + DOMAIN]
        # the envelope lines stay in the bag
        assert b"X-Bag-" not in m.data
        assert b"Received: from" in m.data
    show = bag_show(sb)
    assert show["messages"] == "0" and show["last_flush_result"] == "ok"
    assert show["delivered"] == "5"
    # again: nothing more is sent
    sb.doveadm("bag", "flush", DOMAIN)
    assert len(customer.messages) == 5


def test_flush_keeps_the_envelope_parameters(bag_sandbox):
    """smtp-sink offers DSN and shows the parameters it got."""
    sb = bag_sandbox
    sink = SmtpSink()
    try:
        bag_add(sb, nets="127.0.0.1", host=sink.hostport)
        deliver(sb, [("a@" + DOMAIN, "NOTIFY=SUCCESS,FAILURE "
                      "ORCPT=rfc822;orig@cust.test")],
                params=" RET=FULL ENVID=e1")
        sb.doveadm("bag", "flush", DOMAIN)
        with open(sink.wait_for(1)[0], "rb") as f:
            dump = f.read().decode()
        assert ("X-Mail-Args: <sender@remote.test> ENVID=e1 RET=FULL"
                in dump)
        assert ("X-Rcpt-Args: <a@cust.test> NOTIFY=SUCCESS,FAILURE "
                "ORCPT=rfc822;orig@cust.test" in dump)
    finally:
        sink.stop()


def read_outbox(sb, count, timeout=30):
    wait_until(lambda: len(sb.outbox()) >= count, timeout, "bounces")
    out = []
    for path in sb.outbox():
        with open(path, "rb") as f:
            data = f.read()
        args, msg = data.split(b"\n", 1)
        out.append((args.decode(), email.message_from_bytes(msg)))
    return out


def test_5xx_bounces_4xx_keeps(bag_sandbox, customer):
    sb = bag_sandbox
    bag_add(sb, nets="127.0.0.1", host=customer.hostport)
    customer.handler.rcpt_replies = {
        "gone@" + DOMAIN: "550 5.1.1 <gone@cust.test>: no such user",
        "later@" + DOMAIN: "451 4.2.0 try later",
    }
    deliver(sb, [("gone@" + DOMAIN, "ORCPT=rfc822;Gone@cust.test"),
                 "ok@" + DOMAIN, "later@" + DOMAIN], subject="mixed",
            params=" ENVID=env-1")
    r = sb.doveadm("bag", "flush", DOMAIN, json_output=True).json[0]
    assert r["bounced"] == "1" and r["deferred"] == "1"
    assert [m.rcpts for m in customer.messages] == [["ok@" + DOMAIN]]
    # the message stays as it came; the bag's journal says which of its
    # recipients are done (gone@ notified, ok@ delivered)
    assert len(bag_files(sb)) == 1
    assert bag_journal(sb) == {0: "s", 1: "d"}

    # the sender got a DSN, from the null sender, that a bounce parser
    # reads as gone@ failed permanently
    (args, dsn), = read_outbox(sb, 1)
    assert "sender@remote.test" in args
    assert dsn.get_content_type() == "multipart/report"
    assert dsn["Auto-Submitted"] == "auto-replied"
    temporary, permanent = all_failures(dsn)
    # flufl.bounce reports the Original-Recipient (the ORCPT given)
    assert permanent == {b"Gone@cust.test"} and not temporary
    status = dsn.get_payload()[1].get_payload()
    fields = "\n".join(str(p) for p in status)
    assert "Original-Envelope-Id: env-1" in fields
    assert "Original-Recipient: rfc822; Gone@cust.test" in fields
    assert "Status: 5.1.1" in fields
    assert "Diagnostic-Code: smtp; 550 5.1.1" in fields
    assert dsn.get_payload()[2].get_content_type() == "text/rfc822-headers"

    # the next flush, with the customer ready, delivers the rest
    customer.handler.rcpt_replies = {}
    sb.doveadm("bag", "flush", DOMAIN)
    assert [m.rcpts for m in customer.messages] == [
        ["ok@" + DOMAIN], ["later@" + DOMAIN]]
    assert bag_messages(sb) == 0


def test_no_dsn_for_null_sender_or_notify_never(bag_sandbox, customer):
    sb = bag_sandbox
    bag_add(sb, nets="127.0.0.1", host=customer.hostport)
    customer.handler.rcpt_replies = {
        "gone@" + DOMAIN: "550 5.1.1 no such user"}
    deliver(sb, ["gone@" + DOMAIN], mail_from="")
    deliver(sb, [("gone@" + DOMAIN, "NOTIFY=NEVER")])
    deliver(sb, [("gone@" + DOMAIN, "NOTIFY=SUCCESS")])
    r = sb.doveadm("bag", "flush", DOMAIN, json_output=True).json[0]
    assert r["bounced"] == "3"
    assert bag_messages(sb) == 0
    time.sleep(1)
    assert sb.outbox() == []


def test_data_4xx_and_5xx(bag_sandbox, customer):
    sb = bag_sandbox
    bag_add(sb, nets="127.0.0.1", host=customer.hostport)
    deliver(sb, ["a@" + DOMAIN])
    customer.handler.data_reply = "452 4.3.1 out of space"
    r = sb.doveadm("bag", "flush", DOMAIN, json_output=True).json[0]
    assert r["deferred"] == "1" and bag_messages(sb) == 1
    customer.handler.data_reply = "554 5.6.0 content refused"
    r = sb.doveadm("bag", "flush", DOMAIN, json_output=True).json[0]
    assert r["bounced"] == "1" and bag_messages(sb) == 0
    (_, dsn), = read_outbox(sb, 1)
    assert all_failures(dsn)[1] == {b"a@cust.test"}


def test_dropped_connection_loses_nothing(bag_sandbox, customer):
    sb = bag_sandbox
    bag_add(sb, nets="127.0.0.1", host=customer.hostport)
    for i in range(6):
        deliver(sb, ["a@" + DOMAIN], subject="d%d" % i)
    # the customer's MTA dies while the 4th message is sent
    customer.handler.drop_at = 4
    r = sb.doveadm("bag", "flush", DOMAIN, json_output=True, check=False)
    assert r.returncode == 75
    row = json.loads(r.stdout)[0]
    assert row["delivered"] == "3" and row["error"] != ""
    assert len(customer.messages) == 3
    assert bag_messages(sb) == 3
    customer.handler.drop_at = None
    sb.doveadm("bag", "flush", DOMAIN)
    subjects = sorted(m.subject for m in customer.messages)
    assert subjects == ["d%d" % i for i in range(6)]
    assert bag_messages(sb) == 0


def test_customer_down(bag_sandbox):
    sb = bag_sandbox
    port = CustomerMTA().port
    bag_add(sb, nets="127.0.0.1", host="127.0.0.1:%d" % port)
    deliver(sb, ["a@" + DOMAIN])
    r = sb.doveadm("bag", "flush", DOMAIN, check=False)
    assert r.returncode == 75 and "connect" in r.stderr
    assert bag_messages(sb) == 1
    assert bag_show(sb)["last_flush_result"].startswith("connect")


def test_broken_stored_envelope_is_kept(bag_sandbox, customer):
    sb = bag_sandbox
    bag_add(sb, nets="127.0.0.1", host=customer.hostport)
    deliver(sb, ["a@" + DOMAIN], subject="good")
    # a message put into the bag by something else, without an envelope
    path = os.path.join(sb.dir, "mail", DOMAIN, "_bag", "Maildir", "new",
                        "1.M1P1.stray")
    with open(path, "wb") as f:
        f.write(b"Subject: stray\r\n\r\nno envelope\r\n")
    if os.geteuid() == 0:
        os.chown(path, 65534, 65534)
    r = sb.doveadm("bag", "flush", DOMAIN, json_output=True).json[0]
    assert r["delivered"] == "1" and r["broken"] == "1"
    assert [m.subject for m in customer.messages] == ["good"]
    assert bag_messages(sb) == 1
    assert re.search(r"UID \d+ kept: Broken bag envelope: no "
                     r"X-Bag-Mail-From line first", sb.log())


# ETRN


def test_etrn_with_fetchmail(bag_sandbox, customer):
    sb = bag_sandbox
    bag_add(sb, nets="127.0.0.1", host=customer.hostport)
    for i in range(3):
        deliver(sb, ["a@" + DOMAIN], subject="e%d" % i)
    r = fetchmail_etrn(etrn_port(sb), [DOMAIN])
    assert r.returncode == 0, r.stdout + r.stderr
    assert ("253 2.0.0 OK, 3 pending messages for node cust.test started"
            in r.stdout + r.stderr)
    customer.wait_for(3)
    wait_until(lambda: bag_messages(sb) == 0, what="an empty bag")
    assert customer.handler.connections == 1
    # nothing waits now: 251, and fetchmail stops there
    r = fetchmail_etrn(etrn_port(sb), [DOMAIN, "@" + DOMAIN])
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "251 2.0.0 OK, no messages waiting" in out
    assert "ETRN @cust.test" not in out
    assert bag_show(sb)["last_flush_result"] == "ok"


def test_etrn_forms_and_refusals(bag_sandbox, customer):
    sb = bag_sandbox
    bag_add(sb, nets="127.0.0.1", host=customer.hostport)
    bag_add(sb, "sub." + DOMAIN, nets="127.0.0.1", host=customer.hostport)
    # a domain whose customer is somewhere else
    bag_add(sb, "far.test", nets="192.0.2.0/24", host=customer.hostport)
    bag_add(sb, "atrnonly.test", identity="odmr@far.test")
    deliver(sb, ["a@" + DOMAIN, "b@sub." + DOMAIN, "c@far.test",
                 "d@atrnonly.test"])
    s = SMTPSession(etrn_port(sb))
    assert s.greeting[0] == 220
    assert s.cmd("ETRN " + DOMAIN)[0] == 503     # before EHLO
    code, text = s.cmd("EHLO client.test")
    assert code == 250 and "ETRN" in text.split("\n")
    assert "AUTH" not in text
    code, text = s.cmd("ETRN @" + DOMAIN)
    assert code == 253 and "2 pending messages" in text
    customer.wait_for(2)
    # the flush removes each message after the customer's 250
    wait_until(lambda: bag_messages(sb) == 0, what="an empty bag")
    for node in ("far.test", "atrnonly.test", "unknown.test",
                 "#far.test"):
        code, text = s.cmd("ETRN " + node)
        assert code == 459, (node, text)
        assert "not allowed" in text
    code, text = s.cmd("ETRN #" + DOMAIN)
    assert code == 251
    assert s.cmd("ETRN")[0] == 501
    assert s.cmd("ETRN two words.test")[0] == 501
    assert s.cmd("ETRN bad..name")[0] == 501
    assert s.cmd("ETRN cust.test;rm")[0] == 501
    assert s.cmd("ETRN %s\x7f" % DOMAIN)[0] == 500
    # not a relay: MAIL starts a transaction, RCPT is refused
    assert s.cmd("MAIL FROM:<x@remote.test>")[0] == 250
    assert s.cmd("ETRN " + DOMAIN)[0] == 503
    code, text = s.cmd("RCPT TO:<victim@elsewhere.test>")
    assert code == 554 and "Relay access denied" in text
    assert s.cmd("DATA")[0] == 554
    assert s.cmd("RSET")[0] == 250
    assert s.cmd("QUIT")[0] == 221
    s.close()
    # nothing for far.test and atrnonly.test went anywhere
    time.sleep(1)
    assert sorted(m.rcpts[0] for m in customer.messages) == [
        "a@" + DOMAIN, "b@sub." + DOMAIN]
    assert bag_messages(sb, "far.test") == 1
    assert bag_messages(sb, "atrnonly.test") == 1


def test_etrn_with_msmtp(bag_sandbox, customer):
    sb = bag_sandbox
    bag_add(sb, nets="127.0.0.1", host=customer.hostport)
    deliver(sb, ["a@" + DOMAIN])
    r = msmtp_etrn(etrn_port(sb), DOMAIN)
    assert r.returncode == 0, r.stderr
    customer.wait_for(1)
    r = msmtp_etrn(etrn_port(sb), "#" + DOMAIN)
    assert r.returncode == 0, r.stderr
    r = msmtp_etrn(etrn_port(sb), "unknown.test")
    assert r.returncode == 69 and "459" in r.stderr


@pytest.mark.xdist_group("clock")
def test_etrn_reply_comes_first_and_flushes_serialize(bag_sandbox, customer):
    """A slow customer: the ETRN reply doesn't wait for the flush, a
    second ETRN during the flush starts no parallel one, and every
    message arrives once."""
    sb = bag_sandbox
    bag_add(sb, nets="127.0.0.1", host=customer.hostport)
    for i in range(4):
        deliver(sb, ["a@" + DOMAIN], subject="s%d" % i)
    customer.handler.delay = 0.7
    s = SMTPSession(etrn_port(sb))
    s.cmd("EHLO client.test")
    t0 = time.time()
    code, _ = s.cmd("ETRN " + DOMAIN)
    assert code == 253 and time.time() - t0 < 2
    wait_until(lambda: customer.handler.connections >= 1,
               what="the flush")
    # mail arrives during the flush, and more ETRNs
    deliver(sb, ["a@" + DOMAIN], subject="late")
    for _ in range(3):
        assert s.cmd("ETRN " + DOMAIN)[0] == 253
    s.cmd("QUIT")
    s.close()
    customer.wait_for(5, timeout=60)
    wait_until(lambda: customer.handler.open_connections == 0,
               what="the flushes to end")
    time.sleep(1)
    subjects = sorted(m.subject for m in customer.messages)
    assert subjects == ["late"] + ["s%d" % i for i in range(4)]
    assert customer.handler.max_open == 1
    assert bag_messages(sb) == 0


def test_flush_process_killed_midway(bag_sandbox, customer):
    sb = bag_sandbox
    bag_add(sb, nets="127.0.0.1", host=customer.hostport)
    for i in range(5):
        deliver(sb, ["a@" + DOMAIN], subject="k%d" % i)
    customer.handler.delay = 1.0
    s = SMTPSession(etrn_port(sb))
    s.cmd("EHLO client.test")
    assert s.cmd("ETRN " + DOMAIN)[0] == 253
    s.close()
    customer.wait_for(2, timeout=30)
    # this instance's bag processes: the one sending the bag among them
    out = subprocess.run(["pgrep", "-f", "mirror-sandbox-%d/bag -f$"
                          % sb.info["lmtp"]["port"]],
                         capture_output=True, text=True).stdout.split()
    killed = 0
    for pid in out:
        try:
            os.kill(int(pid), signal.SIGKILL)
            killed += 1
        except ProcessLookupError:
            pass
    assert killed >= 1
    wait_until(lambda: customer.handler.open_connections == 0,
               what="the connection to close")
    got = len(customer.messages)
    assert got < 5
    # what the customer didn't confirm is still in the bag
    assert bag_messages(sb) >= 5 - got
    customer.handler.delay = 0
    sb.doveadm("bag", "flush", DOMAIN)
    subjects = [m.subject for m in customer.messages]
    assert sorted(set(subjects)) == ["k%d" % i for i in range(5)]
    # at worst the one being sent is sent again
    assert len(subjects) <= 6
    assert bag_messages(sb) == 0


# ATRN / ODMR


def test_atrn_with_fetchmail(bag_sandbox):
    sb = bag_sandbox
    row = bag_add(sb, identity="odmr@" + DOMAIN)
    bag_add(sb, "two.test", identity="odmr@" + DOMAIN)
    for i in range(3):
        deliver(sb, ["a@" + DOMAIN, "b@two.test"], subject="a%d" % i)
    sink = SmtpSink()
    try:
        r = fetchmail_odmr(odmr_port(sb), "odmr@" + DOMAIN,
                           row["atrn_password"], [DOMAIN, "two.test"],
                           "127.0.0.1/%d" % sink.port)
        out = r.stdout + r.stderr
        assert r.returncode == 0, out
        assert "AUTH CRAM-MD5" in out
        assert "250 OK now reversing the connection" in out
        files = sink.wait_for(6)
        rcpts = []
        for path in files:
            with open(path, "rb") as f:
                dump = f.read().decode()
            rcpts += re.findall(r"X-Rcpt-Args: <([^>]*)>", dump)
        assert sorted(rcpts) == sorted(["a@" + DOMAIN] * 3 +
                                       ["b@two.test"] * 3)
        assert bag_messages(sb) == 0 and bag_messages(sb, "two.test") == 0
        assert bag_show(sb)["last_flush_result"] == "ok"
        # no mail now: 453, which fetchmail takes as success
        r = fetchmail_odmr(odmr_port(sb), "odmr@" + DOMAIN,
                           row["atrn_password"], [DOMAIN],
                           "127.0.0.1/%d" % sink.port)
        assert r.returncode == 0 and "453" in r.stdout + r.stderr
        # not its domain: 450, nothing sent
        bag_add(sb, "notmine.test", identity="else@notmine.test")
        deliver(sb, ["x@notmine.test"])
        r = fetchmail_odmr(odmr_port(sb), "odmr@" + DOMAIN,
                           row["atrn_password"], ["notmine.test"],
                           "127.0.0.1/%d" % sink.port)
        assert r.returncode == 4, r.stdout + r.stderr
        assert bag_messages(sb, "notmine.test") == 1
        # a wrong password: fetchmail's ODMR mode exits 128 after 535
        r = fetchmail_odmr(odmr_port(sb), "odmr@" + DOMAIN, "wrong",
                           [DOMAIN], "127.0.0.1/%d" % sink.port)
        assert r.returncode != 0
        assert "535 5.7.8" in r.stdout + r.stderr
    finally:
        sink.stop()


def plain_auth(s, user, password):
    import base64
    token = base64.b64encode(("\0%s\0%s" % (user, password)).encode())
    return s.cmd("AUTH PLAIN " + token.decode())


def test_odmr_protocol_rules(bag_sandbox, customer):
    sb = bag_sandbox
    row = bag_add(sb, identity="odmr@" + DOMAIN)
    s = SMTPSession(odmr_port(sb))
    code, text = s.cmd("EHLO client.test")
    lines = text.split("\n")
    assert code == 250 and "ATRN" in lines
    assert any(l.startswith("AUTH ") and "CRAM-MD5" in l for l in lines)
    assert s.cmd("ATRN " + DOMAIN)[0] == 530
    for cmd in ("MAIL FROM:<a@remote.test>", "RCPT TO:<b@cust.test>",
                "DATA", "VRFY a@cust.test", "ETRN cust.test"):
        assert s.cmd(cmd)[0] == 502, cmd
    assert plain_auth(s, "odmr@" + DOMAIN, row["atrn_password"])[0] == 235
    # still no relaying after AUTH
    assert s.cmd("MAIL FROM:<a@remote.test>")[0] == 502
    assert s.cmd("ATRN")[0] == 453
    assert s.cmd("ATRN bad..domain")[0] == 501
    assert s.cmd("ATRN other.test")[0] == 450
    assert s.cmd("QUIT")[0] == 221
    s.close()


def test_odmr_auth_brute_force(bag_sandbox):
    sb = bag_sandbox
    bag_add(sb, identity="odmr@" + DOMAIN)
    deliver(sb, ["a@" + DOMAIN])
    s = SMTPSession(odmr_port(sb))
    s.cmd("EHLO attacker.test")
    t0 = time.time()
    codes = [plain_auth(s, "odmr@" + DOMAIN, "guess%d" % i)[0]
             for i in range(3)]
    assert codes == [535, 535, 421]
    # Dovecot's auth delays every failure
    assert time.time() - t0 >= 2
    with pytest.raises((ConnectionError, OSError)):
        s.cmd("AUTH PLAIN AGFiYwBkZWY=")
        s.cmd("NOOP")
    s.close()
    assert bag_messages(sb) == 1


def test_atrn_waits_for_a_running_flush(bag_sandbox, customer):
    sb = bag_sandbox
    row = bag_add(sb, nets="127.0.0.1", host=customer.hostport,
                  identity="odmr@" + DOMAIN)
    for i in range(3):
        deliver(sb, ["a@" + DOMAIN])
    customer.handler.delay = 1.0
    e = SMTPSession(etrn_port(sb))
    e.cmd("EHLO client.test")
    assert e.cmd("ETRN " + DOMAIN)[0] == 253
    wait_until(lambda: customer.handler.open_connections == 1,
               what="the ETRN flush")
    s = SMTPSession(odmr_port(sb))
    s.cmd("EHLO client.test")
    assert plain_auth(s, "odmr@" + DOMAIN, row["atrn_password"])[0] == 235
    code, text = s.cmd("ATRN " + DOMAIN)
    assert code == 450 and "being flushed" in text
    s.close()
    e.close()
    customer.wait_for(3)


# monthly usage (Mail Bagging, part 2)


def test_monthly_usage_and_limits(make_sandbox):
    sb = make_sandbox(users=[LOCAL], settings={
        "bag_enabled": "yes", "bag_usage_messages": "3",
        "bag_usage_bytes": "100000", "bag_usage_tier_price": "7",
        "bag_usage_timezone": "UTC"})
    bag_add(sb, identity="odmr@" + DOMAIN)
    bag_add(sb, "two.test", identity="odmr@" + DOMAIN)
    for i in range(4):
        deliver(sb, ["a@" + DOMAIN, "b@" + DOMAIN], subject="u%d" % i)
    deliver(sb, ["c@two.test"])
    month = time.strftime("%Y-%m", time.gmtime())
    rows = {r["domain"]: r for r in
            sb.doveadm("bag", "usage", json_output=True).json}
    size = len(make_message("u0"))
    # one message per transaction and domain, whatever its recipients
    assert rows[DOMAIN]["month"] == month
    assert rows[DOMAIN]["messages"] == "4"
    assert int(rows[DOMAIN]["bytes"]) == 4 * size
    # 4 messages of a limit of 3: 2 started tiers
    assert rows[DOMAIN]["tiers"] == "2" and rows[DOMAIN]["charge"] == "14"
    assert rows["two.test"]["messages"] == "1"
    assert rows["two.test"]["charge"] == "0"
    # the crossing is said once, when it happens
    log = sb.log()
    assert log.count("went past its monthly limit of 3 messages") == 1
    assert "cust.test went past its monthly limit" in log
    # another month has nothing; bad months are refused
    r = sb.doveadm("bag", "usage", "-m", "2001-01", DOMAIN,
                   json_output=True)
    assert r.json[0]["messages"] == "0" and r.json[0]["charge"] == "0"
    for bad in ("2001-13", "2001", "01-2001", "x"):
        r = sb.doveadm("bag", "usage", "-m", bad, check=False)
        assert r.returncode == 64
    # flushing doesn't change what was taken in
    sb.doveadm("bag", "remove", "-f", "two.test")
    r = sb.doveadm("bag", "usage", "two.test", json_output=True)
    assert r.json[0]["messages"] == "1"


# what the flush tells: its log line, its event, the notifications


def test_etrn_flush_that_cannot_connect_counts_what_waits(bag_sandbox):
    sb = bag_sandbox
    port = CustomerMTA().port      # nothing listens there
    bag_add(sb, nets="127.0.0.1", host="127.0.0.1:%d" % port)
    for i in range(4):
        deliver(sb, ["a@" + DOMAIN], subject="w%d" % i)
    s = SMTPSession(etrn_port(sb))
    s.cmd("EHLO client.test")
    assert s.cmd("ETRN " + DOMAIN)[0] == 253
    s.close()
    log = sb.wait_log("Flush of cust.test (etrn): ")
    assert re.search(r"Flush of cust\.test \(etrn\): 0 delivered, 4 "
                     r"waiting, 0 recipients bounced in [0-9.]+ s; "
                     r"stopped: .*connect", log), log[-2000:]
    assert bag_messages(sb) == 4


def test_flush_event_lasts_as_long_as_the_flush(make_sandbox, customer):
    """bag_flush_finished is created when the flush starts: Dovecot's
    statistics see how long it took."""
    sb = make_sandbox(users=[LOCAL], settings={"bag_enabled": "yes"},
                      config="metric bag_flushes {\n"
                             "  filter = event=bag_flush_finished\n"
                             "}\n")
    bag_add(sb, nets="127.0.0.1", host=customer.hostport)
    for i in range(2):
        deliver(sb, ["a@" + DOMAIN], subject="t%d" % i)
    customer.handler.delay = 0.5
    sb.doveadm("bag", "flush", DOMAIN)

    def metric():
        for m in sb.doveadm("stats", "dump", json_output=True).json:
            if m["metric_name"] == "bag_flushes" and \
                    m["field"] == "duration":
                return m
        return None
    wait_until(lambda: metric() is not None and int(metric()["count"]) == 1,
               what="the flush in the statistics")
    # two messages, each answered after 0.5 s (durations are in usecs)
    assert int(metric()["sum"]) >= 1000000, metric()


def test_cram_md5_only_where_odmr_authenticates(bag_sandbox):
    """CRAM-MD5 is for fetchmail's ODMR mode: IMAP and POP3 don't offer it
    (their users' ARGON2ID and SHA512-CRYPT hashes can't do it)."""
    sb = bag_sandbox
    row = bag_add(sb, identity="odmr@" + DOMAIN)
    imap = imaplib.IMAP4(sb.info["imap"]["host"], sb.info["imap"]["port"])
    caps = imap.capabilities
    imap.logout()
    assert "AUTH=PLAIN" in caps and "AUTH=CRAM-MD5" not in caps, caps
    import poplib
    pop = poplib.POP3(sb.info["pop3"]["host"], sb.info["pop3"]["port"])
    mechs = pop._shortcmd("AUTH") if False else pop.capa().get("SASL", [])
    pop.quit()
    assert "PLAIN" in mechs and "CRAM-MD5" not in mechs, mechs
    # fetchmail tries the strongest mechanism offered: it logs in at once
    from peers import run_fetchmail
    r = run_fetchmail(rc_text=(
        "poll 127.0.0.1 protocol IMAP service %d:\n"
        "  user \"%s\" password \"%s\" sslproto '' keep fetchall\n"
        "  mda \"/bin/cat >/dev/null\"\n"
        % (sb.info["imap"]["port"], LOCAL, "secret")))
    out = r.stdout + r.stderr
    assert r.returncode in (0, 1), out     # 1: no mail
    assert "CRAM-MD5" not in out and "AUTHENTICATE PLAIN" in out.upper() \
        or "LOGIN" in out, out
    # ODMR still offers it, and fetchmail's ODMR mode uses it
    s = SMTPSession(odmr_port(sb))
    code, text = s.cmd("EHLO client.test")
    s.close()
    assert any(l.startswith("AUTH ") and "CRAM-MD5" in l
               for l in text.split("\n")), text
    deliver(sb, ["a@" + DOMAIN])
    sink = SmtpSink()
    try:
        r = fetchmail_odmr(odmr_port(sb), "odmr@" + DOMAIN,
                           row["atrn_password"], [DOMAIN],
                           "127.0.0.1/%d" % sink.port)
        assert r.returncode == 0 and "AUTH CRAM-MD5" in r.stdout + r.stderr
        sink.wait_for(1)
    finally:
        sink.stop()


def reversed_session(sb, row, end_of_data):
    """ATRN, then the customer's side of the reversed session, played by
    hand: the recipient is accepted, and the message is answered with
    end_of_data (a reply line), or the connection is closed in the middle
    of the message (None)."""
    s = SMTPSession(odmr_port(sb))
    s.cmd("EHLO client.test")
    assert plain_auth(s, "odmr@" + DOMAIN, row["atrn_password"])[0] == 235
    assert s.cmd("ATRN " + DOMAIN)[0] == 250
    s.send_raw(b"220 customer.test ESMTP\r\n")
    f = s.file

    def line():
        data = f.readline()
        assert data, "the bag service closed the connection"
        return data.rstrip(b"\r\n")

    assert line().startswith(b"EHLO ")
    s.send_raw(b"250 customer.test\r\n")
    assert line().startswith(b"MAIL FROM:")
    s.send_raw(b"250 2.1.0 Ok\r\n")
    assert line().startswith(b"RCPT TO:")
    s.send_raw(b"250 2.1.5 Ok\r\n")
    assert line() == b"DATA"
    s.send_raw(b"354 go ahead\r\n")
    if end_of_data is None:
        line()
        s.close()
        return
    while line() != b".":
        pass
    s.send_raw(end_of_data.encode() + b"\r\n")
    # RSET or QUIT next; whatever comes, the session ends here
    try:
        line()
    except (AssertionError, OSError):
        pass
    s.close()


@pytest.mark.parametrize("end_of_data", ["452 4.3.1 try later", None])
def test_atrn_keeps_what_the_customer_did_not_take(bag_sandbox,
                                                   end_of_data):
    """RCPT TO's 250 is not the message's: a message the customer answers
    4xx after its data, or whose data never ended, stays in the bag."""
    sb = bag_sandbox
    row = bag_add(sb, identity="odmr@" + DOMAIN)
    deliver(sb, ["a@" + DOMAIN], subject="keep me")
    reversed_session(sb, row, end_of_data)
    wait_until(lambda: "Flush of %s (atrn)" % DOMAIN in sb.log(),
               what="the flush's end")
    assert bag_messages(sb) == 1
    assert sb.outbox() == []


def test_atrn_bounces_what_the_customer_refused_after_data(bag_sandbox):
    sb = bag_sandbox
    row = bag_add(sb, identity="odmr@" + DOMAIN)
    deliver(sb, ["a@" + DOMAIN], subject="refuse me")
    reversed_session(sb, row, "554 5.7.1 content refused")
    wait_until(lambda: bag_messages(sb) == 0, what="the bounce")
    (_, dsn), = read_outbox(sb, 1)
    assert all_failures(dsn)[1] == {b"a@" + DOMAIN.encode()}
