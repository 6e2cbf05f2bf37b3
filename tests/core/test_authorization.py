"""The authorization gate: a round trip, and every refusal with its exact reason.

Tokens are made the real way (request from live processes, signed with an
Ed25519 key in a temporary trust directory) and then broken one property at a
time. Library-level refusals assert the message; CLI ones assert exit code 3.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ecap import host, procfs
from ecap.authz import keys, request, revocation, token
from ecap.authz.gate import authorize_capture
from ecap.authz.verify import verify_token
from ecap.errors import AuthorizationRefused, UsageError
from ecap.journal import Journal
from tests import tls_helpers


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims_of(text: str) -> dict:
    return jwt.decode(text, options={"verify_signature": False})


def refused(text: str, match: str, **kwargs) -> None:
    with pytest.raises(AuthorizationRefused, match=match):
        authorize_capture(
            text, **{"pids": kwargs.pop("pids"), "module": "tls", "mode": "text", **kwargs}
        )


def test_round_trip_grants_and_journals(ecap_env, sleeper):
    text = ecap_env.authorize([sleeper.pid], reason="INC-7 exfil check")
    grant = authorize_capture(text, pids=[sleeper.pid], module="tls", mode="jsonl")
    assert grant.pids == (sleeper.pid,)
    assert grant.targets[0].start_time == procfs.start_time(sleeper.pid)
    assert grant.targets[0].sha256 == procfs.exe_sha256(sleeper.pid)
    assert grant.operator == "test-operator" and grant.reason == "INC-7 exfil check"
    assert grant.hostname == host.hostname() and grant.machine_id == host.machine_id()
    entry = [e for e in Journal().read() if e["event"].startswith("gate.")][-1]
    assert entry["event"] == "gate.granted" and entry["jti"] == grant.jti
    assert entry["pids"] == [sleeper.pid]


def test_cli_request_authorize_verify(ecap_env, sleeper):
    req = ecap_env.root / "req.json"
    tok = ecap_env.root / "tok.jwt"
    r = ecap_env.run(
        "ecap-audit",
        "request",
        "--pid",
        str(sleeper.pid),
        "--module",
        "tls",
        "--reason",
        "INC-9",
        "--out",
        str(req),
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(req.read_text())
    assert doc["targets"][0]["start_time"] == procfs.start_time(sleeper.pid)
    assert doc["host"]["machine_id"] == host.machine_id()
    r = ecap_env.run(
        "ecap-audit",
        "authorize",
        str(req),
        "--key",
        str(ecap_env.key_path),
        "--operator",
        "bob",
        "--reason",
        "INC-9 approved",
        "--ttl",
        "30m",
        "--out",
        str(tok),
    )
    assert r.returncode == 0, r.stderr
    assert tok.stat().st_mode & 0o777 == 0o600
    r = ecap_env.run(
        "ecap-audit", "verify", "--token", str(tok), "--pid", str(sleeper.pid), "--json"
    )
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert shown["operator"] == "bob" and shown["targets"][0]["pid"] == sleeper.pid
    assert shown["expires_at"] - shown["issued_at"] == 1800
    r = ecap_env.run("ecap-audit", "verify", "--token", str(tok), "--pid", "1")
    assert r.returncode == 3
    assert r.stderr.strip().count("\n") == 0
    assert "PID 1 is not in the token's scope" in r.stderr


def test_bad_signature(ecap_env, sleeper):
    head, payload, sig = ecap_env.authorize([sleeper.pid]).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "mallory"
    forged = ".".join([head, b64(json.dumps(claims).encode()), sig])
    refused(forged, "signature does not verify", pids=[sleeper.pid])


def test_unknown_kid(ecap_env, sleeper):
    stranger = Ed25519PrivateKey.generate()
    req = request.build([sleeper.pid], modules=["tls"], modes=None, reason="x")
    text = token.issue(req, stranger, operator="o", reason="r", ttl_seconds=600, issuer="i")
    refused(text, "signed by unknown key", pids=[sleeper.pid])


def test_kid_with_path_characters_is_never_a_path(ecap_env, sleeper):
    key = keys.load_private(ecap_env.key_path)
    claims = claims_of(ecap_env.authorize([sleeper.pid]))
    for kid in ("../../../etc/passwd", "/etc/ecap/trusted-keys/x", ecap_env.kid + "/.."):
        text = jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid})
        refused(text, "kid is not a key fingerprint", pids=[sleeper.pid])


def test_alg_none(ecap_env, sleeper):
    claims = claims_of(ecap_env.authorize([sleeper.pid]))
    header = {"alg": "none", "typ": "JWT", "kid": ecap_env.kid}
    text = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}."
    refused(text, r"algorithm 'none' is not allowed", pids=[sleeper.pid])


def test_hs256_with_public_key_as_secret(ecap_env, sleeper):
    claims = claims_of(ecap_env.authorize([sleeper.pid]))
    pub_pem = (ecap_env.trust_dir / f"{ecap_env.kid}.pub").read_bytes()
    header = {"alg": "HS256", "typ": "JWT", "kid": ecap_env.kid}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    import hashlib
    import hmac

    sig = hmac.new(pub_pem, signing_input.encode(), hashlib.sha256).digest()
    refused(f"{signing_input}.{b64(sig)}", r"algorithm 'HS256' is not allowed", pids=[sleeper.pid])


def test_expired(ecap_env, sleeper):
    text = ecap_env.authorize([sleeper.pid], ttl="1h", now=time.time() - 3 * 3600)
    refused(text, "token expired at", pids=[sleeper.pid])


def test_not_yet_valid(ecap_env, sleeper):
    text = ecap_env.authorize([sleeper.pid], ttl="1h", now=time.time() + 3600)
    refused(text, "token is not valid before", pids=[sleeper.pid])


def test_lifetime_over_cap_refused_on_issue_and_on_verify(ecap_env, sleeper):
    with pytest.raises(UsageError, match="exceeds the maximum token lifetime"):
        ecap_env.authorize([sleeper.pid], ttl="25h")
    # A signer that ignores the cap (another tool, an old version) is still refused.
    text = ecap_env.authorize([sleeper.pid], ttl="48h", max_lifetime=10**6)
    refused(text, r"lifetime 172800s exceeds the maximum of 86400s", pids=[sleeper.pid])


def _issue_for_host(ecap_env, pid: int, **host_fields) -> str:
    req = request.build([pid], modules=["tls"], modes=None, reason="x")
    req["host"].update(host_fields)
    return token.issue(
        req,
        keys.load_private(ecap_env.key_path),
        operator="o",
        reason="r",
        ttl_seconds=600,
        issuer="i",
    )


def test_wrong_host(ecap_env, sleeper):
    refused(
        _issue_for_host(ecap_env, sleeper.pid, hostname="db-7.prod"),
        r"token is for host 'db-7.prod'",
        pids=[sleeper.pid],
    )


def test_wrong_machine_id(ecap_env, sleeper):
    refused(
        _issue_for_host(ecap_env, sleeper.pid, machine_id="0" * 32),
        "machine-id does not match",
        pids=[sleeper.pid],
    )


def test_pid_not_in_scope(ecap_env, sleeper):
    other = subprocess.Popen(["sleep", "60"])
    try:
        refused(
            ecap_env.authorize([sleeper.pid]),
            f"PID {other.pid} is not in the token's scope",
            pids=[other.pid],
        )
    finally:
        other.kill()
        other.wait()


def test_recycled_pid_with_other_start_time_is_refused(ecap_env):
    first = subprocess.Popen(["sleep", "60"])
    pid = first.pid
    started = procfs.start_time(pid)
    text = ecap_env.authorize([pid])
    first.kill()
    first.wait()
    # Start times are in clock ticks (10 ms): recycle the PID until the newcomer's
    # start time differs, as it always does when a PID really changes hands.
    second = None
    deadline = time.monotonic() + 20
    while second is None and time.monotonic() < deadline:
        second = tls_helpers.spawn_with_pid(pid, ["sleep", "60"])
        if second is not None and procfs.start_time(pid) == started:
            tls_helpers.stop_process(second)
            second = None
    assert second is not None, "could not recycle the PID (ns_last_pid race)"
    try:
        refused(text, f"PID {pid} is a different process .* the PID was reused", pids=[pid])
    finally:
        second.kill()
        second.wait()


def test_exited_target_is_refused(ecap_env):
    proc = subprocess.Popen(["sleep", "60"])
    text = ecap_env.authorize([proc.pid])
    proc.kill()
    proc.wait()
    refused(text, f"PID {proc.pid} is not running", pids=[proc.pid])


def test_module_and_mode_not_allowed(ecap_env, sleeper):
    text = ecap_env.authorize([sleeper.pid], modes=["jsonl"])
    with pytest.raises(
        AuthorizationRefused, match=r"module 'bash' is not allowed by the token \(allowed: tls\)"
    ):
        authorize_capture(text, pids=[sleeper.pid], module="bash", mode="jsonl")
    with pytest.raises(
        AuthorizationRefused, match=r"mode 'text' is not allowed by the token \(allowed: jsonl\)"
    ):
        authorize_capture(text, pids=[sleeper.pid], module="tls", mode="text")


def test_revoked_token_and_revoked_key(ecap_env, sleeper):
    key = keys.load_private(ecap_env.key_path)
    first = ecap_env.authorize([sleeper.pid])
    second = ecap_env.authorize([sleeper.pid])
    revocation.revoke(ecap_env.trust_dir, key, jtis=[claims_of(first)["jti"]], kids=[])
    refused(first, f"token {claims_of(first)['jti']} has been revoked", pids=[sleeper.pid])
    assert authorize_capture(second, pids=[sleeper.pid], module="tls", mode="text")
    r = ecap_env.run("ecap-audit", "revoke", "--key", str(ecap_env.key_path), "--kid", ecap_env.kid)
    assert r.returncode == 0, r.stderr
    refused(second, "the key that signed this token .* is revoked", pids=[sleeper.pid])


def test_tampered_revocation_list_fails_closed(ecap_env, sleeper):
    key = keys.load_private(ecap_env.key_path)
    text = ecap_env.authorize([sleeper.pid])
    path, _ = revocation.revoke(ecap_env.trust_dir, key, jtis=["0" * 32], kids=[])
    head, payload, sig = path.read_text().strip().split(".")
    emptied = json.loads(base64.urlsafe_b64decode(payload + "=="))
    emptied["jtis"] = []
    path.write_text(".".join([head, b64(json.dumps(emptied).encode()), sig]))
    refused(text, "revocation list .* does not verify .* refusing all tokens", pids=[sleeper.pid])


def test_single_use_refused_on_second_use(ecap_env, sleeper):
    text = ecap_env.authorize([sleeper.pid], single_use=True)
    authorize_capture(text, pids=[sleeper.pid], module="tls", mode="text")
    refused(text, "single-use token .* has already been used", pids=[sleeper.pid])
    # verify never consumes: it still reports the token itself as valid
    assert verify_token(text).single_use


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda t: "garbage", "not a well-formed JWT"),
        (
            lambda t: t[: len(t) // 2],
            "not a well-formed JWT|signature does not verify|not valid base64url",
        ),
        (lambda t: t.rsplit(".", 1)[0], "not a well-formed JWT"),
        (lambda t: t + "A" * 20000, "larger than 16384 bytes"),
        (lambda t: "e30." + t.split(".", 1)[1], "algorithm None is not allowed"),
        (lambda t: "%%%." + t.split(".", 1)[1], "not a well-formed JWT"),
    ],
)
def test_garbage_truncated_oversized(ecap_env, sleeper, mangle, reason):
    refused(mangle(ecap_env.authorize([sleeper.pid])), reason, pids=[sleeper.pid])


def test_every_refusal_is_journalled(ecap_env, sleeper):
    refused("garbage", "not a well-formed JWT", pids=[sleeper.pid])
    last = [e for e in Journal().read() if e["event"].startswith("gate.")][-1]
    assert last["event"] == "gate.refused"
    assert "not a well-formed JWT" in last["reason"] and last["pids"] == [sleeper.pid]


def test_cli_refusals_exit_3_with_one_line(ecap_env, sleeper):
    tok = ecap_env.write_token(ecap_env.authorize([sleeper.pid], ttl="1h", now=time.time() - 7200))
    r = ecap_env.run("ecap-audit", "verify", "--token", str(tok))
    assert r.returncode == 3
    assert r.stderr.startswith("ecap-audit: error: token expired at") and r.stderr.count("\n") == 1


def test_private_key_is_0600_and_passphrase_protected(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("correct horse\n")
    key_path, pub_path, kid = keys.generate(tmp_path / "k", passphrase=b"correct horse")
    assert key_path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(UsageError, match="ECAP_KEY_PASSPHRASE"):
        keys.load_private(key_path)
    loaded = keys.load_private(key_path, keys.read_passphrase(str(pw)))
    assert keys.fingerprint(loaded.public_key()) == kid
    pub = serialization.load_pem_public_key(pub_path.read_bytes())
    assert keys.fingerprint(pub) == kid
    with pytest.raises(UsageError, match="already exists"):
        keys.generate(tmp_path / "k")
    assert os.path.exists(pub_path)


def test_trust_file_with_wrong_key_under_a_fingerprint_name(ecap_env, sleeper):
    text = ecap_env.authorize([sleeper.pid])
    other = Ed25519PrivateKey.generate().public_key()
    (ecap_env.trust_dir / f"{ecap_env.kid}.pub").write_bytes(keys.public_pem(other))
    refused(text, "does not hold the key its name claims", pids=[sleeper.pid])
