"""Mirrored LMTP delivery on a real Dovecot: real LMTP, IMAP and POP3 clients."""

import email.utils
import os
import time

from conftest import eventually, header_values, make_message

ALICE, BOB, CAROL = "alice@example.com", "bob@example.com", "carol@example.com"
AUDIT, AUDIT2 = "audit@example.com", "audit2@example.com"

SIEVE_FILTER = """require ["fileinto", "reject", "mailbox"];
if header :contains "subject" "discardme" { discard; stop; }
if header :contains "subject" "rejectme" { reject "not wanted"; stop; }
if header :contains "subject" "fileme" { fileinto :create "Junk"; stop; }
if header :contains "subject" "forwardme" {
  redirect "elsewhere@remote.test"; stop;
}
"""


def ok(replies):
    rcpt, data = replies
    assert all(code == 250 for code, _ in rcpt), rcpt
    assert data and all(code == 250 for code, _ in data), data
    return data


def test_single_mirror_copy_read_over_imap_and_pop3(sandbox):
    m = sandbox.mirror_add(ALICE, AUDIT)
    msg = make_message(subject="quarterly report", body="the numbers\r\n")
    ok(sandbox.deliver([ALICE], msg))

    own = sandbox.imap_messages(ALICE)
    copies = sandbox.imap_messages(AUDIT)
    assert len(own) == 1 and len(copies) == 1
    copy = copies[0]
    assert header_values(copy, "X-Mirror-Id") == [m["id"]]
    assert header_values(copy, "X-Envelope-To") == [ALICE]
    assert header_values(copy, "Subject") == ["quarterly report"]
    assert copy.endswith(b"the numbers\r\n")
    # the recipient's own copy carries no mirror headers
    assert header_values(own[0], "X-Envelope-To") == []
    assert header_values(own[0], "X-Mirror-Id") == []

    pop = sandbox.pop3_messages(AUDIT)
    assert len(pop) == 1
    assert header_values(pop[0], "X-Envelope-To") == [ALICE]

    # mail for others is not copied
    ok(sandbox.deliver([BOB]))
    assert len(sandbox.imap_messages(AUDIT)) == 1
    sandbox.wait_log("Mirror %s: copied" % m["id"])


def test_domain_mirror_copies_every_recipient_of_the_domain(sandbox):
    m = sandbox.mirror_add("example.com", AUDIT)
    ok(sandbox.deliver([BOB]))
    ok(sandbox.deliver([CAROL]))
    ok(sandbox.deliver(["dave@other.test"]))
    copies = sandbox.imap_messages(AUDIT)
    assert sorted(header_values(c, "X-Envelope-To")[0] for c in copies) == \
        [BOB, CAROL]
    assert all(header_values(c, "X-Mirror-Id") == [m["id"]] for c in copies)


def test_case_and_detail_addresses_match(sandbox):
    sandbox.mirror_add(ALICE, AUDIT)
    ok(sandbox.deliver(["Alice+News@EXAMPLE.com"]))
    copies = sandbox.imap_messages(AUDIT)
    assert len(copies) == 1
    # the header names the address the sender used
    assert header_values(copies[0], "X-Envelope-To") == ["Alice+News@EXAMPLE.com"]


USERS = [ALICE, BOB, CAROL, AUDIT, AUDIT2]
TRUSTED_MTA = {"mirror_trusted_mta": "yes"}


def test_orcpt_is_the_key_not_the_rewritten_rcpt(make_sandbox):
    """A trusted MTA expanded an alias alice@ to bob@ and passed
    ORCPT=alice@ (doc/mirror.md: its public ports offer no DSN)."""
    sandbox = make_sandbox(users=USERS, settings=TRUSTED_MTA)
    sandbox.mirror_add(ALICE, AUDIT)
    sandbox.mirror_add(BOB, AUDIT2)
    ok(sandbox.deliver([(BOB, "ORCPT=rfc822;" + ALICE)]))
    assert sandbox.maildir_count(BOB) == 1
    copies = sandbox.imap_messages(AUDIT)
    assert len(copies) == 1
    assert header_values(copies[0], "X-Envelope-To") == [ALICE]
    # bob's mirror keys on what the sender gave, which was not bob
    assert sandbox.maildir_count(AUDIT2) == 0
    # without ORCPT, RCPT TO is the key
    ok(sandbox.deliver([BOB]))
    assert sandbox.maildir_count(AUDIT2) == 1
    assert sandbox.maildir_count(AUDIT) == 1


def test_untrusted_orcpt_is_ignored(sandbox):
    """Without mirror_trusted_mta, ORCPT may be the sender's word: RCPT TO
    is the key, so that no sender can keep a message out of its
    recipient's mirror (evasion) or put it into another's (planting).
    Logged once per process."""
    sandbox.mirror_add(ALICE, AUDIT)
    sandbox.mirror_add(BOB, AUDIT2)
    s = sandbox.lmtp()
    try:
        # planting into alice's mirror, evasion of bob's
        for orcpt in (ALICE, "nobody@elsewhere.test"):
            ok(s.send([(BOB, "ORCPT=rfc822;" + orcpt)], make_message()))
        ok(s.send([(ALICE, "ORCPT=rfc822;Alice@Example.COM")],
                  make_message()))
    finally:
        s.close()
    copies = sandbox.imap_messages(AUDIT)
    assert [header_values(c, "X-Envelope-To") for c in copies] == [[ALICE]]
    copies = sandbox.imap_messages(AUDIT2)
    assert [header_values(c, "X-Envelope-To") for c in copies] == \
        [[BOB], [BOB]]
    log = sandbox.wait_log("ignored: a sender may have chosen it")
    assert log.count("ignored: a sender may have chosen it") == 1


def test_multi_recipient_transaction_makes_one_copy_per_storage(sandbox):
    m_dom = sandbox.mirror_add("example.com", AUDIT)
    m_alice = sandbox.mirror_add(ALICE, AUDIT)
    m_bob = sandbox.mirror_add(BOB, AUDIT2)
    rcpt, data = sandbox.deliver([ALICE, BOB, CAROL, "dave@other.test"])
    assert [c for c, _ in data] == [250, 250, 250, 250]

    copies = sandbox.imap_messages(AUDIT)
    assert len(copies) == 1
    assert sorted(header_values(copies[0], "X-Envelope-To")) == \
        [ALICE, BOB, CAROL]
    assert sorted(header_values(copies[0], "X-Mirror-Id"), key=int) == \
        [m_dom["id"], m_alice["id"]]
    copies2 = sandbox.imap_messages(AUDIT2)
    assert len(copies2) == 1
    assert header_values(copies2[0], "X-Envelope-To") == [BOB]
    # no Bcc leak: recipients' copies name nobody else
    for user in (ALICE, BOB, CAROL):
        own = sandbox.imap_messages(user)
        assert len(own) == 1
        assert header_values(own[0], "X-Envelope-To") == []


def test_several_mirrors_of_one_source(sandbox):
    m1 = sandbox.mirror_add(ALICE, AUDIT)
    m2 = sandbox.mirror_add(ALICE, AUDIT2)
    ok(sandbox.deliver([ALICE]))
    c1, c2 = sandbox.imap_messages(AUDIT), sandbox.imap_messages(AUDIT2)
    assert len(c1) == 1 and len(c2) == 1
    assert header_values(c1[0], "X-Mirror-Id") == [m1["id"]]
    assert header_values(c2[0], "X-Mirror-Id") == [m2["id"]]


def test_never_copies_into_the_recipients_own_mailbox(sandbox):
    sandbox.mirror_add("example.com", AUDIT)
    ok(sandbox.deliver([AUDIT]))
    msgs = sandbox.imap_messages(AUDIT)
    assert len(msgs) == 1
    assert header_values(msgs[0], "X-Mirror-Id") == []


def test_copies_are_not_mirrored_again(sandbox):
    """audit's own mirror must not see copies stored into audit."""
    sandbox.mirror_add(ALICE, AUDIT)
    sandbox.mirror_add(AUDIT, AUDIT2)
    ok(sandbox.deliver([ALICE]))
    assert sandbox.maildir_count(AUDIT) == 1
    assert sandbox.maildir_count(AUDIT2) == 0


def test_sieve_outcomes(make_sandbox):
    sb = make_sandbox(users=[ALICE, AUDIT], sieve_before=SIEVE_FILTER)
    sb.mirror_add(ALICE, AUDIT)

    ok(sb.deliver([ALICE], make_message(subject="discardme")))
    ok(sb.deliver([ALICE], make_message(subject="rejectme")))
    assert sb.maildir_count(ALICE) == 0
    assert sb.maildir_count(AUDIT) == 0, "filtered mail must not be mirrored"

    ok(sb.deliver([ALICE], make_message(subject="fileme")))
    assert sb.maildir_count(ALICE, ".Junk") == 1
    ok(sb.deliver([ALICE], make_message(subject="forwardme")))
    assert sb.maildir_count(ALICE) == 0
    forwarded = [open(p, "rb").read() for p in sb.outbox()]
    assert any(b"Subject: forwardme" in f and b"elsewhere@remote.test" in f
               for f in forwarded), forwarded

    ok(sb.deliver([ALICE], make_message(subject="plain")))
    subjects = sorted(header_values(c, "Subject")[0]
                      for c in sb.imap_messages(AUDIT))
    assert subjects == ["fileme", "forwardme", "plain"]


def test_removed_mirror_stops_copying_and_keeps_copies(sandbox):
    m = sandbox.mirror_add(ALICE, AUDIT)
    ok(sandbox.deliver([ALICE]))
    sandbox.doveadm("mirror", "remove", m["id"])
    ok(sandbox.deliver([ALICE]))
    assert sandbox.maildir_count(ALICE) == 2
    assert sandbox.maildir_count(AUDIT) == 1


def test_changes_apply_to_the_next_delivery_on_an_open_connection(sandbox):
    s = sandbox.lmtp()
    try:
        ok(s.send([ALICE], make_message()))
        m = sandbox.mirror_add(ALICE, AUDIT)
        ok(s.send([ALICE], make_message()))
        assert sandbox.maildir_count(AUDIT) == 1
        sandbox.doveadm("mirror", "remove", m["id"])
        ok(s.send([ALICE], make_message()))
        assert sandbox.maildir_count(AUDIT) == 1
    finally:
        s.close()


def queued_message(seconds_ago):
    date = email.utils.formatdate(time.time() - seconds_ago)
    return make_message(
        subject="queued %ds ago" % seconds_ago,
        extra_headers="Received: from mx.remote.test by mx.example.com "
                      "with ESMTP id Q1; %s\r\n" % date)


def test_mail_queued_before_the_mirror_existed_is_not_copied(make_sandbox):
    """The trusted MTA's Received: line tells when the message was
    queued."""
    sandbox = make_sandbox(users=USERS, settings=TRUSTED_MTA)
    sandbox.mirror_add(ALICE, AUDIT)
    ok(sandbox.deliver([ALICE], queued_message(3600)))
    ok(sandbox.deliver([ALICE], queued_message(-5)))
    assert sandbox.maildir_count(ALICE) == 2
    copies = sandbox.imap_messages(AUDIT)
    assert [header_values(c, "Subject")[0] for c in copies] == ["queued -5s ago"]
    # a message without an MTA's Received: header is judged by its arrival
    ok(sandbox.deliver([ALICE]))
    assert sandbox.maildir_count(AUDIT) == 2


def test_forged_received_header_is_not_trusted(sandbox):
    """Without mirror_trusted_mta, the line below LMTP's own may be the
    sender's: a forged old date doesn't keep a message out of a mirror."""
    sandbox.mirror_add(ALICE, AUDIT)
    old = make_message(subject="forged", extra_headers=(
        "Received: from evil.test by evil.test; "
        "Mon, 5 Jan 2015 10:00:00 +0000\r\n"))
    ok(sandbox.deliver([ALICE], old))
    (copy,) = sandbox.imap_messages(AUDIT)
    assert header_values(copy, "Subject") == ["forged"]


def test_failure_policy_accept(sandbox):
    m = sandbox.mirror_add(ALICE, AUDIT)
    sandbox.remove_user(AUDIT)
    ok(sandbox.deliver([ALICE]))
    assert sandbox.maildir_count(ALICE) == 1
    # logged by LMTP just before the 250: the log process may lag
    sandbox.wait_log("Mirror %s: copy to %s failed" % (m["id"], AUDIT))
    stats = sandbox.stats()
    assert stats["mirror_copy_failures"] == 1
    # the storage comes back: the next delivery is copied
    sandbox.add_user(AUDIT)
    ok(sandbox.deliver([ALICE]))
    assert sandbox.maildir_count(AUDIT) == 1
    assert sandbox.stats()["mirror_copies"] == 2


def test_failure_policy_tempfail_and_retry_without_duplicates(make_sandbox):
    sb = make_sandbox(users=[ALICE, BOB, AUDIT, AUDIT2],
                      settings={"mirror_failure": "tempfail"})
    sb.mirror_add(ALICE, AUDIT)
    sb.mirror_add(ALICE, AUDIT2)
    sb.remove_user(AUDIT2)
    msg = make_message(subject="retry me")
    rcpt, data = sb.deliver([ALICE, BOB], msg)
    assert [c for c, _ in data] == [451, 250], data
    assert sb.maildir_count(ALICE) == 0
    assert sb.maildir_count(AUDIT) == 0, "the other mirror's copy is rolled back"
    assert sb.maildir_count(BOB) == 1

    # the MTA retries the deferred recipient once the storage is back
    sb.add_user(AUDIT2)
    ok(sb.deliver([ALICE], msg))
    assert sb.maildir_count(ALICE) == 1
    assert sb.maildir_count(AUDIT) == 1
    assert sb.maildir_count(AUDIT2) == 1


def test_no_copy_when_the_recipients_commit_fails(make_sandbox):
    """The copies are committed only once the recipient's own delivery is:
    a delivery that fails at its commit (here: the recipient's maildir
    new/ can't be written) leaves no copy, and the MTA's retries add none."""
    sb = make_sandbox(users=[ALICE, AUDIT])
    m = sb.mirror_add(ALICE, AUDIT)
    ok(sb.deliver([ALICE]))
    new = os.path.join(sb.dir, "mail", "example.com", "alice", "Maildir",
                       "new")
    mode = os.stat(new).st_mode
    os.chmod(new, 0o555)
    try:
        msg = make_message(subject="retried")
        for _ in range(3):
            rcpt, data = sb.deliver([ALICE], msg)
            assert [c for c, _ in data] == [451], data
        assert sb.maildir_count(ALICE) == 1
        assert sb.maildir_count(AUDIT) == 1
    finally:
        os.chmod(new, mode)
    ok(sb.deliver([ALICE], msg))
    assert sb.maildir_count(ALICE) == 2
    assert sb.maildir_count(AUDIT) == 2
    # nothing counted for the deliveries that kept nothing
    eventually(lambda: sb.registry_get("mirror/status/%s/copies"
                                       % m["id"]), "2")
    assert sb.registry_get("mirror/status/%s/failures" % m["id"]) == "0"


def test_tempfail_with_sieve_keeps_nothing(make_sandbox):
    sb = make_sandbox(users=[ALICE, AUDIT], sieve_before=SIEVE_FILTER,
                      settings={"mirror_failure": "tempfail"})
    sb.mirror_add(ALICE, AUDIT)
    sb.remove_user(AUDIT)
    rcpt, data = sb.deliver([ALICE], make_message(subject="fileme"))
    assert data[0][0] == 451, data
    assert sb.maildir_count(ALICE, ".Junk") == 0
    assert sb.maildir_count(ALICE) == 0
    sb.add_user(AUDIT)
    ok(sb.deliver([ALICE], make_message(subject="fileme")))
    assert sb.maildir_count(ALICE, ".Junk") == 1
    assert sb.maildir_count(AUDIT) == 1


def test_broken_registry_data_loses_no_mail(make_sandbox):
    for policy, code in (("accept", 250), ("tempfail", 451)):
        sb = make_sandbox(users=[ALICE, AUDIT],
                          settings={"mirror_failure": policy})
        sb.mirror_add(ALICE, AUDIT)
        key = "mirror/source/" + ALICE
        value = sb.registry_get(key)
        assert '"days":30' in value, value
        sb.registry_set(key, value.replace('"days":30', '"days":"thirty"'))

        rcpt, data = sb.deliver([ALICE])
        assert data[0][0] == code, (policy, data)
        assert sb.maildir_count(ALICE) == (1 if code == 250 else 0)
        assert sb.maildir_count(AUDIT) == 0
        sb.wait_log("Broken registry data for source alice@example.com")

        r = sb.doveadm("mirror", "list", check=False)
        assert r.returncode != 0 and "Broken registry data" in r.stderr
        r = sb.doveadm("mirror", "add", "-s", AUDIT, ALICE, check=False)
        assert r.returncode != 0 and "Broken registry data" in r.stderr
        assert '"days":"thirty"' in sb.registry_get(key), \
            "broken data was overwritten"


def test_unusual_messages_are_mirrored_intact(sandbox):
    sandbox.mirror_add(ALICE, AUDIT)
    headerless = b"no headers at all, just a line\r\n"
    big_body = b"".join(b"%06d %s\r\n" % (i, b"x" * 90) for i in range(12000))
    big = make_message(subject="big") + big_body
    for msg in (headerless, big):
        ok(sandbox.deliver([ALICE], msg))
    own = sandbox.imap_messages(ALICE)
    copies = sandbox.imap_messages(AUDIT)
    assert len(copies) == 2
    for o, c in zip(own, copies):
        # the copy is the delivered message with the mirror headers on top
        assert c.endswith(o.split(b"\r\n", 1)[1]) or c.endswith(o)
        assert len(c) > len(o)
    assert copies[1].endswith(big_body)


import pytest


@pytest.mark.parametrize("fsync", ["yes", "no"])
def test_acknowledged_mail_survives_killing_lmtp(make_sandbox, fsync):
    """Once 250 is read, the recipient's copy and the mirror copy exist,
    even if the LMTP process is killed at once (also without fsync)."""
    import signal
    import subprocess
    sandbox = make_sandbox(users=[ALICE, AUDIT],
                           settings={"mirror_fsync": fsync})
    sandbox.mirror_add(ALICE, AUDIT)
    s = sandbox.lmtp()
    killed = 0
    try:
        for i in range(3):
            ok(s.send([ALICE], make_message(subject="kill %d" % i)))
    finally:
        # instance_name makes this sandbox's processes easy to find
        r = subprocess.run(["pgrep", "-f", "mirror-sandbox-%d/lmtp"
                            % sandbox.info["lmtp"]["port"]],
                           capture_output=True, text=True)
        for pid in r.stdout.split():
            os.kill(int(pid), signal.SIGKILL)
            killed += 1
        s.sock.close()
    assert killed >= 1
    assert len(sandbox.imap_messages(ALICE)) == 3
    subjects = [header_values(c, "Subject")[0]
                for c in sandbox.imap_messages(AUDIT)]
    assert sorted(subjects) == ["kill 0", "kill 1", "kill 2"]


def test_storage_owned_by_another_uid(make_sandbox):
    """LMTP switches to the storage's uid for the copy and back to the
    recipient's for the rest of the delivery."""
    import pwd
    import pytest
    if os.geteuid() != 0:
        pytest.skip("needs root to have users of several uids")
    import tempfile
    daemon = pwd.getpwnam("daemon")
    sb = make_sandbox(users=[ALICE, BOB])
    home = tempfile.mkdtemp(prefix="audit-home-", dir=sb.dir)
    os.chown(home, daemon.pw_uid, daemon.pw_gid)
    sb.add_user(AUDIT + ":secret:uid=%d gid=%d home=%s"
                % (daemon.pw_uid, daemon.pw_gid, home), password=None)
    sb.mirror_add("example.com", AUDIT)
    for _ in range(2):
        rcpt, data = sb.deliver([ALICE, BOB])
        assert [c for c, _ in data] == [250, 250], data
    copies = sb.imap_messages(AUDIT)
    assert len(copies) == 2
    assert sorted(header_values(copies[0], "X-Envelope-To")) == [ALICE, BOB]
    owners = {os.stat(os.path.join(r, f)).st_uid
              for r, _, files in os.walk(home) for f in files}
    assert owners == {daemon.pw_uid}
    nobody = pwd.getpwnam("nobody").pw_uid
    alice_dir = os.path.join(sb.dir, "mail", "example.com", "alice")
    assert {os.stat(os.path.join(r, f)).st_uid
            for r, _, files in os.walk(alice_dir) for f in files} == {nobody}


@pytest.mark.nosan
def test_invalid_boolean_setting_is_reported(make_sandbox):
    sb = make_sandbox(users=[ALICE, AUDIT], settings={"mirror_fsync": "maybe"})
    sb.mirror_add(ALICE, AUDIT)
    ok(sb.deliver([ALICE]))
    assert sb.maildir_count(AUDIT) == 1
    sb.wait_log("Invalid mirror_fsync=maybe (expected yes or no): using yes")


@pytest.mark.nosan
def test_invalid_failure_policy_fails_safe(make_sandbox):
    sb = make_sandbox(users=[ALICE, AUDIT],
                      settings={"mirror_failure": "tmpfail"})
    sb.mirror_add(ALICE, AUDIT)
    sb.remove_user(AUDIT)
    rcpt, data = sb.deliver([ALICE])
    assert data[0][0] == 451, data
    sb.wait_log("Invalid mirror_failure=tmpfail (expected accept or "
                "tempfail): using tempfail")


def test_hostile_envelope_cannot_inject_headers(sandbox):
    """An xtext-encoded CR LF in ORCPT, or odd RCPT parameters, never become
    header lines of the mirror copy, and never stop delivery."""
    sandbox.mirror_add(ALICE, AUDIT)
    evil = [
        # lib-smtp refuses a broken xtext and control characters
        (ALICE, 'ORCPT=rfc822;"alice+x+0D+0AX-Evil:+20injected"@example.com',
         501),
        (ALICE, "ORCPT=rfc822;alice+2Bx+0AX-Evil:+20injected@example.com",
         501),
        (ALICE, "ORCPT=rfc822;" + "a" * 600 + "@example.com", 250),
        (ALICE, "ORCPT=utf-8;alice@example.com", 250),
        (ALICE, "ORCPT=rfc822;", 501),
        ("x" * 300 + "@example.com", "", 550),
    ]
    for addr, params, want in evil:
        s = sandbox.lmtp()
        try:
            rcpt_replies, data = s.send([(addr, params)],
                                        make_message(subject="evil"))
        finally:
            s.close()
        assert rcpt_replies[0][0] == want, rcpt_replies
        if want == 250:
            assert data[0][0] == 250, data
    for copy in sandbox.imap_messages(AUDIT):
        head = copy.split(b"\r\n\r\n", 1)[0]
        assert b"\nX-Evil" not in head and b"\rX-Evil" not in head
    # mail to alice kept flowing and was mirrored
    assert len(sandbox.imap_messages(AUDIT)) >= 1
    assert len(sandbox.imap_messages(ALICE)) >= len(sandbox.imap_messages(AUDIT))
