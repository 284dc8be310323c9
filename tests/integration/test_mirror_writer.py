"""mirror-writer: the copies that concurrent LMTP deliveries make into one
storage are committed together (group commit), and LMTP copies by itself
while the writer can't be reached."""

import base64
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import pytest

from conftest import PASSWORD, eventually, make_message
from faults import needs_fault_points
from test_mirror_crash import lmtp_pids, subjects
from test_verify import ok, verify

ALICE = "alice@example.com"
AUDIT = "audit@example.com"


def writer_pids(sb):
    prefix = "dovecot-mirror-sandbox-%d/mirror-writer" % sb.info["lmtp"]["port"]
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                title = f.read().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if title.startswith(prefix):
            pids.append(int(pid))
    return pids


def batch_stats(sb):
    """(batches, copies, failures) of the mirror_writer_batches metric"""
    r = sb.doveadm("stats", "dump", json_output=True)
    rows = {m["field"]: m for m in r.json
            if m["metric_name"] == "mirror_writer_batches"}
    if not rows:
        return 0, 0, 0
    return int(rows["duration"]["count"]), int(rows["copies"]["sum"]), \
        int(rows["failures"]["sum"])


def deliver_concurrently(sb, sessions, per_session):
    """Deliver per_session messages to alice over each of sessions LMTP
    connections at once, as an MTA does; each must get its 250."""
    errors = []

    def mta(n):
        s = sb.lmtp()
        try:
            for i in range(per_session):
                ok(s.send([ALICE], make_message(subject="s%d-%d" % (n, i))))
        except Exception as e:          # reported below
            errors.append(e)
        finally:
            s.close()

    threads = [threading.Thread(target=mta, args=(n,))
               for n in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_concurrent_copies_share_a_transaction(sandbox):
    m = sandbox.mirror_add(ALICE, AUDIT)
    sessions, per_session = 8, 6
    deliver_concurrently(sandbox, sessions, per_session)
    total = sessions * per_session
    assert len(subjects(sandbox, AUDIT)) == total
    batches, copies, failures = batch_stats(sandbox)
    # every copy went through the writer, and some shared a commit
    assert (copies, failures) == (total, 0)
    assert batches < total, batches
    code, row, err = verify(sandbox, m["id"])
    assert code == 0, err
    assert (row["records"], row["unrecorded"], row["counted"]) == \
        (str(total), "0", str(total)), row


def test_copies_of_one_batch_are_written_as_each_storages_user(
        make_sandbox):
    """The writer switches to each storage's uid, gid and groups for its
    copies and back, also when it remembers where it is instead of asking
    the kernel: a maildir storage saved into while the delivery commits,
    mdbox ones at the commit, one of them with the maildir one's uid but
    another gid, all in the same turns of the writer."""
    import grp
    import pwd
    if os.geteuid() != 0:
        pytest.skip("needs root to have users of several uids")
    daemon, bin_ = pwd.getpwnam("daemon"), pwd.getpwnam("bin")
    sys_gid, adm_gid = grp.getgrnam("sys").gr_gid, grp.getgrnam("adm").gr_gid
    sb = make_sandbox(users=[ALICE])
    owners = {}
    for user, pw, gid, mail in [
            ("audit-maildir@example.com", daemon, daemon.pw_gid, ""),
            ("audit-mdbox@example.com", bin_, sys_gid,
             " mail=mdbox:~/mdbox"),
            ("audit-adm@example.com", daemon, adm_gid,
             " mail=mdbox:~/mdbox")]:
        home = tempfile.mkdtemp(prefix="audit-home-", dir=sb.dir)
        os.chown(home, pw.pw_uid, gid)
        sb.add_user("%s:%s:uid=%d gid=%d home=%s%s"
                    % (user, PASSWORD, pw.pw_uid, gid, home, mail),
                    password=None)
        sb.mirror_add(ALICE, user)
        owners[user] = (home, (pw.pw_uid, gid))
    deliver_concurrently(sb, 6, 3)
    _, copies, failures = batch_stats(sb)
    assert (copies, failures) == (54, 0)
    for user, (home, ids) in owners.items():
        assert len(subjects(sb, user)) == 18
        found = {(st.st_uid, st.st_gid) for st in
                 (os.stat(os.path.join(r, f))
                  for r, dirs, files in os.walk(home) for f in files + dirs)}
        assert found == {ids}, (user, found)
    nobody = pwd.getpwnam("nobody")
    alice_dir = os.path.join(sb.dir, "mail", "example.com", "alice")
    assert {os.stat(os.path.join(r, f)).st_uid
            for r, _, files in os.walk(alice_dir) for f in files} == \
        {nobody.pw_uid}


@needs_fault_points
def test_small_and_large_messages_reach_the_writer_whole(sandbox):
    # LMTP hands a message of up to 128 KB over in a memory file, a larger
    # one in a file in mail_temp_dir: both copies are the whole message
    sandbox.mirror_add(ALICE, AUDIT)
    line = "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmn\r\n"
    bodies = {"small": line * 10, "large": line * 5000}
    for subject, body in sorted(bodies.items()):
        ok(sandbox.deliver([ALICE], make_message(subject=subject,
                                                 body=body)))
    copies = sandbox.imap_messages(AUDIT)
    assert len(copies) == 2
    for copy in copies:
        head, _, body = copy.partition(b"\r\n\r\n")
        subject = [h for h in head.split(b"\r\n")
                   if h.startswith(b"Subject: ")][0][9:].decode()
        assert body == bodies[subject].encode(), subject
    assert len(bodies["large"]) > 128 * 1024
    assert batch_stats(sandbox)[1:] == (2, 0)


def traced_lines(pids, action, done, trace, size=8):
    """strace's lines of the calls trace of the processes pids (strings
    cut to size) while action runs. A process that is gone before strace
    attaches is left out. done(lines): whether all that is awaited has
    been seen (strace may still be writing it when action returns)."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    fd, out = tempfile.mkstemp(prefix="strace.")
    os.close(fd)
    args = ["strace", "-e", "signal=none", "-e", "status=successful",
            "-e", "trace=" + trace, "-s", str(size), "-o", out]
    for pid in pids:
        args += ["-p", str(pid)]
    tracer = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)

    def lines():
        with open(out) as f:
            return f.readlines()

    try:
        # "strace: Process N attached", or why not, once per process
        attached = 0
        for _ in pids:
            line = tracer.stderr.readline()
            if "Operation not permitted" in line:
                pytest.skip("strace can't attach: %s" % line.strip())
            if "attached" in line:
                attached += 1
            else:
                assert "No such process" in line, line
        assert attached > 0
        action()
        deadline = time.time() + 5
        while done is not None and not done(lines()) and \
                time.time() < deadline:
            time.sleep(0.05)
    finally:
        tracer.terminate()
        tracer.wait()
        tracer.stderr.close()
    try:
        return lines()
    finally:
        os.unlink(out)


def sync_calls(lines):
    """The syncs among strace's lines, with mirror-writer's DONE and
    LMTP's 250 of a delivery."""
    found = []
    for line in lines:
        m = re.match(r'(\d+ +)?(\w+)\(\d+(, (\[\{iov_base=)?"'
                     r'([^"]*))?', line)
        if m is None:
            continue
        if not m.group(2).startswith("write"):
            found.append(m.group(2))
        elif (m.group(5) or "").startswith("DONE"):
            found.append("DONE")
        elif (m.group(5) or "").startswith("250 2.0"):
            # a delivery's reply (MAIL and RCPT get 250 2.1)
            found.append("250")
    return found


def traced_syscalls(pids, action, done=None):
    """The calls of fsync(), fdatasync() and syncfs() of the processes
    pids, and their answers (mirror-writer's DONE, LMTP's 250), in order,
    while action runs. done(calls): whether all that is awaited has been
    seen."""
    return sync_calls(traced_lines(
        pids, action, done and (lambda lines: done(sync_calls(lines))),
        "fsync,fdatasync,syncfs,write,writev"))


def writer_syscalls(sb, action):
    return traced_syscalls([writer_pids(sb)[0]], action,
                           lambda calls: "DONE" in calls)


def three_storages(sb, fields=""):
    """Mirrors of alice into a maildir storage and two mdbox ones (the
    second with these extra userdb fields), their storages opened by a
    first delivery."""
    sb.add_user("audit2@example.com:%s:mail=mdbox:~/mdbox" % PASSWORD,
                password=None)
    sb.add_user("audit3@example.com:%s:mail=mdbox:~/mdbox%s"
                % (PASSWORD, fields), password=None)
    for user in [AUDIT, "audit2@example.com", "audit3@example.com"]:
        sb.mirror_add(ALICE, user)
    ok(sb.deliver([ALICE], make_message(subject="first")))


def attachment_message(subject):
    """A message with an attachment that mdbox stores apart (larger than
    mail_attachment_min_size)."""
    data = base64.encodebytes(os.urandom(200 * 1024)).replace(b"\n", b"\r\n")
    body = ("--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
            "--b\r\nContent-Type: application/octet-stream\r\n"
            "Content-Transfer-Encoding: base64\r\n"
            "Content-Disposition: attachment; filename=a.bin\r\n\r\n"
            + data.decode() + "--b--\r\n")
    return make_message(subject=subject, body=body, extra_headers=(
        "MIME-Version: 1.0\r\n"
        "Content-Type: multipart/mixed; boundary=\"b\"\r\n"))


def test_copies_committed_together_are_synced_once_before_the_answer(
        make_sandbox):
    """The writer commits a delivery's copies into three storages without
    Dovecot's fsyncs, makes them durable with one syncfs() of their
    filesystem, and answers LMTP only then."""
    sb = make_sandbox(users=[ALICE, AUDIT])
    three_storages(sb)
    calls = writer_syscalls(sb, lambda: ok(
        sb.deliver([ALICE], make_message(subject="synced"))))
    assert calls == ["syncfs", "DONE"], calls
    for user in [AUDIT, "audit2@example.com", "audit3@example.com"]:
        assert subjects(sb, user) == ["first", "synced"], user


@pytest.fixture
def other_fs(make_sandbox):
    """(sandbox, directory on another filesystem than its own: a tmpfs)"""
    shm = "/dev/shm"
    if not os.path.isdir(shm):
        pytest.skip("no /dev/shm")
    other = tempfile.mkdtemp(prefix="mirror-test-fs.", dir=shm)
    try:
        sb = make_sandbox(users=[ALICE, AUDIT])
        if os.stat(other).st_dev == os.stat(sb.dir).st_dev:
            pytest.skip("/dev/shm is on the sandbox's filesystem")
        os.chmod(other, 0o777)
        yield sb, other
    finally:
        shutil.rmtree(other)


@pytest.mark.parametrize("where", ["index", "attachments"])
def test_every_filesystem_of_a_storage_is_synced(other_fs, where):
    """A storage whose index files, or attachments, are on another
    filesystem (a tmpfs) gets that one synced too, before the answer."""
    sb, other = other_fs
    if where == "index":
        three_storages(sb, ":INDEX=" + other)
        message = make_message(subject="synced")
    else:
        three_storages(sb, " mail_attachment_dir=" + other)
        message = attachment_message("synced")
    calls = writer_syscalls(sb, lambda: ok(sb.deliver([ALICE], message)))
    assert calls == ["syncfs", "syncfs", "DONE"], calls
    # the other filesystem did get the storage's files
    assert os.listdir(other)
    assert subjects(sb, "audit3@example.com") == ["first", "synced"]


def test_a_filesystem_no_open_storage_is_on_is_let_go(other_fs):
    """The writer keeps a descriptor of each filesystem its open storages
    are on, and closes it once it has closed the last storage on it (and
    synced what closing it wrote), also when no copy is committed then:
    it doesn't hold it busy for umount."""
    sb, other = other_fs
    dev = os.stat(other).st_dev

    def held(pid):
        found = []
        for fd in os.listdir("/proc/%d/fd" % pid):
            try:
                st = os.stat("/proc/%d/fd/%s" % (pid, fd))
            except FileNotFoundError:
                continue  # closed meanwhile
            if st.st_dev == dev:
                found.append(fd)
        return found

    sb.add_user("audit3@example.com:%s:mail=mdbox:~/mdbox:INDEX=%s"
                % (PASSWORD, other), password=None)
    sb.mirror_add(ALICE, "audit3@example.com")
    ok(sb.deliver([ALICE], make_message(subject="first")))
    [pid] = writer_pids(sb)
    assert held(pid)
    # the writer asks the userdb again a second later, finds the user
    # gone and closes the storage: the delivery's only copy fails
    sb.remove_user("audit3@example.com")
    time.sleep(1.1)
    ok(sb.deliver([ALICE], make_message(subject="not copied")))
    eventually(lambda: held(pid), [])
    assert writer_pids(sb) == [pid]
    assert sb.maildir_count(ALICE) == 2


def test_a_directory_the_writer_cant_read_is_synced_through_its_parent(
        make_sandbox):
    """A storage whose mail root the storage user may only search (mode
    0300): the writer can't open it for syncfs(), so it syncs its
    filesystem through its parent (the home), which is on the same one."""
    sb = make_sandbox(users=[ALICE, AUDIT])
    sb.add_user("audit3@example.com:%s:mail=mdbox:~/mdbox" % PASSWORD,
                password=None)
    ok(sb.deliver(["audit3@example.com"], make_message(subject="own")))
    root = os.path.join(sb.dir, "mail", "example.com", "audit3", "mdbox")
    if os.stat(root).st_uid == 0:
        pytest.skip("the storage user is root, which may read anything")
    os.chmod(root, 0o300)
    sb.mirror_add(ALICE, "audit3@example.com")
    calls = writer_syscalls(sb, lambda: ok(
        sb.deliver([ALICE], make_message(subject="synced"))))
    assert calls == ["syncfs", "DONE"], calls
    # neither an error nor a warning about it
    assert "mirror: open(" not in sb.log()
    assert "not synced" not in sb.log()
    os.chmod(root, 0o700)
    assert subjects(sb, "audit3@example.com") == ["own", "synced"]


@pytest.mark.parametrize("setting", ["mirror_writer_syncfs", "mirror_fsync"])
def test_the_writer_syncs_as_its_settings_say(make_sandbox, setting):
    """mirror_writer_syncfs = no: each commit fsyncs its own files, as
    Dovecot does, before the answer; mirror_fsync = no: nothing does."""
    sb = make_sandbox(users=[ALICE, AUDIT], settings={setting: "no"})
    three_storages(sb)
    calls = writer_syscalls(sb, lambda: ok(
        sb.deliver([ALICE], make_message(subject="synced"))))
    assert "syncfs" not in calls and calls[-1] == "DONE", calls
    fsyncs = len(calls) - 1
    if setting == "mirror_fsync":
        assert fsyncs == 0, calls
    else:
        # the mail file, its index and the chain, at least, per storage
        assert fsyncs >= 3 * 3, calls


@needs_fault_points
def test_lmtp_syncs_what_a_killed_writer_committed(make_sandbox, faults):
    """The writer dies after its commit and before its sync: LMTP finds
    the copy, and syncs the storage's filesystem before its 250."""
    sb = make_sandbox(users=[ALICE, AUDIT], config=faults.config)
    sb.mirror_add(ALICE, AUDIT)
    session = sb.lmtp()
    try:
        # (its LMTP process learns that the writer syncs the delivery)
        ok(session.send([ALICE], make_message(subject="first")))
        # one of them serves the connection
        faults.arm("mirror-chain-appended")
        calls = traced_syscalls(
            lmtp_pids(sb, 0), lambda: ok(session.send(
                [ALICE], make_message(subject="killed"))),
            lambda calls: "250" in calls)
    finally:
        session.close()
    assert faults.fired
    sb.wait_log("was made by mirror-writer before it failed")
    # LMTP syncs the copy it found (and with it the delivery), then the
    # delivery, which the writer didn't answer for
    calls = [c for c in calls if c in ("syncfs", "250")]
    assert calls == ["syncfs", "syncfs", "250"], calls
    assert subjects(sb, AUDIT) == ["first", "killed"]


def delivery_syscalls(sb, rcpts, message, first=None):
    """The syncs of LMTP and mirror-writer, the writer's DONE and LMTP's
    250, while one message is delivered to rcpts; after a first message,
    unless None, delivered on the same LMTP connection untraced (by the
    same LMTP process, which learns from it which filesystems the writer
    syncs)."""
    session = sb.lmtp()
    try:
        if first is not None:
            ok(session.send(rcpts, first))
        return traced_syscalls(
            lmtp_pids(sb, 0) + writer_pids(sb),
            lambda: ok(session.send(rcpts, message)),
            lambda calls: "250" in calls)
    finally:
        session.close()


def test_a_mirrored_delivery_is_synced_with_its_copies(make_sandbox):
    """A delivery whose copies go to the writer doesn't sync its own files
    (mail_fsync=optimized) once its LMTP process has seen the writer sync
    that filesystem: the writer's one syncfs() after the delivery's commit
    makes the delivery and its copy durable together, and the 250 comes
    after it. A delivery without mirrors syncs as Dovecot does."""
    sb = make_sandbox(users=[ALICE, AUDIT, "bob@example.com"])
    sb.mirror_add(ALICE, AUDIT)
    calls = delivery_syscalls(sb, [ALICE], make_message(subject="synced"),
                              first=make_message(subject="first"))
    assert calls == ["syncfs", "DONE", "250"], calls
    # the same delivery without a mirror: the message file, then new/
    # (and the uidlist, when maildir rewrites it)
    calls = delivery_syscalls(sb, ["bob@example.com"],
                              make_message(subject="plain"),
                              first=make_message(subject="plain first"))
    assert calls[:2] == ["fsync", "fdatasync"] and calls[-1] == "250" and \
        set(calls[2:-1]) <= {"fdatasync"}, calls
    assert subjects(sb, ALICE) == ["first", "synced"]
    assert subjects(sb, AUDIT) == ["first", "synced"]


def test_the_recipients_storage_lookup_runs_while_the_writer_commits(
        sandbox):
    """Whether the recipient is a mirror storage (whose expire index its
    delivery would keep) is looked up after its commit without waiting:
    LMTP hands the copies to the writer (COMMIT) before it reads the
    registry's answer, so that the round trip runs beside the writer's
    commit and sync instead of before them."""
    sandbox.mirror_add(ALICE, AUDIT)
    session = sandbox.lmtp()
    try:
        ok(session.send([ALICE], make_message(subject="first")))
        lines = traced_lines(
            lmtp_pids(sandbox, 0),
            lambda: ok(session.send([ALICE], make_message(subject="x"))),
            lambda lines: any('"250 2.0' in l for l in lines),
            "read,write,writev", size=64)
    finally:
        session.close()
    calls = []
    for line in lines:
        m = re.match(r'(?:\d+ +)?(\w+)\((\d+), (?:\[\{iov_base=)?"([^"]*)',
                     line)
        if m is not None:
            calls.append((m.group(1), int(m.group(2)), m.group(3)))
    lookup = [i for i, (_, _, text) in enumerate(calls)
              if text.startswith("Lshared/mirror/storage/" + ALICE)]
    assert len(lookup) == 1, calls
    fd = calls[lookup[0]][1]
    answer = [i for i, (call, cfd, _) in enumerate(calls)
              if call == "read" and cfd == fd and i > lookup[0]]
    commit = [i for i, (call, _, text) in enumerate(calls)
              if call.startswith("write") and text.startswith("COMMIT")]
    assert answer and len(commit) == 1, calls
    assert lookup[0] < commit[0] < answer[0], calls
    assert subjects(sandbox, AUDIT) == ["first", "x"]


@pytest.mark.parametrize("fsync", ["yes", "no"])
def test_a_new_storages_expire_index_is_set_before_the_answer(
        make_sandbox, fsync):
    """mirror-writer answers (DONE) without going back to its ioloop, with
    mirror_fsync = no even without a sync in between: the first copy into
    a storage it opened waits for the answer to whether the user is a
    storage, and its save date is in the expire index before DONE (only
    a delivery, whose user Dovecot deinitializes before answering it,
    reads that answer later)."""
    audit2 = "audit2@example.com"
    sb = make_sandbox(users=[ALICE, AUDIT, audit2],
                      settings={"mirror_fsync": fsync})
    sb.mirror_add(ALICE, AUDIT)
    ok(sb.deliver([ALICE], make_message(subject="first")))
    sb.mirror_add(ALICE, audit2)
    lines = traced_lines(
        writer_pids(sb)[:1],
        lambda: ok(sb.deliver([ALICE], make_message(subject="second"))),
        lambda lines: any('"DONE' in l for l in lines),
        "write,writev", size=80)
    expire = [i for i, l in enumerate(lines)
              if "shared/mirror/expire/" + audit2 in l]
    done = [i for i, l in enumerate(lines) if '"DONE' in l]
    assert expire and len(done) == 1, lines
    assert expire[-1] < done[0], lines
    assert subjects(sb, audit2) == ["second"]


def test_a_delivery_the_writer_cant_sync_syncs_as_usual(other_fs):
    """The recipient's mail is on a filesystem that no storage of the
    writer is on: the writer says so in its DONE, and LMTP's deliveries
    there go on syncing as Dovecot does, before the writer syncs the
    copy."""
    sb, other = other_fs
    sb.add_user("bob@example.com:%s:mail=maildir:%s/bob"
                % (PASSWORD, other), password=None)
    sb.mirror_add("bob@example.com", AUDIT)
    calls = delivery_syscalls(sb, ["bob@example.com"],
                              make_message(subject="synced"),
                              first=make_message(subject="first"))
    assert calls[:2] == ["fsync", "fdatasync"] and \
        calls[-3:] == ["syncfs", "DONE", "250"] and \
        set(calls[2:-3]) <= {"fdatasync"}, calls
    assert len(os.listdir(os.path.join(other, "bob", "new"))) == 2
    assert subjects(sb, AUDIT) == ["first", "synced"]


def test_a_delivery_whose_copy_failed_syncs_itself(sandbox):
    """The delivery left its syncs to the writer, whose copy then failed
    (the storage user is gone): the writer syncs nothing and says so, and
    LMTP syncs the delivery's filesystem itself before the 250."""
    sandbox.mirror_add(ALICE, AUDIT)
    session = sandbox.lmtp()
    try:
        ok(session.send([ALICE], make_message(subject="first")))
        sandbox.remove_user(AUDIT)
        # the writer asks the userdb again a second later
        time.sleep(1.1)
        calls = traced_syscalls(
            lmtp_pids(sandbox, 0),
            lambda: ok(session.send([ALICE],
                                    make_message(subject="kept"))),
            lambda calls: "250" in calls)
    finally:
        session.close()
    # LMTP's own (the writer's DONE isn't traced here)
    assert calls == ["syncfs", "250"], calls
    sandbox.wait_log("doesn't exist")
    assert sandbox.maildir_count(ALICE) == 2


def test_sieve_saves_of_a_mirrored_delivery_are_synced(make_sandbox):
    """Sieve saves the message into two mailboxes: both are written
    before the writer's sync, and the second commit, after it, syncs its
    directory as Dovecot does."""
    sb = make_sandbox(users=[ALICE, AUDIT], sieve_before=(
        'require ["fileinto", "mailbox"];\nfileinto :create "Archive";\nkeep;\n'))
    sb.mirror_add(ALICE, AUDIT)
    calls = delivery_syscalls(sb, [ALICE], make_message(subject="synced"),
                              first=make_message(subject="first"))
    # Archive's commit (the first) wrote both files unsynced; INBOX's
    # commit syncs its directories once the writer has synced
    assert calls[:2] == ["syncfs", "DONE"] and calls[-1] == "250" and \
        set(calls[2:-1]) == {"fdatasync"}, calls
    assert sb.maildir_count(ALICE) == 2
    assert sb.maildir_count(ALICE, ".Archive") == 2
    assert subjects(sb, AUDIT) == ["first", "synced"]


def test_a_removed_storage_user_gets_no_copies_a_second_later(sandbox):
    # the writer keeps the storage open, and asks the userdb again for a
    # batch at most once a second
    m = sandbox.mirror_add(ALICE, AUDIT)
    ok(sandbox.deliver([ALICE], make_message(subject="kept")))
    assert sandbox.maildir_count(AUDIT) == 1
    sandbox.remove_user(AUDIT)
    time.sleep(1.1)
    ok(sandbox.deliver([ALICE], make_message(subject="not copied")))
    sandbox.wait_log("Mirror %s: copy to %s failed" % (m["id"], AUDIT))
    assert sandbox.maildir_count(AUDIT) == 1
    assert sandbox.maildir_count(ALICE) == 2


LOCATIONS = {"maildir": None, "sdbox": "sdbox:~/sdbox",
             "mdbox": "mdbox:~/mdbox"}


def storage_sandbox(make_sandbox, faults, fmt):
    """alice, and a storage AUDIT in the mail format fmt mirroring her"""
    sb = make_sandbox(users=[ALICE], config=faults.config)
    if LOCATIONS[fmt] is None:
        sb.add_user(AUDIT)
    else:
        sb.add_user("%s:%s:mail=%s" % (AUDIT, PASSWORD, LOCATIONS[fmt]),
                    password=None)
    m = sb.mirror_add(ALICE, AUDIT)
    ok(sb.deliver([ALICE], make_message(subject="first")))
    return sb, m


def deliver_failing(sb, subject):
    """A delivery to alice whose own commit fails (her maildir new/ can't
    be written): 451, and nothing kept."""
    new = os.path.join(sb.dir, "mail", "example.com", "alice", "Maildir",
                       "new")
    mode = os.stat(new).st_mode
    os.chmod(new, 0o555)
    try:
        rcpt, data = sb.deliver([ALICE], make_message(subject=subject))
        assert [c for c, _ in data] == [451], data
    finally:
        os.chmod(new, mode)


@pytest.mark.parametrize("writer", ["yes", "no"])
@pytest.mark.parametrize("fmt", sorted(LOCATIONS))
def test_copies_from_before_a_storage_was_opened_are_not_recent(
        make_sandbox, fmt, writer):
    """A storage's commit syncs its index, and a dbox sync marks every
    message from the index's first \\Recent one on as recent again, one
    by one. Nobody opens a storage over IMAP for weeks: so each commit
    stepped through every copy the storage ever received (twice the
    writer's CPU per copy at 65,536 messages). Opening a storage now
    drops the flags of the copies before it: with the writer, whose
    storage stays open, the copies since it was opened are recent until
    it is opened again (by a new writer here); without it, each LMTP
    connection opens the storage, and only its own copy is recent."""
    sb = make_sandbox(users=[ALICE], settings={"mirror_writer": writer})
    if LOCATIONS[fmt] is None:
        sb.add_user(AUDIT)
    else:
        sb.add_user("%s:%s:mail=%s" % (AUDIT, PASSWORD, LOCATIONS[fmt]),
                    password=None)
    sb.mirror_add(ALICE, AUDIT)

    def status():
        r = sb.doveadm("mailbox", "status", "-u", AUDIT, "messages recent",
                       "INBOX")
        return r.stdout.split()

    for i in range(3):
        ok(sb.deliver([ALICE], make_message(subject="copy %d" % i)))
    assert status() == ["INBOX", "messages=3", "recent=%d"
                        % (3 if writer == "yes" else 1)]
    if writer == "yes":
        (pid,) = writer_pids(sb)
        os.kill(pid, signal.SIGTERM)
        eventually(lambda: [p for p in writer_pids(sb) if p != pid] != [],
                   True)
    ok(sb.deliver([ALICE], make_message(subject="copy 3")))
    assert status() == ["INBOX", "messages=4", "recent=1"]
    assert subjects(sb, AUDIT) == ["copy 0", "copy 1", "copy 2", "copy 3"]


@needs_fault_points
@pytest.mark.parametrize("fmt,early", [("maildir", True), ("mdbox", False)])
def test_copies_are_saved_while_the_delivery_commits_where_that_is_safe(
        make_sandbox, faults, fmt, early):
    """With mirror_failure = accept, LMTP hands the copies over (PREPARE)
    when the recipient's delivery is about to commit, and the writer saves
    them meanwhile into a maildir or sdbox storage, where a save that is
    never committed leaves nothing behind; into mdbox only once the
    delivery kept the message. The writer's first save kills it here: for
    a delivery whose commit fails, that is during the commit in a maildir
    storage (and nothing is copied), never in an mdbox one."""
    sb, m = storage_sandbox(make_sandbox, faults, fmt)
    faults.arm("mirror-copy-saved")
    deliver_failing(sb, "failed")
    if early:
        # LMTP doesn't wait for the save: its 451 may come first
        eventually(lambda: faults.fired, True)
    else:
        time.sleep(1)
        assert not faults.fired, "saved into mdbox before the decision"
    ok(sb.deliver([ALICE], make_message(subject="kept")))
    assert faults.fired
    sb.wait_log("Fault point mirror-copy-saved (1): killing this process")
    assert subjects(sb, ALICE) == ["first", "kept"]
    assert subjects(sb, AUDIT) == ["first", "kept"]
    code, row, err = verify(sb, m["id"])
    assert code == 0 and row["records"] == "2", (row, err)


@needs_fault_points
@pytest.mark.parametrize("fmt", sorted(LOCATIONS))
def test_a_writer_killed_before_the_decision_leaves_nothing_to_restore(
        make_sandbox, faults, fmt):
    """The writer is killed right after it took a delivery's copies
    (PREPARE: saved in a maildir or sdbox storage, not yet in mdbox), and
    the delivery's own commit fails. An index rebuild of the storage
    (doveadm force-resync, which mdbox also does by itself when it finds
    its map inconsistent) brings back no copy of that message: the MTA's
    retry makes the one copy."""
    sb, m = storage_sandbox(make_sandbox, faults, fmt)
    faults.arm("mirror-writer-prepared")
    deliver_failing(sb, "failed")
    eventually(lambda: faults.fired, True)
    sb.wait_log("Fault point mirror-writer-prepared (1): killing this "
                "process")
    sb.doveadm("force-resync", "-u", AUDIT, "INBOX")
    assert subjects(sb, AUDIT) == ["first"]
    ok(sb.deliver([ALICE], make_message(subject="failed")))
    sb.doveadm("force-resync", "-u", AUDIT, "INBOX")
    assert subjects(sb, ALICE) == ["failed", "first"]
    assert subjects(sb, AUDIT) == ["failed", "first"]
    code, row, err = verify(sb, m["id"])
    assert code == 0, (code, row, err)
    assert (row["records"], row["unrecorded"]) == ("2", "0"), row


@pytest.mark.parametrize("fmt", ["maildir", "mdbox"])
def test_a_delivery_stuck_in_its_commit_holds_up_no_other_copy(
        make_sandbox, fmt):
    """The copies of deliveries that are about to commit share a batch.
    One whose own commit hangs (another process holds the lock of bob's
    index log: Dovecot waits for it for minutes) must not hold up the
    others: alice's delivery, mirrored into the same storage, gets its
    copy and its 250 at once, and bob's copy is made once his commit is
    over. (bob's copy was saved already into the maildir storage, not
    yet into the mdbox one.)"""
    bob = "bob@example.com"
    sb = make_sandbox(users=[ALICE, bob])
    if LOCATIONS[fmt] is None:
        sb.add_user(AUDIT)
    else:
        sb.add_user("%s:%s:mail=%s" % (AUDIT, PASSWORD, LOCATIONS[fmt]),
                    password=None)
    m = sb.mirror_add("example.com", AUDIT)
    ok(sb.deliver([ALICE], make_message(subject="alice first")))
    ok(sb.deliver([bob], make_message(subject="bob first")))
    log = os.path.join(sb.dir, "mail", "example.com", "bob", "Maildir",
                       "dovecot.index.log")
    replies = []
    stuck = threading.Thread(target=lambda: replies.append(
        sb.deliver([bob], make_message(subject="bob stuck"))))
    with open(log, "r+b") as f:
        fcntl.lockf(f, fcntl.LOCK_EX)
        stuck.start()
        try:
            # bob's copy reaches the writer before his commit waits
            time.sleep(1)
            assert stuck.is_alive(), replies
            start = time.monotonic()
            ok(sb.deliver([ALICE], make_message(subject="alice prompt")))
            assert time.monotonic() - start < 5
            assert "alice prompt" in subjects(sb, AUDIT)
            assert "bob stuck" not in subjects(sb, AUDIT)
        finally:
            fcntl.lockf(f, fcntl.LOCK_UN)
            stuck.join(30)
    ok(replies[0])
    assert subjects(sb, AUDIT) == ["alice first", "alice prompt",
                                   "bob first", "bob stuck"]
    code, row, err = verify(sb, m["id"])
    assert code == 0 and row["records"] == "4", (row, err)


def mirror_copies(sb, mirror_id):
    """(doveadm mirror list's copies, the registry's raw counter)"""
    listed = {m["id"]: m for m in
              sb.doveadm("mirror", "list", json_output=True).json}
    return (listed[mirror_id]["copies"],
            sb.registry_get("mirror/status/%s/copies" % mirror_id))


def test_copies_not_counted_yet_survive_a_writer_kill(make_sandbox):
    """mirror-writer counts its copies once per
    mirror_writer_count_interval; until then they are in its journal,
    which doveadm adds to what it shows, and which the next writer counts
    after a kill -9 (the example configuration starts one at once). A
    graceful stop counts them at once."""
    sb = make_sandbox(users=[ALICE, AUDIT],
                      settings={"mirror_writer_count_interval": "1h"})
    m = sb.mirror_add(ALICE, AUDIT)
    for i in range(3):
        ok(sb.deliver([ALICE], make_message(subject="m%d" % i)))
    assert mirror_copies(sb, m["id"]) == ("3", "0")
    code, row, err = verify(sb, m["id"])
    assert code == 0 and row["counted"] == "3", (row, err)
    assert "below" not in err, err

    (pid,) = writer_pids(sb)
    os.kill(pid, signal.SIGKILL)
    sb.wait_log("service(mirror-writer): child %d killed with signal 9" % pid)
    # the master starts a writer again at once (process_min_avail = 1),
    # which counts what the last one left first
    sb.wait_log("Counting 3 copies that the writer before this one made")
    eventually(lambda: mirror_copies(sb, m["id"]), ("3", "3"))
    ok(sb.deliver([ALICE], make_message(subject="m3")))
    assert mirror_copies(sb, m["id"]) == ("4", "3")

    (pid,) = writer_pids(sb)
    os.kill(pid, signal.SIGTERM)
    eventually(lambda: mirror_copies(sb, m["id"]), ("4", "4"))
    code, row, err = verify(sb, m["id"])
    assert code == 0 and row["counted"] == "4", (row, err)
    assert subjects(sb, AUDIT) == ["m0", "m1", "m2", "m3"]


def test_verify_never_counts_a_count_in_flight_twice(make_sandbox):
    """While mirror-writer counts, a count is in its journal (being
    counted) and may be in the registry already: verify reads the journal
    before and after the registry until nothing is being counted, so its
    counter is never the same copies twice."""
    sb = make_sandbox(users=[ALICE, AUDIT],
                      settings={"mirror_writer_count_interval": "1h"})
    m = sb.mirror_add(ALICE, AUDIT)
    for i in range(3):
        ok(sb.deliver([ALICE], make_message(subject="m%d" % i)))
    journal = os.path.join(sb.dir, "run", "mirror-writer.counts")
    with open(journal) as f:
        lines = f.read().splitlines()
    line = "%010d\t%010d\t%010d\t%010d\t%010d"
    assert line % (int(m["id"]), 3, 0, 0, 0) in lines, lines
    (pid,) = writer_pids(sb)
    os.kill(pid, signal.SIGSTOP)
    try:
        # the writer's count, stopped between its registry transaction
        # and clearing the journal's "being counted" columns
        def write(copies, flushing):
            with open(journal, "w") as f:
                f.write(line % (int(m["id"]), copies, 0, flushing, 0) +
                        "\n")
        write(0, 3)
        sb.registry_set("mirror/status/%s/copies" % m["id"], "3")
        result = {}
        t = threading.Thread(target=lambda: result.update(
            zip(("code", "row", "err"), verify(sb, m["id"]))))
        t.start()
        time.sleep(0.5)
        assert t.is_alive()
        write(0, 0)
        t.join()
        assert result["code"] == 0, result
        assert result["row"]["counted"] == "3", result
    finally:
        os.kill(pid, signal.SIGCONT)


@needs_fault_points
def test_a_writer_killed_while_counting_never_counts_twice(make_sandbox,
                                                           faults):
    """Killed between marking its journal's copies as being counted and
    the registry transaction, the writer counted nothing: the next one
    doesn't count them again (they may have reached the registry), the
    counter is short, and verify --reconcile raises it."""
    sb = make_sandbox(users=[ALICE, AUDIT], config=faults.config,
                      settings={"mirror_writer_count_interval": "1s"})
    m = sb.mirror_add(ALICE, AUDIT)
    faults.arm("mirror-count-flushing")
    ok(sb.deliver([ALICE], make_message(subject="m0")))
    sb.wait_log("Fault point mirror-count-flushing (1): killing this "
                "process")
    sb.wait_log("1 copies were being counted when the writer before this "
                "one stopped")
    assert mirror_copies(sb, m["id"]) == ("0", "0")
    code, row, err = verify(sb, m["id"])
    assert code == 0 and row["counted"] == "0", (row, err)
    assert "doveadm mirror verify --reconcile %s raises it" % m["id"] \
        in err, err
    code, row, err = verify(sb, m["id"], "--reconcile")
    assert code == 0 and row["counted"] == "1", (row, err)
    assert mirror_copies(sb, m["id"]) == ("1", "1")
    # and it counts on
    ok(sb.deliver([ALICE], make_message(subject="m1")))
    eventually(lambda: mirror_copies(sb, m["id"]), ("2", "2"))


def test_a_count_interval_of_zero_counts_every_batch(make_sandbox):
    sb = make_sandbox(users=[ALICE, AUDIT],
                      settings={"mirror_writer_count_interval": "0"})
    m = sb.mirror_add(ALICE, AUDIT)
    ok(sb.deliver([ALICE]))
    assert mirror_copies(sb, m["id"]) == ("1", "1")


def test_lmtp_copies_itself_while_the_writer_is_gone(sandbox):
    m = sandbox.mirror_add(ALICE, AUDIT)
    s = sandbox.lmtp()
    try:
        ok(s.send([ALICE], make_message(subject="before")))
        pids = writer_pids(sandbox)
        assert len(pids) == 1, pids
        os.kill(pids[0], signal.SIGKILL)
        # the connection to the writer is broken: this copy is made by
        # LMTP, and so are the next ones of this LMTP connection
        ok(s.send([ALICE], make_message(subject="gone")))
        ok(s.send([ALICE], make_message(subject="still gone")))
    finally:
        s.close()
    sandbox.wait_log("copying in the LMTP process")
    # a new LMTP connection reaches the writer the master started again
    ok(sandbox.deliver([ALICE], make_message(subject="back")))
    assert subjects(sandbox, AUDIT) == ["back", "before", "gone",
                                        "still gone"]
    code, row, err = verify(sandbox, m["id"])
    assert code == 0, err
    assert (row["records"], row["unrecorded"], row["counted"]) == \
        ("4", "0", "4"), row
    batches, copies, _ = batch_stats(sandbox)
    assert copies == 2, (batches, copies)


def writer_session(sb):
    """A raw connection to mirror-writer's socket, after the handshake."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(os.path.join(sb.dir, "run", "mirror-writer"))
    s.sendall(b"VERSION\tmirror-writer\t2\t1\n")
    f = s.makefile("rb")
    assert f.readline() == b"VERSION\tmirror-writer\t2\t1\n"
    return s, f


def test_commit_says_whether_the_writer_synced_its_devices(sandbox):
    """COMMIT names the filesystems that the delivery wrote to without
    syncing them, and when it began: DONE says 1 if the writer synced
    them all after it (a storage is on each, whose descriptor the writer
    had opened before that time), 0 if not."""
    m = sandbox.mirror_add(ALICE, AUDIT)
    ok(sandbox.deliver([ALICE], make_message(subject="first")))
    here = os.stat(sandbox.dir).st_dev
    target = [AUDIT, m["id"], "0"]
    s, f = writer_session(sandbox)
    try:
        with tempfile.TemporaryFile() as msg:
            msg.write(make_message(subject="raw"))
            msg.flush()
            now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            for tag, since, devs, synced in [(1, now, [here], b"1"),
                                             (2, now, [here, 4242], b"0"),
                                             (3, now, [], b"0"),
                                             # before the writer opened
                                             # that filesystem
                                             (4, 0, [here], b"0")]:
                line = "\t".join(["SAVE", str(tag), "0", "1"] + target)
                socket.send_fds(s, [line.encode() + b"\n"], [msg.fileno()])
                s.sendall(("\t".join(["COMMIT", str(tag)] +
                                     ([str(since)] if devs else []) +
                                     [str(d) for d in devs]) +
                           "\n").encode())
                assert f.readline() == b"SAVED\t%d\t\n" % tag
                reply = f.readline().rstrip(b"\n").split(b"\t")
                assert reply[:4] == [b"DONE", b"%d" % tag, synced, b""], \
                    reply
    finally:
        s.close()
    assert len(subjects(sandbox, AUDIT)) == 5


def test_a_copy_that_joins_a_decided_batch_holds_it_up_no_longer(sandbox):
    """A delivery's COMMIT and another's PREPARE come at the same moment:
    the second joins the first's batch, whose deliveries had all decided,
    and never decides (its recipient's commit hangs). The first is
    answered all the same, within the batch's linger, not when the second
    LMTP process gives up."""
    m = sandbox.mirror_add(ALICE, AUDIT)
    ok(sandbox.deliver([ALICE], make_message(subject="first")))
    target = [AUDIT, m["id"], "0"]
    with tempfile.TemporaryFile() as msg:
        msg.write(make_message(subject="raw"))
        msg.flush()
        for tag in range(1, 6):
            s1, f1 = writer_session(sandbox)
            s2, f2 = writer_session(sandbox)
            try:
                socket.send_fds(s1, [("\t".join(
                    ["PREPARE", str(tag), "0", "1"] + target) +
                    "\n").encode()], [msg.fileno()])
                time.sleep(0.2)
                # one write each, as close together as can be
                s1.sendall(b"COMMIT\t%d\n" % tag)
                socket.send_fds(s2, [("\t".join(
                    ["PREPARE", "1", "0", "1"] + target) +
                    "\n").encode()], [msg.fileno()])
                s1.settimeout(3)
                reply = f1.readline().rstrip(b"\n").split(b"\t")
                assert reply[:2] == [b"DONE", b"%d" % tag], reply
            finally:
                s1.close()
                s2.close()
    # the second ones were never kept
    assert subjects(sandbox, AUDIT) == ["first"] + ["raw"] * 5
    code, row, err = verify(sandbox, m["id"])
    assert code == 0 and row["records"] == "6", (row, err)


def test_bad_requests_are_refused_and_change_nothing(sandbox):
    m = sandbox.mirror_add(ALICE, AUDIT)
    target = ["SAVE", "1", "0", "1", AUDIT, m["id"], "0"]
    with tempfile.TemporaryFile() as msg:
        msg.write(make_message(subject="sneaked in"))
        msg.flush()
        r, w = os.pipe()
        try:
            bad = [
                # no descriptor at all
                ("\t".join(target) + "\n", None),
                # a pipe, which can't be read twice
                ("\t".join(target) + "\n", r),
                # a mirror id that is no number
                ("\t".join(target[:5] + ["x"] + target[6:]) + "\n",
                 msg.fileno()),
                # more targets than the line has
                ("\t".join(target[:3] + ["2"] + target[4:]) + "\n",
                 msg.fileno()),
                # a decision for a delivery it never saw
                ("COMMIT\t7\n", None),
            ]
            for line, fd in bad:
                s, f = writer_session(sandbox)
                try:
                    if fd is None:
                        s.sendall(line.encode())
                    else:
                        socket.send_fds(s, [line.encode()], [fd])
                    # refused: the writer closes the connection
                    assert f.readline() == b"", line
                finally:
                    s.close()
        finally:
            os.close(r)
            os.close(w)
    # the log process writes the lines a little later
    for text in ("SAVE without the message's fd",
                 "not a regular file", "Invalid SAVE target",
                 "COMMIT for an unknown delivery"):
        sandbox.wait_log(text)
    # a COMMIT's devices are numbers, and an ABORT has none
    for decision, error in [("COMMIT\t1\t5", "Invalid COMMIT devices"),
                            ("COMMIT\t1\t5\tx", "Invalid COMMIT devices"),
                            ("ABORT\t1\t5\t6", "ABORT with devices")]:
        s, f = writer_session(sandbox)
        try:
            with tempfile.TemporaryFile() as msg:
                msg.write(make_message(subject="sneaked in"))
                msg.flush()
                socket.send_fds(s, [("\t".join(target) + "\n").encode()],
                                [msg.fileno()])
            assert f.readline() == b"SAVED\t1\t\n"
            s.sendall(decision.encode() + b"\n")
            assert f.readline() == b"", decision
        finally:
            s.close()
        sandbox.wait_log(error)
    # nothing was copied, and the writer still serves LMTP
    ok(sandbox.deliver([ALICE], make_message(subject="after")))
    assert subjects(sandbox, AUDIT) == ["after"]
    code, row, err = verify(sandbox, m["id"])
    assert code == 0 and row["records"] == "1", (row, err)
