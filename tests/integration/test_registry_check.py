"""doveadm mirror check [--repair], the registry's fsck: what it finds,
what it repairs and what it leaves, with its exit codes (0 nothing is
wrong, 65 problems remain, 75 the registry can't be read). Each test runs
on the backend of the pass (the file dict, then Redis: MIRROR_TEST_STORE);
Redis can't iterate keys, and where that changes what check can find the
test says so. The registry is damaged through the dict proxy, as a lost
write or a hand edit would."""

import json
import time

from conftest import REGISTRY, eventually

ALICE, BOB, AUDIT = "alice@example.com", "bob@example.com", \
    "audit@example.com"
BAGGED = "bagged.test"
MARKER = "shared/mirror/registry"


def check(sb, *args):
    """The exit code of doveadm mirror check and its rows (key, problem,
    action)."""
    r = sb.doveadm("mirror", "check", *args, json_output=True, check=False)
    rows = json.loads(r.stdout) if r.stdout.strip() else []
    return r.returncode, [(x["key"], x["problem"], x["action"])
                          for x in rows]


def unset(sb, key):
    sb.doveadm("dict", "unset", REGISTRY, "shared/" + key)


def redis(sb):
    return sb.store().startswith("redis:")


def not_searched(sb):
    """The row every check on Redis begins with: what it can't find
    without an iteration."""
    if not redis(sb):
        return []
    return [("shared/", "not searched: the dict can't iterate (Redis)",
             "unchecked: unused logins, keys of removed mirrors and bags, "
             "accounts and bags missing from their lists")]


def repaired(rows):
    """The rows of a check, as --repair reports them."""
    return [(k, p, a[len("would be "):] if a.startswith("would be ") else a)
            for k, p, a in rows]


def populated(make_sandbox):
    """A mirror into an existing user, one into a created storage, and an
    ATRN bag, each with mail."""
    sb = make_sandbox(users=[ALICE, BOB, AUDIT],
                      settings={"bag_enabled": "yes"})
    m1 = sb.mirror_add(ALICE, AUDIT)
    m2 = sb.mirror_add(BOB)
    sb.doveadm("bag", "add", "-a", "odmr@" + BAGGED, BAGGED)
    for rcpts in ([ALICE, BOB, "x@" + BAGGED], [ALICE, "y@" + BAGGED]):
        rcpt, data = sb.deliver(rcpts)
        assert [c for c, _ in rcpt + data] == [250] * 2 * len(rcpts)
    # mirror-writer counts the copies in the registry a little later
    for m, copies in ((m1, "2"), (m2, "1")):
        eventually(lambda: sb.registry_get(
            "mirror/status/%s/copies" % m["id"]), copies)
    return sb, m1, m2


def bag_messages(sb):
    return sb.doveadm("bag", "show", BAGGED, json_output=True).json[0][
        "messages"]


def test_a_clean_registry_has_nothing_to_report(make_sandbox):
    sb, m1, m2 = populated(make_sandbox)
    before = {k: sb.registry_get(k) for k in (
        "mirror/sources", "mirror/storage/" + AUDIT, "bag/domains",
        "mirror/status/%s/copies" % m1["id"], "bag/count/" + BAGGED)}
    assert check(sb) == (0, not_searched(sb))
    assert check(sb, "--repair") == (0, not_searched(sb))
    assert {k: sb.registry_get(k) for k in before} == before


def test_broken_counters_are_reset_from_what_is_on_disk(make_sandbox):
    sb, m1, m2 = populated(make_sandbox)
    copies = "mirror/status/%s/copies" % m1["id"]
    count = "bag/count/" + BAGGED
    # counted by mirror-writer (what it has yet to count is left out of
    # the reset)
    eventually(lambda: sb.registry_get(copies), "2")
    sb.registry_set(copies, "zz")
    sb.registry_set(count, "7x")
    rows = [
        ("shared/" + copies, "not a counter: 'zz'",
         "would be reset to 2 from the hash chain"),
        ("shared/" + count, "not a counter: '7x'",
         "would be reset to 2 from the bag's INBOX"),
    ]
    # without --repair nothing changes
    assert check(sb) == (65, not_searched(sb) + rows)
    assert sb.registry_get(copies) == "zz"
    assert sb.registry_get(count) == "7x"

    assert check(sb, "--repair") == (0, not_searched(sb) + repaired(rows))
    assert sb.registry_get(copies) == "2"
    assert sb.registry_get(count) == "2"
    assert check(sb) == (0, not_searched(sb))
    # and they count on
    sb.deliver([ALICE, "z@" + BAGGED])
    eventually(lambda: sb.registry_get(copies), "3")
    assert bag_messages(sb) == "3"


def sources_rebuilt(sb):
    """How check rebuilds the list of sources: without an iteration
    (Redis) it finds the definitions through the id index."""
    if redis(sb):
        return "rebuilt from the definitions the id index names " \
            "(shared/mirror/id/)"
    return "rebuilt from the definitions"


def test_lost_indexes_are_rebuilt_from_the_definitions(make_sandbox):
    sb, m1, m2 = populated(make_sandbox)
    for key in ("mirror/sources", "mirror/storage/" + AUDIT, "bag/domains",
                "bag/identity/odmr@" + BAGGED):
        unset(sb, key)
    storage2 = "mirror/storage/" + m2["storage"]
    sb.registry_set(storage2, "[")
    # the commands that read them refuse
    r = sb.doveadm("mirror", "list", check=False)
    assert r.returncode == 75, r.stderr
    assert "Broken registry: shared/mirror/sources is missing (doveadm " \
        "mirror check --repair rebuilds it)" in r.stderr, r.stderr

    rows = [
        ("shared/mirror/sources", "missing", "would be " +
         sources_rebuilt(sb)),
        ("shared/mirror/storage/" + AUDIT, "missing",
         "would be rewritten from the definitions"),
        ("shared/" + storage2, "broken: invalid JSON: truncated",
         "would be rewritten from the definitions"),
    ]
    if redis(sb):
        # the bags are found only in their list
        bags = [("shared/bag/domains", "missing",
                 "left: the dict can't iterate (Redis) to find the bags: "
                 "set it by hand (doveadm dict set, a JSON array of the "
                 "bagged domains)")]
    else:
        bags = [("shared/bag/domains", "missing",
                 "would be rebuilt from the bags"),
                ("shared/bag/identity/odmr@" + BAGGED, "missing",
                 "would be made from the bags")]
    assert check(sb) == (65, not_searched(sb) + rows + bags)

    code, found = check(sb, "--repair")
    assert found == not_searched(sb) + repaired(rows + bags)
    if redis(sb):
        assert code == 65
        # what the row says to do; then the bag is found, and so is
        # what it lost
        sb.registry_set("bag/domains", '["%s"]' % BAGGED)
        assert check(sb, "--repair") == (0, not_searched(sb) + [
            ("shared/bag/identity/odmr@" + BAGGED, "missing",
             "made from the bags")])
    else:
        assert code == 0
    assert check(sb) == (0, not_searched(sb))

    # everything works again
    assert [x["id"] for x in sb.doveadm("mirror", "list",
                                         json_output=True).json] == [
        m1["id"], m2["id"]]
    assert [b["domain"] for b in sb.doveadm("bag", "list",
                                            json_output=True).json] == [
        BAGGED]
    sb.deliver([ALICE, BOB])
    assert sb.maildir_count(AUDIT) == 3
    assert len(sb.imap_messages(m2["storage"],
                                password=m2["password"])) == 2


def test_the_id_index_and_counter_are_rebuilt(make_sandbox):
    sb, m1, m2 = populated(make_sandbox)
    unset(sb, "mirror/id/" + m2["id"])
    sb.registry_set("mirror/next-id", "1")
    rows = [
        ("shared/mirror/id/" + m2["id"], "missing", "set to " + BOB),
        ("shared/mirror/next-id", "is 1, lower than id 2, which is in use",
         "set to 2, the highest id found"),
    ]
    assert check(sb, "--repair") == (0, not_searched(sb) + rows)
    assert check(sb) == (0, not_searched(sb))
    # the next mirror gets the next id, and the id index removes
    assert sb.mirror_add("carol@example.com", AUDIT)["id"] == "3"
    sb.doveadm("mirror", "remove", m2["id"])
    assert sb.registry_get("mirror/source/" + BOB) is None


def test_a_mirror_that_lost_both_indexes(make_sandbox):
    """Found by iterating the file dict; on Redis only once it is listed
    again (by hand, as the documentation says)."""
    sb, m1, m2 = populated(make_sandbox)
    unset(sb, "mirror/sources")
    unset(sb, "mirror/id/" + m2["id"])
    sources = ("shared/mirror/sources", "missing", sources_rebuilt(sb))
    lost_id = ("shared/mirror/id/" + m2["id"], "missing", "set to " + BOB)
    if redis(sb):
        assert check(sb, "--repair") == (0, not_searched(sb) + [sources])
        listed = [x["id"] for x in sb.doveadm("mirror", "list",
                                              json_output=True).json]
        assert listed == [m1["id"]]
        sb.registry_set("mirror/sources", json.dumps([ALICE, BOB]))
        assert check(sb, "--repair") == (0, not_searched(sb) + [lost_id])
    else:
        assert check(sb, "--repair") == (0, [sources, lost_id])
    listed = [x["id"] for x in sb.doveadm("mirror", "list",
                                          json_output=True).json]
    assert listed == [m1["id"], m2["id"]]


def oldest_saved(sb, user):
    """The earliest save date in the user's INBOX, as a string: what a
    rebuilt expire index entry holds. (A delivery sets the entry from
    LMTP's clock as the save begins, which may be a second earlier.)"""
    r = sb.doveadm("fetch", "-u", user, "date.saved.unixtime", "mailbox",
                   "INBOX", "ALL", json_output=True)
    return str(min(int(m["date.saved.unixtime"]) for m in r.json))


def test_a_broken_expire_index_is_rebuilt_from_the_storage(make_sandbox):
    sb, m1, m2 = populated(make_sandbox)
    # the writer checks each entry it raised a second later
    time.sleep(1.5)
    e1 = "mirror/expire/" + AUDIT
    e2 = "mirror/expire/" + m2["storage"]
    assert int(sb.registry_get(e1)) > 0 and int(sb.registry_get(e2)) > 0
    oldest1 = oldest_saved(sb, AUDIT)
    oldest2 = oldest_saved(sb, m2["storage"])
    sb.registry_set(e1, "x1")
    unset(sb, e2)
    rows = [
        ("shared/" + e1, "not a time: 'x1'",
         "would be rebuilt from the INBOX"),
        ("shared/" + e2, "missing, but the INBOX has mail saved at " +
         oldest2, "would be rebuilt from the INBOX"),
    ]
    assert check(sb) == (65, not_searched(sb) + rows)
    assert check(sb, "--repair") == (0, not_searched(sb) + repaired(rows))
    assert (sb.registry_get(e1), sb.registry_get(e2)) == (oldest1, oldest2)
    # an entry later than the oldest mail would hide it from the scan
    sb.registry_set(e1, str(int(oldest1) + 100))
    assert check(sb, "--repair") == (0, not_searched(sb) + [
        ("shared/" + e1, "is %d, later than the oldest mail in the INBOX "
         "(%s)" % (int(oldest1) + 100, oldest1), "rebuilt from the INBOX")])
    assert sb.registry_get(e1) == oldest1


def test_storage_users_nothing_uses_or_nobody_knows_are_left(make_sandbox):
    sb, m1, m2 = populated(make_sandbox)
    m3 = sb.mirror_add("carol@example.com", BOB)
    ghost = "mirror/user/ghost@example.com"
    sb.registry_set(ghost, '{"password":"{PLAIN}x"}')
    sb.remove_user(BOB)
    rows = [
        ("shared/mirror/storage/" + BOB, "the userdb doesn't know storage "
         "user " + BOB, "left: copies to it fail: add the user again, or "
         "remove mirror %s" % m3["id"]),
    ]
    if not redis(sb):
        # found only by iterating
        rows.append(("shared/" + ghost, "a login of no mirror, bag, ATRN "
                     "identity or POP3 box", "left: removing a login is "
                     "the administrator's call (doveadm dict unset)"))
    assert check(sb) == (65, not_searched(sb) + rows)
    assert check(sb, "--repair") == (65, not_searched(sb) + rows)
    assert sb.registry_get(ghost) == '{"password":"{PLAIN}x"}'
    assert sb.registry_get("mirror/source/carol@example.com") is not None


def test_a_registry_without_its_marker_is_not_checked(make_sandbox):
    sb, m1, m2 = populated(make_sandbox)
    unset(sb, "mirror/sources")
    unset(sb, "mirror/registry")
    for args in ([], ["--repair"]):
        r = sb.doveadm("mirror", "check", *args, check=False)
        assert r.returncode == 75, (args, r.stdout, r.stderr)
        assert r.stdout == ""
        assert r.stderr.splitlines() == [
            "Error: The registry is unavailable: it has no marker "
            "(shared/mirror/registry): it is lost or damaged, or was never "
            "set up (doveadm mirror init); check reads no registry without "
            "it (doveadm mirror init --upgrade sets up one that "
            "dovecot-mirror 0.1 wrote)"], r.stderr
    # nothing was repaired
    assert sb.registry_get("mirror/sources") is None
    assert sb.registry_get("mirror/registry") is None

    # init --upgrade is the tool for it (it makes an empty list), then
    # check is
    sb.doveadm("mirror", "init", "--upgrade")
    assert check(sb, "--repair") == (0, not_searched(sb) + [
        ("shared/mirror/sources", "misses " + ALICE, "added"),
        ("shared/mirror/sources", "misses " + BOB, "added")])


def test_a_broken_marker_is_left_and_nothing_else_is_checked(make_sandbox):
    sb, m1, m2 = populated(make_sandbox)
    unset(sb, "mirror/sources")
    sb.registry_set("mirror/registry", "{")
    for args in ([], ["--repair"]):
        code, rows = check(sb, *args)
        assert code == 65
        assert len(rows) == 1 and rows[0][0] == MARKER
        assert rows[0][1].startswith("broken: "), rows
        assert rows[0][2] == "left: nothing else was checked: if this " \
            "registry is yours, unset the marker (doveadm dict unset) and " \
            "run doveadm mirror init --upgrade"
    assert sb.registry_get("mirror/sources") is None


def test_a_lost_definition_is_taken_from_its_storage_list(make_sandbox):
    """Each storage list holds a copy of the definitions of the mirrors
    that copy into it; only an iteration finds those lists."""
    sb, m1, m2 = populated(make_sandbox)
    source = "mirror/source/" + ALICE
    good = sb.registry_get(source)
    unset(sb, source)
    # the mirror doesn't copy any more
    sb.deliver([ALICE])
    assert sb.maildir_count(AUDIT) == 2
    problem = "missing, but shared/mirror/sources lists it"
    if redis(sb):
        row = ("shared/" + source, problem, "left: its mirrors may be in "
               "a storage list (shared/mirror/storage/<user>), which the "
               "dict can't search (Redis): set it again from there by hand "
               "(doveadm dict set), or if none holds them, remove it from "
               "shared/mirror/sources and its shared/mirror/id/ keys")
        assert check(sb) == (65, not_searched(sb) + [row])
        assert check(sb, "--repair") == (65, not_searched(sb) + [row])
        assert sb.registry_get(source) is None
        sb.registry_set(source, sb.registry_get("mirror/storage/" + AUDIT))
    else:
        row = ("shared/" + source, problem, "would be rebuilt from the "
               "storage lists (shared/mirror/storage/)")
        assert check(sb) == (65, [row])
        assert check(sb, "--repair") == (0, repaired([row]))
    assert check(sb) == (0, not_searched(sb))
    assert json.loads(sb.registry_get(source)) == json.loads(good)
    sb.deliver([ALICE])
    assert sb.maildir_count(AUDIT) == 3


def test_a_definition_lost_everywhere(make_sandbox):
    """With no storage list to take it from, the mirror is gone: the
    file dict's check drops what is left of it (but the storage user's
    login, which is the administrator's); on Redis it can't know that no
    storage list has it, and leaves it."""
    sb, m1, m2 = populated(make_sandbox)
    source = "shared/mirror/source/" + BOB
    unset(sb, source[len("shared/"):])
    unset(sb, "mirror/storage/" + m2["storage"])
    problem = "missing, but shared/mirror/sources lists it"
    if redis(sb):
        row = (source, problem, "left: its mirrors may be in a storage "
               "list (shared/mirror/storage/<user>), which the dict can't "
               "search (Redis): set it again from there by hand (doveadm "
               "dict set), or if none holds them, remove it from "
               "shared/mirror/sources and its shared/mirror/id/ keys")
        assert check(sb, "--repair") == (65, not_searched(sb) + [row])
        assert sb.registry_get("mirror/id/" + m2["id"]) == BOB
        return
    status = "shared/mirror/status/%s/" % m2["id"]
    gone = "of mirror %s, which doesn't exist" % m2["id"]
    logins = [("shared/mirror/%s/%s" % (kind, m2["storage"]),
               "a login of no mirror, bag, ATRN identity or POP3 box",
               "left: removing a login is the administrator's call "
               "(doveadm dict unset)") for kind in ("user", "userdb")]
    assert check(sb, "--repair") == (65, [
        (source, problem, "dropped from shared/mirror/sources: no storage "
         "list holds its mirrors either"),
        ("shared/mirror/id/" + m2["id"], "names %s, which has no mirror %s"
         % (BOB, m2["id"]), "removed"),
        (status + "copies", gone, "removed"),
        (status + "failures", gone, "removed")] + logins)
    assert check(sb) == (65, logins)
    assert [x["id"] for x in sb.doveadm("mirror", "list",
                                         json_output=True).json] == [
        m1["id"]]


def test_repair_holds_the_lock_while_administrators_work(make_sandbox):
    """check --repair reads and writes under the registry's lock: a mirror
    added meanwhile is never taken for damage (on Redis, where check reads
    key by key, a half-seen add would be), and nothing is lost."""
    import threading
    sb, m1, m2 = populated(make_sandbox)
    adds = ["u%d@example.com" % i for i in range(30)]
    failures, checks = [], []

    def admin():
        for source in adds:
            r = sb.doveadm("mirror", "add", "-s", AUDIT, source,
                           check=False)
            if r.returncode != 0:
                failures.append((source, r.stderr))

    def checker():
        for _ in range(8):
            checks.append(check(sb, "--repair"))

    threads = [threading.Thread(target=admin),
               threading.Thread(target=checker)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert checks == [(0, not_searched(sb))] * 8
    listed = sb.doveadm("mirror", "list", json_output=True).json
    assert len(listed) == 2 + len(adds)
    assert len(json.loads(sb.registry_get("mirror/storage/" + AUDIT))) == \
        1 + len(adds)


def test_bad_arguments_and_hostile_keys(make_sandbox):
    sb, m1, m2 = populated(make_sandbox)
    sb.registry_set("mirror/next-id", "zz")
    r = sb.doveadm("mirror", "check", "--repair", "now", check=False)
    assert (r.returncode, r.stdout) == (64, "")
    assert r.stderr == "Error: Extraneous arguments found: now\n"
    assert sb.registry_get("mirror/next-id") == "zz"
    sb.registry_set("mirror/next-id", "2")

    # a key no part of the suite writes is printed printable
    sb.registry_set("bag/domain/ex\x1b[31mample", "{}")
    if redis(sb):
        # found only by iterating
        assert check(sb) == (0, not_searched(sb))
    else:
        assert check(sb, "--repair") == (65, [
            ("shared/bag/domain/ex?[31mample", "not the key of a bag",
             "left: remove it by hand (doveadm dict unset)")])


def test_the_locks_keys_are_made_again(make_sandbox):
    """Nobody can take the registry's lock without its generation: a
    change of a list waits for it and fails, until --repair, which makes
    the lock's keys again before it takes the lock itself."""
    sb, m1, m2 = populated(make_sandbox)
    sb.registry_set("mirror/lock/gen", "zz")
    row = ("shared/mirror/lock/gen", "not a generation: 'zz'",
           "would be made again, with its claim keys")
    # the lock's keys are checked first
    assert check(sb) == (65, [row] + not_searched(sb))
    assert check(sb, "--repair") == (0, repaired([row]) + not_searched(sb))
    # generation 1, which the repair's own lock moved on
    assert sb.registry_get("mirror/lock/gen") == "2"
    assert check(sb) == (0, not_searched(sb))
    assert sb.mirror_add("carol@example.com", AUDIT)["id"] == "3"


def test_recipient_lists_and_accounts(make_sandbox):
    """A bag's recipient list and its keys are made to agree by taking
    both; an account's domains get their reverse keys back. The list of
    accounts is found again only by iterating."""
    sb = make_sandbox(users=[ALICE, AUDIT],
                      settings={"bag_enabled": "yes",
                                "mirror_levels": "basic:5",
                                "mirror_default_level": "basic"})
    sb.doveadm("bag", "add", "-a", "odmr@" + BAGGED, BAGGED)
    sb.doveadm("bag", "recipient", "add", BAGGED, "a@" + BAGGED)
    sb.doveadm("mirror", "account", "set", "acme", "basic")
    sb.doveadm("mirror", "account", "assign", "example.com", "acme")
    assert check(sb) == (0, not_searched(sb))
    rcpts = "shared/bag/rcpts/" + BAGGED
    unset(sb, "bag/rcpt/%s/a@%s" % (BAGGED, BAGGED))
    sb.registry_set("bag/rcpt/%s/b@%s" % (BAGGED, BAGGED), "1")
    unset(sb, "mirror/domain/example.com")
    unset(sb, "mirror/accounts")
    lost_rcpt = ("shared/bag/rcpt/%s/a@%s" % (BAGGED, BAGGED),
                 "missing, but %s lists it" % rcpts, "set")
    if redis(sb):
        left = [("shared/mirror/accounts", "missing", "left: the dict "
                 "can't iterate (Redis) to find the accounts: set it by "
                 "hand (doveadm dict set, a JSON array of their names)")]
        assert check(sb, "--repair") == (65, not_searched(sb) + left +
                                         [lost_rcpt])
        assert check(sb, "--repair") == (65, not_searched(sb) + left)
        sb.registry_set("mirror/accounts", '["acme"]')
        assert check(sb, "--repair") == (0, not_searched(sb) + [
            ("shared/mirror/domain/example.com", "missing",
             "set to acme")])
        expected = ["a@" + BAGGED]
    else:
        assert check(sb, "--repair") == (0, [
            ("shared/mirror/accounts", "missing",
             "rebuilt from the account keys"),
            ("shared/mirror/domain/example.com", "missing", "set to acme"),
            (rcpts, "misses b@" + BAGGED, "added"), lost_rcpt])
        # the stray key already let b@ in at RCPT: now it is listed
        expected = ["a@" + BAGGED, "b@" + BAGGED]
    assert check(sb) == (0, not_searched(sb))
    assert [r["recipient"] for r in sb.doveadm(
        "bag", "recipient", "list", BAGGED, json_output=True).json] == \
        expected
    assert sb.doveadm("mirror", "account", "list",
                      json_output=True).json[0]["account"] == "acme"


def test_every_kind_of_bag_and_a_lost_box_list(make_sandbox):
    sb = make_sandbox(users=[ALICE], settings={"bag_enabled": "yes"})
    pop = "pop.test"
    sb.doveadm("bag", "add", "-P", "per-account", pop)
    sb.doveadm("bag", "recipient", "add", pop, "a@" + pop, "b.c@" + pop)
    sb.doveadm("bag", "add", "-P", "catch-all", "pop2.test")
    sb.doveadm("bag", "add", "-e", "127.0.0.1", "-h", "mx.test", "etrn.test")
    sb.doveadm("bag", "add", "-b", "-h", "mx.test", "backup.test")
    sb.deliver(["a@" + pop, "x@pop2.test", "y@etrn.test"])
    assert check(sb) == (0, not_searched(sb))

    unset(sb, "bag/boxes/" + pop)
    row = ("shared/bag/boxes/" + pop, "missing")
    if redis(sb):
        row += ("left: the dict can't iterate (Redis) to find its POP3 "
                "boxes: set it by hand (doveadm dict set, a JSON array of "
                "them)",)
        assert check(sb, "--repair") == (65, not_searched(sb) + [row])
        sb.registry_set("bag/boxes/" + pop,
                        json.dumps(["a@" + pop, "b.c@" + pop]))
    else:
        row += ("rebuilt from the shared/bag/box/%s/ keys" % pop,)
        assert check(sb, "--repair") == (0, [row])
    assert check(sb) == (0, not_searched(sb))
    assert [r["box"] for r in sb.doveadm(
        "bag", "recipient", "list", pop, json_output=True).json] == [
        "_bag_a@" + pop, "_bag_b.c@" + pop]
