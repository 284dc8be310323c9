"""Legal hold: `doveadm mirror hold` and `release`. While a mirror is held
the expiry scan removes nothing from its storage (a storage shared by
several mirrors is held if any of them is), its report says so, `mirror
list` shows the hold, the mirror can't be removed, and both commands
append a record to the mirror's hash chain."""

import hashlib
import time

from conftest import make_message
from test_expire import DAY, deliver, expire, iso, save_dates, scan_line
from test_verify import chain_lines, verify

ALICE, BOB = "alice@example.com", "bob@example.com"
AUDIT = "audit@example.com"
EX_USAGE, EX_DATAERR, EX_NOTFOUND = 64, 65, 68


def listed(sb, mirror_id):
    rows = sb.doveadm("mirror", "list", json_output=True).json
    return [r for r in rows if r["id"] == str(mirror_id)][0]


def hold(sb, *args, check=True):
    return sb.doveadm("mirror", "hold", *args, json_output=True, check=check)


def release(sb, *args, check=True):
    return sb.doveadm("mirror", "release", *args, json_output=True,
                      check=check)


def blake2b(text):
    return hashlib.blake2b(text.encode(), digest_size=32).hexdigest()


def test_a_hold_stops_the_scan_until_it_is_released(make_sandbox):
    sb = make_sandbox(users=[ALICE, AUDIT])
    m = sb.mirror_add(ALICE, storage=AUDIT, days=1)
    deliver(sb, ALICE, 2)
    saved = min(save_dates(sb, AUDIT).values())
    # past Days to Mirror, also after it is set to 2 below
    later = saved + 3 * DAY

    before = time.time()
    r = hold(sb, "-m", "Case 2026-17: Smith v. Example", m["id"])
    row = r.json[0]
    since = row["hold"]
    assert iso(int(before)) <= since <= iso(int(time.time()))
    assert row == {"id": m["id"], "storage": AUDIT, "hold": since,
                   "hold_reason": "Case 2026-17: Smith v. Example",
                   "record": "3"}
    listing = listed(sb, m["id"])
    assert (listing["hold"], listing["hold_reason"]) == \
        (since, "Case 2026-17: Smith v. Example")

    # the chain records it, with the reason's hash
    record = chain_lines(sb, AUDIT, m["id"])[-1].split(" ")
    assert record[:2] == ["hold", "3"]
    assert record[3:6] == ["0", "0", blake2b(
        "Case 2026-17: Smith v. Example")]
    code, vrow, err = verify(sb, m["id"])
    assert code == 0, err
    assert (vrow["records"], vrow["present"], vrow["chain"]) == \
        ("3", "2", "ok")

    # due, but held: nothing removed, and the report says so
    rows, r = expire(sb, "-T", str(later))
    assert rows == [{"ids": m["id"], "storage": AUDIT, "removed": "0",
                     "bytes": "0", "oldest_kept": "",
                     "held_by": m["id"]}]
    assert "Storage %s is due, but on legal hold (mirror %s): nothing " \
        "removed" % (AUDIT, m["id"]) in r.stderr, r.stderr
    assert "1 storages, 0 visited, 0 failed, 1 held, 0 messages" \
        in scan_line(r)
    assert len(save_dates(sb, AUDIT)) == 2

    # held mirrors stay: remove (with or without -p) is refused
    for args in ([m["id"]], ["-p", m["id"]]):
        r = sb.doveadm("mirror", "remove", *args, check=False)
        assert r.returncode == EX_DATAERR, r.stderr
        assert "Mirror %s is on legal hold since %s: release it first " \
            "(doveadm mirror release %s)" % (m["id"], since, m["id"]) \
            in r.stderr, r.stderr
    assert listed(sb, m["id"])["hold"] == since
    # a held mirror can be changed: the hold stays
    sb.doveadm("mirror", "set", "-d", "2", m["id"])
    listing = listed(sb, m["id"])
    assert (listing["days"], listing["hold"]) == ("2", since)

    # a hold on a held mirror, a release of a free one: refused, unchanged
    r = hold(sb, m["id"], check=False)
    assert r.returncode == EX_DATAERR
    assert "Mirror %s is on hold already, since %s" % (m["id"], since) \
        in r.stderr, r.stderr
    assert len(chain_lines(sb, AUDIT, m["id"])) == 3

    r = release(sb, "-m", "Case closed", m["id"])
    assert r.json[0] == {"id": m["id"], "storage": AUDIT, "hold": "",
                         "hold_reason": "", "record": "4"}
    listing = listed(sb, m["id"])
    assert (listing["hold"], listing["hold_reason"]) == ("", "")
    record = chain_lines(sb, AUDIT, m["id"])[-1].split(" ")
    assert record[:2] == ["release", "4"] and \
        record[5] == blake2b("Case closed")
    r = release(sb, m["id"], check=False)
    assert r.returncode == EX_DATAERR
    assert "Mirror %s is not on hold" % m["id"] in r.stderr, r.stderr

    # released: the next scan expires as ever, and the chain goes on
    rows, _ = expire(sb, "-T", str(later))
    assert [(x["removed"], x["held_by"]) for x in rows] == [("2", "")]
    assert save_dates(sb, AUDIT) == {}
    code, vrow, err = verify(sb, m["id"])
    assert code == 0, err
    assert (vrow["records"], vrow["expired"], vrow["chain"]) == \
        ("6", "2", "ok")


def test_a_shared_storage_is_held_by_any_of_its_mirrors(make_sandbox):
    sb = make_sandbox(users=[ALICE, BOB, AUDIT])
    m1 = sb.mirror_add(ALICE, storage=AUDIT, days=1)
    m2 = sb.mirror_add(BOB, storage=AUDIT, days=1)
    ok_deliver = [sb.deliver([u], make_message(subject=u)) for u in
                  (ALICE, BOB)]
    assert all(d[1][0][0] == 250 for d in ok_deliver), ok_deliver
    later = max(save_dates(sb, AUDIT).values()) + 2 * DAY

    hold(sb, m2["id"])
    assert listed(sb, m2["id"])["hold_reason"] == ""
    assert listed(sb, m1["id"])["hold"] == ""
    rows, _ = expire(sb, "-T", str(later))
    assert [(x["ids"], x["removed"], x["held_by"]) for x in rows] == \
        [("%s %s" % (m1["id"], m2["id"]), "0", m2["id"])]
    assert len(save_dates(sb, AUDIT)) == 2
    # only the held mirror's chain records the hold
    assert chain_lines(sb, AUDIT, m2["id"])[-1].startswith("hold 2 ")
    assert chain_lines(sb, AUDIT, m1["id"])[-1].startswith("copy 1 ")

    # a dry run says the same; a rebuild of the index removes nothing
    rows, _ = expire(sb, "-n", "-T", str(later))
    assert [x["held_by"] for x in rows] == [m2["id"]]
    rows, _ = expire(sb, "--rebuild-index", "-T", str(later))
    assert [(x["removed"], x["held_by"]) for x in rows] == [("0", "")]
    assert len(save_dates(sb, AUDIT)) == 2
    release(sb, m2["id"])
    rows, _ = expire(sb, "-T", str(later))
    assert [(x["removed"], x["held_by"]) for x in rows] == [("2", "")]


def test_bad_hold_commands_change_nothing(make_sandbox):
    sb = make_sandbox(users=[ALICE, AUDIT])
    m = sb.mirror_add(ALICE, storage=AUDIT)
    for args, code, text in (
            (["0"], EX_USAGE, "Invalid mirror id '0'"),
            (["x"], EX_USAGE, "Invalid mirror id 'x'"),
            (["99"], EX_NOTFOUND, "Unknown mirror id 99"),
            (["-m", "a\tb", m["id"]], EX_USAGE,
             "Invalid reason 'a?b': has a control character"),
            (["-m", "x" * 501, m["id"]], EX_USAGE,
             "longer than 500 bytes")):
        r = hold(sb, *args, check=False)
        assert r.returncode == code, (args, r.stderr)
        assert text in r.stderr, r.stderr
    r = sb.doveadm("mirror", "hold", check=False)
    assert r.returncode == EX_USAGE
    assert "Usage: mirror hold [-m REASON] ID" in r.stderr, r.stderr
    assert listed(sb, m["id"])["hold"] == ""
    # no chain yet: nothing was appended
    sb.deliver([ALICE], make_message())
    assert len(chain_lines(sb, AUDIT, m["id"])) == 1
    # the longest reason allowed, in UTF-8, is kept as it was given
    reason = "é" * 250
    assert hold(sb, "-m", reason, m["id"]).json[0]["hold_reason"] == reason
    assert listed(sb, m["id"])["hold_reason"] == reason
