"""Mail Mirror behind a real MTA: a private Postfix (mta.py) in front of
the sandbox's LMTP, in its default LMTP settings, with virtual aliases, and
an outside SMTP client (smtplib) that tries to choose the mirror's key.

The configuration doc/mirror.md recommends: Postfix's public smtpd offers
no DSN (smtpd_discard_ehlo_keywords = dsn), so every ORCPT that reaches
LMTP is Postfix's own, and Dovecot says so (mirror_trusted_mta = yes).
Then the original recipient of an alias is the mirror's key. Without it,
RCPT TO is."""

import email.utils
import smtplib
import time

import pytest

from conftest import header_values, make_message
from mta import Postfix, postfix_available

pytestmark = pytest.mark.skipif(not postfix_available(),
                                reason="a private Postfix needs root")

ALICE, BOB, CAROL = "alice@example.com", "bob@example.com", "carol@example.com"
AUDIT, AUDIT2, AUDIT3 = ("audit@example.com", "audit2@example.com",
                         "audit3@example.com")
USERS = [ALICE, BOB, CAROL, AUDIT, AUDIT2, AUDIT3]
ALIASES = {
    "sales@example.com": [BOB],
    "team@example.com": [ALICE, BOB],
    "info@example.net": [CAROL],
    # a catch-all of a domain with no mailboxes of its own
    "@example.org": [CAROL],
}
RECOMMENDED_SMTPD = {"smtpd_discard_ehlo_keywords": "dsn"}
TRUSTED = {"mirror_trusted_mta": "yes"}


@pytest.fixture
def front(make_sandbox):
    """start(settings, smtpd, main): a sandbox and the Postfix in front of
    its LMTP."""
    started = []

    def start(settings=None, smtpd=None, main=None):
        sb = make_sandbox(users=USERS, settings=settings)
        pf = Postfix("front", lmtp_port=sb.info["lmtp"]["port"],
                     domains=("example.com", "example.net", "example.org"),
                     aliases=ALIASES, smtpd=smtpd, main=main)
        started.append(pf)
        pf.start()
        return sb, pf

    yield start
    for pf in started:
        pf.cleanup()


def envelope_to(sb, storage):
    return sorted(tuple(header_values(c, "X-Envelope-To"))
                  for c in sb.imap_messages(storage))


def delivered(sb, pf, rcpts, message=None, **kw):
    refused = pf.send(rcpts, message or make_message(), **kw)
    assert refused == {}, refused
    pf.wait_delivered()


def test_alias_sources_are_mirrored_behind_the_recommended_config(front):
    sb, pf = front(settings=TRUSTED, smtpd=RECOMMENDED_SMTPD)
    sb.mirror_add("sales@example.com", AUDIT)
    sb.mirror_add(BOB, AUDIT2)
    sb.mirror_add("team@example.com", AUDIT3)
    m_net = sb.mirror_add("example.net", AUDIT3)
    m_org = sb.mirror_add("anyone@example.org", AUDIT3)

    # an alias: its source is mirrored, its target is not
    delivered(sb, pf, ["sales@example.com"])
    assert sb.maildir_count(BOB) == 1
    assert envelope_to(sb, AUDIT) == [("sales@example.com",)]
    assert sb.maildir_count(AUDIT2) == 0
    # mail to bob himself is bob's mirror's
    delivered(sb, pf, [BOB])
    assert envelope_to(sb, AUDIT2) == [(BOB,)]

    # an alias of two users: one LMTP transaction, one copy
    delivered(sb, pf, ["team@example.com"])
    assert sb.maildir_count(ALICE) == 1 and sb.maildir_count(BOB) == 3
    assert envelope_to(sb, AUDIT3) == [("team@example.com",)]
    # an all-recipients mirror of the alias's domain
    delivered(sb, pf, ["info@example.net"])
    # a catch-all alias: the address the sender used is the key
    delivered(sb, pf, ["anyone@example.org"])
    delivered(sb, pf, ["someone-else@example.org"])
    assert sb.maildir_count(CAROL) == 3
    copies = sb.imap_messages(AUDIT3)
    assert sorted(tuple(header_values(c, "X-Mirror-Id")) for c in copies
                  if header_values(c, "X-Envelope-To") !=
                  ["team@example.com"]) == \
        sorted([(m_net["id"],), (m_org["id"],)])
    assert len(copies) == 3
    # Postfix really passed its own ORCPT
    assert "orig_to=<sales@example.com>" in pf.maillog()


def test_outside_senders_cant_choose_the_key(front):
    """Behind the recommended config, a client's ORCPT is refused by
    Postfix: no evasion, no planting. Without it (a stock smtpd that
    passes a client's ORCPT on), LMTP ignores ORCPT and RCPT TO is the key:
    no evasion, no planting either, and the alias source gets nothing,
    which is logged."""
    sb, pf = front(settings=TRUSTED, smtpd=RECOMMENDED_SMTPD)
    sb.mirror_add(ALICE, AUDIT)
    sb.mirror_add("example.com", AUDIT2)
    with pf.smtp() as s:
        s.ehlo()
        assert not s.has_extn("dsn")
        s.mail("attacker@remote.test")
        code, text = s.rcpt(ALICE, ["ORCPT=rfc822;nobody@elsewhere.test"])
        assert (code, text) == (501, b"5.7.1 DSN support is disabled")
        code, _ = s.rcpt(CAROL, ["ORCPT=rfc822;" + ALICE])
        assert code == 501
        s.rset()
    # what a client may do, it does as itself
    delivered(sb, pf, [ALICE])
    assert envelope_to(sb, AUDIT) == [(ALICE,)]
    assert envelope_to(sb, AUDIT2) == [(ALICE,)]


def test_stock_postfix_without_trust_is_fail_safe(front):
    sb, pf = front()
    sb.mirror_add(ALICE, AUDIT)
    sb.mirror_add("sales@example.com", AUDIT2)
    sb.mirror_add(CAROL, AUDIT3)
    # evasion: alice's mail with another ORCPT is still alice's mirror's
    delivered(sb, pf, [ALICE],
              rcpt_options=["ORCPT=rfc822;nobody@elsewhere.test"])
    assert envelope_to(sb, AUDIT) == [(ALICE,)]
    # planting: carol's mail claiming to be alice's stays carol's
    delivered(sb, pf, [CAROL], rcpt_options=["ORCPT=rfc822;" + ALICE])
    assert envelope_to(sb, AUDIT) == [(ALICE,)]
    assert envelope_to(sb, AUDIT3) == [(CAROL,)]
    # the alias source's mirror gets nothing, and the log says why
    delivered(sb, pf, ["sales@example.com"])
    assert sb.maildir_count(AUDIT2) == 0
    sb.wait_log("ignored: a sender may have chosen it "
                "(mirror_trusted_mta=no)")


def test_forged_received_date_behind_postfix(front):
    """Postfix's Received: line is below LMTP's: a client's forged old one
    further down decides nothing."""
    sb, pf = front(settings=TRUSTED, smtpd=RECOMMENDED_SMTPD)
    sb.mirror_add(ALICE, AUDIT)
    forged = make_message(subject="forged", extra_headers=(
        "Received: from evil.test by evil.test; "
        "Mon, 5 Jan 2015 10:00:00 +0000\r\n"))
    delivered(sb, pf, [ALICE], forged)
    assert [header_values(c, "Subject") for c in
            sb.imap_messages(AUDIT)] == [["forged"]]


def test_recipient_limit(front):
    """Postfix hands a message's recipients over in one LMTP transaction
    (up to lmtp_destination_recipient_limit, default 50): one copy per
    mirror. With the limit at 1, each recipient's transaction is a
    delivery of its own (see doc/mirror.md)."""
    sb, pf = front(settings=TRUSTED, smtpd=RECOMMENDED_SMTPD)
    m = sb.mirror_add("example.com", AUDIT)
    delivered(sb, pf, [ALICE, BOB])
    assert envelope_to(sb, AUDIT) == [(ALICE, BOB)]
    pf.restart(main={"lmtp_destination_recipient_limit": "1"})
    delivered(sb, pf, [ALICE, BOB], make_message(subject="limit 1"))
    copies = [c for c in sb.imap_messages(AUDIT)
              if header_values(c, "Subject") == ["limit 1"]]
    assert sorted(tuple(header_values(c, "X-Envelope-To"))
                  for c in copies) == [(ALICE,), (BOB,)]
    assert all(header_values(c, "X-Mirror-Id") == [m["id"]] for c in copies)


def test_success_notification_through_postfix(front):
    """A client's NOTIFY=SUCCESS on a stock smtpd reaches LMTP, which
    notifies the sender (through Dovecot's sendmail_path here)."""
    sb, pf = front()
    delivered(sb, pf, [ALICE], mail_options=["ENVID=pf-1"],
              rcpt_options=["NOTIFY=SUCCESS"])
    deadline = time.time() + 10
    while not sb.outbox() and time.time() < deadline:
        time.sleep(0.05)
    (path,) = sb.outbox()
    with open(path, "rb") as f:
        text = f.read().decode(errors="replace")
    assert "Action: delivered" in text
    assert "Original-Envelope-Id: pf-1" in text
    assert "-f <> -- sender@remote.test" in text
