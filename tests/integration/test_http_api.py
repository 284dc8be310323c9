"""The doveadm HTTP API as a hosting panel uses it: Dovecot's doveadm
server (service doveadm, inet_listener http) with doveadm_api_key, driven
with JSON only (urllib), as doc/operations.md shows with curl."""

import base64
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
