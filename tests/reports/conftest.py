"""Fixtures for the report tests: real scans, plans and capture sessions.

Host data in these fixtures is hostile on purpose. The rogue sniffer is bpftrace
run from a copied executable whose path holds a ``<script>`` element and terminal
escape bytes, with an argv[0] carrying another script; a victim is a copy of curl
at a path of the same kind. Every report must show these strings as text and never
run them. All processes are stopped in teardown (probes go with them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ecap.authz import keys, request, token
from tests import tls_helpers
from tests.conftest import ecap_cmd

LIBSSL = "/usr/lib/x86_64-linux-gnu/libssl.so.3"
# A directory name ending in "<" and a file "script>..." give a path containing
# "<script>...</script>" (a file name cannot contain "/").
INJECT_DIR = "<script>document.documentElement.setAttribute('data-pwned','exe')<"
INJECT_FILE = "script>\x1b[31m\x1b]0;t\x07"
INJECT_ARGV0 = (
    "<script>document.documentElement.setAttribute('data-pwned','argv')</script>\x1b]0;owned\x07"
)
PWNED = "data-pwned"


def hostile_copy(base: Path, source: str) -> Path:
    """Copy an executable to ``base/<script>...</script>\\x1b...``."""
    directory = base / INJECT_DIR
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / INJECT_FILE
    shutil.copy2(source, target)
    return target


def start_rogue_sniffer(exe: Path) -> subprocess.Popen:
    """bpftrace (from ``exe``) hooking SSL_write for every process; returns when attached."""
    proc = subprocess.Popen(
        # str(arg1) copies each SSL_write buffer: a real sniffer (a counter is medium)
        [INJECT_ARGV0, "-e", f"uprobe:{LIBSSL}:SSL_write {{ @writes[str(arg1, 32)] = count(); }}"],
        executable=str(exe),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    seen = []
    for _ in range(20):  # warnings (e.g. about RLIMIT_MEMLOCK) may come first
        line = proc.stdout.readline()
        seen.append(line)
        if not line or "Attaching" in line:
            break
    if "Attaching" not in seen[-1]:
        tls_helpers.stop_process(proc)
        pytest.fail(f"bpftrace did not attach: {''.join(seen)!r}")
    return proc


def start_victim(exe: Path) -> subprocess.Popen:
    """A libssl user (curl waiting for its config on stdin) at a hostile path."""
    proc = subprocess.Popen(
        [str(exe), "-sS", "-k", "-K", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    tls_helpers.wait_for_tls_mapped(proc.pid)
    return proc


def isolated_env(root: Path) -> dict[str, str]:
    """ECAP_* pointing into ``root`` so scans never read the host's sessions/journal."""
    root.mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        "ECAP_TRUST_DIR": str(root / "trusted-keys"),
        "ECAP_JOURNAL": str(root / "journal.jsonl"),
        "ECAP_RUN_DIR": str(root / "run"),
        "ECAP_UNSAFE_SINGLE_USE_DIR": str(root / "used-tokens"),
    }


@dataclass
class RealScan:
    """A scan taken by the real ``ecap-detect scan --json`` with a rogue sniffer running."""

    path: Path
    doc: dict
    sniffer_pid: int
    victim_pid: int
    sniffer_exe: str


def scan_seeing(env: dict[str, str], out: Path, pid: int, timeout: float = 30) -> dict:
    """A scan in which ``pid``'s hook shows (bpftrace says "Attaching" before it attaches)."""
    deadline = time.monotonic() + timeout
    while True:
        doc = run_scan(env, out)
        if any((f.get("owner") or {}).get("pid") == pid for f in doc["findings"]):
            return doc
        if time.monotonic() > deadline:
            pytest.fail(f"the scan never showed the hook of pid {pid}")
        time.sleep(0.2)


def run_scan(env: dict[str, str], out: Path) -> dict:
    """``ecap-detect scan --json OUT`` (exit 0 or 1: findings are not an error here)."""
    r = subprocess.run(
        [ecap_cmd("ecap-detect"), "scan", "--json", str(out), "--fail-on", "critical"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode in (0, 1), r.stderr
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def rogue_scan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealScan]:
    base = tmp_path_factory.mktemp("rogue")
    sniffer_exe = hostile_copy(base / "bin", "/usr/bin/bpftrace")
    victim_exe = hostile_copy(base / "victim", "/usr/bin/curl")
    sniffer = victim = None
    try:
        victim = start_victim(victim_exe)
        sniffer = start_rogue_sniffer(sniffer_exe)
        out = base / "scan.json"
        doc = scan_seeing(isolated_env(base / "ecap"), out, sniffer.pid)
        yield RealScan(out, doc, sniffer.pid, victim.pid, str(sniffer_exe))
    finally:
        for proc in (sniffer, victim):
            if proc is not None:
                tls_helpers.stop_process(proc)


def own_finding(scan: RealScan) -> dict:
    """The finding about our rogue sniffer in a real scan."""
    found = [
        f for f in scan.doc["findings"] if (f.get("owner") or {}).get("pid") == scan.sniffer_pid
    ]
    assert found, "the scan did not report the rogue sniffer"
    return found[0]


READY_MARK = "Ctrl-C to stop"


@dataclass
class Session:
    jsonl: Path
    env: dict[str, str]
    root: Path
    client_pid: int
    server: tls_helpers.TlsServer
    received: bytes
    sent: bytes
    during: Any = None
    """What the ``during`` callback returned (called while the capture was live)."""


def capture_session(root: Path, during: Callable[[dict[str, str]], Any] | None = None) -> Session:
    """A real capture of a hostile-named curl fetching /hello from a local TLS server.

    ``during(env)`` runs while the capture is attached, before the client is let go.
    Everything started here is stopped before returning (or on failure).
    """
    env = isolated_env(root / "ecap")
    _, pub, _ = keys.generate(root / "ecap" / "signer")
    keys.install_trusted(pub, Path(env["ECAP_TRUST_DIR"]))
    (root / "server").mkdir()
    server = tls_helpers.start_server(root / "server")
    client = capture = None
    try:
        curl = hostile_copy(root / "bin", "/usr/bin/curl")
        client = subprocess.Popen(
            [str(curl), "-sS", "-k", "--http1.1", "-K", "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        tls_helpers.wait_for_tls_mapped(client.pid)
        req = request.build([client.pid], modules=["tls"], modes=["jsonl"], reason="report test")
        jwt_text = token.issue(
            req,
            keys.load_private(root / "ecap" / "signer.key"),
            operator="<b>alice</b>",
            reason="INC-6 <i>report</i>",
            ttl_seconds=3600,
            issuer="pytest",
        )
        token_path = root / "token.jwt"
        token_path.write_text(jwt_text)
        jsonl = root / "session.jsonl"
        capture = subprocess.Popen(
            [
                ecap_cmd("ecap-audit"),
                "capture",
                "tls",
                "--pid",
                str(client.pid),
                "--token",
                str(token_path),
                "--format",
                "jsonl",
                "--output",
                str(jsonl),
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert capture.stderr is not None
        seen = []
        for line in capture.stderr:
            seen.append(line)
            if READY_MARK in line:
                break
        assert capture.poll() is None, "".join(seen)
        result = during(env) if during is not None else None
        tls_helpers.release_curl(client, server.url("/hello"))
        assert client.wait(30) == 0
        assert capture.wait(60) == 0, capture.stderr.read()
        received, sent = server.transcript()
        return Session(jsonl, env, root, client.pid, server, received, sent, result)
    finally:
        for proc in (capture, client):
            if proc is not None:
                tls_helpers.stop_process(proc, timeout=15)
        server.stop()


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Session:
    """One real capture session (finished; its server and processes already stopped)."""
    return capture_session(tmp_path_factory.mktemp("session"))
