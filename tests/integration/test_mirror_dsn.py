"""LMTP offers DSN when lmtp_mirror is loaded (so that an MTA passes ORCPT,
the mirror's key), and then does what RFC 3461 asks of a final delivery
agent that offers it: a success notification for NOTIFY=SUCCESS (Action:
delivered, or relayed for a message only forwarded), none for NEVER or a
null sender, ENVID and ORCPT echoed; one, when lmtp_bag is loaded too."""

import time

from conftest import header_values, make_message

ALICE, AUDIT = "alice@example.com", "audit@example.com"
SIEVE_FILTER = """require ["fileinto"];
if header :contains "subject" "discardme" { discard; stop; }
if header :contains "subject" "forwardme" {
  redirect "elsewhere@remote.test"; stop;
}
if header :contains "subject" "keepandforward" {
  redirect "elsewhere@remote.test"; keep; stop;
}
"""


def lhlo_capabilities(sb):
    s = sb.lmtp()
    try:
        code, text = s.cmd("LHLO caps.test")
        assert code == 250
        return text.split("\n")[1:]
    finally:
        s.close()


def notifications(sb, count, timeout=10):
    """The DSNs in the sandbox's outbox: (sendmail arguments, message)."""
    import email
    deadline = time.time() + timeout
    while len(sb.outbox()) < count and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    out = []
    for path in sb.outbox():
        with open(path, "rb") as f:
            args, msg = f.read().split(b"\n", 1)
        msg = email.message_from_bytes(msg)
        if msg.get_content_type() == "multipart/report":
            out.append((args.decode(), msg))
    return out


def status_fields(dsn):
    return "\n".join(str(p) for p in dsn.get_payload()[1].get_payload())


def send(sb, rcpt_params, subject="hello", mail_params="ENVID=env-42",
         mail_from="sender@remote.test"):
    s = sb.lmtp()
    try:
        code, text = s.cmd("MAIL FROM:<%s> %s" % (mail_from, mail_params))
        assert code == 250, text
        code, text = s.cmd("RCPT TO:<%s> %s" % (ALICE, rcpt_params))
        assert code == 250, text
        assert s.cmd("DATA")[0] == 354
        s.sock.sendall(make_message(subject=subject) + b".\r\n")
        assert s.reply()[0] == 250
    finally:
        s.close()


def test_dsn_offered_and_success_notified(make_sandbox):
    sb = make_sandbox(users=[ALICE, AUDIT])
    assert "DSN" in lhlo_capabilities(sb)
    sb.mirror_add(ALICE, AUDIT)
    send(sb, "NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Alice@Example.COM")
    ((args, dsn),) = notifications(sb, 1)
    # from the null sender, to the sender
    assert args == "X-Sandbox-Sendmail-Args: -i -f <> -- sender@remote.test"
    assert dsn["To"] == "<sender@remote.test>"
    assert dsn["Subject"] == "Successful Mail Delivery Report"
    assert dsn["Auto-Submitted"] == "auto-replied"
    fields = status_fields(dsn)
    assert "Original-Envelope-Id: env-42" in fields
    assert "Original-Recipient: rfc822; Alice@Example.COM" in fields
    assert "Final-Recipient: rfc822; %s" % ALICE in fields
    assert "Action: delivered" in fields
    assert "Status: 2.0.0" in fields
    assert dsn.get_payload()[2].get_content_type() == "text/rfc822-headers"
    # the delivery and its mirror copy happened as ever
    assert sb.maildir_count(ALICE) == 1 and sb.maildir_count(AUDIT) == 1


def test_no_notification_unless_asked(make_sandbox):
    sb = make_sandbox(users=[ALICE])
    send(sb, "NOTIFY=NEVER")
    send(sb, "NOTIFY=FAILURE,DELAY")
    send(sb, "")
    send(sb, "NOTIFY=SUCCESS", mail_from="")
    assert sb.maildir_count(ALICE) == 4
    time.sleep(0.5)
    assert notifications(sb, 0) == []


def test_forward_is_relayed_discard_is_delivered(make_sandbox):
    sb = make_sandbox(users=[ALICE], sieve_before=SIEVE_FILTER)
    send(sb, "NOTIFY=SUCCESS", subject="forwardme")
    send(sb, "NOTIFY=SUCCESS", subject="discardme")
    send(sb, "NOTIFY=SUCCESS", subject="keepandforward")
    dsns = notifications(sb, 3)
    actions = sorted(f for _, d in dsns for f in status_fields(d).split("\n")
                     if f.startswith("Action:"))
    # a redirect alone relays; a discard isn't the sender's business
    assert actions == ["Action: delivered", "Action: delivered",
                       "Action: relayed"]


def test_one_notification_with_both_lmtp_plugins(make_sandbox):
    sb = make_sandbox(users=[ALICE], settings={"bag_enabled": "yes"})
    send(sb, "NOTIFY=SUCCESS")
    assert len(notifications(sb, 1)) == 1


def test_dsn_can_be_turned_off(make_sandbox):
    sb = make_sandbox(users=[ALICE, AUDIT], settings={"mirror_dsn": "no"})
    assert "DSN" not in lhlo_capabilities(sb)
    s = sb.lmtp()
    try:
        s.cmd("MAIL FROM:<sender@remote.test>")
        code, text = s.cmd("RCPT TO:<%s> NOTIFY=SUCCESS" % ALICE)
        assert code == 555, text
    finally:
        s.close()
