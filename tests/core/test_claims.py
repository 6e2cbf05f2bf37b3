"""Hostile claims: every claim's shape is checked where it is parsed, and nothing a
claim holds reaches the terminal unescaped.

The attack: a request whose target ``sha256`` carries terminal escape sequences
(retitle the window, clear the screen) is signed by ``authorize`` and printed raw
by ``verify``. Now ``authorize`` refuses the request (exit 2), and a token signed
with such claims anyway (another tool, an older version) is refused by
verification (exit 3) — by ``verify`` and by the gate alike.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import jwt
import pytest

from ecap import host
from ecap.authz import claims, keys, request, token
from ecap.authz.gate import authorize_capture
from ecap.errors import AuthorizationRefused, UsageError
from ecap.journal import Journal

ESCAPES = "\x1b]0;owned\x07\x1b[2J\x1b[31m"


def _request(ecap_env, pid: int) -> dict:
    r = ecap_env.run(
        "ecap-audit", "request", "--pid", str(pid), "--module", "tls", "--reason", "INC-7"
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _authorize(ecap_env, doc: dict, *extra: str) -> subprocess.CompletedProcess:
    path = ecap_env.root / "req.json"
    path.write_text(json.dumps(doc))
    return ecap_env.run(
        "ecap-audit", "authorize", str(path), "--key", str(ecap_env.key_path),
        "--operator", "alice", "--reason", "approved", *extra,
    )  # fmt: skip


def test_authorize_refuses_a_request_whose_sha256_holds_escapes(ecap_env, sleeper):
    """The attack end to end: request (CLI) → edited → authorize (CLI) refuses it."""
    doc = _request(ecap_env, sleeper.pid)
    doc["targets"][0]["sha256"] = "a" * 40 + ESCAPES
    r = _authorize(ecap_env, doc, "--out", str(ecap_env.root / "token.jwt"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "targets[0].sha256 is not a SHA-256 (64 lowercase hex digits)" in r.stderr
    assert "\x1b" not in r.stderr + r.stdout
    assert not (ecap_env.root / "token.jwt").exists()


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        (("targets", 0, "sha256"), "A" * 64, "targets[0].sha256 is not a SHA-256"),
        (("targets", 0, "pid"), True, "targets[0].pid is not a process id"),
        (("targets", 0, "pid"), 1 << 30, "targets[0].pid is not a process id"),
        (("targets", 0, "start_time"), "123", "targets[0].start_time is not a start time"),
        (("targets", 0, "exe"), "relative/" + ESCAPES, "targets[0].exe is not an absolute path"),
        (("targets", 0, "exe_ino"), -1, "targets[0].exe_ino is not a device or inode"),
        (("targets",), [], "targets is not a list of 1 to"),
        (("host", "hostname"), "evil" + ESCAPES, "host.hostname is not a host name"),
        (("host", "machine_id"), "x" * 32, "host.machine_id is not a machine-id"),
        (("reason",), "ok\x1b[2J", "reason is not printable text"),
        (("modules",), "tls", "modules is not a list"),
    ],
)
def test_request_load_and_issue_refuse_malformed_claims(ecap_env, sleeper, path, value, named):
    doc = request.build([sleeper.pid], modules=["tls"], modes=None, reason="INC-7")
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    file = ecap_env.root / "req.json"
    file.write_text(json.dumps(doc))
    with pytest.raises(UsageError, match=re.escape(named)):
        request.load(file)
    with pytest.raises(UsageError, match=re.escape(named)):
        token.issue(
            doc, keys.load_private(ecap_env.key_path), operator="a", reason="b",
            ttl_seconds=60, issuer="i",
        )  # fmt: skip


def test_authorize_refuses_an_operator_with_escapes(ecap_env, sleeper):
    r = ecap_env.run(
        "ecap-audit", "authorize", "--this-host", "--pid", str(sleeper.pid), "--module", "tls",
        "--key", str(ecap_env.key_path), "--operator", "mallory" + ESCAPES, "--reason", "x",
    )  # fmt: skip
    assert r.returncode == 2 and "--operator is not printable text" in r.stderr
    assert "\x1b" not in r.stderr + r.stdout


def _signed_anyway(ecap_env, pid: int, **target_overrides) -> str:
    """A token whose claims 'authorize' would refuse, signed with the trusted key."""
    doc = request.build([pid], modules=["tls"], modes=None, reason="INC-7")
    now = int(time.time())
    target = {k: doc["targets"][0][k] for k in ("pid", "start_time", "exe", "sha256")}
    target.update(target_overrides)
    payload = {
        "iss": "other-tool",
        "sub": "alice",
        "reason": "approved",
        "jti": uuid.uuid4().hex,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "host": {"hostname": host.hostname(), "machine_id": host.machine_id()},
        "scope": {"targets": [target], "modules": ["tls"], "modes": ["text"]},
    }
    key = keys.load_private(ecap_env.key_path)
    return jwt.encode(payload, key, algorithm="EdDSA", headers={"kid": ecap_env.kid})


def test_verify_and_gate_refuse_a_signed_token_with_a_hostile_sha256(ecap_env, sleeper):
    token = _signed_anyway(ecap_env, sleeper.pid, sha256="ab" * 8 + ESCAPES)
    path = ecap_env.write_token(token)
    for args in (("--token", str(path)), ("--token", str(path), "--json")):
        r = ecap_env.run("ecap-audit", "verify", *args)
        assert r.returncode == 3 and r.stderr.count("\n") == 1, r.stdout + r.stderr
        assert "token claims are malformed" in r.stderr
        assert "scope.targets[0].sha256 is not a SHA-256" in r.stderr
        assert "\x1b" not in r.stdout + r.stderr
    with pytest.raises(AuthorizationRefused, match=r"scope.targets.0..sha256"):
        authorize_capture(token, pids=[sleeper.pid], module="tls", mode="text")
    [refused] = [e for e in Journal().read() if e["event"] == "gate.refused"]
    assert "sha256" in refused["reason"] and "\x1b" not in refused["reason"]


@pytest.mark.parametrize(
    ("claim", "value"),
    [("sub", "mallory\x1b[2J"), ("iss", ""), ("jti", "../../etc/passwd"), ("iat", "now")],
)
def test_verify_refuses_other_malformed_signed_claims(ecap_env, sleeper, claim, value):
    token = _signed_anyway(ecap_env, sleeper.pid)
    payload = jwt.decode(token, options={"verify_signature": False})
    payload[claim] = value
    forged = jwt.encode(
        payload, keys.load_private(ecap_env.key_path), algorithm="EdDSA",
        headers={"kid": ecap_env.kid},
    )  # fmt: skip
    r = ecap_env.run("ecap-audit", "verify", "--token", str(ecap_env.write_token(forged)))
    assert r.returncode == 3 and f"token claims are malformed ({claim}" in r.stderr
    assert "\x1b" not in r.stderr


def test_a_target_whose_file_name_holds_escapes_is_authorized_and_shown_escaped(
    ecap_env, tmp_path: Path
):
    """A process chooses its own file name: refusing it would let it dodge every
    authorization, so request → authorize → verify accept it and escape it."""
    exe = tmp_path / f"sleep{ESCAPES}"
    shutil.copy2("/usr/bin/sleep", exe)
    proc = subprocess.Popen([str(exe), "600"])
    try:
        doc = _request(ecap_env, proc.pid)
        assert doc["targets"][0]["exe"] == str(exe)
        r = _authorize(ecap_env, doc, "--out", str(ecap_env.root / "token.jwt"))
        assert r.returncode == 0, r.stderr
        r = ecap_env.run(
            "ecap-audit", "verify", "--token", str(ecap_env.root / "token.jwt"),
            "--pid", str(proc.pid),
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert "\x1b" not in r.stdout and "\\x1b]0;owned\\x07" in r.stdout
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize(
    ("check", "good", "bad"),
    [
        (claims.sha256, "0" * 64, ["0" * 63, "g" * 64, None, 7]),
        (claims.jti, uuid.uuid4().hex, ["../x", "0" * 31, ""]),
        (claims.hostname, "db-1.example.org", ["", "-x", "a b", "a/b", "x" * 254, "é"]),
        (claims.pid, 4194304, [0, -1, 4194305, 1.0, True, "1"]),
        (claims.start_time, 0, [-1, 1 << 64, 2.5, False]),
    ],
)
def test_claim_checks(check, good, bad):
    assert check(good, "f") == good
    for value in bad:
        with pytest.raises(claims.ClaimError, match=r"^f is"):
            check(value, "f")
