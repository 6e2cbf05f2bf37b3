"""Helpers for the shell and database audit tests: reading their records back."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from ecap.capture.schema import validate_lines


def records_of(output: Path, kind: str) -> list[dict]:
    """Every ``kind`` record of a finished jsonl session (validated first)."""
    return [r for r in validate_lines(output.read_text().splitlines()) if r["type"] == kind]


def wait_for(predicate: Callable[[], bool], timeout: float = 20, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached in {timeout}s")


def stop_capture(run, timeout: float = 30) -> None:
    """SIGINT, as an operator's Ctrl-C; the capture must finish cleanly."""
    run.proc.send_signal(2)
    assert run.wait(timeout) == 0, run.stderr


def authorized_finding(capture_pid: int) -> dict:
    """ecap-detect's finding for a running capture: it must be an authorized one."""
    from tests.detect.conftest import findings_of, scan_until

    doc = scan_until(lambda d: bool(findings_of(d, pid=capture_pid)))
    (finding,) = findings_of(doc, pid=capture_pid)
    assert (finding["severity"], finding["authorized"]) == ("info", True), finding["evidence"]
    return finding
