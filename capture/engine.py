"""The capture session: resolve, load, attach, read, write, stop, account.

:func:`run_capture` is the library entry the CLI calls *after* the gate granted the
capture. It knows no library by name: the module says where to attach and what a
connection is, the kernel side (:mod:`ecap.capture.kernel`) loads and attaches,
the sink writes. It owns the session's life: it registers the session so
``ecap-detect`` can recognise it, journals start and stop, stops by itself when
every target exited, the token expired or ``--duration`` passed (or on
SIGINT/SIGTERM), and always detaches and unregisters on the way out.
"""

from __future__ import annotations

import collections
import contextlib
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
from ecap.capture import modules as module_registry
from ecap.capture import sinks as sink_registry
from ecap.capture.abi import struct_reader
from ecap.capture.connections import ConnectionTable, format_endpoint
from ecap.capture.events import ConnectionEndEvent, DataEvent, HandshakeEvent
from ecap.capture.hold import TargetHold
from ecap.capture.kernel import DEFAULT_MAX_CALL_BYTES, DEFAULT_RING_MB, KernelSide
from ecap.capture.modules.interface import CaptureModule, HookTarget, ModuleRecords, RecordContext
from ecap.capture.records import Clock, Decoder, Reassembler, Record
from ecap.capture.sinks.interface import SinkOptions
from ecap.capture.summary import summary_lines
from ecap.errors import EnvironmentNotReady, Error, UsageError
from ecap.fsutil import create_private_file
from ecap.text import printable

POLL_MS = 100
MAX_QUEUED_BYTES = 512 * 1024 * 1024
"""Userspace backlog limit: beyond it the reader stops draining the ring, so the
kernel side counts losses instead of this process growing without bound."""
LIVENESS_EVERY = 0.2
TEST_STOP_AFTER_GRANT = "ECAP_TEST_STOP_AFTER_GRANT"
"""Test hook: when set to 1, the capture stops itself (SIGSTOP) right after the
grant, so a test can reproduce a slow machine. It only ever delays."""


@dataclass(frozen=True)
class CaptureOptions:
    """What the operator asked for (already validated by the CLI)."""

    module: str = "tls"
    fmt: str = "text"
    output: Path | None = None
    hex: bool = False
    duration: float | None = None
    module_options: dict[str, Any] = field(default_factory=dict)
    """Options only the module takes (``--libssl`` for tls), by destination name."""
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


def resolve_targets(module: CaptureModule, pids: list[int],
                    options: dict[str, Any]) -> list[HookTarget]:  # fmt: skip
    out = []
    for pid in pids:
        try:
            out.append(module.resolve(pid, options))
        except procfs.ProcessGone as exc:
            raise UsageError(
                f"process {pid} exited before the capture started",
                hint="request a new token for the running process",
            ) from exc
    return out


def _status(options: CaptureOptions, text: str) -> None:
    if not options.quiet:
        print(f"ecap-audit: {text}", file=sys.stderr, flush=True)


def _safe_comm(pid: int) -> str:
    try:
        return procfs.comm(pid)
    except procfs.ProcessGone:
        return "?"


class _Session:
    """State of one running capture (kept out of run_capture for readability)."""

    def __init__(self, grant: Grant, module: CaptureModule, hooks: list[HookTarget],
                 hold: TargetHold, options: CaptureOptions, out: IO[bytes],
                 journal: Any) -> None:  # fmt: skip
        self.grant = grant
        self.module = module
        self.hooks = hooks
        self.hold = hold
        self.options = options
        self.journal = journal
        self.session_id = uuid.uuid4().hex
        sink = sink_registry.get(options.fmt)
        colour = out is sys.stdout.buffer and sys.stdout.isatty()
        self.writer = sink.open(out, SinkOptions(hex_mode=options.hex, colour=colour))
        self.clock = Clock()
        self.conns = ConnectionTable(module.name)
        self.counters = Counters()
        self.message_id = 0
        self.pending: collections.deque[bytes] = collections.deque()
        # Written by one thread each (reader / main), so no lock is needed.
        self.queued_bytes = 0
        self.consumed_bytes = 0
        self.live = hold.start_times()
        """pid → the start time the token names (never re-read from /proc)."""
        self.exited: dict[int, int] = {}
        self.stop = _Stop()
        self.started_at = time.time()
        self.kernel: KernelSide | None = None
        self.decode: Decoder | None = None
        self.reasm: Reassembler | None = None
        self.handlers: dict[int, Any] = {}
        self.module_records: ModuleRecords | None = None
        self.descendants: set[int] = set()
        """Descendants covered now (added by the kernel at fork, gone at exit)."""
        self.descendants_seen = 0
        self.last_lost = 0

    def bind_kernel(self, kernel: KernelSide) -> None:
        """Record kinds and layout come from the loaded object's ABI."""
        self.kernel = kernel
        abi = kernel.abi
        self.decode = Decoder(abi)
        self.reasm = Reassembler(self.clock, self.options.max_call_bytes, abi)
        self.handlers = {
            abi.KIND_WRITE: self._on_data,
            abi.KIND_READ: self._on_data,
            abi.KIND_HANDSHAKE: self._on_handshake,
            abi.KIND_CONN_END: self._on_conn_end,
            abi.KIND_CONNECT: self._on_connect,
            abi.KIND_CLOSE: self._on_close,
            abi.KIND_EXEC: self._on_exec,
            abi.KIND_SOCKET: self._on_socket,
            abi.KIND_FORK: self._on_fork,
            abi.KIND_EXIT: self._on_exit,
        }
        if self.module.records is not None:
            # Module-specific kinds (a shell's lines, a server's statements).
            self.module_records = self.module.records(
                RecordContext(abi, kernel.obj.image, self.clock, self.writer.emit,
                              self.options.max_call_bytes)
            )  # fmt: skip
            self.handlers.update(self.module_records.handlers)
        if "ecap_sockinfo" in kernel.obj.image.header.get("structs", {}):
            self._sockinfo = struct_reader(kernel.obj.image, "ecap_sockinfo")[0]

    # -- records -------------------------------------------------------------------
    def backlogged(self) -> bool:
        return self.queued_bytes - self.consumed_bytes > MAX_QUEUED_BYTES

    def drain(self) -> int:
        """Process what the reader thread queued; returns the number of records."""
        count = len(self.pending)
        popleft = self.pending.popleft
        decode, handlers = self.decode, self.handlers
        for _ in range(count):
            raw = popleft()
            self.consumed_bytes += len(raw)
            rec = decode(raw)
            handler = handlers.get(rec.kind)
            if handler is not None:
                handler(rec)
        return count

    def deliver(self, call: Any) -> None:
        conn = self.conns.get(call.pid, call.conn, call.comm, call.fd, call.ts)
        self.message_id += 1
        conn.messages += 1
        conn.bytes[call.direction] += len(call.data)
        self.counters.events[call.direction] += 1
        self.counters.bytes[call.direction] += len(call.data)
        self.writer.emit(DataEvent(conn, self.message_id, call))

    def _on_data(self, rec: Record) -> None:
        for call in self.reasm.add(rec):
            self.deliver(call)

    def _on_handshake(self, rec: Record) -> None:
        ts = self.clock.wall(rec.ts_ns)
        conn = self.conns.get(rec.pid, rec.conn, rec.comm, rec.fd, ts)
        conn.handshake = True
        self.writer.emit(HandshakeEvent(conn, ts))

    def _on_conn_end(self, rec: Record) -> None:
        conn = self.conns.end(rec.pid, rec.conn, self.clock.wall(rec.ts_ns), "library ended it")
        if conn is not None:
            self.writer.emit(ConnectionEndEvent(conn))

    def _on_connect(self, rec: Record) -> None:
        self.conns.note_connect(rec.pid, rec.fd, rec.data)

    def _on_socket(self, rec: Record) -> None:
        family, lport, rport, _pad, laddr, raddr = self._sockinfo.unpack_from(rec.data)
        self.conns.note_socket(rec.pid, rec.conn, rec.fd, format_endpoint(family, laddr, lport),
                               format_endpoint(family, raddr, rport))  # fmt: skip

    def _on_close(self, rec: Record) -> None:
        for conn in self.conns.end_fd(rec.pid, rec.fd, self.clock.wall(rec.ts_ns)):
            self.writer.emit(ConnectionEndEvent(conn))

    def _on_fork(self, rec: Record) -> None:
        """A covered process forked and the token grants descendants: the kernel
        already put the child (``conn``) on the allow-list."""
        self.descendants.add(rec.conn)
        self.descendants_seen += 1

    def _on_exit(self, rec: Record) -> None:
        """A covered process exited (the kernel took it off the allow-list);
        ``conn`` is its wait status. A named target's part of the session ends when
        its pidfd says so (check_targets); a descendant's ends here."""
        pid = rec.pid
        if self.module_records is not None:
            self.module_records.process_left(pid, "exit", rec.conn)
        if pid in self.descendants:
            self.descendants.discard(pid)
            for conn in self.conns.end_pid(pid, self.clock.wall(rec.ts_ns), "process exited"):
                self.writer.emit(ConnectionEndEvent(conn))
            assert self.kernel is not None
            self.kernel.forget_pid(pid)

    def _on_exec(self, rec: Record) -> None:
        """The kernel took an exec'ing target off the allow-list: it stays off unless
        the program it runs now is the very executable the token names."""
        pid = rec.pid
        if self.module_records is not None:
            self.module_records.process_left(pid, "exec", None)
        claim = self.grant.target_for(pid)
        try:
            now_exe, digest = procfs.exe(pid), procfs.exe_sha256(pid)
        except procfs.ProcessGone:
            now_exe, digest = None, None
        if claim is not None and claim.sha256 and digest == claim.sha256:
            assert self.kernel is not None
            self.kernel.authorize_pids([pid])
            self.journal.append("capture.target_exec", session_id=self.session_id, pid=pid,
                                exe=now_exe, sha256=digest, kept=True)  # fmt: skip
            _status(
                self.options, f"target {pid} re-executed its authorized program; still captured"
            )
            return
        self.journal.append(
            "capture.target_exec", session_id=self.session_id, pid=pid, exe=now_exe,
            sha256=digest, kept=False,
            reason="the new program is not the executable the token names",
        )  # fmt: skip
        _status(
            self.options,
            f"target {pid} executed {printable(str(now_exe))}, which the token does not name: "
            "no longer captured",
        )
        self._leave(pid, settle_after=0)

    # -- liveness --------------------------------------------------------------------
    def _leave(self, pid: int, settle_after: int) -> None:
        if pid not in self.live:
            return
        del self.live[pid]
        assert self.kernel is not None
        self.kernel.revoke_pid(pid)
        self.exited[pid] = settle_after

    def check_targets(self, reader_cycles: int) -> None:
        """Notice exited targets; their connections end once the ring is drained."""
        for pid in list(self.live):
            if not self.hold.alive(pid):
                # What it did before exiting may still be in the kernel ring: wait
                # for two more complete reader cycles before ending its connections.
                self._leave(pid, reader_cycles + 2)
                _status(self.options, f"target {pid} exited; its part of the session ended")
        for call in self.reasm.stale():
            self.deliver(call)
        if not self.live:
            self.stop.set("all targets exited")
        if time.time() >= self.grant.expires_at:
            self.stop.set("token expired")
        if (self.options.duration is not None
                and time.time() - self.started_at >= self.options.duration):  # fmt: skip
            self.stop.set("duration reached")

    def settle_exited(self, reader_cycles: int, *, force: bool = False) -> None:
        for pid, ready_at in list(self.exited.items()):
            if force or reader_cycles >= ready_at:
                self.drain()
                if self.module_records is not None:  # its EXIT record may have been lost
                    self.module_records.process_left(pid, "exit", None)
                for conn in self.conns.end_pid(pid, time.time(), "process left the session"):
                    self.writer.emit(ConnectionEndEvent(conn))
                assert self.kernel is not None
                self.kernel.forget_pid(pid)
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
        events = dict(self.counters.events)
        if self.module_records is not None:
            events.update(self.module_records.counts())
        return {
            "session_id": self.session_id,
            "events": events,
            "descendants": self.descendants_seen,
            "bytes": dict(self.counters.bytes),
            "connections": self.conns.total,
            "lost_events": stats["lost_events"],
            "lost_bytes": stats["lost_bytes"],
            "truncated_bytes": stats["truncated_bytes"],
            "unreadable_bytes": stats["unreadable_bytes"],
            "deep_calls": stats["deep_calls"],
            "failed_calls": stats["failed_calls"],
            "max_call_bytes": self.options.max_call_bytes,
            "stop_reason": self.stop.reason or "stopped",
            "started_at": self.started_at,
            "stopped_at": stopped,
            "duration": stopped - self.started_at,
        }

    def header(self, attachments: int) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "started_at": self.started_at,
            "module": self.module.name,
            "identity": self.module.identity,
            "format": self.options.fmt,
            "token": self.grant.token,
            "grant": self.grant.summary(),
            "host": {
                "hostname": host.hostname(),
                "machine_id": host.machine_id(),
                "kernel": host.kernel_release(),
            },
            "pids": [h.pid for h in self.hooks],
            "descendants": self.grant.descendants,
            "targets": [
                {
                    "pid": h.pid,
                    "start_time": self.live.get(h.pid),
                    "comm": _safe_comm(h.pid),
                    "module": self.module.name,
                    "hooked": h.display_path,
                    "kind": h.kind,
                    "version": h.version,
                    "functions": dict(sorted(h.functions.items())),
                }
                for h in self.hooks
            ],
            "max_call_bytes": self.options.max_call_bytes,
            "ring_bytes": self.options.ring_mb * 1024 * 1024,
            "attachments": attachments,
        }

    def journal_targets(self) -> list[dict[str, int]]:
        return [{"pid": pid, "start_time": start} for pid, start in self.hold.start_times().items()]


class RingReader:
    """Drains the kernel ring into the session's queue on its own thread.

    Decoding and writing run on the main thread and may fall behind during a
    burst; the reader keeps copying records out so the (bounded) kernel ring does
    not overflow while user space catches up.
    """

    def __init__(self, session: _Session) -> None:
        self._session = session
        assert session.kernel is not None and session.kernel.ring is not None
        self._ring = session.kernel.ring
        self._stop = threading.Event()
        self._data = threading.Event()
        self.cycles = 0
        """Completed wait+drain rounds (written by the reader thread only)."""
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="ecap-ring", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        session = self._session
        try:
            while not self._stop.is_set():
                if session.backlogged():
                    time.sleep(0.01)
                    continue
                if not self._ring.pending_bytes():
                    self._ring.wait(POLL_MS)
                batch = self._ring.drain()
                if batch:
                    session.pending.extend(batch)
                    session.queued_bytes += sum(map(len, batch))
                self.cycles += 1
                self._data.set()
        except BaseException as exc:  # surfaced on the main thread as exit 4
            self.error = exc
            session.stop.set(f"error: ring buffer: {exc}")
            self._data.set()

    def drain_rest(self) -> None:
        """After stop(): whatever the probes produced before the detach."""
        batch = self._ring.drain()
        self._session.pending.extend(batch)
        self._session.queued_bytes += sum(map(len, batch))

    def wait(self, timeout: float) -> None:
        self._data.wait(timeout)
        self._data.clear()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _stop_self_for_tests() -> None:
    if os.environ.get(TEST_STOP_AFTER_GRANT) == "1":
        os.kill(os.getpid(), signal.SIGSTOP)


def run_capture(grant: Grant, pids: list[int], options: CaptureOptions, *, journal: Any,
                hold: TargetHold | None = None, on_ready: Any = None) -> dict[str, Any]:  # fmt: skip
    """Run one capture to its end and return the summary.

    Call only with a :class:`Grant` from the gate, and the :class:`TargetHold`
    taken before it. Resolution and the output file come first (input errors
    exit 2 with nothing loaded), then the kernel side.
    """
    hold = hold or TargetHold.take(pids)
    module = module_registry.get(options.module)
    _stop_self_for_tests()
    out: IO[bytes] | None = None
    try:
        hold.confirm_grant(grant)
        hooks = resolve_targets(module, pids, options.module_options)
        out = open_output(options.output, replace=options.replace_output)
    except BaseException as exc:
        hold.close()
        _journal_failure(journal, grant, pids, f"error: {exc}")
        raise
    session = _Session(grant, module, hooks, hold, options, out, journal)
    stop = session.stop
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, lambda *_: stop.set("SIGINT"))
    signal.signal(signal.SIGTERM, lambda *_: stop.set("SIGTERM"))
    registered = started = False
    stats: dict[str, int] = {}
    try:
        kernel = KernelSide(module, ring_mb=options.ring_mb, max_call_bytes=options.max_call_bytes,
                            follow_descendants=grant.descendants)  # fmt: skip
        session.bind_kernel(kernel)
        kernel.authorize_pids(session.live)
        kernel.attach_tracepoints()
        attached = sum(kernel.attach(h) for h in hooks)
        hold.confirm_attached()
        prog_ids = kernel.prog_ids()
        journal.append(
            "capture.start", session_id=session.session_id, jti=grant.jti,
            operator=grant.operator, pids=[h.pid for h in hooks],
            targets=session.journal_targets(), module=module.name, format=options.fmt,
            output=str(options.output) if options.output else None, prog_ids=prog_ids,
        )  # fmt: skip
        sessions.register(
            sessions.SessionRecord(
                session_id=session.session_id, token=grant.token, operator=grant.operator,
                reason=grant.reason, module=module.name,
                targets=[sessions.SessionTarget(pid, st) for pid, st in session.live.items()],
                prog_ids=prog_ids, capture_pid=os.getpid(), started_at=session.started_at,
                expires_at=grant.expires_at, jti=grant.jti, journal=os.path.abspath(journal.path),
                extra={"hooked": sorted({h.display_path for h in hooks}),
                       "output": str(options.output) if options.output else None},
            )
        )  # fmt: skip
        registered = True
        started = True
        session.writer.header(session.header(attached))
        session.writer.flush()
        for hook in hooks:
            _status(
                options,
                f"capturing {module.name} from pid {hook.pid} "
                f"({printable(_safe_comm(hook.pid))}) via {printable(hook.display_path)} "
                f"[{printable(hook.version or 'version unknown')}]",
            )
        _status(options, f"session {session.session_id}; Ctrl-C to stop")
        if on_ready is not None:
            on_ready(session.session_id)
        reader = RingReader(session)
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
                    stats = kernel.stats()
                    session.report_losses(stats)
        finally:
            reader.stop()
        if reader.error is not None:
            raise EnvironmentNotReady(f"reading the ring buffer failed: {reader.error}")
        # Whatever the probes produced before the stop is still in the ring.
        reader.drain_rest()
        session.drain()
        session.settle_exited(0, force=True)
        stats = kernel.stats()
    except BaseException as exc:
        stop.set(f"error: {exc}")
        raise
    finally:
        if session.kernel is not None:
            if not stats:
                stats = session.kernel.stats()
            session.kernel.close()
        hold.close()
        if registered:
            sessions.unregister(session.session_id)
        for s, handler in previous.items():
            signal.signal(s, handler)
        try:
            summary = _finish(session, stats, out) if started else None
        finally:
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
    """Close a granted authorization that never became a capture (no journal gap).

    Only called while another error is on its way out: if the journal cannot take
    this entry either (a full disk), that first error is the one the operator
    needs to see, and the journal's own append failure is in the audit trail.
    """
    with contextlib.suppress(Error):
        _append_failure(journal, grant, pids, reason)


def _append_failure(journal: Any, grant: Grant, pids: list[int], reason: str) -> None:
    journal.append("capture.failed", jti=grant.jti, operator=grant.operator, pids=pids,
                   reason=reason)  # fmt: skip


def _finish(session: _Session, stats: dict[str, int], out: IO[bytes]) -> dict[str, Any]:
    """Flush partial calls, end connections, write the summary and the stop entry."""
    assert session.reasm is not None
    for call in session.reasm.flush():
        session.deliver(call)
    if session.module_records is not None:
        session.module_records.finish()
    for conn in session.conns.end_all(time.time(), "capture stopped"):
        session.writer.emit(ConnectionEndEvent(conn))
    summary = session.summary(stats)
    session.writer.summary(summary)
    session.writer.flush()
    session.journal.append(
        "capture.stop", session_id=session.session_id, reason=summary["stop_reason"],
        targets=session.journal_targets(),
        summary={k: v for k, v in summary.items() if k != "session_id"},
    )  # fmt: skip
    for line in summary_lines(summary):
        print(line, file=sys.stderr, flush=True)
    return summary
