"""Mail Bagging, part 2: the POP3 connector. One copy per recipient with
X-Envelope-To, collected by fetchmail in multidrop mode (a Bcc-only
recipient reaches its mailbox through the customer's MTA, aiosmtpd), or a
box per account read with a real POP3 client."""

import email
import poplib

import pytest

from peers import CustomerMTA, fetchmail_pop3_multidrop
from test_bag import (BAG_SANDBOX, DOMAIN, LOCAL, bag_files, deliver,
                      etrn_port, SMTPSession)

BOX = "_bag@" + DOMAIN


@pytest.fixture
def sb(make_sandbox):
    return make_sandbox(**BAG_SANDBOX)


def pop3_add(sb, kind, domain=DOMAIN):
    return sb.doveadm("bag", "add", "-P", kind, domain,
                      json_output=True).json[0]


def pop3(sb, user, password):
    pop = poplib.POP3(sb.info["pop3"]["host"], sb.info["pop3"]["port"])
    pop.user(user)
    pop.pass_(password)
    return pop


def pop3_headers(sb, user, password):
    pop = pop3(sb, user, password)
    try:
        count, _ = pop.stat()
        return [email.message_from_bytes(b"\r\n".join(pop.retr(i + 1)[1]))
                for i in range(count)]
    finally:
        pop.quit()


def test_catch_all_one_copy_per_recipient(sb):
    row = pop3_add(sb, "catch-all")
    assert row["modes"] == "pop3" and row["pop3"] == "catch-all"
    assert row["user"] == BOX and len(row["password"]) == 24
    # two recipients in one transaction, the same one twice, a local user
    replies, data = deliver(sb, ["a@" + DOMAIN, "b@" + DOMAIN,
                                 "A@" + DOMAIN, LOCAL], subject="two")
    assert all(r[0] == 250 for r in replies) and \
        all(d[0] == 250 for d in data), (replies, data)
    msgs = pop3_headers(sb, BOX, row["password"])
    assert sorted(m["X-Envelope-To"] for m in msgs) == \
        ["a@" + DOMAIN, "b@" + DOMAIN]
    for m in msgs:
        assert m["Delivered-To"] == m["X-Envelope-To"]
        assert m["Return-Path"] == "<sender@remote.test>"
        assert m["Subject"] == "two" and m["X-Bag-Mail-From"] is None
        # ours comes first: a sender's own X-Envelope-To can't win
        assert m.keys()[0] == "Return-Path"
    # the local user got its own delivery
    assert len(sb.imap_messages(LOCAL)) == 1
    # one message taken in for the month's usage
    usage = sb.doveadm("bag", "usage", DOMAIN, json_output=True).json[0]
    assert usage["messages"] == "1"
    # the bag command shows what waits, POP3 deletes it
    show = sb.doveadm("bag", "show", DOMAIN, json_output=True).json[0]
    assert show["messages"] == "2"
    pop = pop3(sb, BOX, row["password"])
    pop.dele(1)
    pop.quit()
    assert len(pop3_headers(sb, BOX, row["password"])) == 1


def test_fetchmail_multidrop_routes_bcc(sb):
    row = pop3_add(sb, "catch-all")
    deliver(sb, ["a@" + DOMAIN, "b@" + DOMAIN], subject="to-two")
    # a Bcc-only recipient: no header names it
    deliver(sb, ["hidden@" + DOMAIN], subject="bcc-only")
    customer = CustomerMTA().start()
    try:
        r = fetchmail_pop3_multidrop(sb.info["pop3"]["port"], BOX,
                                     row["password"], DOMAIN,
                                     "127.0.0.1/%d" % customer.port)
        assert r.returncode == 0, r.stdout + r.stderr
        customer.wait_for(3)
        got = sorted((m.subject, tuple(m.rcpts)) for m in customer.messages)
        assert got == [("bcc-only", ("hidden@" + DOMAIN,)),
                       ("to-two", ("a@" + DOMAIN,)),
                       ("to-two", ("b@" + DOMAIN,))], got
        assert all(m.mail_from == "sender@remote.test"
                   for m in customer.messages)
    finally:
        customer.stop()
    # fetchmail deleted what it had delivered
    assert bag_files(sb) == []
    assert sb.doveadm("bag", "show", DOMAIN,
                      json_output=True).json[0]["messages"] == "0"


def test_per_account_boxes(sb):
    row = pop3_add(sb, "per-account")
    assert row["pop3"] == "per-account"
    rows = sb.doveadm("bag", "recipient", "add", DOMAIN, "a@" + DOMAIN,
                      "b.c@" + DOMAIN, json_output=True).json
    boxes = {r["recipient"]: r for r in rows}
    assert boxes["a@" + DOMAIN]["box"] == "_bag_a@" + DOMAIN
    assert boxes["b.c@" + DOMAIN]["box"] == "_bag_b.c@" + DOMAIN
    assert all(len(r["password"]) == 24 for r in rows)
    # listing again shows the boxes, never a password
    listed = sb.doveadm("bag", "recipient", "list", DOMAIN,
                        json_output=True).json
    assert [r["password"] for r in listed] == ["", ""]
    assert [r["box"] for r in listed] == ["_bag_a@" + DOMAIN,
                                          "_bag_b.c@" + DOMAIN]

    replies, data = deliver(sb, ["a@" + DOMAIN, "b.c@" + DOMAIN,
                                 "nobody@" + DOMAIN], subject="each")
    assert [r[0] for r in replies] == [250, 250, 550]
    assert [d[0] for d in data] == [250, 250]
    deliver(sb, ["a@" + DOMAIN], subject="only-a")
    a = pop3_headers(sb, "_bag_a@" + DOMAIN,
                     boxes["a@" + DOMAIN]["password"])
    assert sorted(m["Subject"] for m in a) == ["each", "only-a"]
    assert all(m["X-Envelope-To"] == "a@" + DOMAIN for m in a)
    bc = pop3_headers(sb, "_bag_b.c@" + DOMAIN,
                      boxes["b.c@" + DOMAIN]["password"])
    assert [m["Subject"] for m in bc] == ["each"]
    # a box can't read another's, nor the catch-all
    with pytest.raises(poplib.error_proto):
        pop3(sb, "_bag_a@" + DOMAIN, boxes["b.c@" + DOMAIN]["password"])

    # a new password: the old one stops working at once
    new = sb.doveadm("bag", "password", "-r", "a@" + DOMAIN,
                     json_output=True).json[0]
    assert new["user"] == "_bag_a@" + DOMAIN
    with pytest.raises(poplib.error_proto):
        pop3(sb, "_bag_a@" + DOMAIN, boxes["a@" + DOMAIN]["password"])
    assert len(pop3_headers(sb, "_bag_a@" + DOMAIN, new["password"])) == 2

    # show counts what waits in every box
    show = sb.doveadm("bag", "show", DOMAIN, json_output=True).json[0]
    assert show["messages"] == "3" and int(show["bytes"]) > 0
    assert show["oldest"] != ""

    # removing the bag deletes the boxes with their mail and logins
    r = sb.doveadm("bag", "remove", DOMAIN, check=False)
    assert r.returncode == 65 and "3 messages" in r.stderr
    r = sb.doveadm("bag", "remove", "-f", DOMAIN, json_output=True)
    assert r.json[0]["messages_deleted"] == "3"
    with pytest.raises(poplib.error_proto):
        pop3(sb, "_bag_a@" + DOMAIN, new["password"])
    assert bag_files(sb, "_bag_a@" + DOMAIN) == []


def test_per_account_box_made_on_first_mail(sb):
    """Without a recipient list, a box is made for each address mail
    comes for; it has no login until the administrator gives it one."""
    pop3_add(sb, "per-account")
    replies, data = deliver(sb, ["New+tag@" + DOMAIN], subject="first")
    assert data[0][0] == 250, data
    assert len(bag_files(sb, "_bag_new@" + DOMAIN)) == 1
    sb.wait_log("POP3 box _bag_new@%s created" % DOMAIN)
    listed = sb.doveadm("bag", "recipient", "list", DOMAIN,
                        json_output=True).json
    assert listed == []
    row = sb.doveadm("bag", "password", "-r", "new@" + DOMAIN,
                     json_output=True).json[0]
    assert row["user"] == "_bag_new@" + DOMAIN
    (m,) = pop3_headers(sb, row["user"], row["password"])
    assert m["Subject"] == "first"
    assert m["X-Envelope-To"] == "New+tag@" + DOMAIN


@pytest.mark.nosan
@pytest.mark.parametrize("args,code", [
    (["bag", "add", "-P", "every", DOMAIN], 64),
    (["bag", "add", "-P", "catch-all", "-e", "127.0.0.1", "-h", "mx",
      DOMAIN], 64),
    (["bag", "add", "-P", "catch-all", "-a", "o@" + DOMAIN, DOMAIN], 64),
    (["bag", "add", "-P", "per-account", "-b", "-h", "mx", DOMAIN], 64),
    (["bag", "password", "-r", "no-at-sign"], 64),
    (["bag", "password", "-r", "a@other.test"], 68),
    (["bag", "password", "-r", "-a", "a@" + DOMAIN], 64),
])
def test_pop3_bad_input(shared_sandbox, args, code):
    sb = shared_sandbox(**BAG_SANDBOX)
    r = sb.doveadm(*args, check=False)
    assert r.returncode == code, r.stderr
    assert r.stderr.strip() and "Panic" not in r.stderr
    assert sb.doveadm("bag", "list", json_output=True).json == []


@pytest.mark.nosan
def test_pop3_bag_refusals(sb):
    pop3_add(sb, "catch-all")
    # a catch-all has no boxes per account
    r = sb.doveadm("bag", "password", "-r", "a@" + DOMAIN, check=False)
    assert r.returncode == 65 and "no box per account" in r.stderr
    # a POP3 bag is not pulled with ETRN
    s = SMTPSession(etrn_port(sb))
    try:
        s.cmd("EHLO customer.test")
        code, text = s.cmd("ETRN " + DOMAIN)
        assert code == 459, text
    finally:
        s.close()
