"""``--format jsonl``: the session record (schema ``ecap.capture/4``).

One JSON object per line: header, events, connections, summary — documented in
``capture/SCHEMA.md``, validated by :mod:`ecap.capture.schema`, read back by
``ecap-audit replay`` and ``ecap-audit report``.
"""

from __future__ import annotations

import json
from typing import IO, Any

from pybase64 import b64encode

from ecap.capture.connections import Connection
from ecap.capture.events import (
    COMMAND,
    CONNECTION,
    DATA,
    HANDSHAKE,
    KEY,
    STATEMENT,
    ConnectionEndEvent,
    DataEvent,
    Event,
    HandshakeEvent,
    KeyEvent,
)
from ecap.capture.records import Call
from ecap.capture.schema import SCHEMA
from ecap.capture.sinks._records import command_record, statement_record
from ecap.capture.sinks.interface import Sink
from ecap.text import json_safe_str
from ecap.timefmt import iso_utc


def _json_opt(value: str | None) -> str:
    return "null" if value is None else json.dumps(value)


_EVENT = (
    b'{"type":"event","connection_id":%d,"message_id":%d,"ts":"%s.%06d+00:00",%s'
    b'"stream_offset":%d,"len":%d,"total":%d,%s"payload_b64":"%s"}\n'
)
_WHOLE_EVENT = _EVENT.replace(b'%s"payload_b64', b'"truncated":0,"lost":0,"payload_b64')
"""An event line; the second one for a call captured whole (nearly every call)."""


def _missing(call: Call) -> bytes:
    """The event fields of a call with bytes missing (in the schema's order)."""
    out = b'"truncated":%d,"lost":%d,' % (call.truncated, call.lost)
    if call.unreadable:
        out += b'"unreadable":%d,' % call.unreadable
    if call.segments is not None:
        out += b'"segments":%s,' % json.dumps(call.segments, separators=(",", ":")).encode()
    return out


def connection_record(conn: Connection) -> dict[str, Any]:
    return {
        "type": "connection",
        "connection_id": conn.id,
        "module": conn.module,
        "pid": conn.pid,
        "comm": json_safe_str(conn.comm),
        "fd": conn.fd,
        "fd_source": conn.fd_source,
        "conn": f"0x{conn.conn:x}",
        "local": conn.local,
        "peer": conn.peer,
        "handshake_seen": conn.handshake,
        "started_at": iso_utc(conn.started_at),
        "ended_at": iso_utc(conn.ended_at),
        "end_reason": conn.end_reason,
        "messages": conn.messages,
        "bytes_written": conn.bytes["write"],
        "bytes_read": conn.bytes["read"],
    }


def key_record(event: KeyEvent) -> dict[str, Any]:
    """A secret's verdict — never the secret (the session record of a keylog or
    pcapng capture; the client random is public: it crossed the wire in clear)."""
    conn = event.conn
    return {
        "type": "key",
        "ts": iso_utc(event.ts),
        "connection_id": conn.id if conn is not None else None,
        "pid": event.pid,
        "label": event.label,
        "client_random": event.client_random.hex(),
        "verified": event.verified,
        "reason": event.reason,
        "flow": event.flow,
    }


class JsonlWriter:
    """One JSON object per line."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self._middles: dict[tuple, bytes] = {}
        self._second = -1
        self._second_text = b""
        self._handlers = {
            HANDSHAKE: self._handshake,
            CONNECTION: self._connection_end,
            COMMAND: lambda e: self._emit(command_record(e)),
            STATEMENT: lambda e: self._emit(statement_record(e)),
            KEY: lambda e: self._emit(key_record(e)),
        }

    def _emit(self, record: dict[str, Any]) -> None:
        self._out.write(
            json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode(
                "utf-8", "backslashreplace"
            )
            + b"\n"
        )

    def header(self, info: dict[str, Any]) -> None:
        self._emit({"type": "header", "schema": SCHEMA, **info})

    def record_line(self, rec: dict[str, Any]) -> None:
        """A ``command`` or ``statement`` record read back from a session file
        (replay; the schema validated it), written as it was."""
        self._emit(rec)

    def emit(self, event: Event) -> None:
        if event.__class__ is not DataEvent:
            self._handlers[event.kind](event)
            return
        conn, call = event.conn, event.call
        if not (call.truncated or call.lost or call.unreadable or call.segments is not None
                or call.total != len(call.data)):  # fmt: skip
            self.whole_call(conn, event.message_id, call.direction, call.ts, call.pid, call.tid,
                            call.uid, call.comm, call.stream_offset, call.data)  # fmt: skip
            return
        second, micro = self._when(call.ts)
        self._out.write(_EVENT % (
            conn.id, event.message_id, second, micro,
            self._middle(conn, call.direction, call.pid, call.tid, call.uid, call.comm),
            call.stream_offset, len(call.data), call.total, _missing(call),
            b64encode(call.data)))  # fmt: skip

    def whole_call(self, conn: Connection, message_id: int, direction: str, ts: float, pid: int,
                   tid: int, uid: int, comm: str, stream_offset: int,
                   data: bytes | memoryview) -> None:  # fmt: skip
        """A call captured whole: the hot path (one line per call, up to ~100k/s).

        Formatted directly rather than through json.dumps — every field is an int,
        base64, a timestamp, or a string passed through json.dumps, so the JSON is
        the same. What repeats from call to call (the process, thread, connection and
        endpoints part; the second of the timestamp) is formatted once and reused;
        both are inlined here (this runs for nearly every event).
        """
        key = (conn.id, conn.fd, conn.local, conn.peer, pid, tid, uid, comm, direction)
        middle = self._middles.get(key)
        if middle is None:
            middle = self._middle(conn, direction, pid, tid, uid, comm)
            if len(self._middles) > 4096:
                self._middles.clear()
            self._middles[key] = middle
        second = int(ts)
        if second != self._second:
            self._when(ts)
        n = len(data)
        self._out.write(_WHOLE_EVENT % (
            conn.id, message_id, self._second_text, min(999999, round((ts - second) * 1e6)),
            middle, stream_offset, n, n, b64encode(data)))  # fmt: skip

    def _middle(self, conn: Connection, direction: str, pid: int, tid: int, uid: int,
                comm: str) -> bytes:  # fmt: skip
        """The part of an event line that repeats for a thread's calls in one
        direction of a connection."""
        text = json.dumps(json_safe_str(comm), ensure_ascii=False)
        return (
            f'"pid":{pid},"tid":{tid},"uid":{uid},"comm":{text},"fd":{conn.fd},'
            f'"conn":"0x{conn.conn:x}","module":{json.dumps(conn.module)},'
            f'"direction":"{direction}",'
            f'"local":{_json_opt(conn.local)},"peer":{_json_opt(conn.peer)},'
        ).encode("utf-8", "backslashreplace")

    def _when(self, ts: float) -> tuple[bytes, int]:
        """``iso_utc(ts)`` in two parts, the date and time to the second (formatted
        once a second) and the microseconds."""
        second = int(ts)
        if second != self._second:
            self._second = second
            self._second_text = iso_utc(second, "seconds").removesuffix("+00:00").encode()
        return self._second_text, min(999999, round((ts - second) * 1e6))

    def _handshake(self, event: HandshakeEvent) -> None:
        conn = event.conn
        self._emit({"type": "handshake", "connection_id": conn.id, "ts": iso_utc(event.ts),
                    "pid": conn.pid, "fd": conn.fd, "conn": f"0x{conn.conn:x}",
                    "peer": conn.peer})  # fmt: skip

    def _connection_end(self, event: ConnectionEndEvent) -> None:
        self._emit(connection_record(event.conn))

    def summary(self, summary: dict[str, Any]) -> None:
        self._emit({"type": "summary", **summary})

    def flush(self) -> None:
        self._out.flush()


SINK = Sink(
    name="jsonl",
    summary="the session record, one JSON object per line (capture/SCHEMA.md)",
    token_mode="jsonl",
    consumes=frozenset({DATA, HANDSHAKE, CONNECTION, COMMAND, STATEMENT}),
    open=lambda out, _options: JsonlWriter(out),
)
