"""Refusals before anything is attached, session registration, and ending cleanly.

The refusal tests run the capture under a seccomp filter that kills the process
on its first ``perf_event_open`` — the system call every uprobe and tracepoint
attachment needs. A refused capture that exits with its one-line error (instead
of dying by SIGSYS) has provably attached nothing; a granted capture under the
same filter dies, which shows the tripwire works.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import seccomp

from ecap import host
from ecap.errors import EnvironmentNotReady
from ecap.journal import Journal
from tests import tls_helpers
from tests.capture.conftest import read_stream
from tests.conftest import ecap_cmd

pytestmark = [pytest.mark.bpf, pytest.mark.slow]


def _no_probes_allowed() -> None:
    """preexec_fn: any perf_event_open (probe attachment) kills the process."""
    f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    f.add_rule(seccomp.KILL_PROCESS, "perf_event_open")
    f.load()


def _tripwired_capture(ecap_env, *args: str) -> tuple[int, str]:
    """Run ``ecap-audit capture ARGS`` where attaching a probe is fatal."""
    proc = subprocess.run(
        [ecap_cmd("ecap-audit"), "capture", *args],
        env=ecap_env.env,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_no_probes_allowed,
    )
    return proc.returncode, proc.stderr


def _gate_events(ecap_env) -> list[str]:
    return [
        e["event"]
        for e in Journal(ecap_env.journal).read()
        if not e["event"].startswith("journal.")
    ]


def test_refused_without_pid(ecap_env, sleeper):
    token = ecap_env.write_token(ecap_env.authorize([sleeper.pid]))
    code, err = _tripwired_capture(ecap_env, "tls", "--token", str(token))
    assert code == 2
    assert "--pid" in err and len(err.strip().splitlines()) == 1


def test_refused_without_token(ecap_env, sleeper):
    code, err = _tripwired_capture(ecap_env, "tls", "--pid", str(sleeper.pid))
    assert code == 2 and "--token" in err


def test_refused_with_token_for_another_pid(ecap_env, sleeper, clients, tls_server):
    victim = tls_helpers.python_client(tls_server, "/hello")
    clients.append(victim)
    token = ecap_env.write_token(ecap_env.authorize([sleeper.pid]))
    code, err = _tripwired_capture(ecap_env, "tls", "--pid", str(victim.pid), "--token", str(token))
    assert code == 3, err
    assert len(err.strip().splitlines()) == 1
    assert _gate_events(ecap_env) == ["gate.refused"]
    assert not (ecap_env.run_dir / "sessions").exists() or not list(
        (ecap_env.run_dir / "sessions").glob("*.json")
    )
    # the tripwire is real: the same capture with a valid token dies attaching
    token = ecap_env.write_token(ecap_env.authorize([victim.pid]), "good.jwt")
    code, err = _tripwired_capture(
        ecap_env,
        "tls",
        "--pid",
        str(victim.pid),
        "--token",
        str(token),
        "--format",
        "jsonl",
        "--output",
        str(ecap_env.root / "x.jsonl"),
    )
    assert code == -signal.SIGSYS, (code, err)


def test_bad_flags_are_usage_errors(ecap_env, tmp_path, sleeper):
    token = ecap_env.write_token(ecap_env.authorize([sleeper.pid]))
    for extra, needle in (
        (["--ring-size", "3"], "--ring-size"),
        (["--max-call-bytes", "1000"], "--max-call-bytes"),
        (["--duration", "0"], "--duration"),
        (["--output", str(tmp_path / "missing" / "out.txt")], "directory"),
    ):
        proc = ecap_env.run(
            "ecap-audit", "capture", "tls", "--pid", str(sleeper.pid), "--token", str(token), *extra
        )
        assert proc.returncode == 2, (extra, proc.stderr)
        assert needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = ecap_env.run(
        "ecap-audit", "capture", "gnutls", "--pid", str(sleeper.pid), "--token", str(token)
    )
    assert proc.returncode == 2 and "unknown capture module" in proc.stderr
    assert _gate_events(ecap_env) == []  # all refused before the gate


def test_process_without_tls_library_is_named_in_the_error(ecap_env, sleeper):
    token = ecap_env.write_token(ecap_env.authorize([sleeper.pid]))
    output = ecap_env.root / "never.jsonl"
    proc = ecap_env.run(
        "ecap-audit",
        "capture",
        "tls",
        "--pid",
        str(sleeper.pid),
        "--token",
        str(token),
        "--output",
        str(output),
    )
    assert proc.returncode == 2
    assert f"process {sleeper.pid} ('sleep') maps no libssl" in proc.stderr
    assert "SSL_write/SSL_read" in proc.stderr
    # granted, but nothing started: the journal closes the grant, no output file exists
    assert _gate_events(ecap_env) == ["gate.granted", "capture.failed"]
    failed = next(e for e in Journal(ecap_env.journal).read() if e["event"] == "capture.failed")
    assert "maps no libssl" in failed["reason"] and failed["pids"] == [sleeper.pid]
    assert not output.exists()


def test_failure_after_the_output_is_opened_removes_it_and_is_journalled(
    ecap_env, tls_server, clients, monkeypatch
):
    """A kernel-side failure between grant and start (here: the program cannot be
    built) leaves no empty output file and a capture.failed entry."""
    from ecap.authz.gate import authorize_capture
    from ecap.capture import engine

    client = tls_helpers.python_client(tls_server, "/hello")
    clients.append(client)
    grant = authorize_capture(
        ecap_env.authorize([client.pid]), pids=[client.pid], module="tls", mode="jsonl"
    )

    class Unbuildable:
        def __init__(self, **_: object) -> None:
            raise EnvironmentNotReady("cannot compile the capture program (test)")

    monkeypatch.setattr(engine, "Probes", Unbuildable)
    output = ecap_env.root / "session.jsonl"
    with pytest.raises(EnvironmentNotReady):
        engine.run_capture(
            grant,
            [client.pid],
            engine.CaptureOptions(fmt="jsonl", output=output, quiet=True),
            journal=Journal(ecap_env.journal),
        )
    assert not output.exists()
    assert _gate_events(ecap_env) == ["gate.granted", "capture.failed"]


def _prog_exists(prog_id: int) -> bool:
    proc = subprocess.run(
        ["bpftool", "prog", "show", "id", str(prog_id)], capture_output=True, text=True
    )
    return proc.returncode == 0


def _session_file(ecap_env) -> dict:
    files = list((ecap_env.run_dir / "sessions").glob("*.json"))
    assert len(files) == 1, files
    assert oct(files[0].stat().st_mode & 0o777) == "0o600"
    return json.loads(files[0].read_text())


def test_session_registered_while_running_and_sigkill_leaves_nothing_attached(
    ecap_env, tls_server, clients, start_capture
):
    client = tls_helpers.python_client(tls_server, "/hello")
    clients.append(client)
    run = start_capture([client.pid])
    session = _session_file(ecap_env)
    assert session["schema"] == "ecap.session/1"
    assert session["capture_pid"] == run.proc.pid
    assert [t["pid"] for t in session["targets"]] == [client.pid]
    assert session["token"] and session["operator"] == "test-operator"
    prog_ids = session["prog_ids"]
    assert len(prog_ids) >= 10 and all(_prog_exists(p) for p in prog_ids)
    # the programs are held by the capture process (fdinfo names them)
    held = set()
    for fd in os.listdir(f"/proc/{run.proc.pid}/fdinfo"):
        try:
            text = Path(f"/proc/{run.proc.pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("prog_id:"):
                held.add(int(line.split()[1]))
    assert set(prog_ids) <= held

    run.proc.send_signal(signal.SIGKILL)
    assert run.wait(30) == -signal.SIGKILL
    deadline = time.monotonic() + 20
    while any(_prog_exists(p) for p in prog_ids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in prog_ids if _prog_exists(p)], "programs still loaded after SIGKILL"
    tracefs = host.tracefs_root()
    if tracefs is not None:
        events = (tracefs / "uprobe_events").read_text()
        assert f"bcc_{run.proc.pid}" not in events
    # and the target is unharmed: it completes its request normally
    tls_helpers.release(client)
    assert client.stdout.read() == tls_helpers.HELLO
    assert client.wait(30) == 0


def test_duration_and_several_pids(ecap_env, tls_server, clients, start_capture):
    first = tls_helpers.python_client(tls_server, "/hello?n=1")
    second = tls_helpers.curl_client(tls_server, "/hello?n=2")
    clients += [first, second]
    run = start_capture([first.pid, second.pid], extra=("--duration", "6"))
    tls_helpers.release(first)
    tls_helpers.release_curl(second, tls_server.url("/hello?n=2"))
    first.wait(30)
    second.wait(30)
    assert run.wait(60) == 0, run.stderr
    records = run.records()
    assert records[-1]["stop_reason"] == "all targets exited"
    assert b"/hello?n=1" in read_stream(records, "write", first.pid)
    assert b"/hello?n=2" in read_stream(records, "write", second.pid)
    conns = [r for r in records if r["type"] == "connection"]
    assert {c["pid"] for c in conns} == {first.pid, second.pid}

    waiting = tls_helpers.python_client(tls_server, "/hello")
    clients.append(waiting)
    run = start_capture([waiting.pid], extra=("--duration", "1"))
    assert run.wait(60) == 0
    assert run.records()[-1]["stop_reason"] == "duration reached"


def test_token_expiry_stops_the_capture(ecap_env, tls_server, clients, start_capture):
    waiting = tls_helpers.python_client(tls_server, "/hello")
    clients.append(waiting)
    token = ecap_env.write_token(ecap_env.authorize([waiting.pid], ttl="8s"))
    proc = subprocess.run(
        [
            ecap_cmd("ecap-audit"),
            "capture",
            "tls",
            "--pid",
            str(waiting.pid),
            "--token",
            str(token),
            "--format",
            "jsonl",
            "--output",
            str(ecap_env.root / "exp.jsonl"),
        ],
        env=ecap_env.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "capture stopped: token expired" in proc.stderr
