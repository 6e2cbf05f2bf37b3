"""Fixtures for detector tests: real hooks on the real kernel, always torn down.

Every fixture that creates a kernel object (program, uprobe, tracefs event, bpffs
mount) removes it in its teardown, and tests assert only on the objects they
created — other engineers' programs may be loaded on this kernel at the same time.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ecap.detect.scan import ScanOptions, run_scan

HERE = Path(__file__).parent
LIBSSL = "/usr/lib/x86_64-linux-gnu/libssl.so.3"
PY = sys.executable


@dataclass
class Hook:
    proc: subprocess.Popen[str] | None
    pid: int
    prog_ids: list[int]
    facts: dict = field(default_factory=dict)
    """Everything the helper printed (port, file, jti...)."""


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def remove_bcc_tracefs_events(pid: int) -> None:
    """bcc (and bpftrace through it) may fall back to tracefs and name events
    ``..._bcc_<pid>`` (our bcc sniffer: ``..._ecaptest_..._<pid>``); a killed tool
    leaves them behind, so tests remove their own."""
    from ecap import host
    from ecap.detect.tracefs import parse_events  # the one uprobe_events parser

    root = host.tracefs_root()
    if root is None:
        return
    events = parse_events((root / "uprobe_events").read_text(), uprobe=True)
    for name in (f"{ev.group}/{ev.event}" for ev in events):
        if name.endswith((f"_bcc_{pid}", f"_{pid}")) and ("_bcc_" in name or "ecaptest" in name):
            fd = os.open(root / "uprobe_events", os.O_WRONLY | os.O_APPEND)
            try:
                os.write(fd, f"-:{name}\n".encode())
            except OSError:
                pass
            finally:
                os.close(fd)


def read_ready(proc: subprocess.Popen[str], *, timeout: float = 60) -> dict:
    """The helper's JSON line (it prints it once the hooks are attached)."""
    line = proc.stdout.readline() if proc.stdout else ""
    if not line:
        err = proc.stderr.read() if proc.stderr else ""
        raise AssertionError(f"helper exited before attaching: {err}")
    return json.loads(line)


@pytest.fixture
def hook() -> Iterator[Callable[..., Hook]]:
    """Start tests/detect/hook_helper.py; every helper is stopped at teardown."""
    procs: list[subprocess.Popen[str]] = []

    def start(
        *targets: str,
        mode: str = "ioctl",
        ret: bool = False,
        comm: str | None = None,
        map_name: str | None = None,
        pin: str | None = None,
        capture_args: list[str] = (),
        program: str = "sniff",
    ) -> Hook:
        """``capture_args``: hook_helper's --gate/--grant-jti/--session-id options;
        ``program``: ``sniff`` (reads and ships the buffer), ``counter`` or ``signal``."""
        cmd = [PY, str(HERE / "hook_helper.py"), "--mode", mode, "--program", program]
        cmd += list(capture_args)
        if ret:
            cmd.append("--ret")
        if comm:
            cmd += ["--comm", comm]
        if map_name:
            cmd += ["--map-name", map_name]
        if pin:
            cmd += ["--pin", pin]
        proc = subprocess.Popen(
            [*cmd, *targets], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        procs.append(proc)
        info = read_ready(proc)
        if pin:
            proc.wait(timeout=30)
        return Hook(proc, info["pid"], info["prog_ids"], info)

    try:
        yield start
    finally:
        for p in procs:
            stop(p)


@pytest.fixture
def tls_victim() -> Iterator[subprocess.Popen[str]]:
    """A process that maps libssl.so.3 (Python with ssl imported), killed after."""
    proc = subprocess.Popen(
        [PY, "-c", "import ssl, sys, time; print('ok', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout and proc.stdout.readline().strip() == "ok"
        yield proc
    finally:
        stop(proc)


@pytest.fixture
def private_bpffs(tmp_path: Path) -> Iterator[Path]:
    """A bpffs mounted on a temp dir (unmounted, with its pins removed, after)."""
    mnt = tmp_path / "bpffs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "bpf", "bpf", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        for entry in mnt.iterdir():
            with contextlib.suppress(OSError):
                entry.unlink()
        subprocess.run(["umount", str(mnt)], check=True)


_walk = "auto"


@pytest.fixture(params=["procfs", "kernel"])
def each_walk(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test once with each fd walk: both must find the same things.

    ``auto`` would pick ``/proc`` on a test machine's few hundred processes, so
    without this the in-kernel walk would go untested.
    """
    global _walk
    _walk = request.param
    try:
        yield request.param
    finally:
        _walk = "auto"


def scan(**kwargs) -> dict:
    kwargs.setdefault("walk", _walk)
    doc = run_scan(ScanOptions(**kwargs))
    assert kwargs["walk"] == "auto" or doc["scanner"]["walk"] == kwargs["walk"]
    return doc


def findings_of(
    doc: dict, *, pid: int | None = None, pinned: str | None = None, event: str | None = None
) -> list[dict]:
    """Findings whose owner is this pid / pin / tracefs event."""
    out = []
    for f in doc["findings"]:
        owner = f.get("owner") or {}
        if (
            (pid is not None and owner.get("pid") == pid)
            or (pinned is not None and owner.get("pinned_at") == pinned)
            or (event is not None and owner.get("tracefs_event") == event)
        ):
            out.append(f)
    return out


def scan_until(predicate: Callable[[dict], bool], *, attempts: int = 90) -> dict:
    """Rescan until ``predicate`` holds (tools attach asynchronously); last doc otherwise."""
    doc = scan()
    for _ in range(attempts):
        if predicate(doc):
            return doc
        time.sleep(0.5)
        doc = scan()
    return doc


def functions(finding: dict) -> set[tuple[str, str]]:
    return {(h["function"], h["type"]) for h in finding["hooked"]}


def program_ids(doc: dict) -> set[int]:
    return {p["id"] for p in doc["inventory"]["programs"]}


@pytest.fixture(autouse=True)
def _isolated_run_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sessions are read from ECAP_RUN_DIR; keep tests off the host's /run/ecap."""
    if "ECAP_RUN_DIR" not in os.environ:
        monkeypatch.setenv("ECAP_RUN_DIR", "/nonexistent-ecap-test-run")
