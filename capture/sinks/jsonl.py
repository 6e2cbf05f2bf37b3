"""``--format jsonl``: the session record (schema ``ecap.capture/4``).

One JSON object per line: header, events, connections, summary — documented in
``capture/SCHEMA.md``, validated by :mod:`ecap.capture.schema`, read back by
``ecap-audit replay`` and ``ecap-audit report``.
"""

from __future__ import annotations

import base64
import json
from typing import IO, Any

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
            DATA: self._call,
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
        self._handlers[event.kind](event)

    def _call(self, event: DataEvent) -> None:
        # The hot path (one line per call, up to ~100k/s): formatted directly rather
        # than through json.dumps — every field is an int, base64, a timestamp, or a
        # string passed through json.dumps, so the JSON is the same. What repeats
        # from call to call (the process, thread, connection and endpoints part; the
        # second of the timestamp) is formatted once and reused.
        conn, call = event.conn, event.call
        key = (conn.id, call.tid, call.direction, conn.fd, conn.local, conn.peer, call.uid,
               call.comm, call.pid)  # fmt: skip
        middle = self._middles.get(key)
        if middle is None:
            middle = self._middle(conn, call)
            if len(self._middles) > 4096:
                self._middles.clear()
            self._middles[key] = middle
        extra = b""
        if call.unreadable:
            extra += b'"unreadable":%d,' % call.unreadable
        if call.segments is not None:
            extra += b'"segments":%s,' % json.dumps(call.segments, separators=(",", ":")).encode()
        write = self._out.write
        write(b'{"type":"event","connection_id":%d,"message_id":%d,"ts":"%s",%s'
              b'"stream_offset":%d,"len":%d,"total":%d,"truncated":%d,"lost":%d,%s'
              b'"payload_b64":"%s"}\n' % (
                  conn.id, event.message_id, self._ts(call.ts), middle, call.stream_offset,
                  len(call.data), call.total, call.truncated, call.lost, extra,
                  base64.b64encode(call.data)))  # fmt: skip

    def _middle(self, conn: Connection, call: Call) -> bytes:
        comm = json.dumps(json_safe_str(call.comm), ensure_ascii=False)
        return (
            f'"pid":{call.pid},"tid":{call.tid},"uid":{call.uid},"comm":{comm},"fd":{conn.fd},'
            f'"conn":"0x{call.conn:x}","module":{json.dumps(conn.module)},'
            f'"direction":"{call.direction}",'
            f'"local":{_json_opt(conn.local)},"peer":{_json_opt(conn.peer)},'
        ).encode("utf-8", "backslashreplace")

    def _ts(self, ts: float) -> bytes:
        """``iso_utc(ts)``, with the date and time to the second formatted once a second."""
        second = int(ts)
        if second != self._second:
            self._second = second
            self._second_text = iso_utc(second, "seconds").removesuffix("+00:00").encode()
        micro = min(999999, round((ts - second) * 1e6))
        return b"%s.%06d+00:00" % (self._second_text, micro)

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
