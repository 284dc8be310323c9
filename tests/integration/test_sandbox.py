"""scripts/sandbox itself: as root and as an ordinary user."""

import json
import os
import pwd
import shutil
import subprocess
import tempfile

import pytest

from conftest import (PASSWORD, SANDBOX, TOP, LMTPSession, Sandbox,
                      make_message)

# scripts/sandbox itself runs no C code of the suite's own
pytestmark = pytest.mark.nosan


def module_dirs():
    """The installed suite, as scripts/sandbox finds it."""
    env = {}
    with open(os.path.join(TOP, "scripts", "sandbox.env")) as f:
        for line in f:
            if "=" in line and not line.startswith("#"):
                k, v = line.strip().split("=", 1)
                env[k] = v
    return (os.environ.get("MIRROR_MODULEDIR", env["MIRROR_MODULEDIR"]),
            os.environ.get("MIRROR_DOVEADM_MODULEDIR",
                           env["MIRROR_DOVEADM_MODULEDIR"]),
            os.environ.get("MIRROR_LIBEXECDIR", env["MIRROR_LIBEXECDIR"]))


def test_start_prints_endpoints_and_stop_leaves_the_directory(make_sandbox):
    sb = make_sandbox(users=["alice@example.com"])
    info = sb.info
    assert set(info) >= {"conf", "lmtp", "imap", "pop3", "log"}
    assert info["lmtp"]["host"] == "127.0.0.1"
    assert os.path.exists(info["conf"]) and os.path.exists(info["log"])
    r = subprocess.run(["doveadm", "-c", info["conf"], "user",
                        "alice@example.com"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    subprocess.run([SANDBOX, "stop", sb.dir], check=True)
    assert os.path.exists(info["conf"]) and os.path.exists(info["log"])
    # stopped: nothing answers any more
    with pytest.raises(OSError):
        LMTPSession(info["lmtp"]["host"], info["lmtp"]["port"])


def test_sandbox_as_an_ordinary_user(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the whole suite already runs as an ordinary user")
    if shutil.which("runuser") is None:
        pytest.skip("runuser is not installed")
    user = pwd.getpwnam("nobody")
    # a copy of what the user needs, readable by it
    base = tempfile.mkdtemp(prefix="mirror-user-")
    os.chmod(base, 0o755)
    for sub in ("scripts", "doc"):
        shutil.copytree(os.path.join(TOP, sub), os.path.join(base, sub))
    moddir, admdir, libexecdir = module_dirs()
    shutil.copytree(moddir, os.path.join(base, "modules"), symlinks=False)
    os.mkdir(os.path.join(base, "libexec"))
    for service in ("mirror-expire", "bag", "mirror-registry",
                    "mirror-writer"):
        shutil.copy2(os.path.join(libexecdir, service),
                     os.path.join(base, "libexec"))
    if not os.path.isdir(os.path.join(base, "modules", "doveadm")):
        shutil.copytree(admdir, os.path.join(base, "modules", "doveadm"))
    d = os.path.join(base, "sandbox")
    os.mkdir(d)
    for root, dirs, files in os.walk(base):
        os.chown(root, user.pw_uid, user.pw_gid)
        for name in files:
            os.chown(os.path.join(root, name), user.pw_uid, user.pw_gid)
    env = dict(os.environ,
               MIRROR_MODULEDIR=os.path.join(base, "modules"),
               MIRROR_DOVEADM_MODULEDIR=os.path.join(base, "modules", "doveadm"),
               MIRROR_LIBEXECDIR=os.path.join(base, "libexec"))
    sandbox = os.path.join(base, "scripts", "sandbox")
    # a sanitizer runtime is for the user's doveadm, never for runuser
    sanitizer = []

    def as_user(*cmd, doveadm=False):
        if doveadm:
            cmd = ("env", *sanitizer, *sb.info["doveadm"]) + cmd
        return subprocess.run(["runuser", "-u", "nobody", "--"] + list(cmd),
                              capture_output=True, text=True, env=env)

    r = as_user(sandbox, "start", d, "--user", "alice@example.com:secret",
                "--user", "audit@example.com:secret")
    try:
        assert r.returncode == 0, r.stderr
        sb = Sandbox(d, json.loads(r.stdout))
        sanitizer += ["%s=%s" % kv for kv in sb.info["env"].items()]
        pid = int(open(os.path.join(d, "run", "master.pid")).read())
        assert os.stat("/proc/%d" % pid).st_uid == user.pw_uid
        r = as_user("mirror", "add", "-s", "audit@example.com",
                    "alice@example.com", doveadm=True)
        assert r.returncode == 0, r.stderr
        rcpt, data = sb.deliver(["alice@example.com"], make_message())
        assert data[0][0] == 250, data
        assert len(sb.imap_messages("audit@example.com")) == 1
    finally:
        as_user(sandbox, "stop", d)
    log = open(os.path.join(d, "dovecot.log")).read()
    assert "Panic:" not in log and "Fatal:" not in log
    shutil.rmtree(base, ignore_errors=True)


def doveconf(sb, name):
    r = subprocess.run(["doveconf", "-c", sb.conf, "-h", name],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_operator_config_is_included_and_kept(make_sandbox):
    """start --config FILE: the operator's own settings (here a metric and
    a changed limit) reach the instance, and survive a restart."""
    sb = make_sandbox(config="mail_max_userip_connections = 7\n"
                             "metric sandbox_test_logins {\n"
                             "  filter = event=imap_command_finished\n"
                             "}\n")
    assert doveconf(sb, "mail_max_userip_connections") == "7"
    assert "sandbox_test_logins" in doveconf(sb, "metric")
    subprocess.run([SANDBOX, "stop", sb.dir], check=True)
    r = subprocess.run([SANDBOX, "start", sb.dir], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    sb = Sandbox(sb.dir, json.loads(r.stdout))
    assert doveconf(sb, "mail_max_userip_connections") == "7"
    # a broken file is refused with Dovecot's own error
    bad = os.path.join(sb.dir, "bad.conf")
    with open(bad, "w") as f:
        f.write("no_such_setting = 1\n")
    subprocess.run([SANDBOX, "stop", sb.dir], check=True)
    r = subprocess.run([SANDBOX, "start", sb.dir, "--config", bad],
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert "Unknown setting: no_such_setting" in r.stderr, r.stderr


def test_as_installed_leaves_out_the_tests_debug_log_and_metrics(
        make_sandbox):
    """start --as-installed (scripts/bench): no debug line for every copy
    and none of the example file's metrics, as on an administrator's
    server; mirroring works as ever."""
    users = ["alice@example.com", "audit@example.com"]
    for as_installed in (False, True):
        sb = make_sandbox(users=users, as_installed=as_installed)
        assert doveconf(sb, "log_debug") == \
            ("" if as_installed else "event=mirror_copy_finished")
        assert ("mirror_copies" in doveconf(sb, "metric")) != as_installed
        m = sb.mirror_add("alice@example.com", "audit@example.com")
        _, data = sb.deliver(["alice@example.com"])
        assert [code for code, _ in data] == [250], data
        assert len(sb.imap_messages("audit@example.com")) == 1
        line = "Mirror %s: copied" % m["id"]
        if as_installed:
            assert line not in sb.log()
        else:
            sb.wait_log(line)


def test_user_add_returns_when_the_user_can_log_in(make_sandbox):
    sb = make_sandbox()
    for i in range(3):
        user = "new%d@example.com" % i
        subprocess.run([SANDBOX, "user-add", sb.dir,
                        "%s:%s" % (user, PASSWORD)], check=True)
        # at once, with no wait
        assert sb.imap_messages(user) == []
