"""Full-text search in mirror storages: with conf.d/93-mirror-fts.conf
(dovecot-fts-xapian), IMAP SEARCH in a storage the suite created is
answered from a Xapian index; other users are not indexed."""

import imaplib
import os

import pytest

from conftest import PASSWORD, make_message
from test_verify import ok

ALICE = "alice@example.com"
CONF = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "doc", "example-config", "conf.d",
    "93-mirror-fts.conf")
XAPIAN = "/usr/lib/dovecot/modules/lib21_fts_xapian_plugin.so"

pytestmark = pytest.mark.skipif(
    not os.path.exists(XAPIAN),
    reason="needs dovecot-fts-xapian (scripts/install-deps)")


def search(sb, user, password, *criteria):
    imap = imaplib.IMAP4(sb.info["imap"]["host"], sb.info["imap"]["port"])
    try:
        imap.login(user, password)
        imap.select("INBOX", readonly=True)
        typ, data = imap.uid("SEARCH", *criteria)
        assert typ == "OK", data
        return [int(u) for u in data[0].split()]
    finally:
        imap.logout()


def xapian_dirs(sb, user):
    local, domain = user.split("@")
    home = os.path.join(sb.dir, "mail", domain, local)
    return [p for p, dirs, files in os.walk(home)
            if os.path.basename(p).startswith("xapian-indexes")]


def test_a_created_storage_is_searched_through_its_index(make_sandbox):
    with open(CONF) as f:
        sb = make_sandbox(users=[ALICE], config=f.read())
    m = sb.mirror_add(ALICE)
    storage, password = m["storage"], m["password"]
    for i in range(20):
        ok(sb.deliver([ALICE], make_message(
            subject="report alpha%d" % i,
            body="quarterly figures zebra%d\r\n" % i)))

    assert search(sb, storage, password, "BODY", "zebra7") == [8]
    assert search(sb, storage, password, "SUBJECT", "alpha12") == [13]
    assert len(search(sb, storage, password, "BODY", "quarterly")) == 20
    assert search(sb, storage, password, "BODY", "nosuchword") == []
    # the storage has its index; the recipient, searching too, has none
    assert xapian_dirs(sb, storage), storage
    assert search(sb, ALICE, PASSWORD, "BODY", "zebra7") == [8]
    assert xapian_dirs(sb, ALICE) == []
    # a message that came after the index was made is found too
    ok(sb.deliver([ALICE], make_message(subject="late",
                                        body="zebra99 late\r\n")))
    assert search(sb, storage, password, "BODY", "zebra99") == [21]


def test_from_finds_exactly_the_address_in_an_index_doveadm_built(
        make_sandbox):
    # fts-xapian matches words by prefix and takes an address apart:
    # sender7@example.net finds sender70@example.net too. The mirror plugin
    # has every message the index found checked against the message
    # (mirror-search.c), so FROM keeps IMAP's substring rule.
    with open(CONF) as f:
        sb = make_sandbox(users=[ALICE], config=f.read())
    m = sb.mirror_add(ALICE)
    storage, password = m["storage"], m["password"]
    for sender in ("sender7", "sender70", "sender71", "sender7", "xsender7"):
        ok(sb.deliver([ALICE], make_message(
            subject="from %s" % sender, body="zebra7 zebra70\r\n",
            extra_headers="X-Dummy: 1\r\n").replace(
                b"sender@remote.test", b"%s@example.net" % sender.encode())))
    sb.doveadm("index", "-u", storage, "INBOX")

    # RFC 3501: a substring of the From field (xsender7@ contains it)
    assert search(sb, storage, password,
                  "FROM", "sender7@example.net") == [1, 4, 5]
    assert search(sb, storage, password, "FROM", "sender70") == [2]
    # substring rule for bodies as before
    assert search(sb, storage, password, "BODY", "zebra70") == [1, 2, 3, 4, 5]
    assert search(sb, storage, password,
                  "OR", "FROM", "sender70", "SUBJECT", "xsender7") == [2, 5]
    assert search(sb, storage, password,
                  "NOT", "FROM", "sender7@example.net") == [2, 3]
    # doveadm search, as an auditor's script would run it, agrees
    r = sb.doveadm("search", "-u", storage, "mailbox", "INBOX",
                   "from", "sender7@example.net")
    assert [int(line.split()[1]) for line in r.stdout.split("\n")
            if line] == [1, 4, 5]
