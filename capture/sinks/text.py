"""``--format text``: each HTTP message (or raw call) under a one-line heading; one
line per shell command or SQL statement.

For a person watching. Protocols are recognised and rendered by the decoders
(:mod:`ecap.capture.decoders`); every host-derived string is escaped; colour only
on a terminal.
"""

from __future__ import annotations

import time
from typing import IO, Any

from ecap.capture.connections import Connection
from ecap.capture.decoders import ConnectionRenderer
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
from ecap.capture.sinks._records import (
    command_line,
    command_record,
    statement_line,
    statement_record,
)
from ecap.capture.sinks.interface import Sink
from ecap.capture.summary import summary_lines
from ecap.text import printable
from ecap.timefmt import iso_utc

_ARROWS = {"write": "→", "read": "←"}
_COLOURS = {"write": "\033[33m", "read": "\033[36m", "dim": "\033[2m", "bold": "\033[1m"}
_RESET = "\033[0m"


class TextWriter:
    """Readable output, one connection's protocol state per connection."""

    def __init__(self, out: IO[bytes], *, colour: bool, hex_mode: bool) -> None:
        self._out = out
        self._colour = colour
        self._hex = hex_mode
        self._session_module: str | None = None
        """The module named on the command line (from the header)."""
        self._renderers: dict[int, ConnectionRenderer] = {}
        self._handlers = {
            DATA: self._call,
            HANDSHAKE: self._handshake,
            CONNECTION: self._connection_end,
            COMMAND: lambda e: self.record_line(command_record(e)),
            STATEMENT: lambda e: self.record_line(statement_record(e)),
        }

    def record_line(self, rec: dict[str, Any]) -> None:
        """A ``command`` or ``statement`` record as its one line (also for replay)."""
        line = command_line(rec) if rec["type"] == "command" else statement_line(rec)
        failed = rec.get("status") not in (0, "ok", None) or rec.get("ending") == "signal"
        self._line(self._paint("write", line) if failed else line)

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
            f"expires {printable(str(iso_utc(grant.get('expires_at'))))}"
        )
        self._session_module = info.get("module")
        for t in info.get("targets", []):
            self._line(
                f"  pid {t['pid']} {printable(t['comm'])}{self._tag(t.get('module'))}: "
                f"{printable(t['hooked'])} ({printable(t['kind'])}, {printable(str(t['version']))})"
            )
        self._line()

    def _tag(self, module: str | None) -> str:
        """`` [gnutls]`` where the session captures through several modules (auto)."""
        if not module or module == self._session_module:
            return ""
        return f" [{printable(module)}]"

    def _heading(self, conn: Connection, direction: str, ts: float, title: str) -> str:
        when = time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int(ts * 1e6) % 1000000:06d}"
        peer = printable(conn.peer or "?")
        arrow = _ARROWS.get(direction, "·")
        text = (
            f"{when} conn#{conn.id}{self._tag(conn.module)} pid {conn.pid} "
            f"{printable(conn.comm)} fd {conn.fd} {arrow} {peer}  {title}"
        )
        return self._paint(direction if direction in _COLOURS else "dim", text)

    def emit(self, event: Event) -> None:
        self._handlers[event.kind](event)

    def _call(self, event: DataEvent) -> None:
        conn, call = event.conn, event.call
        renderer = self._renderers.setdefault(conn.id, ConnectionRenderer(hex_mode=self._hex))
        note = ""
        if call.truncated:
            note += f" [{call.truncated} bytes beyond the per-call limit not captured]"
        if call.lost:
            note += f" [{call.lost} bytes lost: ring buffer full]"
        if call.unreadable:
            note += f" [{call.unreadable} bytes unreadable in the process's memory]"
        if note:
            self._line(
                self._heading(
                    conn, call.direction, call.ts, f"#{event.message_id} {call.total} bytes{note}"
                )
            )
        for item in renderer.feed_call(call):
            self._line(self._heading(conn, call.direction, call.ts, item.title))
            for line in item.lines:
                self._line("    " + line)

    def _handshake(self, event: HandshakeEvent) -> None:
        self._line(self._heading(event.conn, "dim", event.ts, "TLS handshake done"))

    def _connection_end(self, event: ConnectionEndEvent) -> None:
        conn = event.conn
        renderer = self._renderers.pop(conn.id, None)
        ended = conn.ended_at or time.time()
        if renderer is not None:
            for item in renderer.finish():
                self._line(self._heading(conn, "dim", ended, item.title))
                for line in item.lines:
                    self._line("    " + line)
        self._line(
            self._heading(
                conn, "dim", ended,
                f"connection ended ({printable(conn.end_reason or '?')}): "
                f"{conn.bytes['write']} bytes written, {conn.bytes['read']} read",
            )
        )  # fmt: skip

    def summary(self, summary: dict[str, Any]) -> None:
        self._line()
        for line in summary_lines(summary):
            self._line(line)

    def flush(self) -> None:
        self._out.flush()


SINK = Sink(
    name="text",
    summary="readable: HTTP/1 and HTTP/2 decoded, other data escaped or as hex",
    token_mode="text",
    consumes=frozenset({DATA, HANDSHAKE, CONNECTION, COMMAND, STATEMENT}),
    open=lambda out, options: TextWriter(out, colour=options.colour, hex_mode=options.hex_mode),
)
