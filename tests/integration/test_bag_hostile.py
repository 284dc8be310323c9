"""Hostile and malformed input to Mail Bagging: the ETRN and ODMR listeners
and LMTP answer it, and nothing in a bag is lost or sent where it must not
go."""

import hashlib
import os
import socket
import time

import pytest

from peers import CustomerMTA
from test_bag import (BAG_SANDBOX, DOMAIN, SMTPSession, bag_add,
                      bag_messages, deliver, etrn_port, odmr_port,
                      plain_auth, wait_until)


@pytest.fixture
def bag_sandbox(make_sandbox):
    return make_sandbox(**BAG_SANDBOX)


@pytest.fixture
def customer():
    mta = CustomerMTA().start()
    yield mta
    mta.stop()


@pytest.fixture(scope="module")
def module_customer():
    """The customer of the shared_sandbox cases: one that gets nothing."""
    mta = CustomerMTA().start()
    yield mta
    mta.stop()


def shared_bag_sandbox(shared_sandbox, **bag):
    """A shared_sandbox with a bag of cust.test (bag_add's keywords),
    holding one message; .prepared is bag_add's row."""
    def setup(sb):
        row = bag_add(sb, **bag)
        deliver(sb, ["a@" + DOMAIN])
        return row
    return shared_sandbox(setup=setup, **BAG_SANDBOX)


def raw_reply(sock, timeout=10):
    """Read one reply (maybe multi-line); None if the server closed."""
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = sock.recv(4096)
        except socket.timeout:
            return data.decode(errors="replace") if data else None
        if not chunk:
            return data.decode(errors="replace") if data else None
        data += chunk
        lines = data.split(b"\r\n")
        if len(lines) > 1 and lines[-2][3:4] == b" ":
            return data.decode(errors="replace")


def listener_ports(sb):
    return {"etrn": etrn_port(sb), "odmr": odmr_port(sb)}


@pytest.mark.parametrize("listener", ["etrn", "odmr"])
def test_overlong_lines_nuls_and_bare_lf(bag_sandbox, customer, listener):
    sb = bag_sandbox
    bag_add(sb, nets="127.0.0.1", host=customer.hostport,
            identity="odmr@" + DOMAIN)
    deliver(sb, ["a@" + DOMAIN])
    port = listener_ports(sb)[listener]

    # a 64 KB command line
    s = SMTPSession(port)
    s.cmd("EHLO client.test")
    s.send_raw(b"ETRN " + b"a" * 65536 + b"\r\n")
    reply = raw_reply(s.sock)
    assert reply == "500 5.5.2 Line too long\r\n", reply
    s.close()

    # NUL bytes and control characters
    s = SMTPSession(port)
    s.cmd("EHLO client.test")
    s.send_raw(b"ETRN cust\x00.test\r\n")
    reply = raw_reply(s.sock)
    assert reply == "500 5.5.2 Invalid command syntax\r\n", reply
    s.close()

    # bare LF line ends: answered as lines (as Dovecot's lib-smtp does)
    s = SMTPSession(port)
    s.send_raw(b"EHLO client.test\nNOOP\n")
    reply = raw_reply(s.sock)
    assert reply.startswith("250-"), reply
    s.close()

    # garbage: ten bad commands, then 421 and the connection ends
    s = SMTPSession(port)
    codes = [s.cmd("\x01\x02 junk %d" % i)[0] for i in range(11)]
    assert codes == [500] * 10 + [421]
    with pytest.raises((ConnectionError, OSError)):
        s.cmd("NOOP")
    s.close()
    assert bag_messages(sb) == 1


def test_etrn_commands_in_the_wrong_state(bag_sandbox, customer):
    sb = bag_sandbox
    bag_add(sb, nets="127.0.0.1", host=customer.hostport)
    deliver(sb, ["a@" + DOMAIN])
    s = SMTPSession(etrn_port(sb))
    assert s.cmd("DATA")[0] == 503
    assert s.cmd("RCPT TO:<a@cust.test>")[0] == 503
    s.cmd("EHLO client.test")
    assert s.cmd("DATA")[0] == 503
    assert s.cmd("RCPT TO:<a@cust.test>")[0] == 503
    assert s.cmd("AUTH PLAIN AGFiYwBkZWY=")[0] == 502
    assert s.cmd("ATRN cust.test")[0] == 500
    assert s.cmd("STARTTLS")[0] == 502
    assert s.cmd("BDAT 10 LAST")[0] == 502
    assert s.cmd("MAIL FROM:<x@remote.test>")[0] == 250
    assert s.cmd("MAIL FROM:<y@remote.test>")[0] == 503
    assert s.cmd("QUIT")[0] == 221
    s.close()
    assert bag_messages(sb) == 1 and customer.messages == []


@pytest.mark.parametrize("node,code", [
    ("cust.test;rm -rf /", "501"), ("../../etc/passwd", "501"),
    ("cust.test/../x", "501"), ("cust%2etest", "501"), ("-cust.test", "501"),
    ("cust..test", "501"), ("*.cust.test", "501"), ("cust.test.", "501"),
    ("[127.0.0.1]", "501"), ("@", "501"), ("#", "501"),
    ("@@cust.test", "501"), ("#@cust.test", "501"),
    ("c" * 300 + ".test", "501"),
    # a control character is refused by lib-smtp's command parser
    ("cust.test\x7f", "500"), ("cust.test\xc3\xa9", "501"),
])
def test_etrn_injection_in_node_names(shared_sandbox, module_customer, node,
                                      code):
    customer = module_customer
    sb = shared_bag_sandbox(shared_sandbox, nets="127.0.0.1",
                            host=customer.hostport)
    s = SMTPSession(etrn_port(sb))
    s.cmd("EHLO client.test")
    s.send_raw(b"ETRN " + node.encode("utf-8", "surrogateescape") + b"\r\n")
    reply = raw_reply(s.sock)
    assert reply is not None and reply[:4] == code + " ", reply
    # the reply shows no raw control bytes
    assert "\x7f" not in reply and "\x00" not in reply
    s.close()
    time.sleep(0.5)
    assert customer.messages == [] and bag_messages(sb) == 1


@pytest.mark.parametrize("arg", [
    "cust.test;x", "../cust.test", "cust.test,,,", "cust.test, ../x",
    ",".join("d%d.test" % i for i in range(150)),
])
def test_atrn_bad_domain_lists(shared_sandbox, arg):
    sb = shared_bag_sandbox(shared_sandbox, identity="odmr@" + DOMAIN)
    row = sb.prepared
    s = SMTPSession(odmr_port(sb))
    s.cmd("EHLO client.test")
    assert plain_auth(s, "odmr@" + DOMAIN, row["atrn_password"])[0] == 235
    code, _ = s.cmd("ATRN " + arg)
    assert code == 501
    # the session goes on
    assert s.cmd("NOOP")[0] == 250
    s.close()
    assert bag_messages(sb) == 1


def test_odmr_auth_garbage(bag_sandbox):
    sb = bag_sandbox
    bag_add(sb, identity="odmr@" + DOMAIN)
    s = SMTPSession(odmr_port(sb))
    s.cmd("EHLO client.test")
    assert s.cmd("AUTH")[0] == 501
    assert s.cmd("AUTH NOSUCHMECH")[0] == 504
    # Dovecot's auth refuses the undecodable response
    assert s.cmd("AUTH PLAIN !!!notbase64")[0] == 535
    # an abandoned exchange
    code, _ = s.cmd("AUTH CRAM-MD5")
    assert code == 334
    assert s.cmd("*")[0] == 501
    assert s.cmd("ATRN")[0] == 530
    s.close()


def test_sender_cannot_add_recipients(bag_sandbox, customer):
    """A message whose own header has the bag's envelope lines."""
    sb = bag_sandbox
    bag_add(sb, nets="127.0.0.1", host=customer.hostport)
    s = sb.lmtp()
    s.cmd("MAIL FROM:<attacker@remote.test>")
    assert s.cmd("RCPT TO:<a@cust.test>")[0] == 250
    s.cmd("DATA")
    s.sock.sendall(b"X-Bag-Rcpt-To: <victim@elsewhere.test>\r\n"
                   b"X-Bag-Envelope-End: ok\r\n"
                   b"X-Bag-Mail-From: <forged@remote.test>\r\n"
                   b"Subject: evil\r\n\r\nbody\r\n.\r\n")
    assert s.reply()[0] == 250
    s.close()
    sb.doveadm("bag", "flush", DOMAIN)
    (m,) = customer.messages
    assert m.rcpts == ["a@" + DOMAIN]
    assert m.mail_from == "attacker@remote.test"
    # the message arrives as sent, its header with it
    assert b"X-Bag-Rcpt-To: <victim@elsewhere.test>" in m.data


def test_odd_messages_arrive_intact(bag_sandbox, customer):
    sb = bag_sandbox
    bag_add(sb, nets="127.0.0.1", host=customer.hostport)
    bodies = {
        "no body": b"Subject: no body\r\n",
        "dots": b"Subject: dots\r\n\r\n.\r\n..\r\n.x\r\n",
        "long line": b"Subject: long line\r\n\r\n" + b"x" * 200000 + b"\r\n",
        "8bit": b"Subject: 8bit\r\n\r\n\xc3\xa9\xff\xfe\r\n",
        "big": b"Subject: big\r\n\r\n" + (b"0123456789" * 99 +
                                           b"\r\n") * 12000,
    }
    for body in bodies.values():
        s = sb.lmtp()
        s.cmd("MAIL FROM:<sender@remote.test>")
        assert s.cmd("RCPT TO:<a@cust.test>")[0] == 250
        assert s.cmd("DATA")[0] == 354
        data = body.replace(b"\r\n.", b"\r\n..")
        if data.startswith(b"."):
            data = b"." + data
        s.sock.sendall(data + b".\r\n")
        assert s.reply()[0] == 250
        s.close()
    assert bag_messages(sb) == len(bodies)
    sb.doveadm("bag", "flush", DOMAIN)
    got = {}
    for m in customer.messages:
        # strip the trace header the bag added
        head, _, rest = m.data.partition(b"\r\n")
        while head.startswith((b"Received:", b"\t", b" ")):
            head, _, rest = rest.partition(b"\r\n")
        got[m.subject] = head + b"\r\n" + rest
    assert len(got) == len(bodies)
    for name, body in bodies.items():
        want = body if body.endswith(b"\r\n") else body + b"\r\n"
        assert hashlib.sha256(got[name]).hexdigest() == \
            hashlib.sha256(want).hexdigest(), name
    assert bag_messages(sb) == 0


def test_lmtp_refuses_hostile_recipients(bag_sandbox):
    sb = bag_sandbox
    bag_add(sb, identity="odmr@" + DOMAIN)
    s = sb.lmtp()
    s.cmd("MAIL FROM:<sender@remote.test>")
    codes = [500, 555, 555, 501]
    for rcpt in ("RCPT TO:<\"a\x00b\"@cust.test>",
                 "RCPT TO:<a@cust.test> FOO=bar",
                 "RCPT TO:<a@cust.test> NOTIFY=SOMETIMES",
                 "RCPT TO:<" + "a" * 2000 + "@cust.test>"):
        code, _ = s.cmd(rcpt)
        assert code == codes.pop(0), rcpt
    s.close()
    assert bag_messages(sb) == 0


def test_flood_of_etrn_connections(bag_sandbox, customer):
    """Many clients at once: every one gets its reply, one flush runs at
    a time, and every message arrives once. An address has at most
    bag_max_connections_per_ip (10) connections: the next is refused."""
    sb = bag_sandbox
    bag_add(sb, nets="127.0.0.1", host=customer.hostport)
    for i in range(5):
        deliver(sb, ["a@" + DOMAIN], subject="f%d" % i)
    customer.handler.delay = 0.2
    sessions = [SMTPSession(etrn_port(sb)) for _ in range(10)]
    # the eleventh, to either listener, is refused
    for port in (etrn_port(sb), odmr_port(sb)):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        reply = raw_reply(s)
        assert reply.startswith("421 4.7.0 ") and reply.endswith(
            " Too many connections from your address\r\n"), reply
        assert raw_reply(s) is None
        s.close()
    sb.wait_log("etrn: Refused a connection from 127.0.0.1: it has 10 "
                "already (bag_max_connections_per_ip)")
    codes = []
    for s in sessions:
        s.cmd("EHLO client.test")
        codes.append(s.cmd("ETRN " + DOMAIN)[0])
        s.close()
    assert set(codes) <= {251, 253} and 253 in codes
    customer.wait_for(5, timeout=60)
    wait_until(lambda: customer.handler.open_connections == 0,
               what="the flushes to end")
    time.sleep(1)
    assert sorted(m.subject for m in customer.messages) == \
        ["f%d" % i for i in range(5)]
    assert customer.handler.max_open == 1


def flush_socket_exchange(sb, data, timeout=10):
    """Send data to the bag service's internal bag-flush listener; what it
    answers until it closes."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(os.path.join(sb.dir, "run", "bag-flush"))
    s.sendall(data)
    got = b""
    while True:
        try:
            chunk = s.recv(4096)
        except ConnectionResetError:
            # closed with input unread: what came may be lost
            break
        if not chunk:
            break
        got += chunk
    s.close()
    return got.decode(errors="replace")


def test_flush_listener_checks_version_and_requests(bag_sandbox, customer):
    """The bag-flush protocol (connection.h): a peer of another major
    version, a broken request and an overlong line are refused, and
    nothing is sent."""
    sb = bag_sandbox
    bag_add(sb, nets="127.0.0.1", host=customer.hostport)
    deliver(sb, ["a@" + DOMAIN])
    version = "VERSION\tbag-flush\t1\t0\n"
    # another major version: the server's own VERSION, then it closes
    got = flush_socket_exchange(
        sb, b"VERSION\tbag-flush\t2\t0\nFLUSH\tcust.test\twait\n")
    assert got == version
    sb.wait_log("Socket supports major version 2, but we support only 1")
    # a bad domain: FAIL with the reason
    got = flush_socket_exchange(
        sb, (version + "FLUSH\t../cust.test\twait\n").encode())
    assert got == version + "FAIL\tInvalid domain '../cust.test': " \
        "domain has an empty or malformed label\n", got
    # an unknown option
    got = flush_socket_exchange(
        sb, (version + "FLUSH\tcust.test\tnow\twait\n").encode())
    assert got == version + "FAIL\tInvalid request option 'now'\n", got
    # a line longer than the listener takes
    got = flush_socket_exchange(
        sb, (version + "FLUSH\t" + "a" * 5000 + "\n").encode())
    assert got in (version, ""), got
    sb.wait_log("bag-flush: Error: Request too long")
    time.sleep(0.5)
    assert customer.messages == [] and bag_messages(sb) == 1
    # and a good one
    got = flush_socket_exchange(
        sb, (version + "FLUSH\tcust.test\twait\n").encode())
    assert got == version + "DONE\t1\t0\t0\t0\n", got
    assert len(customer.messages) == 1
