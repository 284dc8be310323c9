"""Mail Bagging over TLS, on every hop it can be: the flush to the
customer's MTA uses STARTTLS (bag_tls = may, encrypt, verify; per bag with
doveadm bag add/set -t), the ETRN and ODMR listeners offer STARTTLS with
Dovecot's ssl_cert and ssl_key, and implicit TLS on listeners with ssl =
yes. Real peers: Postfix with smtpd_tls_security_level = may and aiosmtpd
with STARTTLS as the customer's MTA, msmtp with STARTTLS and fetchmail
--ssl for ETRN, fetchmail --ssl for ODMR. The certificates are made with
openssl for the session (peers.CertAuthority)."""

import base64
import json
import re
import smtplib
import socket
import ssl
import subprocess
import time

import pytest

from mta import Postfix, postfix_available
from peers import (CustomerMTA, SmtpSink, CertAuthority, fetchmail_etrn,
                   fetchmail_odmr, msmtp_etrn)
from test_bag import (DOMAIN, LOCAL, SMTPSession, bag_add, bag_messages,
                      bag_show, deliver, etrn_port, odmr_port, wait_until)


@pytest.fixture(scope="module")
def ca():
    ca = CertAuthority()
    yield ca
    ca.cleanup()


@pytest.fixture
def tls_sandbox(make_sandbox, ca):
    def start(settings=None, config=""):
        return make_sandbox(users=[LOCAL], settings=dict(
            {"bag_enabled": "yes", "bag_tls_ca_file": ca.ca},
            **(settings or {})), config=ca.dovecot_config() + config)
    return start


@pytest.fixture
def sb(tls_sandbox):
    return tls_sandbox()


@pytest.fixture
def customer(ca):
    """aiosmtpd offering STARTTLS with the CA's certificate"""
    mta = CustomerMTA(cert=(ca.cert, ca.key)).start()
    yield mta
    mta.stop()


def flush(sb, check=True):
    r = sb.doveadm("bag", "flush", DOMAIN, json_output=True, check=check)
    return r.json[0] if check else r


def registry_def(sb, domain=DOMAIN):
    return json.loads(sb.registry_get("bag/domain/" + domain))


# the flush to the customer's MTA


@pytest.mark.skipif(not postfix_available(),
                    reason="a private Postfix needs root")
def test_flush_starttls_to_postfix(make_sandbox, ca):
    """Postfix with smtpd_tls_security_level = may as the customer's MTA:
    the flush takes STARTTLS; both sides log the session, and the flush's
    event has its protocol and cipher."""
    sb = make_sandbox(users=[LOCAL], settings={"bag_enabled": "yes"},
                      config="metric bag_tls_flushes {\n"
                             "  filter = event=bag_flush_finished AND "
                             "tls_protocol=TLSv1* AND tls_cipher=*\n"
                             "}\n")
    pf = Postfix("cust", domains=(DOMAIN,),
                 main={"virtual_transport": "discard"},
                 smtpd={"smtpd_tls_security_level": "may",
                        "smtpd_tls_cert_file": ca.cert,
                        "smtpd_tls_key_file": ca.key,
                        "smtpd_tls_loglevel": "1"})
    pf.start()
    try:
        bag_add(sb, nets="127.0.0.1", host="127.0.0.1:%d" % pf.port)
        for i in range(3):
            deliver(sb, ["a@" + DOMAIN], subject="p%d" % i)
        r = SMTPSession(etrn_port(sb))
        r.cmd("EHLO client.test")
        assert r.cmd("ETRN " + DOMAIN)[0] == 253
        r.close()
        log = sb.wait_log("Flush of cust.test (etrn): 3 delivered")
        assert re.search(r"Anonymous TLS connection established to "
                         r"127\.0\.0\.1:%d: TLSv1\.[23] with cipher "
                         % pf.port, log), log[-2000:]
        assert re.search(r"Flush of cust\.test \(etrn\): 3 delivered, 0 "
                         r"waiting, 0 recipients bounced in [0-9.]+ s, TLS "
                         r"TLSv1\.[23] \S+", log)
        pf.wait_delivered()
        maillog = pf.maillog()
        assert re.search(r"TLS connection established from "
                         r"\S+\[127\.0\.0\.1\]: TLSv1\.[23] with "
                         r"cipher", maillog), maillog[-2000:]
        assert len([d for d in pf.deliveries() if d[3] == "sent"]) == 3
        assert bag_show(sb)["last_flush_tls"].startswith("TLSv1.")
        wait_until(lambda: sb.stats().get("bag_tls_flushes") == 1,
                   what="the flush's event with its TLS fields")
    finally:
        pf.cleanup()


def test_tls_may_takes_starttls_once_offered(sb, customer):
    """may: the first flush asks in the clear, sees STARTTLS and starts
    again with it; the next flushes start with STARTTLS at once."""
    bag_add(sb, nets="127.0.0.1", host=customer.hostport)
    deliver(sb, ["a@" + DOMAIN], subject="one")
    assert flush(sb)["delivered"] == "1"
    assert customer.handler.sessions == 2
    deliver(sb, ["a@" + DOMAIN], subject="two")
    assert flush(sb)["delivered"] == "1"
    assert customer.handler.sessions == 3
    assert [m.tls for m in customer.messages] == ["TLSv1.3", "TLSv1.3"]
    # an empty bag: no session at all, and the last status stays
    assert flush(sb)["delivered"] == "0"
    assert customer.handler.sessions == 3
    assert bag_show(sb)["last_flush_tls"].startswith("TLSv1.3 ")


def test_tls_may_downgrade_is_logged(sb, ca):
    """An MTA that had TLS and no longer offers STARTTLS (or an attacker
    that removes it): a warning, then the mail goes in the clear."""
    port = CustomerMTA().port
    tls_mta = CustomerMTA(port=port, cert=(ca.cert, ca.key)).start()
    try:
        bag_add(sb, nets="127.0.0.1", host=tls_mta.hostport)
        deliver(sb, ["a@" + DOMAIN], subject="tls")
        flush(sb)
        assert [m.tls for m in tls_mta.messages] == ["TLSv1.3"]
    finally:
        tls_mta.stop()
    plain = CustomerMTA(port=port).start()
    try:
        deliver(sb, ["a@" + DOMAIN], subject="plain")
        assert flush(sb)["delivered"] == "1"
        assert [m.tls for m in plain.messages] == [None]
        sb.wait_log("Warning: 127.0.0.1:%d had TLS last time, but now: "
                    "Requested STARTTLS, but server doesn't support it; "
                    "sending in the clear (bag_tls = may)" % port)
        assert bag_show(sb)["last_flush_tls"] == "none"
    finally:
        plain.stop()


def test_tls_encrypt_and_verify(sb, ca, customer):
    """encrypt: TLS or nothing; verify: and a certificate the CA file
    vouches for, naming the host. Refused, nothing is sent and nothing
    lost."""
    plain = CustomerMTA().start()
    rogue = CustomerMTA(cert=(ca.rogue_cert, ca.rogue_key)).start()
    try:
        bag_add(sb, nets="127.0.0.1", host=plain.hostport)
        deliver(sb, ["a@" + DOMAIN], subject="secret")
        r = sb.doveadm("bag", "set", "-t", "encrypt", DOMAIN,
                       json_output=True)
        assert r.json[0]["tls"] == "encrypt"
        assert registry_def(sb)["tls"] == "encrypt"
        r = flush(sb, check=False)
        assert r.returncode == 75
        assert "TLS is required (bag_tls = encrypt)" in r.stderr
        assert "STARTTLS" in r.stderr
        assert plain.messages == [] and bag_messages(sb) == 1

        # verify: a certificate no CA of ours signed is refused
        sb.doveadm("bag", "set", "-t", "verify", DOMAIN)
        r = sb.doveadm("bag", "flush", "-h", "localhost:%d" % rogue.port,
                       DOMAIN, check=False)
        assert r.returncode == 75, r.stderr
        assert "TLS is required (bag_tls = verify)" in r.stderr
        assert rogue.messages == [] and bag_messages(sb) == 1

        # the CA's certificate, for the name it has: sent
        r = sb.doveadm("bag", "flush", "-h", "localhost:%d"
                       % customer.port, DOMAIN, json_output=True)
        assert r.json[0]["delivered"] == "1"
        assert [m.tls for m in customer.messages] == ["TLSv1.3"]
        sb.wait_log("Verified TLS connection established to localhost:%d"
                    % customer.port)
        # and for an address it names
        deliver(sb, ["a@" + DOMAIN], subject="by address")
        r = sb.doveadm("bag", "flush", "-h", customer.hostport, DOMAIN,
                       json_output=True)
        assert r.json[0]["delivered"] == "1"

        # back to the default (bag_tls): no "tls" in the definition, as
        # bags made before it have none
        r = sb.doveadm("bag", "set", "-t", "default", DOMAIN,
                       json_output=True)
        assert r.json[0]["tls"] == ""
        assert "tls" not in registry_def(sb)
    finally:
        plain.stop()
        rogue.stop()


@pytest.mark.nosan
def test_tls_mode_input(sb):
    row = bag_add(sb, nets="127.0.0.1", host="127.0.0.1:25")
    assert row["tls"] == ""
    r = sb.doveadm("bag", "add", "-b", "-h", "mx.b.test", "-t", "verify",
                   "b.test", json_output=True)
    assert r.json[0]["tls"] == "verify"
    assert registry_def(sb, "b.test")["tls"] == "verify"
    for args, code in ((["add", "-a", "o@c.test", "-t", "may", "c.test"], 64),
                       (["add", "-e", "127.0.0.1", "-h", "mx", "-t",
                         "sometimes", "d.test"], 64),
                       (["set", "-t", "always", DOMAIN], 64),
                       (["set", DOMAIN], 64),
                       (["set", "-t", "may", "unknown.test"], 68)):
        r = sb.doveadm("bag", *args, check=False)
        assert r.returncode == code, (args, r.stderr)
    sb.doveadm("bag", "add", "-a", "o@e.test", "e.test")
    r = sb.doveadm("bag", "set", "-t", "may", "e.test", check=False)
    assert r.returncode == 65


def test_bag_tls_setting(tls_sandbox, customer):
    """bag_tls is the default of bags without a mode of their own."""
    sb = tls_sandbox(settings={"bag_tls": "encrypt"})
    plain = CustomerMTA().start()
    try:
        bag_add(sb, nets="127.0.0.1", host=plain.hostport)
        deliver(sb, ["a@" + DOMAIN])
        r = flush(sb, check=False)
        assert r.returncode == 75 and "bag_tls = encrypt" in r.stderr
        sb.doveadm("bag", "set", "-t", "may", DOMAIN)
        assert flush(sb)["delivered"] == "1"
        assert [m.tls for m in plain.messages] == [None]
    finally:
        plain.stop()


# the listeners


def test_etrn_over_starttls_with_msmtp(sb, ca, customer):
    bag_add(sb, nets="127.0.0.1", host=customer.hostport)
    deliver(sb, ["a@" + DOMAIN])
    r = msmtp_etrn(etrn_port(sb), DOMAIN, ca_file=ca.ca)
    assert r.returncode == 0, r.stderr
    customer.wait_for(1)
    sb.wait_log("etrn(127.0.0.1): TLS: TLSv1.3 with cipher")


def test_etrn_over_implicit_tls_with_fetchmail(sb, ca, customer):
    bag_add(sb, nets="127.0.0.1", host=customer.hostport)
    deliver(sb, ["a@" + DOMAIN])
    r = fetchmail_etrn(sb.info["etrns"]["port"], [DOMAIN], ssl_ca=ca.ca)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "253 2.0.0 OK, 1 pending messages" in out
    customer.wait_for(1)
    sb.wait_log("etrn(127.0.0.1): TLS: TLSv1.3 with cipher")


def test_odmr_over_implicit_tls_with_fetchmail(sb, ca):
    row = bag_add(sb, identity="odmr@" + DOMAIN)
    for i in range(2):
        deliver(sb, ["a@" + DOMAIN], subject="o%d" % i)
    sink = SmtpSink()
    try:
        r = fetchmail_odmr(sb.info["odmrs"]["port"], "odmr@" + DOMAIN,
                           row["atrn_password"], [DOMAIN],
                           "127.0.0.1/%d" % sink.port, ssl_ca=ca.ca)
        out = r.stdout + r.stderr
        assert r.returncode == 0, out
        assert "250 OK now reversing the connection" in out
        sink.wait_for(2)
        assert bag_messages(sb) == 0
        sb.wait_log("odmr(127.0.0.1): TLS: TLSv1.3 with cipher")
    finally:
        sink.stop()


@pytest.mark.parametrize("listener", ["etrn", "odmr"])
def test_starttls_discards_pipelined_commands(sb, listener):
    """The classic STARTTLS injection: a command sent in the same write as
    STARTTLS is never answered in the clear (lib-smtp's server leaves it
    unread, and TLS then fails on it)."""
    port = sb.info[listener]["port"]
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    f = s.makefile("rb")
    assert f.readline().startswith(b"220 ")
    s.sendall(b"EHLO client.test\r\n")
    lines = []
    while True:
        line = f.readline()
        lines.append(line)
        if line[3:4] == b" ":
            break
    assert b"250-STARTTLS\r\n" in lines or b"250 STARTTLS\r\n" in lines
    s.sendall(b"STARTTLS\r\nNOOP\r\n")
    assert f.readline() == b"220 2.0.0 Begin TLS negotiation now.\r\n"
    rest = b""
    try:
        while True:
            data = s.recv(4096)
            if not data:
                break
            rest += data
    except (socket.timeout, ConnectionResetError):
        pass
    # nothing in the clear: at most a TLS alert record
    assert b"250" not in rest and b"NOOP" not in rest, rest
    s.close()


def local_ip():
    """An address of this host that is not loopback, or None."""
    r = subprocess.run(["hostname", "-I"], capture_output=True, text=True)
    for addr in r.stdout.split():
        if ":" not in addr and not addr.startswith("127."):
            return addr
    return None


@pytest.mark.skipif(local_ip() is None, reason="no address but loopback")
def test_odmr_plaintext_mechanisms_after_tls(tls_sandbox, ca):
    """A client on another address than loopback: CRAM-MD5 only, until
    STARTTLS; then PLAIN and LOGIN too."""
    ip = local_ip()
    sb = tls_sandbox(config="service bag {\n  inet_listener odmr {\n"
                     "    address = 127.0.0.1, %s\n  }\n}\n" % ip)
    port = odmr_port(sb)
    row = bag_add(sb, identity="odmr@" + DOMAIN)
    smtp = smtplib.SMTP(ip, port, local_hostname="client.test", timeout=30)
    try:
        smtp.ehlo()
        assert smtp.esmtp_features["auth"].split() == ["CRAM-MD5"]
        code, _ = smtp.docmd("AUTH", "PLAIN " + base64.b64encode(
            b"\0odmr@" + DOMAIN.encode() + b"\0x").decode())
        assert code == 504
        context = ssl.create_default_context(cafile=ca.ca)
        context.check_hostname = False
        smtp.starttls(context=context)
        smtp.ehlo()
        assert sorted(smtp.esmtp_features["auth"].split()) == \
            ["CRAM-MD5", "LOGIN", "PLAIN"]
        code, text = smtp.docmd("AUTH", "PLAIN " + base64.b64encode(
            ("\0odmr@%s\0%s" % (DOMAIN, row["atrn_password"])).encode())
            .decode())
        assert code == 235, text
        assert smtp.docmd("ATRN")[0] == 453
    finally:
        smtp.close()
    sb.wait_log("odmr(%s): TLS: TLSv1.3 with cipher" % ip)
