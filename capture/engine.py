"""The capture session: resolve, load, attach, read, write, stop, account.

:func:`run_capture` is the library entry the CLI calls *after* the gate granted the
capture. It owns the session's life: it registers the session so ``ecap-detect``
can recognise it, journals start and stop, stops by itself when every target
exited, the token expired or ``--duration`` passed (or on SIGINT/SIGTERM), and
always detaches and unregisters on the way out.
"""

from __future__ import annotations

import collections
import io
import os
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ecap import host, procfs, sessions
from ecap.authz.token import Grant
from ecap.capture import targets as targets_mod
from ecap.capture.connections import ConnectionTable
from ecap.capture.events import Clock, Reassembler, Record, check_layout, decode
from ecap.capture.probes import (
    DEFAULT_MAX_CALL_BYTES,
    DEFAULT_RING_MB,
    KIND_CLOSE,
    KIND_CONNECT,
    KIND_HANDSHAKE,
    KIND_READ,
    KIND_SSL_END,
    KIND_WRITE,
    Probes,
)
from ecap.capture.writers import make_writer, summary_lines
from ecap.errors import UsageError
from ecap.fsutil import create_private_file
from ecap.text import printable

POLL_MS = 100
MAX_QUEUED_BYTES = 512 * 1024 * 1024
"""Userspace backlog limit: beyond it the reader stops draining the ring, so the
kernel side counts losses instead of this process growing without bound."""
LIVENESS_EVERY = 0.2


@dataclass(frozen=True)
class CaptureOptions:
    """What the operator asked for (already validated by the CLI)."""

    module: str = "tls"
    fmt: str = "text"
    output: Path | None = None
    hex: bool = False
    duration: float | None = None
    libssl: str | None = None
    ring_mb: int = DEFAULT_RING_MB
    max_call_bytes: int = DEFAULT_MAX_CALL_BYTES
    quiet: bool = False
    """No status lines on stderr (the summary is still printed)."""
    replace_output: bool = False
    """``--force``: replace an existing ``output`` (otherwise it is never touched)."""


@dataclass
class Counters:
    events: dict[str, int] = field(default_factory=lambda: {"write": 0, "read": 0})
    bytes: dict[str, int] = field(default_factory=lambda: {"write": 0, "read": 0})
    truncated_bytes: int = 0
    lost_bytes_in_calls: int = 0


class _Stop:
    """Why the loop should end (first reason wins)."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def set(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason


def open_output(path: Path | None, *, replace: bool = False) -> IO[bytes]:
    """The output file, created 0600 before anything is loaded (bad path → exit 2).

    Never through a link and never over an existing file unless ``replace``
    (see :func:`ecap.fsutil.create_private_file`).
    """
    if path is None:
        return sys.stdout.buffer
    try:
        fd = create_private_file(path, replace=replace)
    except FileExistsError as exc:
        raise UsageError(
            f"output file {path} already exists", hint="choose a new --output or pass --force"
        ) from exc
    except OSError as exc:
        raise UsageError(
            f"cannot write output file {path}: {exc.strerror}", hint="choose a writable path"
        ) from exc
    # Big buffer: the jsonl writer emits up to ~100 MB/s of small lines.
    return io.BufferedWriter(io.FileIO(fd, "wb"), buffer_size=1 << 20)


def resolve_targets(pids: list[int], libssl: str | None) -> list[targets_mod.HookTarget]:
    out = []
    for pid in pids:
        try:
            out.append(targets_mod.resolve(pid, libssl=libssl))
        except procfs.ProcessGone as exc:
            raise UsageError(
                f"process {pid} exited before the capture started",
                hint="request a new token for the running process",
            ) from exc
    return out


def _status(options: CaptureOptions, text: str) -> None:
    if not options.quiet:
        print(f"ecap-audit: {text}", file=sys.stderr, flush=True)


class _Session:
    """State of one running capture (kept out of run_capture for readability)."""

    def __init__(
        self,
        grant: Grant,
        hooks: list[targets_mod.HookTarget],
        options: CaptureOptions,
        out: IO[bytes],
        journal: Any,
    ) -> None:
        self.grant = grant
        self.hooks = hooks
        self.options = options
        self.journal = journal
        self.session_id = uuid.uuid4().hex
        self.writer = make_writer(options.fmt, out, hex_mode=options.hex)
        self.clock = Clock()
        self.reasm = Reassembler(self.clock, options.max_call_bytes)
        self.conns = ConnectionTable()
        self.counters = Counters()
        self.message_id = 0
        self.pending: collections.deque[bytes] = collections.deque()
        # Written by one thread each (reader / main), so no lock is needed.
        self.queued_bytes = 0
        self.consumed_bytes = 0
        self.live = {h.pid: procfs.start_time(h.pid) for h in hooks}
        self.exited: dict[int, int] = {}
        self.stop = _Stop()
        self.started_at = time.time()
        self.probes: Probes | None = None
        self.layout = None
        self.last_lost = 0

    # -- records -------------------------------------------------------------------
    def on_raw(self, raw: bytes) -> None:
        """Ring callback (reader thread): queue the record, nothing more."""
        self.pending.append(raw)
        self.queued_bytes += len(raw)

    def backlogged(self) -> bool:
        return self.queued_bytes - self.consumed_bytes > MAX_QUEUED_BYTES

    def drain(self) -> int:
        """Process what the reader thread queued; returns the number of records."""
        count = len(self.pending)
        popleft = self.pending.popleft
        for _ in range(count):
            raw = popleft()
            self.consumed_bytes += len(raw)
            self.on_record(decode(raw, self.layout))
        return count

    def on_record(self, rec: Record) -> None:
        if rec.kind in (KIND_WRITE, KIND_READ):
            call = self.reasm.add(rec)
            if call is None:
                return
            conn = self.conns.get(call.pid, call.ssl, call.comm, call.fd, call.ts)
            self.message_id += 1
            conn.messages += 1
            conn.bytes[call.direction] += len(call.data)
            self.counters.events[call.direction] += 1
            self.counters.bytes[call.direction] += len(call.data)
            self.counters.truncated_bytes += call.truncated
            self.counters.lost_bytes_in_calls += call.lost
            self.writer.call(conn, self.message_id, call)
        elif rec.kind == KIND_HANDSHAKE:
            ts = self.clock.wall(rec.ts_ns)
            conn = self.conns.get(rec.pid, rec.ssl, rec.comm, rec.fd, ts)
            conn.handshake = True
            self.writer.handshake(conn, ts)
        elif rec.kind == KIND_CONNECT:
            self.conns.note_connect(rec.pid, rec.fd, rec.data)
        elif rec.kind == KIND_SSL_END:
            conn = self.conns.end_ssl(rec.pid, rec.ssl, self.clock.wall(rec.ts_ns), "SSL ended")
            if conn is not None:
                self.writer.connection_end(conn)
        elif rec.kind == KIND_CLOSE:
            for conn in self.conns.end_fd(rec.pid, rec.fd, self.clock.wall(rec.ts_ns)):
                self.writer.connection_end(conn)

    # -- liveness --------------------------------------------------------------------
    def check_targets(self, reader_cycles: int) -> None:
        """Notice exited targets; their connections end once the ring is drained."""
        for pid, start in list(self.live.items()):
            try:
                alive = procfs.start_time(pid) == start and procfs.stat_fields(pid)[0] not in (
                    "Z",
                    "X",
                )
            except procfs.ProcessGone:
                alive = False
            if not alive:
                del self.live[pid]
                assert self.probes is not None
                self.probes.revoke_pid(pid)
                # What it did before exiting may still be in the kernel ring: wait
                # for two more complete reader cycles before ending its connections.
                self.exited[pid] = reader_cycles + 2
                _status(self.options, f"target {pid} exited; its part of the session ended")
        if not self.live:
            self.stop.set("all targets exited")
        if time.time() >= self.grant.expires_at:
            self.stop.set("token expired")
        if (
            self.options.duration is not None
            and time.time() - self.started_at >= self.options.duration
        ):
            self.stop.set("duration reached")

    def settle_exited(self, reader_cycles: int, *, force: bool = False) -> None:
        for pid, ready_at in list(self.exited.items()):
            if force or reader_cycles >= ready_at:
                self.drain()
                for conn in self.conns.end_pid(pid, time.time(), "process exited"):
                    self.writer.connection_end(conn)
                del self.exited[pid]

    def report_losses(self, stats: dict[str, int]) -> None:
        if stats["lost_events"] != self.last_lost:
            self.last_lost = stats["lost_events"]
            _status(
                self.options,
                f"{stats['lost_events']} events ({stats['lost_bytes']} bytes) "
                "lost so far: ring buffer full; raise --ring-size",
            )

    # -- summary ---------------------------------------------------------------------
    def summary(self, stats: dict[str, int]) -> dict[str, Any]:
        stopped = time.time()
        return {
            "session_id": self.session_id,
            "events": dict(self.counters.events),
            "bytes": dict(self.counters.bytes),
            "connections": self.conns.total,
            "lost_events": stats["lost_events"],
            "lost_bytes": stats["lost_bytes"],
            "truncated_bytes": stats["truncated_bytes"],
            "failed_calls": stats["failed_calls"],
            "max_call_bytes": self.options.max_call_bytes,
            "stop_reason": self.stop.reason or "stopped",
            "started_at": self.started_at,
            "stopped_at": stopped,
            "duration": stopped - self.started_at,
        }

    def header(self, attachments: list) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "started_at": self.started_at,
            "module": self.options.module,
            "format": self.options.fmt,
            "token": self.grant.token,
            "grant": self.grant.summary(),
            "host": {
                "hostname": host.hostname(),
                "machine_id": host.machine_id(),
                "kernel": host.kernel_release(),
            },
            "pids": [h.pid for h in self.hooks],
            "targets": [
                {
                    "pid": h.pid,
                    "start_time": self.live.get(h.pid),
                    "comm": _safe_comm(h.pid),
                    "hooked": h.display_path,
                    "kind": h.kind,
                    "version": h.version,
                    "functions": {n: s.file_offset for n, s in sorted(h.symbols.items())},
                }
                for h in self.hooks
            ],
            "max_call_bytes": self.options.max_call_bytes,
            "ring_bytes": self.options.ring_mb * 1024 * 1024,
            "attachments": len(attachments),
        }


class RingReader:
    """Drains the kernel ring into the session's queue on its own thread.

    Decoding and writing run on the main thread and may fall behind during a
    burst; the reader keeps copying records out so the (bounded, locked) kernel
    ring does not overflow while userspace catches up.
    """

    def __init__(self, probes: Probes, backlogged: Any) -> None:
        self._probes = probes
        self._backlogged = backlogged
        self._stop = threading.Event()
        self._data = threading.Event()
        self.cycles = 0
        """Completed poll+consume rounds (written by the reader thread only)."""
        self._thread = threading.Thread(target=self._run, name="ecap-ring", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._backlogged():
                time.sleep(0.01)
                continue
            self._probes.poll(POLL_MS)
            self.cycles += 1
            self._data.set()

    def wait(self, timeout: float) -> None:
        self._data.wait(timeout)
        self._data.clear()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _safe_comm(pid: int) -> str:
    try:
        return procfs.comm(pid)
    except procfs.ProcessGone:
        return "?"


def run_capture(
    grant: Grant, pids: list[int], options: CaptureOptions, *, journal: Any, on_ready: Any = None
) -> dict[str, Any]:
    """Run one capture to its end and return the summary.

    Call only with a :class:`Grant` from the gate. Resolution and the output file
    come first (input errors exit 2 with nothing loaded), then the kernel side.
    """
    try:
        hooks = resolve_targets(pids, options.libssl)
        out = open_output(options.output, replace=options.replace_output)
    except BaseException as exc:
        _journal_failure(journal, grant, pids, f"error: {exc}")
        raise
    session = _Session(grant, hooks, options, out, journal)
    stop = session.stop
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, lambda *_: stop.set("SIGINT"))
    signal.signal(signal.SIGTERM, lambda *_: stop.set("SIGTERM"))
    registered = started = False
    stats = {"lost_events": 0, "lost_bytes": 0, "truncated_bytes": 0, "failed_calls": 0}
    try:
        probes = session.probes = Probes(
            ring_mb=options.ring_mb, max_call_bytes=options.max_call_bytes
        )
        session.layout = probes.layout()
        check_layout(session.layout)
        probes.open_ring(session.on_raw)
        probes.authorize_pids(session.live)
        attachments = []
        for hook in hooks:
            attachments += probes.attach(hook)
        prog_ids = probes.prog_ids()
        journal.append(
            "capture.start",
            session_id=session.session_id,
            jti=grant.jti,
            operator=grant.operator,
            pids=[h.pid for h in hooks],
            module=options.module,
            format=options.fmt,
            output=str(options.output) if options.output else None,
            prog_ids=prog_ids,
        )
        sessions.register(
            sessions.SessionRecord(
                session_id=session.session_id,
                token=grant.token,
                operator=grant.operator,
                reason=grant.reason,
                module=options.module,
                targets=[sessions.SessionTarget(pid, start) for pid, start in session.live.items()],
                prog_ids=prog_ids,
                capture_pid=os.getpid(),
                started_at=session.started_at,
                expires_at=grant.expires_at,
                jti=grant.jti,
                journal=os.path.abspath(journal.path),
                extra={
                    "hooked": sorted({h.display_path for h in hooks}),
                    "output": str(options.output) if options.output else None,
                },
            )
        )
        registered = True
        started = True
        session.writer.header(session.header(attachments))
        session.writer.flush()
        for hook in hooks:
            _status(
                options,
                f"capturing {options.module} from pid {hook.pid} "
                f"({printable(_safe_comm(hook.pid))}) via {printable(hook.display_path)} "
                f"[{printable(hook.version or 'version unknown')}]",
            )
        _status(options, f"session {session.session_id}; Ctrl-C to stop")
        if on_ready is not None:
            on_ready(session.session_id)
        reader = RingReader(probes, session.backlogged)
        reader.start()
        next_check = 0.0
        try:
            while stop.reason is None:
                if not session.drain():
                    reader.wait(POLL_MS / 1000)
                session.settle_exited(reader.cycles)
                session.writer.flush()
                now = time.monotonic()
                if now >= next_check:
                    next_check = now + LIVENESS_EVERY
                    session.check_targets(reader.cycles)
                    stats = probes.stats()
                    session.report_losses(stats)
        finally:
            reader.stop()
        # Whatever the probes produced before the stop is still in the ring.
        probes.poll(0)
        session.drain()
        session.settle_exited(0, force=True)
        stats = probes.stats()
    except BaseException as exc:
        stop.set(f"error: {exc}")
        raise
    finally:
        if session.probes is not None:
            session.probes.close()
        if registered:
            sessions.unregister(session.session_id)
        for s, handler in previous.items():
            signal.signal(s, handler)
        summary = _finish(session, stats, out) if started else None
        if out is not sys.stdout.buffer:
            out.close()
        if not started:
            # Failed between the grant and the start: no empty output file left
            # behind, and the journal says what became of the grant.
            if options.output is not None:
                options.output.unlink(missing_ok=True)
            _journal_failure(journal, grant, pids, stop.reason or "error: stopped before start")
    assert summary is not None
    return summary


def _journal_failure(journal: Any, grant: Grant, pids: list[int], reason: str) -> None:
    """Close a granted authorization that never became a capture (no journal gap)."""
    journal.append(
        "capture.failed", jti=grant.jti, operator=grant.operator, pids=pids, reason=reason
    )


def _finish(session: _Session, stats: dict[str, int], out: IO[bytes]) -> dict[str, Any]:
    """Flush partial calls, end connections, write the summary and the stop entry."""
    for call in session.reasm.flush():
        conn = session.conns.get(call.pid, call.ssl, call.comm, call.fd, call.ts)
        session.message_id += 1
        session.writer.call(conn, session.message_id, call)
    for conn in session.conns.end_all(time.time(), "capture stopped"):
        session.writer.connection_end(conn)
    summary = session.summary(stats)
    session.writer.summary(summary)
    session.writer.flush()
    session.journal.append(
        "capture.stop",
        session_id=session.session_id,
        reason=summary["stop_reason"],
        summary={k: v for k, v in summary.items() if k != "session_id"},
    )
    for line in summary_lines(summary):
        print(line, file=sys.stderr, flush=True)
    return summary
