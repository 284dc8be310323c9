"""Fixtures: a private Dovecot per test (scripts/sandbox) and real clients.

Every sandbox is checked when the test ends: Dovecot's log must show no
panic, fatal error or crash, and (under MIRROR_SANDBOX_PRELOAD) no
sanitizer report may have been written. Dovecot's master takes two
seconds or more to stop (it waits for its children, then sleeps a second
after SIGQUIT), so a test does not wait for it: its sandbox gets SIGTERM
and is checked again once the master has exited, during a later test or at
the end of the session (see Reaper); what a sandbox logged while shutting
down fails the session, naming the test it belonged to.

Tests run in parallel (pytest-xdist, `-n`): each worker has its own
ports (ports.py) and every sandbox its own directory. Tests that need the
real clock to keep time with the suite's timers are marked
`xdist_group("clock")` and run one after another in one worker.

MIRROR_TEST_STORE=redis runs every test with the registry in one real
redis-server (started for the session, a key prefix per sandbox) instead
of the embedded file dict, MIRROR_TEST_STORE=sqlite in an SQLite database
per sandbox through Dovecot's dict-sql. Tests look at the registry through
doveadm and the dict proxy (Sandbox.registry_get), whatever the backend.
"""

import contextlib
import glob
import imaplib
import importlib.machinery
import importlib.util
import io
import json
import os
import poplib
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

import ports

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SANDBOX = os.path.join(TOP, "scripts", "sandbox")
DOMAIN = "example.com"

PASSWORD = "secret"
STORE = os.environ.get("MIRROR_TEST_STORE", "embedded")
if STORE not in ("embedded", "redis", "sqlite"):
    raise RuntimeError("MIRROR_TEST_STORE must be embedded, redis or sqlite")
# the registry every sandbox's doveadm reaches, whatever the backend
REGISTRY = "proxy:mirror-registry:mirror"
# scripts/sandbox takes its ports from this worker's slice
os.environ["MIRROR_PORT_RANGE"] = "%d-%d" % ports.worker_range()
# how long a stopping master may take before it is killed
STOP_TIMEOUT = 20


def _load_sandbox_script():
    loader = importlib.machinery.SourceFileLoader("sandbox_script", SANDBOX)
    spec = importlib.util.spec_from_loader("sandbox_script", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


_sandbox_script = _load_sandbox_script()


def sandbox_command(cmd, *args):
    """scripts/sandbox CMD ARGS... run in this process: what it printed.
    Its own commands, not a copy of them; run as a command of their own,
    they cost every test a Python interpreter's start. A failure (the
    script's die()) fails the test with what the script printed."""
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            getattr(_sandbox_script, "cmd_" + cmd.replace("-", "_"))(
                list(args))
    except SystemExit as e:
        raise AssertionError("scripts/sandbox %s failed (%s): %s"
                             % (cmd, e.code, err.getvalue()))
    return out.getvalue()


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


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "nosan: runs no C path of the suite that other tests "
        "don't (argument refusals, the sandbox script): left out of the "
        "sanitizer pass (-m 'not nosan')")
    config.addinivalue_line(
        "markers", "own_registry: brings its own registry (a Redis or SQLite "
        "of its own), whatever MIRROR_TEST_STORE says: the pass with the "
        "registry in Redis leaves it to the sanitizer pass (-m 'not "
        "own_registry')")


def pytest_sessionfinish(session, exitstatus):
    if _session_redis is not None:
        _session_redis.cleanup()


def eventually(get, expected, timeout=10):
    """Assert that get() returns expected within timeout seconds.
    mirror-writer counts the copies it makes in the registry once per
    mirror_writer_count_interval (1 s): doveadm mirror list and verify
    add what the local writer hasn't counted yet, but the registry's raw
    keys, and another server's list, show them a little later."""
    deadline = time.time() + timeout
    value = get()
    while value != expected and time.time() < deadline:
        time.sleep(0.1)
        value = get()
    assert value == expected
    return value


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
        # in the instance's mount namespace, where the suite's doveadm
        # module is (scripts/sandbox)
        cmd = list(self.info["doveadm"])
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

    def mirror_add(self, source, storage=None, days=None, readonly=False,
                   share=False):
        """storage=None: mirror add creates the storage user; share: copy
        into another mirror's created storage (-S)."""
        args = ["mirror", "add"]
        if storage is not None:
            args += ["-s", storage]
        if share:
            args += ["-S"]
        if days is not None:
            args += ["-d", str(days)]
        if readonly:
            args += ["-r"]
        r = self.doveadm(*(args + [source]), json_output=True)
        assert len(r.json) == 1, r.stdout
        return r.json[0]

    # users and mail

    # Dovecot's passwd-file rereads a changed file at most once a second:
    # `sandbox user-add` returns when auth knows the new user, and
    # remove_user when it doesn't know the user any more.

    def add_user(self, user, password=PASSWORD):
        """user may be a whole ADDRESS:PASSWORD:FIELDS spec (password=None)."""
        spec = user if password is None else "%s:%s" % (user, password)
        sandbox_command("user-add", self.dir, spec)

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
        deadline = time.time() + 10
        while self.doveadm("user", user, check=False).returncode != 67:
            assert time.time() < deadline, "auth still knows " + user
            time.sleep(0.05)

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

    def wait_log(self, text, timeout=10):
        """The log once it has text (Dovecot's log process writes lines
        a little after they are logged)."""
        deadline = time.time() + timeout
        while True:
            log = self.log()
            if text in log:
                return log
            assert time.time() < deadline, "%r not logged:\n%s" % (
                text, log[-3000:])
            time.sleep(0.05)

    def registry_get(self, key):
        """A registry value (key without shared/), None if missing."""
        r = self.doveadm("dict", "get", REGISTRY, "shared/" + key,
                         check=False)
        # the table formatter pads the value with spaces
        return r.stdout.rstrip() if r.returncode == 0 else None

    def registry_set(self, key, value):
        self.doveadm("dict", "set", REGISTRY, "shared/" + key, value)

    def store(self):
        """What the registry is kept in: "embedded" (the file dict
        registry_file()), a redis: URI or "sqlite"."""
        with open(os.path.join(self.dir, "store")) as f:
            return f.read().strip() or "embedded"

    def registry_file(self):
        return os.path.join(self.dir, "state", "mirror", "registry.dict")

    def stats(self):
        """Dovecot's own metrics: {metric name: count}."""
        r = self.doveadm("stats", "dump", json_output=True)
        return {m["metric_name"]: int(m["count"]) for m in r.json}


def header_values(message, name):
    head = message.split(b"\r\n\r\n", 1)[0].decode(errors="replace")
    return [m.group(1).strip() for m in
            re.finditer(r"^%s:[ \t]*(.*)$" % re.escape(name), head,
                        re.MULTILINE | re.IGNORECASE)]


PROBLEM = re.compile(r"Panic:|Fatal:|killed with signal|"
                     r"AddressSanitizer|runtime error")
# A process that the master starts as it stops can't read the settings
# from the config service, which is gone already: Dovecot's own shutdown
# order, only ever seen in what a stopping sandbox logs.
SHUTDOWN_NOISE = re.compile(r"Fatal: Error reading configuration: "
                            r"read\(\S+/run/config\) failed")


def sandbox_problems(d, offset=0, stopping=False):
    """What Dovecot reported in sandbox d's log from offset on (with
    stopping, what it logged while shutting down), and its sanitizer
    reports; the log's size."""
    problems = []
    log = os.path.join(d, "dovecot.log")
    size = offset
    if os.path.exists(log):
        with open(log, "rb") as f:
            f.seek(offset)
            data = f.read()
        size = offset + len(data)
        for line in data.decode(errors="replace").splitlines():
            # SIGKILL is only ever sent by a test, on purpose
            if "killed with signal 9" in line:
                continue
            if stopping and SHUTDOWN_NOISE.search(line):
                continue
            if PROBLEM.search(line):
                problems.append(line.strip())
    for report in glob.glob(os.path.join(d, "sanitizer", "*")):
        with open(report, errors="replace") as f:
            problems.append("%s:\n%s" % (report, f.read()))
    return problems, size


def master_pid(d):
    try:
        with open(os.path.join(d, "run", "master.pid")) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    # a zombie is dead too (the master is not our child: never one here)
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return False


class Reaper:
    """Sandboxes that were sent SIGTERM and not waited for. Each is checked
    once its master has exited: the rest of its log (what Dovecot logged
    while shutting down) and the sanitizer reports written at exit."""

    def __init__(self):
        self.stopping = []
        # (test, problems) found after the test had ended
        self.problems = []

    def stop(self, test, d, offset, keep=False):
        pid = master_pid(d)
        if pid is not None and alive(pid):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        self.stopping.append((test, d, pid, offset, time.time(), keep))

    def collect(self, wait):
        """Check the sandboxes that have stopped (with wait, all of them:
        a master that doesn't exit in STOP_TIMEOUT is killed, and that is
        a problem of its own)."""
        left = []
        for entry in self.stopping:
            test, d, pid, offset, since, keep = entry
            running = pid is not None and alive(pid)
            if running and wait:
                deadline = since + STOP_TIMEOUT
                while alive(pid) and time.time() < deadline:
                    time.sleep(0.05)
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
                    self.problems.append(
                        (test, ["the master did not stop in %ds"
                                % STOP_TIMEOUT]))
                running = False
            if running:
                left.append(entry)
                continue
            problems, _ = sandbox_problems(d, offset, stopping=True)
            if problems:
                self.problems.append((test, problems))
            elif not keep and not os.environ.get("MIRROR_KEEP_SANDBOX"):
                shutil.rmtree(d, ignore_errors=True)
        self.stopping = left


_reaper = Reaper()


@pytest.fixture(scope="session", autouse=True)
def reaper():
    yield _reaper
    _reaper.collect(wait=True)
    assert not _reaper.problems, \
        "Dovecot reported problems while shutting down:\n" + "\n".join(
            "%s:\n  %s" % (test, "\n  ".join(p))
            for test, p in _reaper.problems)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Each phase's report on its test (rep_setup, rep_call,
    rep_teardown): make_sandbox keeps a failed test's sandboxes."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, "rep_" + report.when, report)


def print_warnings(d, limit=40):
    """What Dovecot warned of in a failed test's sandbox, and where it is
    kept: the evidence of a failure that CI alone saw."""
    print("sandbox kept in %s; its warnings and errors:" % d)
    try:
        with open(os.path.join(d, "dovecot.log"), errors="replace") as f:
            lines = [l.rstrip("\n") for l in f
                     if re.search(r": (Warning|Error|Panic|Fatal): ", l)]
    except OSError as e:
        lines = ["(no log: %s)" % e]
    for line in lines[-limit:]:
        print("  " + line[:300])


def start_sandbox(started, users=(), sieve_before=None, settings=None,
                  store=None, mail_dir=None, config=None, init=True,
                  as_installed=False):
    """A sandbox started in a new directory, which is appended to started.
    init=False: the registry is not set up (doveadm mirror init);
    as_installed: start --as-installed."""
    d = tempfile.mkdtemp(prefix="mirror-test-")
    args = [d]
    if not init:
        args.append("--no-init")
    if as_installed:
        args.append("--as-installed")
    if store is None and STORE != "embedded":
        store = session_store()
    if store is not None:
        args += ["--store", store]
    if mail_dir is not None:
        args += ["--mail-dir", mail_dir]
    if config is not None:
        path = os.path.join(d, "input.conf")
        with open(path, "w") as f:
            f.write(config)
        args += ["--config", path]
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
    return Sandbox(d, json.loads(sandbox_command("start", *args)))


def failed_call(request):
    report = getattr(request.node, "rep_call", None)
    return report is not None and report.failed


@pytest.fixture
def make_sandbox(request, reaper):
    """make_sandbox(**kw): a sandbox of this test's own (start_sandbox)."""
    started = []

    yield lambda **kw: start_sandbox(started, **kw)

    failed = failed_call(request)
    problems = []
    for d in started:
        found, size = sandbox_problems(d)
        problems += found
        if failed:
            # the failure's report shows this (captured at teardown)
            print_warnings(d)
        reaper.stop(request.node.nodeid, d, size, keep=bool(found) or failed)
    reaper.collect(wait=False)
    assert not problems, "Dovecot reported problems:\n" + "\n".join(problems)


class SharedSandboxes:
    """The sandboxes of shared_sandbox in one module (and worker)."""

    def __init__(self):
        self.started = []
        self.by_key = {}
        self.keep = set()


@pytest.fixture(scope="module")
def _shared_sandboxes(request, reaper):
    shared = SharedSandboxes()
    yield shared
    for d in shared.started:
        _, size = sandbox_problems(d)
        reaper.stop(request.node.nodeid, d, size, keep=d in shared.keep)
    reaper.collect(wait=False)


@pytest.fixture
def shared_sandbox(request, _shared_sandboxes):
    """shared_sandbox(**kw): for the cases of a parametrized test of which
    none changes anything (bad input, refused), one sandbox that they
    share: started (start_sandbox) by the first case that asks for one
    with these arguments in this worker, and stopped when the module's
    tests are done. A sandbox start costs more CPU than such a case. Each
    case is checked for what Dovecot reported from where the log stood
    when the case began; a failed case keeps the sandbox."""
    shared = _shared_sandboxes
    used = []

    def get(setup=None, **kw):
        """setup(sandbox): what the cases need in it, done once; what it
        returns is the sandbox's .prepared."""
        key = (request.function.__name__, repr(sorted(kw.items())))
        sb = shared.by_key.get(key)
        if sb is None:
            sb = start_sandbox(shared.started, **kw)
            # checked and kept with the case, also if setup fails
            used.append((sb.dir, 0))
            sb.prepared = setup(sb) if setup is not None else None
            shared.by_key[key] = sb
        else:
            used.append((sb.dir, sandbox_problems(sb.dir)[1]))
        return sb

    yield get

    failed = failed_call(request)
    problems = []
    for d, offset in used:
        found, _ = sandbox_problems(d, offset)
        problems += found
        if failed:
            print_warnings(d)
        if found or failed:
            shared.keep.add(d)
    assert not problems, "Dovecot reported problems:\n" + "\n".join(problems)


# alice, bob and carol receive mail; audit and audit2 store mirrors
SANDBOX_USERS = ["alice@example.com", "bob@example.com", "carol@example.com",
                 "audit@example.com", "audit2@example.com", "dave@other.test"]


@pytest.fixture
def sandbox(make_sandbox):
    """A sandbox of SANDBOX_USERS."""
    return make_sandbox(users=SANDBOX_USERS)


@pytest.fixture
def faults():
    """A fault point to arm (faults.py): give make_sandbox its config."""
    from faults import Faults
    f = Faults()
    yield f
    f.cleanup()


@pytest.fixture
def redis_server():
    """A real redis-server on a loopback port, for this test only."""
    from store import RedisServer
    server = RedisServer().start()
    yield server
    server.cleanup()
