"""Witnessed chain heads: `doveadm mirror witness-key` makes the ed25519
key, `doveadm mirror witness` (and the nightly scan) mails a signed
statement of every chain's head, which openssl verifies with the public
key alone, and `verify --head` finds such a head until the chain is
rewritten. The mail goes out through a private Postfix's sendmail and
comes back through its LMTP delivery."""

import base64
import os
import shutil
import stat
import subprocess
import tempfile

import pytest

from conftest import make_message
from mta import Postfix, postfix_available
from test_verify import EX_DATAERR, chain_lines, chain_path, ok, verify

ALICE, AUDIT = "alice@example.com", "audit@example.com"
AUDIT2 = "audit2@example.com"
WITNESS = "witness@example.com"
EX_CANTCREAT, EX_TEMPFAIL = 73, 75
BEGIN = "-----BEGIN ED25519 SIGNATURE-----"
END = "-----END ED25519 SIGNATURE-----"


@pytest.fixture
def keydir():
    d = tempfile.mkdtemp(prefix="mirror-witness-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def split_statement(text):
    """(the signed statement, the signature) of a witness mail body."""
    text = text.replace("\r\n", "\n")
    head, rest = text.split(BEGIN + "\n", 1)
    sig = base64.b64decode(rest.split("\n" + END, 1)[0])
    return head, sig


def openssl_verifies(keydir, pem, statement, sig):
    stmt_path = os.path.join(keydir, "statement")
    sig_path = os.path.join(keydir, "sig")
    with open(stmt_path, "w") as f:
        f.write(statement)
    with open(sig_path, "wb") as f:
        f.write(sig)
    r = subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey",
                        pem, "-rawin", "-in", stmt_path, "-sigfile",
                        sig_path], capture_output=True, text=True)
    return r.returncode == 0 and "Signature Verified Successfully" in \
        r.stdout


def test_a_signed_statement_of_the_heads(make_sandbox, keydir):
    sb = make_sandbox(users=[ALICE, AUDIT])
    m = sb.mirror_add(ALICE, AUDIT)
    for i in range(2):
        ok(sb.deliver([ALICE], make_message(subject="m%d" % i)))
    key = os.path.join(keydir, "witness.key")
    opt = ["-o", "plugin/mirror_witness_key=" + key]

    # no key yet: a clear error, nothing else
    r = sb.doveadm(*opt, "mirror", "witness", "-n", check=False)
    assert r.returncode == EX_TEMPFAIL, r.stderr
    assert "make the key with doveadm mirror witness-key" in r.stderr

    r = sb.doveadm(*opt, "mirror", "witness-key", json_output=True)
    row = r.json[0]
    assert row["key"] == key and row["public_key_pem"] == key + ".pub.pem"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    with open(key) as f:
        assert len(f.read().strip()) == 64
    r = sb.doveadm(*opt, "mirror", "witness-key", check=False)
    assert r.returncode == EX_CANTCREAT and "(-f replaces the key)" \
        in r.stderr, r.stderr

    r = sb.doveadm(*opt, "mirror", "witness", "-n")
    statement, sig = split_statement(r.stdout)
    lines = statement.splitlines()
    assert lines[0] == "dovecot-mirror witness statement 1"
    head = chain_lines(sb, AUDIT, m["id"])[-1].split(" ")[6]
    assert "mirror %s %s records 2 head %s" % (m["id"], AUDIT, head) \
        in lines, lines
    pem = row["public_key_pem"]
    assert openssl_verifies(keydir, pem, statement, sig)
    # one character changed: openssl refuses it
    assert not openssl_verifies(keydir, pem,
                                statement.replace("records 2",
                                                  "records 3"), sig)

    # a mirror whose head can't be read doesn't keep the others' from
    # being witnessed: the statement says so, and the run exits 75
    sb.add_user(AUDIT2)
    m2 = sb.mirror_add(ALICE, AUDIT2)
    ok(sb.deliver([ALICE], make_message(subject="m2")))
    with open(chain_path(sb, AUDIT2, m2["id"]), "a") as f:
        f.write("garbage")
    r = sb.doveadm(*opt, "mirror", "witness", "-n", check=False)
    assert r.returncode == EX_TEMPFAIL, r.stderr
    assert "The heads of 1 mirrors couldn't be read" in r.stderr
    statement2, sig2 = split_statement(r.stdout)
    assert "mirror %s %s unreadable " % (m2["id"], AUDIT2) in statement2
    assert "mirror %s %s records 3 head " % (m["id"], AUDIT) in statement2
    assert openssl_verifies(keydir, pem, statement2, sig2)
    # a key others may read is refused
    os.chmod(key, 0o640)
    r = sb.doveadm(*opt, "mirror", "witness", "-n", check=False)
    assert r.returncode == EX_TEMPFAIL and \
        "is not a regular file that only its owner may read" in r.stderr
    os.chmod(key, 0o600)
    head = chain_lines(sb, AUDIT, m["id"])[-1].split(" ")[6]

    # the witnessed head is found, until the chain is rewritten
    code, vrow, err = verify(sb, m["id"], "--head", head)
    assert (code, vrow["witnessed"]) == (0, "3"), err
    first = chain_lines(sb, AUDIT, m["id"])[0]
    with open(chain_path(sb, AUDIT, m["id"]), "w") as f:
        f.write(first + "\n")
    code, vrow, err = verify(sb, m["id"], "--head", head)
    assert (code, vrow["witnessed"]) == (EX_DATAERR, "no"), err


@pytest.mark.skipif(not postfix_available(),
                    reason="needs root and Postfix (scripts/install-deps)")
def test_the_nightly_scan_mails_the_heads(make_sandbox, keydir):
    sb = make_sandbox(users=[ALICE, AUDIT, WITNESS])
    m = sb.mirror_add(ALICE, AUDIT)
    ok(sb.deliver([ALICE], make_message(subject="m")))
    pf = Postfix("witness", lmtp_port=sb.info["lmtp"]["port"])
    pf.start()
    try:
        key = os.path.join(keydir, "witness.key")
        opt = ["-o", "plugin/mirror_witness_key=" + key,
               "-o", "plugin/mirror_witness_address=" + WITNESS,
               "-o", "plugin/mirror_witness_sendmail=/usr/sbin/sendmail -C "
               + pf.etc]
        sb.doveadm(*opt, "mirror", "witness-key")
        r = sb.doveadm(*opt, "mirror", "expire")
        assert "the heads of 1 mirrors were sent to %s" % WITNESS \
            in r.stderr, r.stderr
        pf.wait_delivered()
        mails = sb.imap_messages(WITNESS)
        assert len(mails) == 1
        head, body = mails[0].decode().split("\r\n\r\n", 1)
        assert "Subject: Mail Mirror chain heads of " in head
        assert "Auto-Submitted: auto-generated" in head
        statement, sig = split_statement(body)
        assert openssl_verifies(keydir, key + ".pub.pem", statement, sig)
        link = chain_lines(sb, AUDIT, m["id"])[-1].split(" ")[6]
        assert "mirror %s %s records 1 head %s" % (m["id"], AUDIT, link) \
            in statement.splitlines()

        # a witness that can't be reached fails the run, and says why
        bad = opt[:-1] + ["plugin/mirror_witness_sendmail=/nonexistent"]
        r = sb.doveadm(*bad, "mirror", "witness", check=False)
        assert r.returncode == EX_TEMPFAIL, r.stderr
        assert "Sending to <%s> failed" % WITNESS in r.stderr or \
            "Sending to %s failed" % WITNESS in r.stderr, r.stderr
    finally:
        pf.cleanup()
