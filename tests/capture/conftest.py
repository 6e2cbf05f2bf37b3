"""Fixtures for capture tests: a TLS server, and ``ecap-audit capture`` runs.

Every process a test starts (server, clients, the capture itself) is stopped in
teardown, so nothing — process, probe or program — outlives a test.
"""

from __future__ import annotations

import base64
import json
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests import tls_helpers
from tests.conftest import EcapEnv, ecap_cmd

READY_MARK = "Ctrl-C to stop"


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tls_helpers.TlsServer]:
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    server = tls_helpers.start_server(server_dir)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def clients() -> Iterator[list[subprocess.Popen]]:
    """Register client processes here; they are stopped after the test."""
    procs: list[subprocess.Popen] = []
    try:
        yield procs
    finally:
        for proc in procs:
            tls_helpers.stop_process(proc)


@dataclass
class CaptureRun:
    """A running ``ecap-audit capture`` subprocess."""

    proc: subprocess.Popen
    output: Path
    stderr_lines: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None

    def wait(self, timeout: float = 60) -> int:
        try:
            code = self.proc.wait(timeout)
        finally:
            if self._reader:
                self._reader.join(5)
        return code

    @property
    def stderr(self) -> str:
        return "".join(self.stderr_lines)

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.output.read_text().splitlines()]


def read_stream(records: list[dict], direction: str, pid: int | None = None) -> bytes:
    """All captured payload of one direction, in message order."""
    events = [
        r
        for r in records
        if r["type"] == "event" and r["direction"] == direction and (pid is None or r["pid"] == pid)
    ]
    events.sort(key=lambda r: r["message_id"])
    return b"".join(base64.b64decode(r["payload_b64"]) for r in events)


def assert_calls_match(records: list[dict], pid: int, direction: str, stream: bytes) -> dict:
    """Every captured byte of one direction is the byte the peer saw at that place.

    Walks the calls in order, placing each call's segments at its offset in the
    stream (a call with holes lists them); every missing byte must be counted as
    lost or unreadable — never present as data. Returns the totals it counted.
    """
    events = [r for r in records if r["type"] == "event" and r["direction"] == direction
              and r["pid"] == pid]  # fmt: skip
    events.sort(key=lambda r: r["message_id"])
    position = 0
    totals = {"captured": 0, "lost": 0, "unreadable": 0, "gapped_calls": 0, "lost_calls": 0}
    for event in events:
        if event["stream_offset"] > position:  # calls whose records were all lost
            totals["lost_calls"] += event["stream_offset"] - position
        assert event["stream_offset"] >= position
        position = event["stream_offset"]
        payload = base64.b64decode(event["payload_b64"])
        segments = event.get("segments") or [[0, len(payload)]]
        totals["gapped_calls"] += "segments" in event
        cursor = 0
        for offset, length in segments:
            want = stream[position + offset : position + offset + length]
            assert payload[cursor : cursor + length] == want, (
                f"message {event['message_id']}: {length} bytes at offset {offset} are not "
                "what went over the connection"
            )
            cursor += length
        missing = event.get("unreadable", 0) + event["lost"]
        assert len(payload) + missing == event["total"] - event["truncated"]
        totals["captured"] += len(payload)
        totals["lost"] += event["lost"]
        totals["unreadable"] += event.get("unreadable", 0)
        position += event["total"]
    totals["lost_calls"] += len(stream) - position  # lost calls at the very end
    assert position <= len(stream), (position, len(stream))
    return totals


@pytest.fixture
def start_capture(ecap_env: EcapEnv, tmp_path: Path) -> Iterator:
    """Start a capture of ``pids`` with a token for them; waits until it is attached."""
    runs: list[CaptureRun] = []

    def start(
        pids: list[int],
        *,
        fmt: str = "jsonl",
        extra: tuple[str, ...] = (),
        token_pids: list[int] | None = None,
        wait_ready: bool = True,
        module: str = "tls",
        descendants: bool = False,
        env: dict[str, str] | None = None,
        token_modules: tuple[str, ...] | None = None,
    ) -> CaptureRun:
        """``module``: what to capture (the token grants it, or ``token_modules``);
        ``descendants``: the token grants the targets' descendants
        (``--with-descendants``); ``env``: variables added to the capture's
        environment."""
        token = ecap_env.write_token(
            ecap_env.authorize(
                token_pids or pids,
                modules=token_modules or (module,),
                modes=sorted({"text", "jsonl", fmt}),
                descendants=descendants,
            ),
            f"token-{len(runs)}.jwt",
        )
        output = tmp_path / f"capture-{len(runs)}.{fmt}"
        args = [
            ecap_cmd("ecap-audit"),
            "capture",
            module,
            "--token",
            str(token),
            "--format",
            fmt,
            "--output",
            str(output),
            *extra,
        ]
        for pid in pids:
            args += ["--pid", str(pid)]
        proc = subprocess.Popen(
            args,
            env={**ecap_env.env, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        run = CaptureRun(proc, output)
        runs.append(run)
        ready = threading.Event()

        def pump() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                run.stderr_lines.append(line)
                if READY_MARK in line:
                    ready.set()
            ready.set()

        run._reader = threading.Thread(target=pump, daemon=True)
        run._reader.start()
        if wait_ready:
            ready.wait(60)
            assert proc.poll() is None, f"capture did not start: {run.stderr}"
        return run

    try:
        yield start
    finally:
        for run in runs:
            tls_helpers.stop_process(run.proc, timeout=15)
            if run._reader:
                run._reader.join(5)
