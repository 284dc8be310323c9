"""doveadm mirror add|list|remove against a running sandbox."""

import os
import time

import pytest

from conftest import SANDBOX_USERS, STORE

ALICE, AUDIT = "alice@example.com", "audit@example.com"
BOB = "bob@example.com"


def registry(sb):
    """The whole registry but its write lock (which every command that may
    change the registry takes and gives back): the embedded file's keys
    and values, or (another MIRROR_TEST_STORE) what `mirror list` and
    `account list` show of it."""
    if STORE != "embedded":
        return (sb.doveadm("mirror", "list", json_output=True).stdout,
                sb.doveadm("mirror", "account", "list",
                           json_output=True).stdout)
    path = os.path.join(sb.dir, "state", "mirror", "registry.dict")
    if not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    return sorted((lines[i], lines[i + 1])
                  for i in range(0, len(lines) - 1, 2)
                  if not lines[i].startswith(b"shared/mirror/lock/"))


def test_add_list_remove_with_json_output(sandbox):
    before = int(time.time())
    single = sandbox.mirror_add("Alice@Example.COM", AUDIT)
    assert single == {"id": single["id"], "type": "single",
                      "source": ALICE, "storage": AUDIT, "days": "30",
                      "readonly": "no", "password": ""}
    domain = sandbox.mirror_add("example.com", AUDIT, days=3650)
    assert domain["type"] == "all" and domain["days"] == "3650"
    assert int(domain["id"]) > int(single["id"])
    # several mirrors may share a source, and a storage several mirrors
    extra = sandbox.mirror_add(ALICE, "audit2@example.com", days=1)

    listed = sandbox.doveadm("mirror", "list", json_output=True).json
    assert [m["id"] for m in listed] == [single["id"], domain["id"], extra["id"]]
    for m in listed:
        created = time.strptime(m["created"], "%Y-%m-%dT%H:%M:%SZ")
        assert abs(time.mktime(created) - time.timezone - before) < 60
    only = sandbox.doveadm("mirror", "list", "example.com", json_output=True).json
    assert [m["id"] for m in only] == [domain["id"]]
    assert len(sandbox.doveadm("mirror", "list", ALICE, json_output=True).json) == 2

    removed = sandbox.doveadm("mirror", "remove", single["id"],
                              json_output=True).json
    assert removed[0]["source"] == ALICE and removed[0]["id"] == single["id"]
    listed = sandbox.doveadm("mirror", "list", json_output=True).json
    assert [m["id"] for m in listed] == [domain["id"], extra["id"]]

    # table output for people
    table = sandbox.doveadm("mirror", "list").stdout
    assert table.split("\n")[0].split() == \
        ["id", "type", "source", "storage", "days", "readonly", "created",
         "copies", "failures", "last_failure", "last_failure_reason",
         "hold", "hold_reason"]


BAD_ADD = [
    (["-s", AUDIT, "alice@@example.com"], 64, "Invalid source"),
    (["-s", AUDIT, "al ice@example.com"], 64, "Invalid source address"),
    (["-s", AUDIT, "alice@example"], 64, "at least two labels"),
    (["-s", AUDIT, "exa_mple.com"], 64, "Invalid source domain"),
    (["-s", AUDIT, "--", "-example.com"], 64, "Invalid source domain"),
    (["-s", AUDIT, ""], 64, "Invalid source"),
    (["-d", "0", "-s", AUDIT, ALICE], 64, "out of range 1..3650"),
    (["-d", "3651", "-s", AUDIT, ALICE], 64, "out of range 1..3650"),
    (["-d", "ten", "-s", AUDIT, ALICE], 64, "not a number"),
    (["-d", "-5", "-s", AUDIT, ALICE], 64, "not a number"),
    (["-s", "nosuchuser@example.com", ALICE], 67, "Unknown storage user"),
    (["-s", "bad user", ALICE], 64, "Invalid storage user"),
    (["-s", ALICE, "ALICE@example.com"], 64, "mirrored address itself"),
    # delivery strips the detail: mail never comes for it
    (["-s", AUDIT, "alice+tag@example.com"], 64,
     "alice+tag@example.com has a recipient detail, which delivery strips "
     "(recipient_delimiter): no mail would ever be copied; mirror "
     "alice@example.com instead"),
    (["alice+tag@example.com"], 64, "has a recipient detail"),
    ([], 64, "Usage"),
]


@pytest.mark.nosan
@pytest.mark.parametrize("args,code,message", BAD_ADD)
def test_bad_add_fails_clearly_and_changes_nothing(shared_sandbox, args, code,
                                                   message):
    sandbox = shared_sandbox(
        users=SANDBOX_USERS,
        setup=lambda sb: sb.mirror_add("example.com", AUDIT))
    before = registry(sandbox)
    r = sandbox.doveadm("mirror", "add", *args, check=False)
    assert r.returncode == code, r.stderr
    errors = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(errors) == 1 and message in errors[0], r.stderr
    assert r.stdout == ""
    assert registry(sandbox) == before


def test_another_mirrors_storage_is_shared_only_when_asked(sandbox):
    """An auto-created storage's password reads every copy in it: copying
    another mirror into it needs -S."""
    m = sandbox.mirror_add(ALICE)
    before = registry(sandbox)
    r = sandbox.doveadm("mirror", "add", "-s", m["storage"], BOB,
                        check=False)
    assert r.returncode == 64
    assert r.stderr.strip() == (
        "Error: %s is the storage user mirror %s created: its password "
        "would read this mirror's copies too; add -S to share it anyway"
        % (m["storage"], m["id"]))
    assert registry(sandbox) == before
    shared = sandbox.doveadm("mirror", "add", "-S", "-s", m["storage"], BOB,
                             json_output=True).json[0]
    assert shared["storage"] == m["storage"]


def test_duplicate_mirror_is_refused(sandbox):
    m = sandbox.mirror_add(ALICE, AUDIT)
    before = registry(sandbox)
    r = sandbox.doveadm("mirror", "add", "-s", AUDIT, "ALICE@example.com",
                        check=False)
    assert r.returncode != 0
    assert "Mirror %s already copies %s to %s" % (m["id"], ALICE, AUDIT) \
        in r.stderr
    assert registry(sandbox) == before


@pytest.mark.nosan
@pytest.mark.parametrize("arg", ["999", "0", "abc", "-1", "1.5"])
def test_remove_unknown_or_invalid_id(shared_sandbox, arg):
    sandbox = shared_sandbox(users=SANDBOX_USERS,
                             setup=lambda sb: sb.mirror_add(ALICE, AUDIT))
    before = registry(sandbox)
    r = sandbox.doveadm("mirror", "remove", "--", arg, check=False)
    assert r.returncode != 0
    assert "Unknown mirror id" in r.stderr or "Invalid mirror id" in r.stderr
    assert registry(sandbox) == before


@pytest.mark.nosan
def test_exit_codes_follow_doveadm_conventions(sandbox):
    codes = {
        "usage": sandbox.doveadm("mirror", "add", "-s", AUDIT, "x",
                                 check=False).returncode,
        "nouser": sandbox.doveadm("mirror", "add", "-s", "nobody@example.com",
                                  ALICE, check=False).returncode,
        "notfound": sandbox.doveadm("mirror", "remove", "42",
                                    check=False).returncode,
    }
    assert codes == {"usage": 64, "nouser": 67, "notfound": 68}


@pytest.mark.nosan
def test_list_filter_validates_source(sandbox):
    r = sandbox.doveadm("mirror", "list", "not a source", check=False)
    assert r.returncode == 64 and "Invalid source" in r.stderr


def test_module_leaves_doveadm_pw_working(sandbox):
    """The module is loaded into every doveadm process, `doveadm pw` too,
    whose {ARGON2ID} schemes need the process's first sodium_init(): the
    module initializes libsodium only when it makes a password."""
    r = sandbox.doveadm("pw", "-s", "ARGON2ID", "-p", "secret")
    assert r.stdout.startswith("{ARGON2ID}$argon2id$")
    # and a password made afterwards, in another process, still works
    row = sandbox.mirror_add(ALICE)
    assert row["password"]
