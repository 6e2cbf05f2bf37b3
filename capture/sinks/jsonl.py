"""``--format jsonl``: the session record (schema ``ecap.capture/3``).

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
    STATEMENT,
    ConnectionEndEvent,
    DataEvent,
    Event,
    HandshakeEvent,
)
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


class JsonlWriter:
    """One JSON object per line."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self._comms: dict[str, str] = {}
        self._addr_cache: dict[tuple[str | None, str | None], str] = {}
        self._handlers = {
            DATA: self._call,
            HANDSHAKE: self._handshake,
            CONNECTION: self._connection_end,
            COMMAND: lambda e: self._emit(command_record(e)),
            STATEMENT: lambda e: self._emit(statement_record(e)),
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

    def emit(self, event: Event) -> None:
        self._handlers[event.kind](event)

    def _call(self, event: DataEvent) -> None:
        # The hot path (one line per call, up to ~100k/s): formatted directly
        # rather than through json.dumps. Every field is an int, base64, a
        # timestamp, or a string passed through json.dumps — same JSON either way.
        conn, call = event.conn, event.call
        comm = self._comms.get(call.comm)
        if comm is None:
            comm = self._comms[call.comm] = json.dumps(json_safe_str(call.comm), ensure_ascii=False)
        extra = ""
        if call.unreadable:
            extra += f'"unreadable":{call.unreadable},'
        if call.segments is not None:
            extra += f'"segments":{json.dumps(call.segments, separators=(",", ":"))},'
        write = self._out.write
        write(
            (
                f'{{"type":"event","connection_id":{conn.id},"message_id":{event.message_id},'
                f'"ts":"{iso_utc(call.ts)}","pid":{call.pid},"tid":{call.tid},"uid":{call.uid},'
                f'"comm":{comm},"fd":{conn.fd},"conn":"0x{call.conn:x}",'
                f'"direction":"{call.direction}","stream_offset":{call.stream_offset},'
                f"{self._endpoints(conn)},"
                f'"len":{len(call.data)},"total":{call.total},'
                f'"truncated":{call.truncated},"lost":{call.lost},{extra}"payload_b64":"'
            ).encode("utf-8", "backslashreplace")
        )
        write(base64.b64encode(call.data))  # not concatenated: no extra copy of it
        write(b'"}\n')

    def _endpoints(self, conn: Connection) -> str:
        key = (conn.local, conn.peer)
        text = self._addr_cache.get(key)
        if text is None:
            text = f'"local":{_json_opt(conn.local)},"peer":{_json_opt(conn.peer)}'
            if len(self._addr_cache) < 4096:
                self._addr_cache[key] = text
        return text

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
