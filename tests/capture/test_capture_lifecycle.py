"""Refusals before anything is attached, session registration, and ending cleanly.

The gate-refusal tests run the capture under a seccomp filter that kills the
process on the first system call that could attach a program: ``perf_event_open``
(every uprobe) and ``bpf`` with BPF_RAW_TRACEPOINT_OPEN or BPF_LINK_CREATE. A
refused capture that exits with its one-line error (instead of dying by SIGSYS)
has provably attached nothing; a granted capture under the same filter dies,
which shows the tripwire works.
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

from ecap.journal import Journal
from tests import tls_helpers
from tests.capture.conftest import read_stream
from tests.conftest import ecap_cmd

pytestmark = [pytest.mark.bpf, pytest.mark.slow]


_BPF_RAW_TRACEPOINT_OPEN, _BPF_LINK_CREATE = 17, 28


def _no_probes_allowed() -> None:
    """preexec_fn: any attachment (uprobe, raw tracepoint, link) kills the process."""
    f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    f.add_rule(seccomp.KILL_PROCESS, "perf_event_open")
    for cmd in (_BPF_RAW_TRACEPOINT_OPEN, _BPF_LINK_CREATE):
        f.add_rule(seccomp.KILL_PROCESS, "bpf", seccomp.Arg(0, seccomp.EQ, cmd))
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


def test_missing_pid_or_token_are_usage_errors(ecap_env, sleeper):
    token = ecap_env.write_token(ecap_env.authorize([sleeper.pid]))
    proc = ecap_env.run("ecap-audit", "capture", "tls", "--token", str(token))
    assert proc.returncode == 2
    assert "--pid" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = ecap_env.run("ecap-audit", "capture", "tls", "--pid", str(sleeper.pid))
    assert proc.returncode == 2 and "--token" in proc.stderr
    assert _gate_events(ecap_env) == []


def test_token_without_the_output_mode_is_refused_before_anything_attaches(
    ecap_env, clients, tls_server
):
    victim = tls_helpers.python_client(tls_server, "/hello")
    clients.append(victim)
    token = ecap_env.write_token(ecap_env.authorize([victim.pid], modes=["text"]))
    output = ecap_env.root / "refused.jsonl"
    code, err = _tripwired_capture(
        ecap_env, "tls", "--pid", str(victim.pid), "--token", str(token),
        "--format", "jsonl", "--output", str(output),
    )  # fmt: skip
    assert code == 3, (code, err)
    assert "mode 'jsonl' is not allowed" in err and len(err.strip().splitlines()) == 1
    assert _gate_events(ecap_env) == ["gate.refused"] and not output.exists()


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
        "ecap-audit", "capture", "nosuch", "--pid", str(sleeper.pid), "--token", str(token)
    )
    assert proc.returncode == 2 and "unknown capture module 'nosuch'" in proc.stderr
    assert "available: " in proc.stderr and "tls" in proc.stderr.split("available: ")[1]
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


_REJECTED_PROGRAM = r"""
#include <linux/types.h>
#include <linux/bpf.h>
#include <asm/ptrace.h>
#include <bpf/bpf_helpers.h>
const volatile __u32 max_chunks = 16;
const volatile __u64 wake_at_bytes = 1 << 20;
struct { __uint(type, BPF_MAP_TYPE_RINGBUF); __uint(max_entries, 1 << 16); } events SEC(".maps");
SEC("uprobe") int data_enter(struct pt_regs *ctx)
{
	char buf[8] = {};
	return buf[ctx->rdi & 0xff];  /* out of bounds: the verifier must refuse it */
}
char LICENSE[] SEC("license") = "GPL";
"""


def test_a_verifier_rejection_is_exit_4_in_one_line_and_journalled(
    ecap_env, tls_server, clients, monkeypatch, tmp_path, capsys
):
    """A program the kernel's verifier refuses (built here from C, for real) ends the
    granted capture with exit 4 and one line quoting the verifier — no traceback —
    removes the output file it had opened, and closes the grant in the journal."""
    import importlib.util

    from ecap.capture import abi, cli
    from ecap.ebpf import loader

    spec = importlib.util.spec_from_file_location(
        "build_bpf", Path(__file__).resolve().parents[2] / "scripts" / "build_bpf.py"
    )
    build_bpf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_bpf)
    source = tmp_path / "tls_rw.bpf.c"
    source.write_text(_REJECTED_PROGRAM)
    bad_dir = tmp_path / "loaders"
    bad_dir.mkdir()
    (bad_dir / "tls_rw.loader").write_bytes(build_bpf.build(source, bad_dir / "tls_rw.loader"))
    real_abi = abi.of("tls_rw")  # the record layout stays the real one
    monkeypatch.setattr(loader, "loader_dir", lambda: bad_dir)
    loader.image.cache_clear()
    monkeypatch.setattr(abi, "from_image", lambda _img: real_abi)
    for name, value in ecap_env.env.items():
        if name.startswith("ECAP_"):
            monkeypatch.setenv(name, value)

    client = tls_helpers.python_client(tls_server, "/hello")
    clients.append(client)
    token = ecap_env.write_token(ecap_env.authorize([client.pid]))
    output = ecap_env.root / "session.jsonl"
    try:
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["capture", "tls", "--pid", str(client.pid), "--token", str(token),
                      "--format", "jsonl", "--output", str(output), "--quiet"])  # fmt: skip
    finally:
        loader.image.cache_clear()
    err = capsys.readouterr().err
    assert exit_info.value.code == 4, err
    (line,) = err.strip().splitlines()
    assert "refused the tls_rw programs" in line and "verifier:" in line
    assert not output.exists()
    assert _gate_events(ecap_env) == ["gate.granted", "capture.failed"]
    failed = Journal(ecap_env.journal).read()[-1]
    assert "refused the tls_rw programs" in failed["reason"]


def _prog_exists(prog_id: int) -> bool:
    proc = subprocess.run(
        ["bpftool", "prog", "show", "id", str(prog_id)], capture_output=True, text=True
    )
    return proc.returncode == 0


def _perf_attachments(prog_ids: list[int]) -> list[dict]:
    """Every attachment of these programs, host-wide: every BPF link (uprobe_multi
    with the file it probes and its pid filter, raw tracepoints with their name),
    read from the kernel by id (Debian's bpftool predates uprobe_multi)."""
    from ecap.detect import links

    return [
        {"type": link.type, **link.info} for link in links.list_links() if link.prog_id in prog_ids
    ]


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
    assert len(prog_ids) >= 6 and all(_prog_exists(p) for p in prog_ids)
    # the probes really are attached to the target's libssl (so the check below can fail)
    attached = _perf_attachments(prog_ids)
    multi = [a for a in attached if a.get("type") == "uprobe_multi"]
    assert multi and all(a["path"].endswith("libssl.so.3") for a in multi)
    assert {a["pid"] for a in multi} == {client.pid}
    assert any(a.get("tracepoint") == "sys_enter" for a in attached)
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
    assert _perf_attachments(prog_ids) == []
    # and the target is unharmed: it completes its request normally
    tls_helpers.release(client)
    assert client.stdout.read() == tls_helpers.HELLO
    assert client.wait(30) == 0


def test_several_pids_in_one_session(ecap_env, tls_server, clients, start_capture):
    first = tls_helpers.python_client(tls_server, "/hello?n=1")
    second = tls_helpers.curl_client(tls_server, "/hello?n=2")
    clients += [first, second]
    run = start_capture([first.pid, second.pid])
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


def test_duration_stops_a_capture_whose_target_lives_on(tls_server, clients, start_capture):
    waiting = tls_helpers.python_client(tls_server, "/hello")
    clients.append(waiting)
    run = start_capture([waiting.pid], extra=("--duration", "1"))
    assert run.wait(60) == 0
    summary = run.records()[-1]
    assert summary["stop_reason"] == "duration reached"
    assert 1.0 <= summary["duration"] < 30
    assert waiting.poll() is None  # the target was not the reason it stopped


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
