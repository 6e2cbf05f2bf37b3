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
import dataclasses
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
from ecap.capture.kernel import DEFAULT_MAX_CALL_BYTES, DEFAULT_RING_MB, KernelSides
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
UNSAFE_SECRET_SHIFT = "ECAP_UNSAFE_TEST_SECRET_SHIFT"
"""Test hook: read every secret this many bytes away from where the library has it
— a deliberately wrong location — to prove that such keys are caught ("not
verified") and never written. Announced loudly whenever it is set."""
PACKET_RING_BYTES = 32 << 20
"""The packet tap's ring (keylog, pcapng): a burst waits there for the reader (which
the tap's socket wakes, like the record ring)."""
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


Part = tuple[CaptureModule, HookTarget]
"""One module hooked in one process: what it resolved there."""


def resolve_plan(plan: module_registry.Plan, options: dict[str, Any]) -> list[Part]:
    """Each (pid, module) of the plan resolved to where it attaches."""
    out = []
    for pid, module in plan:
        try:
            out.append((module, module.resolve(pid, options)))
        except procfs.ProcessGone as exc:
            raise UsageError(
                f"process {pid} exited before the capture started",
                hint="request a new token for the running process",
            ) from exc
    return out


def check_raw_plan(plan: module_registry.Plan, fmt: str) -> None:
    """A raw file holds one kernel object's records: a session whose modules need
    several objects cannot be written raw (exit 2). ``fmt``: a sink's name
    (variants included: ``pcapng-plaintext``)."""
    sink = sink_registry.by_name(fmt)
    if sink is None or RECORDS not in sink.consumes:
        return
    objects = sorted({m.bpf_object for _pid, m in plan})
    if len(objects) > 1:
        raise UsageError(
            f"--format {fmt} records one BPF object's records; these processes need "
            f"{', '.join(objects)}",
            hint="capture each module in its own session, or choose another format",
        )


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

    def __init__(self, grant: Grant, module: CaptureModule, parts: list[Part],
                 hold: TargetHold, options: CaptureOptions, out: IO[bytes],
                 journal: Any) -> None:  # fmt: skip
        self.grant = grant
        self.module = module
        """The module the operator named (``auto`` captures through others)."""
        self.parts = parts
        self.modules = list({m.name: m for m, _h in parts}.values())
        """The modules that hook, in first-use order."""
        self.hooks = [h for _m, h in parts]
        self.hold = hold
        self.options = options
        self.journal = journal
        self.out = out
        self.session_id = uuid.uuid4().hex
        sink = sink_registry.by_name(options.fmt)
        if sink is None:
            raise UsageError(f"unknown output format {options.fmt!r}")
        self.sink = sink
        self.raw = RECORDS in self.sink.consumes
        self.record_out: IO[bytes] | None = None
        """The session record beside a keylog/pcapng output (OUTPUT.session.jsonl)."""
        self.tap: Any = None
        self.clock = Clock()
        self.unknown_socket_at = time.monotonic()
        """Last time a call's socket was unknown (then the syscall tracepoints help)."""
        self.live = hold.start_times()
        """pid → the start time the token names (never re-read from /proc)."""
        self.exited: list[int] = []
        self.stop = _Stop()
        self.started_at = time.time()
        self.kernel: KernelSides | None = None
        self.writer: Any = None
        self.pipeline: Pipeline | None = None
        self.raw_counts = RawCounts()
        self.last_lost = 0

    def bind_kernel(self, kernel: KernelSides) -> None:
        """The record layout comes from the loaded object's ABI: the writer and the
        pipeline are made once it is known."""
        self.kernel = kernel
        colour = self.out is sys.stdout.buffer and sys.stdout.isatty()
        self.writer = self.sink.open(
            self.out,
            SinkOptions(hex_mode=self.options.hex, colour=colour, abi=kernel.abi,
                        clock_offset=self.clock.offset),
        )  # fmt: skip
        if self.sink.record_beside:
            from ecap.capture.wire.tap import WireTap, open_session_record

            ring = kernel.packet_ring(PACKET_RING_BYTES) if self.sink.needs_keys else None
            if ring is not None and kernel.ring is not None:
                kernel.ring.wake_on(ring.fileno())
            self.tap = WireTap(
                self.writer, self.sink.consumes, ring, kernel.flow_owner, module=self.module.name,
                record=open_session_record(self.record_out) if self.record_out else None,
                exporter=self.module.secrets is None or self.module.secrets.exporter,
            )  # fmt: skip
            self.writer = self.tap
        if self.raw:
            self.raw_counts = RawCounts(kernel.abi)
        else:
            self.pipeline = Pipeline(
                kernel.abi, self.clock, self.options.max_call_bytes, self.module.name,
                self.writer, on_unknown_socket=self.socket_unknown, on_exec=self._on_exec,
                on_descendant_exit=self._forget, records=self.module.records,
                sources=kernel.sources,
            )  # fmt: skip

    # -- records -------------------------------------------------------------------
    def drain(self) -> int:
        """Take one batch from each ring and process it; returns the records taken."""
        assert self.kernel is not None
        taken = 0
        for index, side in enumerate(self.kernel.sides):
            assert side.ring is not None
            try:
                batch = side.ring.peek(BATCH_BYTES)
            except (OSError, ValueError) as exc:
                raise EnvironmentNotReady(f"reading the ring buffer failed: {exc}") from exc
            if batch:
                taken += self._take(batch, index)
            # the views are given back (an empty batch too: it may have passed
            # discarded records, whose space must be freed as well)
            del batch
            side.ring.commit()
        return taken

    def _take(self, batch: list[memoryview], side: int) -> int:
        """Use one batch of records, views of the ring (the caller gives them back
        after): no copy of a record as a whole (the pipeline copies what it keeps)."""
        if self.pipeline is not None:
            return self.pipeline.feed(batch, side)
        assert self.kernel is not None
        self.writer.records(batch)
        control = self.raw_counts.count(batch)
        abi = self.kernel.abi
        for rec in control:  # the few kinds a live capture must act on
            if rec.kind == abi.KIND_EXEC:
                self._on_exec(rec)
            elif rec.kind == abi.KIND_EXIT and rec.pid not in self.live:
                self._forget(rec.pid)  # a descendant (a target waits for its pidfd)
        return len(batch)

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
        if self.tap is not None:
            counts.update(self.tap.counts())
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
        identity = (self.module.identity if self.module.select is None
                    else "; ".join(f"{m.name}: {m.identity}" for m in self.modules))  # fmt: skip
        return {
            "session_id": self.session_id,
            "started_at": self.started_at,
            "module": self.module.name,
            "modules": [m.name for m in self.modules],
            "identity": identity,
            "format": self.options.fmt,
            "mode": self.sink.token_mode,
            "token": self.grant.token,
            "grant": self.grant.summary(),
            "host": {
                "hostname": host.hostname(),
                "machine_id": host.machine_id(),
                "kernel": host.kernel_release(),
            },
            "pids": list(dict.fromkeys(h.pid for h in self.hooks)),
            "descendants": self.grant.descendants,
            "targets": [
                {
                    "pid": h.pid,
                    "start_time": self.live.get(h.pid),
                    "comm": _safe_comm(h.pid),
                    "module": m.name,
                    "hooked": h.display_path,
                    "kind": h.kind,
                    "version": h.version,
                    "functions": dict(sorted(h.functions.items())),
                }
                for m, h in self.parts
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


def session_record_path(output: Path) -> Path:
    """Where a keylog/pcapng capture keeps its session record (no plaintext, no
    secret: what ``ecap-audit report`` reads)."""
    from ecap.capture.wire.tap import SESSION_SUFFIX

    return output.with_name(output.name + SESSION_SUFFIX)


def with_secret_probes(parts: list[Part], options: CaptureOptions) -> list[Part]:
    """Each target's probes plus those that report its TLS secrets (exit 2 naming
    the library when a module cannot give them: keys fail closed)."""
    for module, _hook in parts:
        if module.secrets is None:
            raise UsageError(
                f"the {module.name} module cannot give TLS secrets: {module.no_secrets}",
                hint="capture with --format pcapng --plaintext, text or jsonl",
            )
    shift = _unsafe_secret_shift(options)
    return [(m, dataclasses.replace(h, probes=h.probes + m.secrets.probes(h, shift)))
            for m, h in parts if m.secrets is not None]  # fmt: skip


def _unsafe_secret_shift(options: CaptureOptions) -> int:
    raw = os.environ.get(UNSAFE_SECRET_SHIFT)
    if not raw:
        return 0
    try:
        shift = int(raw, 0)
    except ValueError as exc:
        raise UsageError(f"{UNSAFE_SECRET_SHIFT}={raw!r} is not an integer") from exc
    print(f"ecap-audit: UNSAFE: {UNSAFE_SECRET_SHIFT}={shift}: secrets are read {shift} bytes "
          "away from where the library keeps them (a test of key verification)",
          file=sys.stderr, flush=True)  # fmt: skip
    return shift


def _stop_self_for_tests() -> None:
    if os.environ.get(TEST_STOP_AFTER_GRANT) == "1":
        os.kill(os.getpid(), signal.SIGSTOP)


def run_capture(grant: Grant, pids: list[int], options: CaptureOptions, *, journal: Any,
                hold: TargetHold | None = None, on_ready: Any = None,
                plan: module_registry.Plan | None = None) -> dict[str, Any]:  # fmt: skip
    """Run one capture to its end and return the summary.

    Call only with a :class:`Grant` from the gate, and the :class:`TargetHold`
    taken before it; ``plan``: the (pid, module) pairs the gate granted (by
    default, :func:`ecap.capture.modules.plan` of the options' module). Resolution
    and the output file come first (input errors exit 2 with nothing loaded), then
    the kernel side.
    """
    hold = hold or TargetHold.take(pids)
    module = module_registry.get(options.module)
    _stop_self_for_tests()
    out: IO[bytes] | None = None
    record_out: IO[bytes] | None = None
    sink = sink_registry.by_name(options.fmt)
    try:
        hold.confirm_grant(grant)
        plan = plan if plan is not None else module_registry.plan(options.module, pids)
        _check_granted(grant, plan)
        check_raw_plan(plan, options.fmt)
        parts = resolve_plan(plan, options.module_options)
        if sink is not None and sink.needs_keys:
            parts = with_secret_probes(parts, options)
        out = open_output(options.output, replace=options.replace_output)
        if sink is not None and sink.record_beside and options.output is not None:
            record_out = open_output(session_record_path(options.output),
                                     replace=options.replace_output)  # fmt: skip
    except BaseException as exc:
        if out is not None and out is not sys.stdout.buffer:
            out.close()
            assert options.output is not None
            options.output.unlink(missing_ok=True)
        hold.close()
        _journal_failure(journal, grant, pids, f"error: {exc}")
        raise
    session = _Session(grant, module, parts, hold, options, out, journal)
    session.record_out = record_out
    stop = session.stop
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, lambda *_: stop.set("SIGINT"))
    signal.signal(signal.SIGTERM, lambda *_: stop.set("SIGTERM"))
    registered = started = False
    stats: dict[str, int] = {}
    try:
        kernel = KernelSides(session.modules, ring_mb=options.ring_mb,
                             max_call_bytes=options.max_call_bytes,
                             follow_descendants=grant.descendants,
                             packets=session.sink.needs_keys,
                             plaintext=not session.sink.needs_keys)  # fmt: skip
        session.bind_kernel(kernel)
        kernel.authorize_pids(session.live)
        kernel.attach_tracepoints()
        attached = sum(kernel.attach(m, h) for m, h in parts)
        hold.confirm_attached()
        prog_ids = kernel.prog_ids()
        journal.append(
            "capture.start", session_id=session.session_id, jti=grant.jti,
            operator=grant.operator, pids=list(dict.fromkeys(h.pid for h in session.hooks)),
            targets=session.journal_targets(), module=module.name,
            **({"modules": [m.name for m in session.modules]} if module.select else {}),
            format=options.fmt, mode=session.sink.token_mode,
            **({"unsafe_secret_shift": os.environ[UNSAFE_SECRET_SHIFT]}
               if session.sink.needs_keys and os.environ.get(UNSAFE_SECRET_SHIFT) else {}),
            output=str(options.output) if options.output else None, prog_ids=prog_ids,
        )  # fmt: skip
        sessions.register(
            sessions.SessionRecord(
                session_id=session.session_id, token=grant.token, operator=grant.operator,
                reason=grant.reason, module=module.name,
                targets=[sessions.SessionTarget(pid, st) for pid, st in session.live.items()],
                prog_ids=prog_ids, capture_pid=os.getpid(), started_at=session.started_at,
                expires_at=grant.expires_at, jti=grant.jti, journal=os.path.abspath(journal.path),
                extra={"hooked": sorted({h.display_path for h in session.hooks}),
                       "modules": [m.name for m in session.modules],
                       "output": str(options.output) if options.output else None},
            )
        )  # fmt: skip
        registered = True
        started = True
        session.writer.header(session.header(attached))
        session.writer.flush()
        for part_module, hook in parts:
            _status(
                options,
                f"capturing {part_module.name} from pid {hook.pid} "
                f"({printable(_safe_comm(hook.pid))}) via {printable(hook.display_path)} "
                f"[{printable(hook.version or 'version unknown')}]",
            )
        _status(options, f"session {session.session_id}; Ctrl-C to stop")
        if on_ready is not None:
            on_ready(session.session_id)
        next_check = 0.0
        while stop.reason is None:
            busy = session.drain()
            if session.tap is not None:
                busy += session.tap.poll()
            if not busy:
                session.writer.flush()
                kernel.wait(POLL_MS)
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
        if session.tap is not None:  # every packet judged while the flow table exists
            session.tap.finish()
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
            if session.tap is not None:
                session.tap.close()
            if out is not sys.stdout.buffer:
                out.close()
            if record_out is not None:
                record_out.close()
            if not started:
                # Failed between the grant and the start: no empty output file left
                # behind, and the journal says what became of the grant.
                if options.output is not None:
                    options.output.unlink(missing_ok=True)
                    if record_out is not None:
                        session_record_path(options.output).unlink(missing_ok=True)
                _journal_failure(journal, grant, pids, stop.reason or "error: stopped before start")
    assert summary is not None
    return summary


def _check_granted(grant: Grant, plan: module_registry.Plan) -> None:
    """Every module of the plan is one the token grants (the gate checked the plan it
    was shown; a plan made here must pass the same check)."""
    from ecap.authz.policy import AllOf, Allowed, Context

    ctx = Context(token=grant.token, trust_dir=Path(), grant=grant)
    AllOf(*(Allowed("module", name) for name in dict.fromkeys(m.name for _p, m in plan))).verify(
        ctx
    )


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
