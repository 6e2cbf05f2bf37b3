"""A running ``ecap-detect watch`` for tests and benchmarks: its records as they come.

A reader thread parses each JSON line of the watcher's stdout into a queue, so
a test waits for "the first record that says X" with a timeout instead of
sleeping, and sees everything the watcher wrote (to count duplicates).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tests.conftest import ecap_cmd


class WatchProcess:
    def __init__(
        self, args: Sequence[str] = (), *, env: dict[str, str] | None = None, stdout: bool = True
    ) -> None:
        self.proc = subprocess.Popen(
            [ecap_cmd("ecap-detect"), "watch", *args],
            stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.records: list[dict] = []
        self._queue: queue.Queue[dict | None] = queue.Queue()
        self._seen = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        if stdout:
            self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            record = json.loads(line)
            record["_received"] = time.monotonic()
            self._queue.put(record)
        self._queue.put(None)

    def wait_for(self, predicate: Callable[[dict], bool], timeout: float = 30) -> dict:
        """The first record (not yet returned by an earlier wait) that matches."""
        for record in self.records[self._seen :]:
            self._seen += 1
            if predicate(record):
                return record
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching watch record in {timeout}s: {self.summary()}")
            try:
                record = self._queue.get(timeout=left)
            except queue.Empty:
                continue
            if record is None:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise AssertionError(f"watcher exited ({self.proc.poll()}): {err}")
            self.records.append(record)
            self._seen = len(self.records)
            if predicate(record):
                return record

    def drain(self) -> list[dict]:
        """Everything written so far (after the reader caught up)."""
        while True:
            try:
                record = self._queue.get_nowait()
            except queue.Empty:
                return self.records
            if record is not None:
                self.records.append(record)

    def summary(self) -> str:
        return "; ".join(
            f"{r.get('type')}:{r.get('change', '')}:{r.get('severity', '')}:{r.get('title', '')}"
            for r in self.drain()[-15:]
        )

    def signal(self, signum: int) -> None:
        os.kill(self.proc.pid, signum)

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._reader.is_alive():
            self._reader.join(timeout=5)
        self.drain()
        return self.proc.returncode


def loaded_programs() -> set[int]:
    from ecap.detect import bpfsys

    return set(bpfsys.iter_ids(bpfsys.PROG_GET_NEXT_ID))


def wait_unloaded(prog_ids: Sequence[int], timeout: float = 15) -> set[int]:
    """Poll until none of ``prog_ids`` is loaded (freeing is deferred in the kernel)."""
    deadline = time.monotonic() + timeout
    while True:
        left = set(prog_ids) & loaded_programs()
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def owner_pid(record: dict) -> int | None:
    return ((record.get("finding") or {}).get("owner") or {}).get("pid")


def registry_files(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "watchers").glob("*.json"))
