"""Fixtures: a private Dovecot per test (scripts/sandbox) and real clients.

Every sandbox is checked when the test ends: Dovecot's log must show no
panic, fatal error or crash, and (under MIRROR_SANDBOX_PRELOAD) no
sanitizer report may have been written.

MIRROR_TEST_STORE=redis runs every test with the registry in one real
redis-server (started for the session, a key prefix per sandbox) instead
of the embedded file dict, MIRROR_TEST_STORE=sqlite in an SQLite database
per sandbox through Dovecot's dict-sql. Tests look at the registry through
doveadm and the dict proxy (Sandbox.registry_get), whatever the backend.
"""

import glob
import imaplib
import json
import os
import poplib
import re
import shutil
import socket
import subprocess
import tempfile
import time

import pytest

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SANDBOX = os.path.join(TOP, "scripts", "sandbox")
DOMAIN = "example.com"

PASSWORD = "secret"
STORE = os.environ.get("MIRROR_TEST_STORE", "embedded")
if STORE not in ("embedded", "redis", "sqlite"):
    raise RuntimeError("MIRROR_TEST_STORE must be embedded, redis or sqlite")
# the registry every sandbox's doveadm reaches, whatever the backend
REGISTRY = "proxy::mirror"


_session_redis = None
_redis_prefixes = 0


def session_store():
    """The registry of a new sandbox under MIRROR_TEST_STORE (for
    scripts/sandbox --store)."""
    global _session_redis, _redis_prefixes
    from store import RedisServer
    if STORE == "sqlite":
        return "sqlite"
    if _session_redis is None:
        _session_redis = RedisServer().start()
    _redis_prefixes += 1
    return _session_redis.uri("t%d/" % _redis_prefixes)


def pytest_sessionfinish(session, exitstatus):
    if _session_redis is not None:
        _session_redis.cleanup()


def make_message(subject="hello", body="body line\r\n", msgid=None,
                 extra_headers=""):
    msgid = msgid or "<%s@remote.test>" % os.urandom(8).hex()
    return ("From: sender@remote.test\r\nTo: undisclosed-recipients:;\r\n"
            "Subject: %s\r\nMessage-ID: %s\r\n%s\r\n%s"
            % (subject, msgid, extra_headers, body)).encode()


class LMTPSession:
    """A minimal LMTP client that reads one DATA reply per recipient."""

    def __init__(self, host, port):
        self.sock = socket.create_connection((host, port), timeout=30)
        self.file = self.sock.makefile("rb")
        self.reply()
        self.cmd("LHLO test.client")

    def reply(self):
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError("LMTP server closed the connection")
            lines.append(line.decode().rstrip("\r\n"))
            if line[3:4] != b"-":
                return int(lines[-1][:3]), "\n".join(l[4:] for l in lines)

    def cmd(self, line):
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reply()

    def send(self, rcpts, message, mail_from="sender@remote.test"):
        """rcpts: addresses, or (address, "PARAMS") tuples. Returns the
        RCPT replies and the DATA replies (one per accepted recipient)."""
        code, text = self.cmd("MAIL FROM:<%s>" % mail_from)
        assert code == 250, text
        rcpt_replies = []
        for r in rcpts:
            addr, params = (r, "") if isinstance(r, str) else r
            rcpt_replies.append(self.cmd(
                "RCPT TO:<%s>%s" % (addr, " " + params if params else "")))
        accepted = [r for r in rcpt_replies if r[0] == 250]
        if not accepted:
            self.cmd("RSET")
            return rcpt_replies, []
        code, text = self.cmd("DATA")
        assert code == 354, text
        data = message.replace(b"\r\n.", b"\r\n..")
        if not data.endswith(b"\r\n"):
            data += b"\r\n"
        self.sock.sendall(data + b".\r\n")
        return rcpt_replies, [self.reply() for _ in accepted]

    def close(self):
        try:
            self.cmd("QUIT")
        except OSError:
            pass
        self.file.close()
        self.sock.close()


class Sandbox:
    def __init__(self, directory, info):
        self.dir = directory
        self.info = info
        self.conf = info["conf"]

    # doveadm

    def doveadm(self, *args, json_output=False, check=True):
        cmd = ["doveadm", "-c", self.conf]
        if json_output:
            cmd += ["-f", "json"]
        # under a sanitizer build doveadm needs its runtime (scripts/sandbox)
        r = subprocess.run(cmd + list(args), capture_output=True, text=True,
                           env=dict(os.environ, **self.info["env"]))
        if check and r.returncode != 0:
            raise AssertionError("doveadm %s failed (%d): %s"
                                 % (" ".join(args), r.returncode, r.stderr))
        if json_output and r.returncode == 0:
            r.json = json.loads(r.stdout) if r.stdout.strip() else []
        return r

    def mirror_add(self, source, storage=None, days=None, readonly=False):
        """storage=None: mirror add creates the storage user."""
        args = ["mirror", "add"]
        if storage is not None:
            args += ["-s", storage]
        if days is not None:
            args += ["-d", str(days)]
        if readonly:
            args += ["-r"]
        r = self.doveadm(*(args + [source]), json_output=True)
        assert len(r.json) == 1, r.stdout
        return r.json[0]

    # users and mail

    # Dovecot's passwd-file rereads a changed file at most once a second:
    # wait that long so that the next lookup sees the change.

    def add_user(self, user, password=PASSWORD):
        """user may be a whole ADDRESS:PASSWORD:FIELDS spec (password=None)."""
        spec = user if password is None else "%s:%s" % (user, password)
        subprocess.run([SANDBOX, "user-add", self.dir, spec], check=True)
        time.sleep(1.1)

    def remove_user(self, user):
        path = os.path.join(self.dir, "users")
        with open(path) as f:
            lines = [l for l in f if not l.startswith(user + ":")]
        with open(path + ".new", "w") as f:
            f.writelines(lines)
        shutil.copystat(path, path + ".new")
        st = os.stat(path)
        os.chown(path + ".new", st.st_uid, st.st_gid)
        os.rename(path + ".new", path)
        time.sleep(1.1)

    def lmtp(self):
        return LMTPSession(self.info["lmtp"]["host"], self.info["lmtp"]["port"])

    def deliver(self, rcpts, message=None, **kw):
        s = self.lmtp()
        try:
            return s.send(rcpts, message or make_message(), **kw)
        finally:
            s.close()

    def deliver_many(self, rcpts, n, subject="m"):
        """n messages over one LMTP session; the reply of each."""
        s = self.lmtp()
        try:
            return [s.send(rcpts, make_message(subject="%s%d" % (subject, i)))
                    for i in range(n)]
        finally:
            s.close()

    def imap_messages(self, user, mailbox="INBOX", password=PASSWORD):
        """All messages of a mailbox, read over IMAP (without setting \\Seen)."""
        imap = imaplib.IMAP4(self.info["imap"]["host"], self.info["imap"]["port"])
        try:
            imap.login(user, password)
            typ, data = imap.select(mailbox, readonly=True)
            assert typ == "OK", data
            typ, data = imap.fetch("1:*", "(BODY.PEEK[])") \
                if int(data[0]) > 0 else ("OK", [])
            assert typ == "OK", data
            return [part[1] for part in data if isinstance(part, tuple)]
        finally:
            imap.logout()

    def pop3_messages(self, user, password=PASSWORD):
        pop = poplib.POP3(self.info["pop3"]["host"], self.info["pop3"]["port"])
        try:
            pop.user(user)
            pop.pass_(password)
            count, _ = pop.stat()
            return [b"\r\n".join(pop.retr(i + 1)[1]) for i in range(count)]
        finally:
            pop.quit()

    def maildir_count(self, user, folder=""):
        local, domain = user.split("@")
        base = os.path.join(self.dir, "mail", domain, local, "Maildir", folder)
        return sum(len(os.listdir(os.path.join(base, sub)))
                   for sub in ("new", "cur") if os.path.isdir(os.path.join(base, sub)))

    def outbox(self):
        return sorted(glob.glob(os.path.join(self.info["outbox"], "*.eml")))

    def log(self):
        with open(self.info["log"], errors="replace") as f:
            return f.read()

    def registry_get(self, key):
        """A registry value (key without shared/), None if missing."""
        r = self.doveadm("dict", "get", REGISTRY, "shared/" + key,
                         check=False)
        return r.stdout.rstrip("\n") if r.returncode == 0 else None

    def registry_set(self, key, value):
        self.doveadm("dict", "set", REGISTRY, "shared/" + key, value)

    def stats(self):
        """Dovecot's own metrics: {metric name: count}."""
        r = self.doveadm("stats", "dump", json_output=True)
        return {m["metric_name"]: int(m["count"]) for m in r.json}


def header_values(message, name):
    head = message.split(b"\r\n\r\n", 1)[0].decode(errors="replace")
    return [m.group(1).strip() for m in
            re.finditer(r"^%s:[ \t]*(.*)$" % re.escape(name), head,
                        re.MULTILINE | re.IGNORECASE)]


@pytest.fixture
def make_sandbox(request):
    started = []

    def start(users=(), sieve_before=None, settings=None, store=None,
              mail_dir=None):
        d = tempfile.mkdtemp(prefix="mirror-test-")
        args = [SANDBOX, "start", d]
        if store is None and STORE != "embedded":
            store = session_store()
        if store is not None:
            args += ["--store", store]
        if mail_dir is not None:
            args += ["--mail-dir", mail_dir]
        for u in users:
            args += ["--user", "%s:%s" % (u, PASSWORD)]
        if sieve_before is not None:
            path = os.path.join(d, "input.sieve")
            with open(path, "w") as f:
                f.write(sieve_before)
            args += ["--sieve-before", path]
        for k, v in (settings or {}).items():
            args += ["--set", "%s=%s" % (k, v)]
        started.append(d)
        r = subprocess.run(args, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return Sandbox(d, json.loads(r.stdout))

    yield start

    problems = []
    for d in started:
        subprocess.run([SANDBOX, "stop", d])
        log = os.path.join(d, "dovecot.log")
        if os.path.exists(log):
            with open(log, errors="replace") as f:
                for line in f:
                    # SIGKILL is only ever sent by a test, on purpose
                    if "killed with signal 9" in line:
                        continue
                    if re.search(r"Panic:|Fatal:|killed with signal|"
                                 r"AddressSanitizer|runtime error", line):
                        problems.append(line.strip())
        for report in glob.glob(os.path.join(d, "sanitizer", "*")):
            with open(report, errors="replace") as f:
                problems.append("%s:\n%s" % (report, f.read()))
    if not problems and not os.environ.get("MIRROR_KEEP_SANDBOX"):
        for d in started:
            shutil.rmtree(d, ignore_errors=True)
    assert not problems, "Dovecot reported problems:\n" + "\n".join(problems)


@pytest.fixture
def sandbox(make_sandbox):
    """alice, bob and carol receive mail; audit and audit2 store mirrors."""
    return make_sandbox(users=["alice@example.com", "bob@example.com",
                               "carol@example.com", "audit@example.com",
                               "audit2@example.com", "dave@other.test"])


@pytest.fixture
def redis_server():
    """A real redis-server on a loopback port, for this test only."""
    from store import RedisServer
    server = RedisServer().start()
    yield server
    server.cleanup()
