"""Authorized or rogue: a session file is a claim, checked against token, journal and kernel.

These tests stand in for a live ``ecap-audit capture`` with hook_helper (a real
uprobe on SSL_write) plus a session registered the way the capture engine does,
so each check of the correlation can be broken on purpose. Test (a), with the
real capture engine, is in test_capture_scan.py.
"""

from __future__ import annotations

import time
import uuid

import pytest

from ecap import procfs, sessions
from ecap.authz import keys, request, token
from ecap.authz.gate import authorize_capture
from ecap.authz.verify import verify_token
from tests.detect.conftest import LIBSSL, findings_of, functions, scan

pytestmark = [pytest.mark.bpf, pytest.mark.usefixtures("each_walk")]


def _register(
    ecap_env,
    tok: str,
    *,
    hook_pid: int,
    prog_ids: list[int],
    victim_pid: int,
    jti: str = "",
    session_id: str | None = None,
) -> str:
    session_id = session_id or uuid.uuid4().hex
    sessions.register(
        sessions.SessionRecord(
            session_id=session_id,
            token=tok,
            operator="test-operator",
            reason="pytest",
            module="tls",
            targets=[sessions.SessionTarget(victim_pid, procfs.start_time(victim_pid))],
            prog_ids=prog_ids,
            capture_pid=hook_pid,
            started_at=time.time(),
            expires_at=time.time() + 3600,
            jti=jti,
        ),
        ecap_env.run_dir,
    )
    return session_id


def _as_capture(ecap_env, tok: str, victim_pid: int, session_id: str) -> list[str]:
    """hook_helper options that make it pass the gate and journal its start, like ecap-audit."""
    path = ecap_env.write_token(tok, f"token-{session_id}.jwt")
    return ["--gate", str(path), "--gate-pid", str(victim_pid), "--session-id", session_id]


def test_verified_session_makes_the_hook_an_info_finding(ecap_env, hook, tls_victim):
    tok = ecap_env.authorize([tls_victim.pid], operator="alice", reason="incident 42")
    sid = uuid.uuid4().hex
    h = hook(
        f"{LIBSSL}:SSL_write",
        f"{LIBSSL}:SSL_read",
        capture_args=_as_capture(ecap_env, tok, tls_victim.pid, sid),
    )
    grant = verify_token(tok)
    _register(
        ecap_env,
        tok,
        hook_pid=h.pid,
        prog_ids=h.prog_ids,
        victim_pid=tls_victim.pid,
        jti=grant.jti,
        session_id=sid,
    )
    (f,) = findings_of(scan(), pid=h.pid)
    assert f["severity"] == "info"
    assert f["authorized"] is True
    assert f["authorization"]["operator"] == "alice"
    assert f["authorization"]["reason"] == "incident 42"
    assert f["authorization"]["expires_at"] == pytest.approx(grant.expires_at)
    assert functions(f) == {("SSL_write", "uprobe"), ("SSL_read", "uprobe")}
    targets = [v for v in f["victims"] if v.get("authorized_target")]
    assert [v["pid"] for v in targets] == [tls_victim.pid]


def test_expired_token_still_attached_is_high(ecap_env, hook, tls_victim):
    past = time.time() - 7200
    tok = ecap_env.authorize([tls_victim.pid], ttl="1h", now=past)
    claims = __import__("jwt").decode(tok, options={"verify_signature": False})
    # the gate granted it two hours ago (the gate itself refuses expired tokens today),
    # to the process that still holds the programs
    sid = uuid.uuid4().hex
    h = hook(
        f"{LIBSSL}:SSL_write",
        capture_args=[
            "--grant-jti",
            claims["jti"],
            "--gate-pid",
            str(tls_victim.pid),
            "--session-id",
            sid,
        ],
    )
    _register(
        ecap_env,
        tok,
        hook_pid=h.pid,
        prog_ids=h.prog_ids,
        victim_pid=tls_victim.pid,
        jti=claims["jti"],
        session_id=sid,
    )
    (f,) = findings_of(scan(), pid=h.pid)
    assert f["severity"] == "high"
    assert f["authorized"] is False
    assert f["authorization"]["jti"] == claims["jti"]
    assert "expired" in f["title"].lower()


def _untrusted_token(ecap_env, pid: int, tmp_path) -> str:
    prefix = tmp_path / "mallory"
    keys.generate(prefix)  # a key that is NOT in the trust dir
    req = request.build([pid], modules=["tls"], modes=["text"], reason="forged")
    return token.issue(
        req,
        keys.load_private(f"{prefix}.key"),
        operator="mallory",
        reason="forged",
        ttl_seconds=3600,
        issuer="mallory",
    )


@pytest.mark.parametrize(
    "forgery", ["untrusted-key", "no-journal-grant", "wrong-holder", "garbage-token"]
)
def test_forged_session_is_not_accepted(ecap_env, hook, tls_victim, tmp_path, forgery):
    h = hook(f"{LIBSSL}:SSL_write")
    other = hook(f"{LIBSSL}:SSL_CTX_new")
    jti = ""
    holder = h.pid
    if forgery == "untrusted-key":
        tok = _untrusted_token(ecap_env, tls_victim.pid, tmp_path)
    elif forgery == "garbage-token":
        tok = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."
    else:
        tok = ecap_env.authorize([tls_victim.pid])
        if forgery == "wrong-holder":
            jti = authorize_capture(tok, pids=[tls_victim.pid], module="tls", mode="text").jti
            holder = other.pid  # the session says another process holds the rogue programs
    _register(
        ecap_env, tok, hook_pid=holder, prog_ids=h.prog_ids, victim_pid=tls_victim.pid, jti=jti
    )
    doc = scan()
    (f,) = findings_of(doc, pid=h.pid)
    assert f["severity"] == "critical"
    assert f["authorized"] is False
    assert f["authorization"] == {}
    assert any("not accepted" in e for e in f["evidence"])
    (s,) = doc["inventory"]["sessions"]
    assert s["status"] == "rejected"


def test_genuine_token_copied_into_a_session_for_another_process_is_rejected(
    ecap_env, hook, tls_victim
):
    """A real, live authorization cannot be borrowed: the journal says which process the
    gate granted it to and which programs that process started with."""
    tok = ecap_env.authorize([tls_victim.pid])
    sid = uuid.uuid4().hex
    legit = hook(f"{LIBSSL}:SSL_read", capture_args=_as_capture(ecap_env, tok, tls_victim.pid, sid))
    jti = verify_token(tok).jti
    _register(
        ecap_env,
        tok,
        hook_pid=legit.pid,
        prog_ids=legit.prog_ids,
        victim_pid=tls_victim.pid,
        jti=jti,
        session_id=sid,
    )
    rogue = hook(f"{LIBSSL}:SSL_write")
    # same token, same jti; even the legitimate session id
    _register(
        ecap_env,
        tok,
        hook_pid=rogue.pid,
        prog_ids=rogue.prog_ids,
        victim_pid=tls_victim.pid,
        jti=jti,
        session_id=sid + "0",
    )
    doc = scan()
    (f,) = findings_of(doc, pid=rogue.pid)
    assert f["severity"] == "critical" and f["authorized"] is False
    (ok,) = findings_of(doc, pid=legit.pid)
    assert ok["severity"] == "info" and ok["authorized"] is True
    statuses = {s["session_id"]: s for s in doc["inventory"]["sessions"]}
    assert statuses[sid]["status"] == "authorized"
    assert statuses[sid + "0"]["status"] == "rejected"
    assert "gate.granted" in statuses[sid + "0"]["reason"]


def test_malformed_session_file_is_rejected_not_fatal(ecap_env, hook):
    h = hook(f"{LIBSSL}:SSL_write")
    sessions_dir = ecap_env.run_dir / "sessions"
    sessions_dir.mkdir(parents=True, exist_ok=True)
    (sessions_dir / "junk.json").write_text(
        __import__("json").dumps(
            {
                "schema": "ecap.session/1",
                "session_id": "junk",
                "token": 12345,
                "operator": "x",
                "reason": "y",
                "module": "tls",
                "targets": [{"pid": "../../etc", "start_time": "x"}],
                "prog_ids": h.prog_ids,
                "capture_pid": h.pid,
                "started_at": 0,
                "expires_at": 0,
            }
        )
    )
    (sessions_dir / "notjson.json").write_text("{")
    doc = scan()
    (f,) = findings_of(doc, pid=h.pid)
    assert f["severity"] == "critical" and not f["authorized"]
    rejected = {s["session_id"]: s for s in doc["inventory"]["sessions"]}
    assert rejected["junk"]["status"] == "rejected"
    assert rejected["notjson"]["status"] == "rejected"
    assert "not JSON" in rejected["notjson"]["reason"]


def test_a_token_granting_no_module_authorizes_no_session(ecap_env, hook, tls_victim):
    """The gate refuses a token whose module list is empty; the detector did not (fail-open)."""
    tok = ecap_env.authorize([tls_victim.pid], modules=())
    jti = __import__("jwt").decode(tok, options={"verify_signature": False})["jti"]
    sid = uuid.uuid4().hex
    h = hook(
        f"{LIBSSL}:SSL_write",
        capture_args=["--grant-jti", jti, "--gate-pid", str(tls_victim.pid), "--session-id", sid],
    )
    _register(
        ecap_env,
        tok,
        hook_pid=h.pid,
        prog_ids=h.prog_ids,
        victim_pid=tls_victim.pid,
        jti=jti,
        session_id=sid,
    )
    doc = scan()
    (f,) = findings_of(doc, pid=h.pid)
    assert f["severity"] == "critical" and f["authorized"] is False
    (verdict,) = [s for s in doc["inventory"]["sessions"] if s["session_id"] == sid]
    assert verdict["status"] == "rejected"
    assert "module 'tls' is not allowed by the token (allowed: none)" in verdict["reason"]
