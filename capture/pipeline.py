"""Ring records → the events a sink writes: decode, reassemble, connections, counts.

The same code runs live (:mod:`ecap.capture.engine`, on batches drained from the
kernel ring) and offline (``ecap-audit replay`` of a raw session file, on the same
records read back from disk), so a raw capture renders exactly as a live one would
have. What only a live capture can do — re-authorize a target after an exec, turn
the syscall tracepoints on — reaches the engine through callbacks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ecap.capture.abi import Abi
from ecap.capture.connections import ConnectionTable, format_endpoint
from ecap.capture.events import ConnectionEndEvent, DataEvent, HandshakeEvent, SecretEvent
from ecap.capture.modules.interface import ModuleRecords, RecordContext
from ecap.capture.records import Call, Clock, Decoder, Reassembler, Record
from ecap.capture.sinks.interface import SinkWriter


@dataclass
class Counters:
    events: dict[str, int] = field(default_factory=lambda: {"write": 0, "read": 0})
    bytes: dict[str, int] = field(default_factory=lambda: {"write": 0, "read": 0})


class _Side:
    """What is kept per ring (per kernel object): its thread names, its calls in
    progress, and the module names of its records' ``source`` values."""

    def __init__(self, abi: Abi, clock: Clock, max_call_bytes: int, names: Sequence[str]) -> None:
        self.decode = Decoder(abi, abi.struct("ecap_threadinfo"))
        self.reasm = Reassembler(clock, max_call_bytes, abi)
        self.names = list(names)

    def module(self, source: int) -> str:
        return self.names[source] if 0 <= source < len(self.names) else self.names[0]


class Pipeline:
    """Turns records into events for one sink writer."""

    def __init__(self, abi: Abi, clock: Clock, max_call_bytes: int, module: str,
                 writer: SinkWriter, *, on_unknown_socket: Callable[[], None] | None = None,
                 on_exec: Callable[[Record], None] | None = None,
                 on_descendant_exit: Callable[[int], None] | None = None,
                 records: Callable[[RecordContext], ModuleRecords] | None = None,
                 sources: Sequence[Sequence[str]] | None = None) -> None:  # fmt: skip
        """``records``: the module's handlers of its own record kinds (a shell's
        lines); the callbacks are what only a live capture does (re-authorize after
        an exec, turn on the syscall tracepoints, forget a descendant's state).
        ``sources``: per ring fed to :meth:`feed`, the module names of its records'
        ``source`` values (default: one ring, all ``module``'s)."""
        self.abi = abi
        self.clock = clock
        self.writer = writer
        self.sides = [_Side(abi, clock, max_call_bytes, names) for names in sources or [[module]]]
        self._side = self.sides[0]
        """The side whose records are being fed."""
        self.conns = ConnectionTable(module)
        self.counters = Counters()
        self.message_id = 0
        # the hot path (feed): one-record calls skip the Record and the reassembler
        self._unpack = abi.unpack_header
        self._start = abi.data_offset
        self._directions = {abi.KIND_WRITE: "write", abi.KIND_READ: "read"}
        self._whole = abi.FLAG_LAST
        self._not_simple = abi.FLAG_FAULT | abi.FLAG_TRUNCATED
        self._whole_call = getattr(writer, "whole_call", None)
        """A writer's shortcut for a call captured whole (see SinkWriter): no Call and
        no DataEvent object for nearly every call."""
        self._on_unknown_socket = on_unknown_socket or (lambda: None)
        self._exec_callback = on_exec or (lambda _rec: None)
        self._descendant_exit = on_descendant_exit or (lambda _pid: None)
        self.descendants: set[int] = set()
        """Descendants covered now (the kernel added them at fork; gone at exit)."""
        self.descendants_seen = 0
        self.handlers: dict[int, Callable[[Record], None]] = {
            abi.KIND_WRITE: self._on_data,
            abi.KIND_READ: self._on_data,
            abi.KIND_HANDSHAKE: self._on_handshake,
            abi.KIND_CONN_END: self._on_conn_end,
            abi.KIND_CONNECT: self._on_connect,
            abi.KIND_CLOSE: self._on_close,
            abi.KIND_EXEC: self._on_exec,
            abi.KIND_SOCKET: self._on_socket,
            abi.KIND_THREAD: lambda _rec: None,  # the decoder keeps the thread table
            abi.KIND_FORK: self._on_fork,
            abi.KIND_EXIT: self._on_exit,
            abi.KIND_SECRET: self._on_secret,
        }
        self.module_records: ModuleRecords | None = None
        if records is not None:
            self.module_records = records(RecordContext(abi, clock, writer.emit, max_call_bytes))
            self.handlers.update(self.module_records.handlers)

    def feed(self, batch: Sequence[bytes | memoryview], side: int = 0) -> int:
        """Process records in ring order (of ring ``side``); returns how many.

        The records may be views of the ring (live) that are given back after this
        returns: whatever is kept is copied (the Decoder copies a record's data);
        only ``whole_call`` gets a view of the payload, for the duration of the call.

        Most calls fit one record (the whole call, from offset 0, readable, within
        the limit) and no call of their thread is pending: those go to the writer
        straight from the header's fields (``deliver`` inlined, no Call object when
        the writer takes ``whole_call``). Everything else takes the general path.
        """
        self._side = current = self.sides[side]
        decode, handlers = current.decode, self.handlers
        unpack, start, directions = self._unpack, self._start, self._directions
        flag_mask, whole = self._whole | self._not_simple, self._whole
        pending, threads, offset = current.reasm.pending, decode.threads, self.clock.offset
        settled, conns, emit = self.conns.settled, self.conns, self.writer.emit
        whole_call, module = self._whole_call, current.module
        events, nbytes = self.counters.events, self.counters.bytes
        unknown = Decoder.UNKNOWN
        for raw in batch:
            ts_ns, obj, stream_off, pid, tid, fd, total, at, n, kind, flags, _, source = unpack(raw)
            direction = directions.get(kind)
            if (direction is not None and flags & flag_mask == whole and not at and n == total
                    and tid not in pending):  # fmt: skip
                if fd < 0:
                    self._on_unknown_socket()
                uid, comm = threads.get(tid, unknown)
                ts = ts_ns / 1e9 + offset  # Clock.wall, inlined
                conn = settled.get((pid, obj, fd)) or conns.get(pid, obj, comm, fd, ts,
                                                                module(source))  # fmt: skip
                self.message_id = message_id = self.message_id + 1
                conn.messages += 1
                conn.bytes[direction] += n
                events[direction] += 1
                nbytes[direction] += n
                if whole_call is not None:
                    whole_call(conn, message_id, direction, ts, pid, tid, uid, comm, stream_off,
                               raw[start : start + n])  # fmt: skip
                else:
                    emit(DataEvent(conn, message_id, Call(direction, ts, pid, tid, uid, comm, fd,
                                                          obj, n, bytes(raw[start : start + n]),
                                                          0, 0, 0, None, stream_off,
                                                          source)))  # fmt: skip
                continue
            rec = decode(raw)
            handler = handlers.get(rec.kind)
            if handler is not None:
                handler(rec)
        return len(batch)

    def deliver(self, call: Call, side: _Side) -> None:
        conn = self.conns.get(call.pid, call.conn, call.comm, call.fd, call.ts,
                              side.module(call.source))  # fmt: skip
        self.message_id += 1
        conn.messages += 1
        conn.bytes[call.direction] += len(call.data)
        self.counters.events[call.direction] += 1
        self.counters.bytes[call.direction] += len(call.data)
        self.writer.emit(DataEvent(conn, self.message_id, call))

    def deliver_stale(self) -> None:
        """Calls whose last record is overdue (lost): deliver them now."""
        for side in self.sides:
            for call in side.reasm.stale():
                self.deliver(call, side)

    def end_pid(self, pid: int, ts: float, reason: str) -> None:
        """``pid`` left the session: what it had open ends (its EXIT record, had
        the module needed it, may have been lost)."""
        if self.module_records is not None:
            self.module_records.process_left(pid, "exit", None)
        for conn in self.conns.end_pid(pid, ts, reason):
            self.writer.emit(ConnectionEndEvent(conn))

    def finish(self, ts: float) -> None:
        """End of the session: incomplete calls, then every open connection."""
        for side in self.sides:
            for call in side.reasm.flush():
                self.deliver(call, side)
        if self.module_records is not None:
            self.module_records.finish()
        for conn in self.conns.end_all(ts, "capture stopped"):
            self.writer.emit(ConnectionEndEvent(conn))

    # -- one handler per record kind ------------------------------------------------
    def _on_data(self, rec: Record) -> None:
        if rec.fd < 0:
            self._on_unknown_socket()
        side = self._side
        for call in side.reasm.add(rec):
            self.deliver(call, side)

    def _on_handshake(self, rec: Record) -> None:
        if rec.fd < 0:
            self._on_unknown_socket()
        ts = self.clock.wall(rec.ts_ns)
        conn = self.conns.get(rec.pid, rec.conn, rec.comm, rec.fd, ts,
                              self._side.module(rec.source))  # fmt: skip
        conn.handshake = True
        self.writer.emit(HandshakeEvent(conn, ts))

    def _on_conn_end(self, rec: Record) -> None:
        conn = self.conns.end(rec.pid, rec.conn, self.clock.wall(rec.ts_ns), "library ended it")
        if conn is not None:
            self.writer.emit(ConnectionEndEvent(conn))

    def _on_secret(self, rec: Record) -> None:
        """A secret the library derived (struct ecap_secret): to the key verifier."""
        random, secret, length, random_read, label = self.abi.struct("ecap_secret").unpack_from(
            rec.data
        )
        ts = self.clock.wall(rec.ts_ns)
        conn = self.conns.get(rec.pid, rec.conn, rec.comm, rec.fd, ts,
                              self._side.module(rec.source))  # fmt: skip
        self.writer.emit(SecretEvent(
            conn, ts, label.split(b"\0", 1)[0].decode("ascii", "replace"), random,
            bool(random_read), secret[:length] if 0 < length <= len(secret) else b"", length,
        ))  # fmt: skip

    def _on_connect(self, rec: Record) -> None:
        self.conns.note_connect(rec.pid, rec.fd, rec.data)

    def _on_socket(self, rec: Record) -> None:
        family, lport, rport, _pad, laddr, raddr = self.abi.struct("ecap_sockinfo").unpack_from(
            rec.data
        )
        self.conns.note_socket(rec.pid, rec.conn, rec.fd, format_endpoint(family, laddr, lport),
                               format_endpoint(family, raddr, rport))  # fmt: skip

    def _on_exec(self, rec: Record) -> None:
        if self.module_records is not None:  # e.g. ``exec cmd`` ends the shell's command
            self.module_records.process_left(rec.pid, "exec", None)
        self._exec_callback(rec)

    def _on_fork(self, rec: Record) -> None:
        """A covered process forked and the token grants descendants: the kernel
        already put the child (``conn``) on the allow-list."""
        self.descendants.add(rec.conn)
        self.descendants_seen += 1

    def _on_exit(self, rec: Record) -> None:
        """A covered process exited (the kernel took it off the allow-list); ``conn``
        is its wait status. A named target's part of the session ends when its pidfd
        says so (the engine); a descendant's ends here."""
        pid = rec.pid
        if self.module_records is not None:
            self.module_records.process_left(pid, "exit", rec.conn)
        if pid in self.descendants:
            self.descendants.discard(pid)
            self.end_pid(pid, self.clock.wall(rec.ts_ns), "process exited")
            self._descendant_exit(pid)

    def _on_close(self, rec: Record) -> None:
        # Only this ring's connections: every kernel object of the session sees the
        # process's close(2), and the rings are read in turn, so another object's
        # record of it can come before this ring's last calls on the socket.
        ended = self.conns.end_fd(rec.pid, rec.fd, self.clock.wall(rec.ts_ns), self._side.names)
        for conn in ended:
            self.writer.emit(ConnectionEndEvent(conn))


def summary_counts(pipeline: Pipeline) -> dict[str, Any]:
    """The summary fields user space counts (the kernel's come from its counters)."""
    events = dict(pipeline.counters.events)
    if pipeline.module_records is not None:
        events.update(pipeline.module_records.counts())
    return {
        "events": events,
        "bytes": dict(pipeline.counters.bytes),
        "connections": pipeline.conns.total,
        "descendants": pipeline.descendants_seen,
    }
