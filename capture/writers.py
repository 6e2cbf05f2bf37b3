"""Capture output: one writer per format, same five calls.

``jsonl`` is the record of the session (schema ``ecap.capture/1``, documented in
``capture/SCHEMA.md``) and the input of ``ecap-audit report``; ``text`` is for a
person watching. Both write to a file created 0600 (captured plaintext is never
world-readable) or to stdout.
"""

from __future__ import annotations

import base64
import json
import sys
import time
from datetime import UTC, datetime
from typing import IO, Any, Protocol

from ecap.capture.connections import Connection
from ecap.capture.events import Call
from ecap.capture.protocols import ConnectionRenderer
from ecap.capture.schema import SCHEMA
from ecap.text import json_safe_str, printable


class Writer(Protocol):
    def header(self, info: dict[str, Any]) -> None: ...
    def call(self, conn: Connection, message_id: int, call: Call) -> None: ...
    def handshake(self, conn: Connection, ts: float) -> None: ...
    def connection_end(self, conn: Connection) -> None: ...
    def summary(self, summary: dict[str, Any]) -> None: ...
    def flush(self) -> None: ...


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds")


def _json_opt(value: str | None) -> str:
    return "null" if value is None else json.dumps(value)


def connection_record(conn: Connection, protocol: str | None = None) -> dict[str, Any]:
    return {
        "type": "connection",
        "connection_id": conn.id,
        "pid": conn.pid,
        "comm": json_safe_str(conn.comm),
        "fd": conn.fd,
        "fd_source": conn.fd_source,
        "ssl": f"0x{conn.ssl:x}",
        "local": conn.local,
        "peer": conn.peer,
        "handshake_seen": conn.handshake,
        "started_at": _iso(conn.started_at),
        "ended_at": _iso(conn.ended_at),
        "end_reason": conn.end_reason,
        "messages": conn.messages,
        "bytes_written": conn.bytes["write"],
        "bytes_read": conn.bytes["read"],
        **({"protocol": protocol} if protocol else {}),
    }


class JsonlWriter:
    """One JSON object per line: header, events, connections, summary."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self._comms: dict[str, str] = {}
        self._addr_cache: dict[tuple[str | None, str | None], str] = {}

    def _emit(self, record: dict[str, Any]) -> None:
        self._out.write(
            json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode(
                "utf-8", "backslashreplace"
            )
            + b"\n"
        )

    def header(self, info: dict[str, Any]) -> None:
        self._emit({"type": "header", "schema": SCHEMA, **info})

    def call(self, conn: Connection, message_id: int, call: Call) -> None:
        # The hot path (one line per SSL call, up to ~100k/s): formatted directly
        # rather than through json.dumps. Every field is an int, base64, a
        # timestamp, or a string passed through json.dumps — same JSON either way.
        comm = self._comms.get(call.comm)
        if comm is None:
            comm = self._comms[call.comm] = json.dumps(json_safe_str(call.comm), ensure_ascii=False)
        write = self._out.write
        write(
            (
                f'{{"type":"event","connection_id":{conn.id},"message_id":{message_id},'
                f'"ts":"{_iso(call.ts)}","pid":{call.pid},"tid":{call.tid},"uid":{call.uid},'
                f'"comm":{comm},"fd":{conn.fd},"ssl":"0x{call.ssl:x}",'
                f'"direction":"{call.direction}",{self._endpoints(conn)},'
                f'"len":{len(call.data)},"total":{call.total},'
                f'"truncated":{call.truncated},"lost":{call.lost},"payload_b64":"'
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

    def handshake(self, conn: Connection, ts: float) -> None:
        self._emit(
            {
                "type": "handshake",
                "connection_id": conn.id,
                "ts": _iso(ts),
                "pid": conn.pid,
                "fd": conn.fd,
                "ssl": f"0x{conn.ssl:x}",
                "peer": conn.peer,
            }
        )

    def connection_end(self, conn: Connection) -> None:
        self._emit(connection_record(conn))

    def summary(self, summary: dict[str, Any]) -> None:
        self._emit({"type": "summary", **summary})

    def flush(self) -> None:
        self._out.flush()


_ARROWS = {"write": "→", "read": "←"}
_COLOURS = {"write": "\033[33m", "read": "\033[36m", "dim": "\033[2m", "bold": "\033[1m"}
_RESET = "\033[0m"


class TextWriter:
    """Readable output: each HTTP message (or raw call) under a one-line heading."""

    def __init__(self, out: IO[bytes], *, colour: bool, hex_mode: bool) -> None:
        self._out = out
        self._colour = colour
        self._hex = hex_mode
        self._renderers: dict[int, ConnectionRenderer] = {}

    def _paint(self, key: str, text: str) -> str:
        return f"{_COLOURS[key]}{text}{_RESET}" if self._colour else text

    def _line(self, text: str = "") -> None:
        self._out.write(text.encode("utf-8", "backslashreplace") + b"\n")

    def header(self, info: dict[str, Any]) -> None:
        grant = info.get("grant", {})
        self._line(
            self._paint(
                "bold",
                f"ecap capture {printable(info['session_id'])} module {printable(info['module'])}",
            )
        )
        self._line(
            f"  operator {printable(str(grant.get('operator')))}, "
            f"reason {printable(str(grant.get('reason')))}, "
            f"token {printable(str(grant.get('jti')))} "
            f"expires {printable(str(_iso(grant.get('expires_at'))))}"
        )
        for t in info.get("targets", []):
            self._line(
                f"  pid {t['pid']} {printable(t['comm'])}: {printable(t['hooked'])} "
                f"({printable(t['kind'])}, {printable(str(t['version']))})"
            )
        self._line()

    def _heading(self, conn: Connection, direction: str, ts: float, title: str) -> str:
        when = time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int(ts * 1e6) % 1000000:06d}"
        peer = printable(conn.peer or "?")
        arrow = _ARROWS.get(direction, "·")
        text = (
            f"{when} conn#{conn.id} pid {conn.pid} {printable(conn.comm)} fd {conn.fd} "
            f"{arrow} {peer}  {title}"
        )
        return self._paint(direction if direction in _COLOURS else "dim", text)

    def call(self, conn: Connection, message_id: int, call: Call) -> None:
        renderer = self._renderers.setdefault(conn.id, ConnectionRenderer(hex_mode=self._hex))
        note = ""
        if call.truncated:
            note += f" [{call.truncated} bytes beyond the per-call limit not captured]"
        if call.lost:
            note += f" [{call.lost} bytes lost: ring buffer full]"
        if note:
            self._line(
                self._heading(
                    conn, call.direction, call.ts, f"#{message_id} {call.total} bytes{note}"
                )
            )
        for item in renderer.feed(call.direction, call.data):
            self._line(self._heading(conn, call.direction, call.ts, item.title))
            for line in item.lines:
                self._line("    " + line)

    def handshake(self, conn: Connection, ts: float) -> None:
        self._line(self._heading(conn, "dim", ts, "TLS handshake done"))

    def connection_end(self, conn: Connection) -> None:
        renderer = self._renderers.pop(conn.id, None)
        if renderer is not None:
            for item in renderer.finish():
                self._line(self._heading(conn, "dim", conn.ended_at or time.time(), item.title))
                for line in item.lines:
                    self._line("    " + line)
        self._line(
            self._heading(
                conn,
                "dim",
                conn.ended_at or time.time(),
                f"connection ended ({printable(conn.end_reason or '?')}): "
                f"{conn.bytes['write']} bytes written, {conn.bytes['read']} read",
            )
        )

    def summary(self, summary: dict[str, Any]) -> None:
        self._line()
        for line in summary_lines(summary):
            self._line(line)

    def flush(self) -> None:
        self._out.flush()


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The end-of-capture summary as text (stderr and text output)."""
    ev, by = summary["events"], summary["bytes"]
    return [
        f"capture stopped: {printable(summary['stop_reason'])} after {summary['duration']:.1f}s",
        f"  written: {ev['write']} events, {by['write']} bytes; "
        f"read: {ev['read']} events, {by['read']} bytes; "
        f"connections: {summary['connections']}",
        f"  lost: {summary['lost_events']} events, {summary['lost_bytes']} bytes; "
        f"truncated: {summary['truncated_bytes']} bytes (limit {summary['max_call_bytes']} "
        f"per call)",
    ]


def make_writer(fmt: str, out: IO[bytes], *, hex_mode: bool) -> Writer:
    if fmt == "jsonl":
        return JsonlWriter(out)
    colour = out is sys.stdout.buffer and sys.stdout.isatty()
    return TextWriter(out, colour=colour, hex_mode=hex_mode)
