"""Auto-created mirror storage users, their one-time passwords, purge,
service levels and the copy counters of `mirror list`, on a sandbox with
real LMTP, IMAP and POP3 clients."""

import imaplib
import os
import poplib
import re
import stat

import pytest

from conftest import make_message

ALICE, BOB = "alice@example.com", "bob@example.com"


def login_ok(sb, user, password):
    imap = imaplib.IMAP4(sb.info["imap"]["host"], sb.info["imap"]["port"])
    try:
        imap.login(user, password)
    except imaplib.IMAP4.error:
        return False
    finally:
        try:
            imap.logout()
        except Exception:
            pass
    return True


def files_containing(directory, needle):
    found = []
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            # only regular files: base_dir holds sockets and FIFOs
            if not stat.S_ISREG(os.lstat(path).st_mode):
                continue
            try:
                with open(path, "rb") as f:
                    if needle.encode() in f.read():
                        found.append(path)
            except OSError:
                pass
    return found


def test_auto_created_storage_names(sandbox):
    domain = sandbox.mirror_add("example.com")
    assert domain["storage"] == "_mirror@example.com"
    single = sandbox.mirror_add("Alice@Example.com")
    assert single["storage"] == "_mirror_alice@example.com"
    # taken by an earlier mirror: numbered
    again = sandbox.mirror_add("example.com")
    assert again["storage"] == "_mirror-2@example.com"
    # taken by any existing user (not the suite's): numbered, never reused
    sandbox.add_user("_mirror@other.test")
    other = sandbox.mirror_add("other.test")
    assert other["storage"] == "_mirror-2@other.test"
    assert len({m["password"] for m in (domain, single, again, other)}) == 4
    # unusual characters of the local part become '-'
    odd = sandbox.mirror_add("b'o{b@example.com")
    assert odd["storage"] == "_mirror_b-o-b@example.com"
    # the existing user's password is untouched
    assert login_ok(sandbox, "_mirror@other.test", "secret")


def test_password_is_strong_works_and_is_not_on_disk(sandbox):
    m = sandbox.mirror_add(ALICE)
    password, storage = m["password"], m["storage"]
    # 144 random bits in URL-safe base64: printable, safe to paste
    assert re.fullmatch(r"[A-Za-z0-9_-]{24}", password)
    sandbox.deliver([ALICE], make_message(subject="copied"))
    # the new user logs in at once, without a reload, over IMAP and POP3
    msgs = sandbox.imap_messages(storage, password=password)
    assert len(msgs) == 1 and b"Subject: copied" in msgs[0]
    assert len(sandbox.pop3_messages(storage, password=password)) == 1
    # one character changed (a password that ends in "x" stays one else)
    wrong = password[:-1] + ("y" if password.endswith("x") else "x")
    assert not login_ok(sandbox, storage, wrong)
    # on disk only the hash, in Dovecot's {ARGON2ID} form
    assert files_containing(sandbox.dir, password) == []
    assert sandbox.registry_get("mirror/user/" + storage).startswith(
        '{"password":"{ARGON2ID}$argon2id$')
    # listing never shows it again
    listed = sandbox.doveadm("mirror", "list", json_output=True).json
    assert "password" not in listed[0]


def test_existing_mailbox_gets_no_password_and_a_warning(sandbox):
    r = sandbox.doveadm("-f", "json", "mirror", "add", "-d", "7", "-s",
                        "audit@example.com", ALICE)
    assert '"password":""' in r.stdout.replace(" ", "")
    assert "older than 7 days will be deleted" in r.stderr
    r = sandbox.doveadm("mirror", "password", "1", check=False)
    assert r.returncode == 65 and "existing mailbox" in r.stderr


def test_password_rotation(sandbox):
    m = sandbox.mirror_add("example.com")
    old = m["password"]
    assert login_ok(sandbox, m["storage"], old)
    r = sandbox.doveadm("mirror", "password", m["id"], json_output=True)
    new = r.json[0]["password"]
    assert r.json[0]["storage"] == m["storage"] and new != old
    assert login_ok(sandbox, m["storage"], new)
    assert not login_ok(sandbox, m["storage"], old)
    assert files_containing(sandbox.dir, new) == []
    r = sandbox.doveadm("mirror", "password", "99", check=False)
    assert r.returncode == 68


def test_remove_keeps_storage_unless_purged(sandbox):
    kept = sandbox.mirror_add(ALICE)
    purged = sandbox.mirror_add(BOB)
    sandbox.deliver([ALICE, BOB])
    home = os.path.join(sandbox.dir, "mail", "example.com")
    assert sandbox.maildir_count(kept["storage"]) == 1
    assert sandbox.maildir_count(purged["storage"]) == 1

    r = sandbox.doveadm("mirror", "remove", kept["id"], json_output=True)
    assert r.json[0]["purged"] == "no"
    # the mirror is gone, its storage and mail stay and can be read
    sandbox.deliver([ALICE])
    assert len(sandbox.imap_messages(kept["storage"],
                                     password=kept["password"])) == 1

    r = sandbox.doveadm("mirror", "remove", "-p", purged["id"],
                        json_output=True)
    assert r.json[0]["purged"] == "yes"
    assert not os.path.exists(os.path.join(home, "_mirror_bob"))
    assert not login_ok(sandbox, purged["storage"], purged["password"])
    r = sandbox.doveadm("user", purged["storage"], check=False)
    assert r.returncode == 67
    # the original recipients keep their mail
    assert sandbox.maildir_count(ALICE) == 2
    assert sandbox.maildir_count(BOB) == 1


def test_purge_never_deletes_a_chosen_mailbox(sandbox):
    m = sandbox.mirror_add(ALICE, "audit@example.com")
    sandbox.deliver([ALICE])
    r = sandbox.doveadm("-f", "json", "mirror", "remove", "-p", m["id"])
    assert '"purged":"no"' in r.stdout.replace(" ", "")
    assert "left in place" in r.stderr
    assert sandbox.maildir_count("audit@example.com") == 1
    assert len(sandbox.imap_messages("audit@example.com")) == 1


def test_purge_refused_while_other_mirrors_use_the_storage(sandbox):
    m = sandbox.mirror_add(ALICE)
    sandbox.mirror_add(BOB, m["storage"], share=True)
    r = sandbox.doveadm("mirror", "remove", "-p", m["id"], check=False)
    assert r.returncode == 65 and "other mirrors" in r.stderr
    assert len(sandbox.doveadm("mirror", "list", json_output=True).json) == 2


LEVELS = {"mirror_levels": "free:0 basic:1 business:3 big:unlimited",
          "mirror_default_level": "free"}


@pytest.fixture
def leveled(make_sandbox):
    return make_sandbox(users=[ALICE, BOB, "carol@example.com",
                               "dave@other.test", "erin@third.test"],
                        settings=LEVELS)


def test_limits_per_service_level(leveled):
    sb = leveled
    # an unassigned domain is at the default level: free, no mirrors
    r = sb.doveadm("mirror", "add", ALICE, check=False)
    assert r.returncode == 77
    assert "Account example.com (level free) may have 0 mirrors" in r.stderr
    assert sb.doveadm("mirror", "list", json_output=True).json == []

    sb.doveadm("mirror", "account", "set", "acme", "basic")
    sb.doveadm("mirror", "account", "assign", "Example.COM", "acme")
    sb.doveadm("mirror", "account", "assign", "other.test", "acme")
    sb.mirror_add(ALICE)
    # the limit covers every domain of the account
    r = sb.doveadm("mirror", "add", "other.test", check=False)
    assert r.returncode == 77 and "acme (level basic) may have 1" in r.stderr
    accounts = sb.doveadm("mirror", "account", "list", json_output=True).json
    assert accounts == [{"account": "acme", "level": "basic", "used": "1",
                         "allowed": "1",
                         "domains": "example.com other.test"}]

    # a higher level allows more; removing frees a slot
    sb.doveadm("mirror", "account", "set", "acme", "business")
    sb.mirror_add("other.test")
    sb.mirror_add(BOB)
    r = sb.doveadm("mirror", "add", "carol@example.com", check=False)
    assert r.returncode == 77
    sb.doveadm("mirror", "remove", "2")
    sb.mirror_add("carol@example.com")

    # unassigning puts the domain back at the default level
    sb.doveadm("mirror", "account", "unassign", "other.test")
    r = sb.doveadm("mirror", "account", "list", json_output=True).json
    assert {a["account"]: (a["level"], a["used"], a["allowed"])
            for a in r} == {"acme": ("business", "3", "3")}
    sb.doveadm("mirror", "account", "set", "huge", "big")
    sb.doveadm("mirror", "account", "assign", "third.test", "huge")
    for _ in range(4):
        sb.mirror_add("third.test")
    r = sb.doveadm("mirror", "account", "list", "huge", json_output=True).json
    assert r == [{"account": "huge", "level": "big", "used": "4",
                  "allowed": "unlimited", "domains": "third.test"}]


@pytest.mark.nosan
def test_account_commands_reject_bad_input(leveled):
    sb = leveled
    r = sb.doveadm("mirror", "account", "set", "acme", "platinum",
                   check=False)
    assert r.returncode == 64 and "Unknown service level" in r.stderr
    r = sb.doveadm("mirror", "account", "set", "Bad Name", "basic",
                   check=False)
    assert r.returncode == 64 and "Invalid account name" in r.stderr
    r = sb.doveadm("mirror", "account", "assign", "example.com", "nobody",
                   check=False)
    assert r.returncode == 68 and "Unknown account" in r.stderr
    r = sb.doveadm("mirror", "account", "assign", "not a domain", "x",
                   check=False)
    assert r.returncode == 64


@pytest.mark.nosan
def test_bad_level_settings_are_config_errors(make_sandbox):
    sb = make_sandbox(users=[ALICE],
                      settings={"mirror_levels": "free:0 basic:one",
                                "mirror_default_level": "free"})
    r = sb.doveadm("mirror", "add", ALICE, check=False)
    assert r.returncode == 78 and "invalid limit for level basic" in r.stderr
    sb = make_sandbox(users=[ALICE],
                      settings={"mirror_levels": "free:0",
                                "mirror_default_level": "gold"})
    r = sb.doveadm("mirror", "add", ALICE, check=False)
    assert r.returncode == 78 and "mirror_default_level" in r.stderr


def test_list_shows_copies_and_failures(sandbox):
    ok = sandbox.mirror_add(ALICE, "audit@example.com")
    broken = sandbox.mirror_add(ALICE, "audit2@example.com")
    sandbox.deliver([ALICE])
    sandbox.deliver([ALICE])
    # the storage user disappears: copies fail, silently for the sender
    sandbox.remove_user("audit2@example.com")
    _, data = sandbox.deliver([ALICE])
    assert [code for code, _ in data] == [250]
    listed = {m["id"]: m for m in
              sandbox.doveadm("mirror", "list", json_output=True).json}
    assert listed[ok["id"]]["copies"] == "3"
    assert listed[ok["id"]]["failures"] == "0"
    assert listed[ok["id"]]["last_failure"] == ""
    assert listed[broken["id"]]["copies"] == "2"
    assert listed[broken["id"]]["failures"] == "1"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ",
                        listed[broken["id"]]["last_failure"])
    assert "audit2@example.com" in listed[broken["id"]]["last_failure_reason"]
