"""The doveadm HTTP API as a hosting panel uses it: Dovecot's doveadm
server (service doveadm, inet_listener http) with doveadm_api_key, driven
with JSON only (urllib), as doc/operations.md shows with curl."""

import base64
import http.client
import imaplib
import json
import urllib.error
import urllib.request

import pytest

from ports import free_port

API_KEY = "panel-secret"
ALICE = "alice@example.com"


class DoveadmAPI:
    """POST /doveadm/v1: a list of [command, parameters, tag]."""

    def __init__(self, port, key=API_KEY):
        self.port = port
        self.url = "http://127.0.0.1:%d/doveadm/v1" % port
        self.key = key

    def post(self, body):
        """The HTTP status and the decoded JSON answer."""
        req = urllib.request.Request(
            self.url, data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json",
                     "Authorization": "X-Dovecot-API " + base64.b64encode(
                         self.key.encode()).decode()})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    def get(self):
        """GET /doveadm/v1: the commands and their parameters."""
        req = urllib.request.Request(
            self.url, headers={"Authorization": "X-Dovecot-API " +
                               base64.b64encode(self.key.encode()).decode()})
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())

    def run(self, command, **params):
        """One command: its rows, or ("error", the error object)."""
        status, answer = self.post([[command, params, "t"]])
        assert status == 200, (status, answer)
        assert len(answer) == 1 and answer[0][2] == "t", answer
        kind, value, _ = answer[0]
        if kind == "error":
            return "error", value
        assert kind == "doveadmResponse", answer
        return value


def api_config(port):
    return ("doveadm_api_key = %s\n"
            "service doveadm {\n"
            "  inet_listener http {\n"
            "    address = 127.0.0.1\n"
            "    port = %d\n"
            "  }\n"
            "}\n" % (API_KEY, port))


@pytest.fixture
def api_sandbox(make_sandbox):
    port = free_port()
    sb = make_sandbox(users=[ALICE], config=api_config(port),
                      settings={"bag_enabled": "yes"})
    return sb, DoveadmAPI(port)


def test_null_parameters_are_not_given(api_sandbox):
    """A panel's JSON null is a parameter without a value: the module
    takes it as not given, and the doveadm server lives on."""
    sb, api = api_sandbox
    row = api.run("mirrorAdd", source=ALICE, days=None, storage=None)[0]
    assert row["days"] == "30" and row["password"]
    assert api.run("mirrorSet", id=row["id"], days=None,
                   readonly=None)[0]["days"] == "30"
    assert api.run("mirrorSchedule", time=None)[0]["next_run_utc"]
    assert api.run("mirrorList", source=None)[0]["id"] == row["id"]
    # a required one is missing
    assert api.run("mirrorRemove", id=None) == \
        ("error", {"type": "exitCode", "exitCode": 64})
    assert "killed with signal" not in sb.log()


def test_unix_times_are_strings_in_every_command(api_sandbox):
    """mirrorSchedule and mirrorExpire take a UNIX time the same way: a
    string parameter, given as a JSON number or a string of digits, and
    refused with exit code 64 otherwise."""
    sb, api = api_sandbox
    status, listing = api.get()
    assert status == 200
    types = {cmd["command"]: {p["name"]: p["type"]
                              for p in cmd["parameters"]}
             for cmd in listing}
    assert types["mirrorSchedule"]["time"] == "string"
    assert types["mirrorExpire"]["time"] == "string"
    assert types["mirrorExpire"]["dryRun"] == "boolean"

    when = 1764000000
    for t in (when, str(when)):
        row = api.run("mirrorSchedule", time=t)[0]
        assert row["next_run_utc"] == "2025-11-25 08:00:00 UTC", row
        assert api.run("mirrorExpire", time=t, dryRun=True) == []
    for bad in ("abc", "0", -1, 1.5):
        for command, extra in (("mirrorSchedule", {}),
                               ("mirrorExpire", {"dryRun": True})):
            assert api.run(command, time=bad, **extra) == \
                ("error", {"type": "exitCode", "exitCode": 64}), \
                (command, bad)
    assert "Invalid -T 'abc': expected a UNIX time" in sb.log()


def imap_login_ok(sb, user, password):
    try:
        sb.imap_messages(user, password=password)
        return True
    except imaplib.IMAP4.error:
        return False


def test_panel_flows(api_sandbox):
    """What a hosting panel does for a customer, over HTTP only."""
    sb, api = api_sandbox
    # a mirror with an auto-created storage: the one-time password is in
    # the answer, and logs in
    row = api.run("mirrorAdd", source=ALICE, days="14", readonly=True)[0]
    assert row["storage"] == "_mirror_" + ALICE and row["days"] == "14"
    assert row["readonly"] == "yes" and len(row["password"]) == 24
    mirror_id, password = row["id"], row["password"]
    sb.deliver([ALICE])
    copies = sb.imap_messages(row["storage"], password=password)
    assert len(copies) == 1
    assert api.run("mirrorVerify", id=mirror_id)[0]["missing"] == "0"

    listed = api.run("mirrorList")
    assert [(m["id"], m["source"], m["copies"]) for m in listed] == \
        [(mirror_id, ALICE, "1")]
    assert "password" not in listed[0]
    # days as a number or a string
    assert api.run("mirrorSet", id=mirror_id, days=7)[0]["days"] == "7"
    assert api.run("mirrorList", source=ALICE)[0]["days"] == "7"

    # a new password: the old one no longer logs in
    new = api.run("mirrorPassword", id=mirror_id)[0]["password"]
    assert new and new != password
    assert imap_login_ok(sb, row["storage"], new)
    assert not imap_login_ok(sb, row["storage"], password)

    # refusals come back as exit codes, and change nothing
    for days in ("0", "3651", "abc", -7):
        assert api.run("mirrorSet", id=mirror_id, days=days) == \
            ("error", {"type": "exitCode", "exitCode": 64}), days
    assert api.run("mirrorAdd", source="bob@example.com", days="x") == \
        ("error", {"type": "exitCode", "exitCode": 64})
    assert api.run("mirrorRemove", id="999") == \
        ("error", {"type": "exitCode", "exitCode": 68})
    assert [m["days"] for m in api.run("mirrorList")] == ["7"]

    # removed with its storage user
    api.run("mirrorRemove", id=mirror_id, purge=True)
    assert api.run("mirrorList") == []
    assert not imap_login_ok(sb, row["storage"], new)

    # a bagged domain with ETRN, a recipient list, and its usage
    bag = api.run("bagAdd", domain="cust.test",
                  etrnNet=["127.0.0.1", "192.0.2.0/24"],
                  host="127.0.0.1:2525")[0]
    assert bag["user"] == "_bag@cust.test" and bag["modes"] == "etrn"
    assert bag["etrn_nets"] == "127.0.0.1 192.0.2.0/24", bag
    api.run("bagRecipientAdd", domain="cust.test",
            address=["info@cust.test", "sales@cust.test"])
    assert sorted(r["recipient"] for r in api.run(
        "bagRecipientList", domain="cust.test")) == \
        ["info@cust.test", "sales@cust.test"]
    rcpt, data = sb.deliver(["info@cust.test", "nobody@cust.test"])
    assert [code for code, _ in rcpt] == [250, 550]
    usage = api.run("bagUsage", domain="cust.test")
    assert [(u["domain"], u["messages"]) for u in usage] == \
        [("cust.test", "1")]
    assert api.run("bagUsage", domain="cust.test", month="2026-13") == \
        ("error", {"type": "exitCode", "exitCode": 64})
    removed = api.run("bagRemove", domain="cust.test", force=True)
    assert [r["domain"] for r in removed] == ["cust.test"], removed
    assert api.run("bagList") == []


def test_wrong_key_is_refused(api_sandbox):
    """401, and no command run. (With http.client: urllib sends
    "Connection: close", and Dovecot 2.3.19's doveadm server then never
    answers a request it refuses; doc/operations.md says so.)"""
    sb, api = api_sandbox
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=30)
    conn.request("POST", "/doveadm/v1",
                 body=json.dumps([["mirrorAdd", {"source": ALICE}, "t"]]),
                 headers={"Content-Type": "application/json",
                          "Authorization": "X-Dovecot-API " +
                          base64.b64encode(b"guess").decode()})
    r = conn.getresponse()
    assert r.status == 401 and r.read() == b""
    conn.close()
    assert api.run("mirrorList") == []
