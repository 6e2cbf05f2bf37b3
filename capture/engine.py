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

import contextlib
import io
import os
import signal
import struct
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ecap import host, procfs, sessions
from ecap.authz.token import Grant
from ecap.capture import modules as module_registry
from ecap.capture import sinks as sink_registry
from ecap.capture.events import RECORDS
from ecap.capture.hold import TargetHold
from ecap.capture.kernel import DEFAULT_MAX_CALL_BYTES, DEFAULT_RING_MB, KernelSide
from ecap.capture.modules.interface import CaptureModule, HookTarget
from ecap.capture.pipeline import Pipeline, summary_counts
from ecap.capture.records import Clock, Decoder, Record
from ecap.capture.sinks.interface import SinkOptions
from ecap.capture.summary import summary_lines
from ecap.errors import EnvironmentNotReady, Error, UsageError
from ecap.fsutil import create_private_file
from ecap.text import printable

POLL_MS = 50
"""The longest a record waits in the ring when little is happening (the kernel side
wakes the reader early once a fair share of the ring is pending)."""
BATCH_BYTES = 4 << 20
"""Records taken from the ring per batch: memory stays bounded whatever the rate."""
LIVENESS_EVERY = 0.2
SYSCALLS_IDLE_AFTER = 2.0
"""Seconds without a connection of unknown socket before the system-call
tracepoints are detached (they cost every process on the host)."""
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
        self.out = out
        self.session_id = uuid.uuid4().hex
        self.sink = sink_registry.get(options.fmt)
        self.raw = RECORDS in self.sink.consumes
        self.clock = Clock()
        self.unknown_socket_at = time.monotonic()
        """Last time a call's socket was unknown (then the syscall tracepoints help)."""
        self.live = hold.start_times()
        """pid → the start time the token names (never re-read from /proc)."""
        self.exited: list[int] = []
        self.stop = _Stop()
        self.started_at = time.time()
        self.kernel: KernelSide | None = None
        self.writer: Any = None
        self.pipeline: Pipeline | None = None
        self.raw_counts = RawCounts()
        self.last_lost = 0

    def bind_kernel(self, kernel: KernelSide) -> None:
        """The record layout comes from the loaded object's ABI: the writer and the
        pipeline are made once it is known."""
        self.kernel = kernel
        colour = self.out is sys.stdout.buffer and sys.stdout.isatty()
        self.writer = self.sink.open(
            self.out,
            SinkOptions(hex_mode=self.options.hex, colour=colour, abi=kernel.abi,
                        clock_offset=self.clock.offset),
        )  # fmt: skip
        if self.raw:
            self.raw_counts = RawCounts(kernel.abi)
        else:
            self.pipeline = Pipeline(
                kernel.abi, self.clock, self.options.max_call_bytes, self.module.name,
                self.writer, on_unknown_socket=self.socket_unknown, on_exec=self._on_exec,
                on_descendant_exit=self._forget, records=self.module.records,
            )  # fmt: skip

    # -- records -------------------------------------------------------------------
    def drain(self) -> int:
        """Take one batch from the ring and process it; returns the records taken."""
        assert self.kernel is not None and self.kernel.ring is not None
        ring = self.kernel.ring
        try:
            batch = ring.peek(BATCH_BYTES)
        except (OSError, ValueError) as exc:
            raise EnvironmentNotReady(f"reading the ring buffer failed: {exc}") from exc
        if not batch:
            return 0
        # The records are views of the ring, used (written out, or decoded into what
        # is kept) and then given back to it: no copy of a record as a whole.
        if self.pipeline is not None:
            taken = self.pipeline.feed(batch)
            del batch
            ring.commit()
            return taken
        self.writer.records(batch)
        control = self.raw_counts.count(batch)
        taken = len(batch)
        del batch
        ring.commit()
        abi = self.kernel.abi
        for rec in control:  # the few kinds a live capture must act on
            if rec.kind == abi.KIND_EXEC:
                self._on_exec(rec)
            elif rec.kind == abi.KIND_EXIT and rec.pid not in self.live:
                self._forget(rec.pid)  # a descendant (a target waits for its pidfd)
        return taken

    def drain_all(self) -> None:
        """Everything the probes committed so far."""
        while self.drain():
            pass

    def socket_unknown(self) -> None:
        """A call whose socket is not known: let the syscall tracepoints find it."""
        self.unknown_socket_at = time.monotonic()
        assert self.kernel is not None
        if not self.kernel.syscalls_attached:
            self.kernel.syscalls(True)

    def _forget(self, pid: int) -> None:
        """A descendant exited: its per-process state leaves the kernel maps."""
        assert self.kernel is not None
        self.kernel.forget_pid(pid)

    def _on_exec(self, rec: Record) -> None:
        """The kernel took an exec'ing target off the allow-list: it stays off unless
        the program it runs now is the very executable the token names."""
        pid = rec.pid
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
        self._leave(pid)

    # -- liveness --------------------------------------------------------------------
    def _leave(self, pid: int) -> None:
        if pid not in self.live:
            return
        del self.live[pid]
        assert self.kernel is not None
        self.kernel.revoke_pid(pid)
        self.exited.append(pid)

    def check_targets(self) -> None:
        """Notice targets that left; stop when none is left, or for time."""
        for pid in list(self.live):
            if not self.hold.alive(pid):
                self._leave(pid)
                _status(self.options, f"target {pid} exited; its part of the session ended")
        if self.pipeline is not None:
            self.pipeline.deliver_stale()
        if not self.live:
            self.stop.set("all targets exited")
        if time.time() >= self.grant.expires_at:
            self.stop.set("token expired")
        if (self.options.duration is not None
                and time.time() - self.started_at >= self.options.duration):  # fmt: skip
            self.stop.set("duration reached")
        assert self.kernel is not None
        if (self.kernel.syscalls_attached
                and time.monotonic() - self.unknown_socket_at > SYSCALLS_IDLE_AFTER):  # fmt: skip
            self.kernel.syscalls(False)

    def settle_exited(self) -> None:
        """End the connections of targets that left, once what they did before
        leaving is out of the ring (the kernel wrote it before they exited)."""
        if not self.exited:
            return
        self.drain_all()
        for pid in self.exited:
            if self.pipeline is not None:
                self.pipeline.end_pid(pid, time.time(), "process left the session")
            assert self.kernel is not None
            self.kernel.forget_pid(pid)
        self.exited.clear()

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
        counts = (summary_counts(self.pipeline) if self.pipeline is not None
                  else self.raw_counts.summary())  # fmt: skip
        return {
            "session_id": self.session_id,
            **counts,
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


class RawCounts:
    """Raw mode decodes nothing; it only peeks at each record's kind to count calls
    and bytes for the summary, and to act on an exec or an exit (live-capture
    duties: re-authorize, forget a descendant)."""

    def __init__(self, abi: Any = None) -> None:
        self.events = {"write": 0, "read": 0}
        self.bytes = {"write": 0, "read": 0}
        if abi is None:
            return
        lo, ko, fo = abi.offsets["len"], abi.offsets["kind"], abi.offsets["flags"]
        # len, kind and flags in one unpack (the header lays them out in this order)
        assert lo + 4 <= ko < fo, "record header layout: len, kind, flags"
        self._peek = struct.Struct(f"<{lo}xI{ko - lo - 4}xB{fo - ko - 1}xB").unpack_from
        self._write, self._read = abi.KIND_WRITE, abi.KIND_READ
        self._control = {abi.KIND_EXEC, abi.KIND_EXIT}
        self._last, self._fault = abi.FLAG_LAST, abi.FLAG_FAULT
        self._decode = Decoder(abi, abi.struct("ecap_threadinfo"))

    def count(self, batch: Sequence[bytes | memoryview]) -> list[Record]:
        """Count the batch; returns its exec and exit records, decoded."""
        control = []
        peek, write, read, last, fault = (
            self._peek,
            self._write,
            self._read,
            self._last,
            self._fault,
        )
        events_w = events_r = bytes_w = bytes_r = 0
        for raw in batch:
            n, kind, flags = peek(raw)
            if kind == write:
                events_w += 1 if flags & last else 0
                bytes_w += 0 if flags & fault else n
            elif kind == read:
                events_r += 1 if flags & last else 0
                bytes_r += 0 if flags & fault else n
            elif kind in self._control:
                control.append(self._decode(bytes(raw)))  # a copy: ``raw`` may be a ring view
        self.events["write"] += events_w
        self.events["read"] += events_r
        self.bytes["write"] += bytes_w
        self.bytes["read"] += bytes_r
        return control

    def summary(self) -> dict[str, Any]:
        return {"events": dict(self.events), "bytes": dict(self.bytes), "connections": None,
                "descendants": None}  # fmt: skip


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
        next_check = 0.0
        ring = kernel.ring
        while stop.reason is None:
            if not session.drain():
                session.writer.flush()
                ring.wait(POLL_MS)
            now = time.monotonic()
            if now >= next_check:
                next_check = now + LIVENESS_EVERY
                session.check_targets()
                session.settle_exited()
                stats = kernel.stats()
                session.report_losses(stats)
        # Whatever the probes produced before the stop is still in the ring.
        session.drain_all()
        session.settle_exited()
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
    if session.pipeline is not None:
        session.pipeline.finish(time.time())
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
