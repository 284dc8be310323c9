"""The registry keeps its word: what the mail uid may do in it, counters
that aren't numbers, a registry that is lost, damaged or foreign, and
administrators at work at the same time. Each test runs on the backend of
the pass (the file dict, then Redis: MIRROR_TEST_STORE)."""

import os
import pwd
import time

import pytest

from dictproto import exchange

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
    sb.wait_log("mirror-registry: Warning: Denied access to %s (uid %d, "
                "pid " % (secret, uid))

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
