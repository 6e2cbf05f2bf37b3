"""exec() keeps a process's PID and start time: the detector must not keep calling a
capture authorized once its target runs something the token does not name.

The target is a real Python process (it maps libssl) that, on a word from the
test, exec's /usr/bin/sleep. Before the exec the capture (hook_helper passing the
real gate, plus its session file) is an ``info`` finding; after it, the session's
claim no longer holds and the hook is judged like any other.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid

import pytest

from ecap import procfs, sessions
from ecap.authz.gate import authorize_capture
from ecap.authz.verify import verify_token
from ecap.errors import AuthorizationRefused
from tests.detect.conftest import LIBSSL, PY, findings_of, scan, stop

pytestmark = [pytest.mark.bpf]

EXEC_LATER = (
    "import os, ssl, sys; print('ok', flush=True); sys.stdin.readline(); "
    "os.execv('/usr/bin/sleep', ['sleep', '600'])"
)


def _wait_exe(pid: int, path: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while os.readlink(f"/proc/{pid}/exe") != path:
        assert time.monotonic() < deadline, f"pid {pid} did not exec {path}"
        time.sleep(0.02)


def test_target_that_execs_something_else_is_no_longer_authorized(ecap_env, hook):
    victim = subprocess.Popen(
        [PY, "-c", EXEC_LATER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert victim.stdout and victim.stdout.readline().strip() == "ok"
        tok = ecap_env.authorize([victim.pid])
        sid = uuid.uuid4().hex
        token_file = ecap_env.write_token(tok, f"token-{sid}.jwt")
        h = hook(
            f"{LIBSSL}:SSL_write",
            capture_args=["--gate", str(token_file), "--gate-pid", str(victim.pid),
                          "--session-id", sid],
        )  # fmt: skip
        started = procfs.start_time(victim.pid)
        sessions.register(
            sessions.SessionRecord(
                session_id=sid, token=tok, operator="test-operator", reason="pytest",
                module="tls", targets=[sessions.SessionTarget(victim.pid, started)],
                prog_ids=h.prog_ids, capture_pid=h.pid, started_at=time.time(),
                expires_at=time.time() + 3600, jti=verify_token(tok).jti,
                journal=str(ecap_env.journal),
            )
        )  # fmt: skip
        (before,) = findings_of(scan(walk="procfs"), pid=h.pid)
        assert before["severity"] == "info" and before["authorized"], before["evidence"]
        # ecap_env journals outside the host journal: the detector says so
        assert before["authorization"]["journal_override"] == str(ecap_env.journal)
        assert any("not the host journal" in e for e in before["evidence"])

        assert victim.stdin is not None
        victim.stdin.write("\n")
        victim.stdin.flush()
        _wait_exe(victim.pid, "/usr/bin/sleep")
        assert procfs.start_time(victim.pid) == started  # what made exec invisible

        (after,) = findings_of(scan(walk="procfs"), pid=h.pid)
        assert after["severity"] == "critical" and not after["authorized"]
        assert any("exec'd something else" in e for e in after["evidence"]), after["evidence"]
        # and the gate refuses the same token for the exec'd process
        with pytest.raises(AuthorizationRefused, match="exec'd something else"):
            authorize_capture(tok, pids=[victim.pid], module="tls", mode="text")
    finally:
        stop(victim)
