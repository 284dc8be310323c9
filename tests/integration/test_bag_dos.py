"""Mail Bagging on the open Internet: idle sockets and floods of commands
don't stop the service. The ETRN and ODMR listeners serve many clients
per process, give a client little time for its first command and few
connections per address; the internal bag-flush listener is a service of
its own that external connections can't starve. Real peers: fetchmail
(ETRN, ODMR) and aiosmtpd as the customer's MTA."""

import resource
import socket
import time

import pytest

from peers import CustomerMTA, SmtpSink, fetchmail_etrn, fetchmail_odmr
from test_bag import (DOMAIN, LOCAL, SMTPSession, bag_add, bag_messages,
                      deliver, etrn_port, odmr_port, wait_until)

BACKUP = "backup.test"


@pytest.fixture
def customer():
    mta = CustomerMTA().start()
    yield mta
    mta.stop()


def raise_fd_limit(want):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE,
                           (min(want, hard) if hard != -1 else want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def idle_connections(port, count, first_ip=2, per_ip=5):
    """count connections to port that never send a thing, from loopback
    addresses 127.0.0.<first_ip>... (per_ip from each)."""
    socks = []
    for i in range(count):
        s = socket.socket()
        s.bind(("127.0.0.%d" % (first_ip + i // per_ip), 0))
        s.settimeout(10)
        s.connect(("127.0.0.1", port))
        socks.append(s)
    return socks


def still_open(sock):
    """The server hasn't closed the connection (it may have greeted)."""
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return False
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)


@pytest.mark.xdist_group("clock")
def test_500_idle_connections_stop_nothing(make_sandbox, customer):
    assert raise_fd_limit(4096) >= 1200
    sb = make_sandbox(users=[LOCAL], settings={
        "bag_enabled": "yes", "bag_backup_retry_min": "1s",
        "bag_backup_retry_max": "2s",
        # the idle sockets stay for the whole test
        "bag_first_command_timeout": "2 mins"})
    row = bag_add(sb, nets="127.0.0.1", host=customer.hostport,
                  identity="odmr@" + DOMAIN)
    sb.doveadm("bag", "add", "-b", "-h", customer.hostport, BACKUP)
    for i in range(3):
        deliver(sb, ["a@" + DOMAIN], subject="e%d" % i)
    idle = idle_connections(etrn_port(sb), 250, first_ip=2) + \
        idle_connections(odmr_port(sb), 250, first_ip=60)
    try:
        # ETRN (fetchmail) from an allowed address
        t0 = time.time()
        r = fetchmail_etrn(etrn_port(sb), [DOMAIN], timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "253 2.0.0 OK, 3 pending messages" in r.stdout + r.stderr
        customer.wait_for(3)
        # doveadm bag flush
        deliver(sb, ["a@" + DOMAIN], subject="doveadm")
        r = sb.doveadm("bag", "flush", DOMAIN, json_output=True)
        assert r.json[0]["delivered"] == "1"
        # a backup try
        deliver(sb, ["b@" + BACKUP], subject="backup")
        customer.wait_for(5)
        # ODMR (fetchmail) pulls the mail on its own connection
        deliver(sb, ["a@" + DOMAIN], subject="odmr")
        sink = SmtpSink()
        try:
            r = fetchmail_odmr(odmr_port(sb), "odmr@" + DOMAIN,
                               row["atrn_password"], [DOMAIN],
                               "127.0.0.1/%d" % sink.port, timeout=30)
            assert r.returncode == 0, r.stdout + r.stderr
            sink.wait_for(1)
        finally:
            sink.stop()
        assert time.time() - t0 < 60
        assert sorted(m.subject for m in customer.messages) == \
            ["backup", "doveadm", "e0", "e1", "e2"]
        assert bag_messages(sb) == 0
        # the idle connections were served, not dropped to make room
        assert sum(still_open(s) for s in idle) == len(idle)
    finally:
        for s in idle:
            s.close()


def test_etrn_flood_on_one_connection(make_sandbox, customer):
    """500 ETRNs on one allowed connection while the flush runs: every
    one is answered 253 or 251, none 458, and every message arrives
    once."""
    sb = make_sandbox(users=[LOCAL], settings={"bag_enabled": "yes"})
    bag_add(sb, nets="127.0.0.1", host=customer.hostport)
    for i in range(3):
        deliver(sb, ["a@" + DOMAIN], subject="f%d" % i)
    customer.handler.delay = 0.2
    s = SMTPSession(etrn_port(sb))
    s.cmd("EHLO client.test")
    codes = {}
    for _ in range(500):
        code, _ = s.cmd("ETRN " + DOMAIN)
        codes[code] = codes.get(code, 0) + 1
    s.cmd("QUIT")
    s.close()
    assert set(codes) <= {251, 253} and codes.get(253, 0) >= 1, codes
    customer.wait_for(3)
    wait_until(lambda: customer.handler.open_connections == 0,
               what="the flushes to end")
    time.sleep(1)
    assert sorted(m.subject for m in customer.messages) == \
        ["f0", "f1", "f2"]
    assert customer.handler.max_open == 1
    assert "Unable to queue" not in sb.log()


def test_first_command_timeout(make_sandbox):
    """A connection that doesn't greet in bag_first_command_timeout is
    closed; one that did may idle as usual."""
    sb = make_sandbox(users=[LOCAL], settings={
        "bag_enabled": "yes", "bag_first_command_timeout": "1s"})
    for port in (etrn_port(sb), odmr_port(sb)):
        # The limit runs from the connect, so the clock starts before it.
        t0 = time.time()
        silent = socket.create_connection(("127.0.0.1", port), timeout=10)
        greeted = SMTPSession(port)
        assert greeted.cmd("EHLO client.test")[0] == 250
        f = silent.makefile("rb")
        assert f.readline().startswith(b"220 ")
        line = f.readline()
        assert line.startswith(b"421 4.4.2 ") and \
            b"Timed out waiting for EHLO" in line, line
        assert 0.8 < time.time() - t0 < 5
        assert f.readline() == b""
        silent.close()
        time.sleep(0.5)
        assert greeted.cmd("NOOP")[0] == 250
        greeted.close()
    sb.wait_log("No EHLO/HELO within 1000 ms (bag_first_command_timeout)")
