"""The registry keeps its word: what the mail uid may do in it, counters
that aren't numbers, a registry that is lost, damaged or foreign, and
administrators at work at the same time. Each test runs on the backend of
the pass (the file dict, then Redis: MIRROR_TEST_STORE)."""

import json
import os
import pwd
import re
import time

import pytest

from conftest import make_message
from dictproto import exchange, tabescape, tabunescape

ALICE, AUDIT = "alice@example.com", "audit@example.com"
BAGGED = "bagged.test"


def as_mail_uid():
    """The uid and gid the sandbox's mail processes run as (nobody when
    the tests run as root, else everything is the same user)."""
    if os.getuid() != 0:
        pytest.skip("as an ordinary user every process of the sandbox "
                    "is that user")
    pw = pwd.getpwnam("nobody")
    return pw.pw_uid, pw.pw_gid


def registry_socket(sb):
    return os.path.join(sb.dir, "run", "mirror-registry")


def test_the_mail_uid_reads_no_secret_and_changes_no_definition(make_sandbox):
    uid, gid = as_mail_uid()
    sb = make_sandbox(users=[ALICE, AUDIT])
    m = sb.mirror_add(ALICE)
    storage = m["storage"]
    sb.doveadm("bag", "add", "-a", "odmr@" + BAGGED, BAGGED)
    secret = "shared/mirror/user/" + storage
    identity = "shared/mirror/user/odmr@" + BAGGED
    source = "shared/mirror/source/" + ALICE
    copies = "shared/mirror/status/%s/copies" % m["id"]

    # root (doveadm, LMTP) and the service's own user (auth) read them
    replies = exchange(registry_socket(sb), ["L" + secret, "L" + identity])
    assert replies[0].startswith("O{") and "ARGON2ID" in replies[0]
    assert replies[1].startswith("O{") and "CRAM-MD5" in replies[1]

    # the mail uid reads the definitions, not the secrets
    replies = exchange(registry_socket(sb), [
        "L" + secret, "L" + identity, "L" + source,
        "I1\t0\tshared/mirror/", "I1\t0\tshared/mirror/user/",
    ], uid=uid, gid=gid)
    assert replies[0] == "FPermission denied: %s: the mail uid may not " \
        "read it" % secret, replies
    assert replies[1].startswith("FPermission denied: " + identity)
    assert replies[2].startswith('O[{"id":%s' % m["id"]), replies
    assert replies[3].startswith("FPermission denied: shared/mirror/:")
    assert replies[4].startswith("FPermission denied: ")
    sb.wait_log("): Warning: Denied access to %s (uid %d, pid "
                % (secret, uid))

    # it can't make a mirror of someone's mail into a storage it has,
    # nor move one, nor take a storage user's login
    replies = exchange(registry_socket(sb), [
        "B1", "S1\tshared/mirror/source/bob@example.com\t"
        '[{"id":9,"type":"single","source":"bob@example.com",'
        '"storage":"%s","days":30,"created":1}]' % storage,
        "S1\tshared/mirror/sources\t[\"bob@example.com\"]", "C1",
        "B2", "U2\t" + source, "C2",
        "B3", "S3\t%s\t{\"password\":\"{PLAIN}x\"}" % secret, "C3",
        "B4", "A4\tshared/mirror/next-id\t1", "C4",
    ], uid=uid, gid=gid)
    assert replies == [
        "F1\tPermission denied: shared/mirror/source/bob@example.com: "
        "the mail uid may not change it",
        "F2\tPermission denied: %s: the mail uid may not change it" % source,
        "F3\tPermission denied: %s: the mail uid may not change it" % secret,
        "F4\tPermission denied: shared/mirror/next-id: the mail uid may "
        "not change it",
    ], replies
    assert sb.registry_get("mirror/source/bob@example.com") is None
    assert sb.registry_get("mirror/user/" + storage) is not None
    assert [x["id"] for x in sb.doveadm("mirror", "list",
                                         json_output=True).json] == [m["id"]]

    # what mail processes keep up to date it may write
    replies = exchange(registry_socket(sb), [
        "B1", "A1\t%s\t1" % copies, "C1",
        "B2", "S2\tshared/bag/count/%s\t3" % BAGGED, "C2",
    ], uid=uid, gid=gid)
    assert replies == ["O1", "O2"], replies
    assert sb.registry_get(copies[len("shared/"):]) == "1"

    # and Dovecot's own dict socket doesn't serve the registry at all
    replies = exchange(os.path.join(sb.dir, "run", "dict"),
                       ["L" + secret], uid=uid, gid=gid)
    assert replies[0].startswith("!connect:"), replies


def test_a_broken_counter_stalls_and_crashes_nothing(make_sandbox):
    sb = make_sandbox(users=[ALICE, AUDIT], settings={"bag_enabled": "yes"})
    m = sb.mirror_add(ALICE, AUDIT)
    sb.doveadm("bag", "add", "-a", "odmr@" + BAGGED, BAGGED)
    copies = "mirror/status/%s/copies" % m["id"]
    count = "bag/count/" + BAGGED
    sb.registry_set(copies, "zz")
    sb.registry_set(count, "99999999999999999999")

    start = time.monotonic()
    rcpts, data = sb.deliver([ALICE, "x@" + BAGGED])
    took = time.monotonic() - start
    assert [c for c, _ in rcpts] == [250, 250], rcpts
    assert [c for c, _ in data] == [250, 250], data
    # Dovecot's dict client gives up on a crashed server after 30 s
    assert took < 10, took
    assert sb.maildir_count(AUDIT) == 1
    sb.wait_log("Broken registry data in shared/%s: 'zz' is not a counter"
                % copies)
    sb.wait_log("Broken registry data in shared/%s: '99999999999999999999' "
                "is not a counter" % count)
    # refused, not changed: check --repair resets them
    assert sb.registry_get(copies) == "zz"
    assert sb.registry_get(count) == "99999999999999999999"
    # and reading them says so (the sandbox fixture fails the test on a
    # panic in the log)
    r = sb.doveadm("mirror", "list", check=False)
    assert r.returncode == 75, r.stdout + r.stderr
    assert "Broken registry data in shared/%s: not a number" % copies \
        in r.stderr, r.stderr


# A registry that is lost, damaged or foreign

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def dict_file_pairs(path):
    """The keys and values of a file dict (tab-escaped lines)."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    return [(tabunescape(lines[i]), tabunescape(lines[i + 1]))
            for i in range(0, len(lines) - 1, 2)]


def replace_file(sb, data):
    """The registry file replaced at once, as a restore from a backup
    would (a new inode: every process reads it again)."""
    path = sb.registry_file()
    # as the service's user made it (its directory is that user's)
    st = os.stat(os.path.dirname(path))
    with open(path + ".new", "wb") as f:
        f.write(data)
    os.chown(path + ".new", st.st_uid, st.st_gid)
    os.chmod(path + ".new", 0o640)
    os.rename(path + ".new", path)


def redis_of(sb):
    from store import redis_command, redis_store
    port, prefix = redis_store(sb.store())
    return lambda *args: redis_command(port, *args), prefix


def replace_registry(sb, pairs):
    """The whole registry replaced with pairs (key, value) of keys with
    shared/, in whatever backend the sandbox has."""
    store = sb.store()
    if store == "embedded":
        replace_file(sb, b"".join(("%s\n%s\n" % (tabescape(k),
                                                  tabescape(v))).encode()
                                  for k, v in pairs))
    elif store.startswith("redis:"):
        redis, prefix = redis_of(sb)
        for key in redis("KEYS", prefix + "*"):
            redis("DEL", key)
        for k, v in pairs:
            redis("SET", prefix + k[len("shared/"):], v)
    else:
        pytest.skip("replaces only the file dict and Redis")


def registry_pairs(sb):
    store = sb.store()
    if store == "embedded":
        return dict_file_pairs(sb.registry_file())
    if store.startswith("redis:"):
        redis, prefix = redis_of(sb)
        return [("shared/" + k[len(prefix):], redis("GET", k))
                for k in sorted(redis("KEYS", prefix + "*"))]
    pytest.skip("reads only the file dict and Redis")


def lmtp_codes(sb, rcpts):
    rcpt, data = sb.deliver(rcpts)
    return [c for c, _ in rcpt], [c for c, _ in data]


@pytest.mark.parametrize("damage", ["emptied", "random bytes"])
def test_a_lost_registry_is_never_taken_for_an_empty_one(make_sandbox,
                                                         damage):
    """Emptied, under mirror_failure=accept: the recipients get their
    mail, and the failure is logged once. Random bytes, under tempfail
    and with bags: nobody's mail is taken (whether a domain is bagged
    can't be known), every recipient gets 451."""
    bags = damage == "random bytes"
    sb = make_sandbox(users=[ALICE, AUDIT],
                      settings={"mirror_failure": "tempfail" if bags
                                else "accept",
                                "bag_enabled": "yes" if bags else "no"})
    sb.mirror_add(ALICE, AUDIT)
    sb.doveadm("bag", "add", "-a", "odmr@" + BAGGED, BAGGED)
    if bags:
        if sb.store() != "embedded":
            pytest.skip("the file dict's damage")
        replace_file(sb, os.urandom(600))
    else:
        replace_registry(sb, [])

    # twice, over one session (one LMTP process), and logged once
    session = sb.lmtp()
    try:
        for _ in range(2):
            if bags:
                for rcpt in (ALICE, "x@" + BAGGED):
                    rcpts, data = session.send([rcpt], make_message())
                    assert [c for c, _ in rcpts] == [451], rcpts
            else:
                rcpts, data = session.send([ALICE], make_message())
                assert [c for c, _ in rcpts + data] == [250, 250]
    finally:
        session.close()
    assert sb.maildir_count(AUDIT) == 0
    if bags:
        log = sb.wait_log("Can't look up the bag of example.com: ")
        assert log.count("Can't look up the bag of ") == 1, log
        assert "until it can, every recipient gets 451; logged once" in log
    else:
        assert sb.maildir_count(ALICE) == 2
        log = sb.wait_log("mirror: Can't look up mirrors: ")
        assert log.count("mirror: Can't look up mirrors: ") == 1, log
        assert "deliveries follow mirror_failure=accept; logged once" in log
        assert log.count("expire_mirror: Can't tell whether") == 1, log
    # and each of the service's processes once
    pids = re.findall(r"mirror-registry\((\d+)\): Error: The registry is "
                      r"unavailable", log)
    assert pids and len(pids) == len(set(pids)), log
    assert "The registry is unavailable: it has no marker " \
        "(shared/mirror/registry): it is lost or damaged, or was never " \
        "set up (doveadm mirror init)" in log

    # doveadm says so, with one clear line and 75
    for cmd in (["mirror", "list"], ["bag", "list"],
                ["mirror", "list", ALICE]):
        r = sb.doveadm(*cmd, check=False)
        assert r.returncode == 75, (cmd, r.stdout, r.stderr)
        assert r.stdout == "", r.stdout
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "The registry is unavailable: it has " \
            "no marker" in lines[0], r.stderr

    # nothing in it can be read: init makes a new registry, because the
    # administrator says so (a registry id pinned in the service's
    # configuration then refuses the new one: see the next test)
    r = sb.doveadm("mirror", "init", json_output=True)
    assert r.json[0]["result"] == "created"
    if not bags:
        assert lmtp_codes(sb, [ALICE]) == ([250], [250])
        sb.wait_log(": Info: The registry is available again")


def test_a_registry_damaged_in_part_fails_its_readers(make_sandbox):
    """Its marker is left: the lists that were lost are reported, never
    read as empty."""
    sb = make_sandbox(users=[ALICE, AUDIT], settings={"bag_enabled": "yes"})
    m = sb.mirror_add(ALICE, AUDIT)
    sb.doveadm("bag", "add", "-a", "odmr@" + BAGGED, BAGGED)
    good = registry_pairs(sb)

    def without(key):
        replace_registry(sb, [kv for kv in good if kv[0] != key])

    without("shared/mirror/source/" + ALICE)
    r = sb.doveadm("mirror", "list", check=False)
    assert r.returncode == 75, r.stdout
    assert "Broken registry: source %s is listed in shared/mirror/sources " \
        "but shared/mirror/source/%s is missing (doveadm mirror check)" \
        % (ALICE, ALICE) in r.stderr, r.stderr
    for key, cmd in (("shared/mirror/sources", ["mirror", "list"]),
                     ("shared/bag/domains", ["bag", "list"]),
                     ("shared/mirror/accounts",
                      ["mirror", "account", "list"])):
        without(key)
        r = sb.doveadm(*cmd, check=False)
        assert r.returncode == 75, (cmd, r.stdout)
        assert "Broken registry: %s is missing (doveadm mirror check " \
            "--repair rebuilds it)" % key in r.stderr, r.stderr
    replace_registry(sb, good)
    assert [x["id"] for x in sb.doveadm("mirror", "list",
                                         json_output=True).json] == [m["id"]]

    if sb.store() == "embedded":
        # the file cut short at every line: whatever is left, list shows
        # the mirror as it was or fails with 75, and never lists nothing
        # (which half holds the mirror's keys is the hash table's order)
        with open(sb.registry_file(), "rb") as f:
            data = f.read()
        ends = [i + 1 for i, c in enumerate(data) if c == ord("\n")]
        failed = 0
        for end in ends[:-1]:
            replace_file(sb, data[:end])
            r = sb.doveadm("mirror", "list", json_output=True, check=False)
            if r.returncode == 0:
                assert [x["id"] for x in r.json] == [m["id"]], \
                    (data[:end], r.stdout)
            else:
                assert r.returncode == 75, (data[:end], r.stdout, r.stderr)
                # (doveadm's JSON formatter opens and closes its list)
                assert r.stdout.strip() in ("", "[]"), r.stdout
                assert "Broken registry: " in r.stderr or \
                    "The registry is unavailable: " in r.stderr, r.stderr
                failed += 1
        assert failed > 0


def set_expected_id(sb, registry_id):
    path = os.path.join(sb.dir, "dovecot-mirror-registry.conf.ext")
    with open(path) as f:
        lines = [l for l in f if not l.startswith("id =")]
    if registry_id is not None:
        lines.append("id = %s\n" % registry_id)
    with open(path, "w") as f:
        f.writelines(lines)
    # the service's processes read it when they start: wait for the
    # master to have reloaded, then for its idle processes to go
    reloads = sb.log().count("SIGHUP received - reloading configuration")
    sb.doveadm("reload")
    deadline = time.time() + 10
    while sb.log().count("SIGHUP received - reloading configuration") \
            == reloads:
        assert time.time() < deadline, "no reload logged"
        time.sleep(0.05)
    time.sleep(0.5)


def test_a_foreign_registry_is_refused(make_sandbox):
    sb = make_sandbox(users=[ALICE, AUDIT],
                      settings={"mirror_failure": "tempfail"})
    sb.mirror_add(ALICE, AUDIT)
    ours = sb.doveadm("mirror", "init", json_output=True).json[0]
    assert ours["result"] == "exists"

    set_expected_id(sb, "0" * 32)
    assert lmtp_codes(sb, [ALICE]) == ([250], [451])
    r = sb.doveadm("mirror", "list", check=False)
    assert r.returncode == 75
    assert "The registry is unavailable: it is registry %s, not %s: a " \
        "registry of another installation" % (ours["id"], "0" * 32) \
        in r.stderr, r.stderr

    set_expected_id(sb, ours["id"])
    assert lmtp_codes(sb, [ALICE]) == ([250], [250])
    assert sb.maildir_count(AUDIT) == 1


def test_init_sets_up_a_new_registry_once(make_sandbox):
    sb = make_sandbox(users=[ALICE, AUDIT], init=False,
                      settings={"mirror_failure": "tempfail"})
    r = sb.doveadm("mirror", "add", "-s", AUDIT, ALICE, check=False)
    assert r.returncode == 75
    assert "it has no marker (shared/mirror/registry): it is lost or " \
        "damaged, or was never set up (doveadm mirror init)" in r.stderr
    assert lmtp_codes(sb, [ALICE]) == ([250], [451])

    made = sb.doveadm("mirror", "init", json_output=True).json[0]
    assert made["result"] == "created" and made["format"] == "1"
    assert len(made["id"]) == 32
    assert set(made["made"].split(",")) == {
        "shared/mirror/sources", "shared/mirror/next-id",
        "shared/mirror/accounts", "shared/bag/domains"}
    again = sb.doveadm("mirror", "init", json_output=True).json[0]
    assert again == dict(made, result="exists", made="-")

    assert sb.doveadm("mirror", "list", json_output=True).json == []
    sb.mirror_add(ALICE, AUDIT)
    assert lmtp_codes(sb, [ALICE]) == ([250], [250])
    assert sb.maildir_count(AUDIT) == 1


def test_a_registry_of_0_1_is_upgraded(make_sandbox):
    sb = make_sandbox(users=[ALICE, "bob@example.com",
                             "audit@example.com"], init=False,
                      settings={"bag_enabled": "yes",
                                "mirror_levels": "basic:5",
                                "mirror_default_level": "basic"})
    old = dict_file_pairs(os.path.join(DATA, "registry-0.1.dict"))
    replace_registry(sb, old)

    # without a marker it is used by nobody
    r = sb.doveadm("mirror", "list", check=False)
    assert r.returncode == 75 and "it has no marker" in r.stderr
    # and init doesn't guess that it is 0.1's
    r = sb.doveadm("mirror", "init", check=False)
    assert r.returncode == 65, r.stderr
    assert "The registry has data but no marker (shared/mirror/registry): " \
        "either dovecot-mirror 0.1 wrote it (set it up with doveadm " \
        "mirror init --upgrade), or its marker was lost" in r.stderr

    up = sb.doveadm("mirror", "init", "--upgrade", json_output=True).json[0]
    assert up["result"] == "upgraded", up
    # what 0.1 lacked: read-only sessions for the bag users of bags
    # that aren't POP3 connectors
    assert set(up["made"].split(",")) == {
        "mirror_readonly of _bag@%s" % d
        for d in ("atrn.example", "etrn.example")}
    new = dict(registry_pairs(sb))
    assert json.loads(new["shared/mirror/userdb/_bag@etrn.example"]) == {
        "bag_domain": "etrn.example", "mirror_readonly": "yes"}
    assert json.loads(new["shared/mirror/userdb/_bag@pop.example"]) == {
        "bag_pop3": "pop.example"}
    # everything else is as 0.1 left it
    for k, v in old:
        if "/userdb/_bag@" not in k:
            assert new[k] == v, k

    mirrors = sb.doveadm("mirror", "list", json_output=True).json
    assert [(m["id"], m["source"], m["storage"]) for m in mirrors] == [
        ("1", ALICE, AUDIT), ("2", "example.com", "_mirror@example.com")]
    assert [b["domain"] for b in sb.doveadm("bag", "list",
                                            json_output=True).json] == [
        "atrn.example", "backup.example", "etrn.example", "pop.example"]
    assert sb.doveadm("mirror", "account", "list",
                      json_output=True).json[0]["account"] == "acme"
    # the next mirror gets the next id
    assert sb.mirror_add("bob@example.com", AUDIT)["id"] == "3"
    assert lmtp_codes(sb, [ALICE, "x@etrn.example"]) == ([250, 550],
                                                         [250])
    assert sb.maildir_count(AUDIT) == 1


# Administrators at work at the same time

# Under the sanitizers every doveadm process starts slower by far (each
# loads the instrumented module): fewer changes find the same memory
# errors, and the plain pass keeps the race at its full length.
PER_ADMIN = 20 if os.environ.get("MIRROR_SANDBOX_PRELOAD") else 50


def admins_at_once(sandboxes, commands):
    """Run commands[i] (a list of doveadm argument lists) one after the
    other on sandboxes[i], all lists at once; the failures."""
    import threading
    failures = []

    def run(sb, cmds):
        for args in cmds:
            r = sb.doveadm(*args, check=False)
            if r.returncode != 0:
                failures.append((args, r.returncode, r.stderr))
    threads = [threading.Thread(target=run, args=(sb, cmds))
               for sb, cmds in zip(sandboxes, commands)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return failures


def lose_nothing(admins):
    """Two administrators add PER_ADMIN (50, 20 under the sanitizers)
    mirrors and as many bag recipients each, at the same time, on
    admins[0] and admins[1] (one server or two on one registry): every
    one is there, every id once."""
    first = admins[0]
    first.doveadm("bag", "add", "-a", "odmr@" + BAGGED, BAGGED)
    commands = []
    for a in range(2):
        cmds = []
        for i in range(PER_ADMIN):
            cmds.append(["mirror", "add", "-s", AUDIT,
                         "u%d-%d@example.com" % (a, i)])
            cmds.append(["bag", "recipient", "add", BAGGED,
                         "r%d-%d@%s" % (a, i, BAGGED)])
        commands.append(cmds)
    assert admins_at_once(admins, commands) == []

    mirrors = first.doveadm("mirror", "list", json_output=True).json
    ids = [m["id"] for m in mirrors]
    assert len(ids) == len(set(ids)) == 2 * PER_ADMIN, ids
    assert {m["source"] for m in mirrors} == {
        "u%d-%d@example.com" % (a, i)
        for a in range(2) for i in range(PER_ADMIN)}
    # the storage's list and every id's index agree
    assert len(json.loads(first.registry_get("mirror/storage/" + AUDIT))) \
        == 2 * PER_ADMIN
    for m in mirrors:
        assert first.registry_get("mirror/id/" + m["id"]) == m["source"]
    rcpts = first.doveadm("bag", "recipient", "list", BAGGED,
                          json_output=True).json
    assert {r["recipient"] for r in rcpts} == {
        "r%d-%d@%s" % (a, i, BAGGED)
        for a in range(2) for i in range(PER_ADMIN)}


def test_two_administrators_lose_nothing(make_sandbox):
    sb = make_sandbox(users=[ALICE, AUDIT])
    lose_nothing([sb, sb])
