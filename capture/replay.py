"""Render a recorded session (``--format jsonl``) as the text view, after the fact.

The JSONL file is the record; this turns it back into what ``--format text`` would
have shown live (HTTP/1 and HTTP/2 decoded), so one capture serves both the
auditor's report and a person reading the exchange.
``ecap-audit replay SESSION.jsonl [--hex]``
"""

from __future__ import annotations

import base64
from datetime import datetime
from pathlib import Path
from typing import IO

from ecap.capture.connections import Connection
from ecap.capture.events import ConnectionEndEvent, DataEvent
from ecap.capture.records import Call
from ecap.capture.schema import SCHEMA, SchemaError, validate_lines
from ecap.capture.sinks.text import TextWriter
from ecap.errors import UsageError


def _ts(text: str | None) -> float:
    return datetime.fromisoformat(text).timestamp() if text else 0.0


def render_session(
    path: Path, out: IO[bytes], *, hex_mode: bool = False, colour: bool = False
) -> None:
    """Validate the session file and write its text rendering to ``out``."""
    try:
        records = validate_lines(path.read_text(encoding="utf-8").splitlines())
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc
    except SchemaError as exc:
        raise UsageError(f"{path} is not an {SCHEMA} session: {exc}") from exc
    writer = TextWriter(out, colour=colour, hex_mode=hex_mode)
    conns: dict[int, Connection] = {}
    for rec in records:
        kind = rec["type"]
        if kind == "header":
            writer.header(rec)
        elif kind == "event":
            conn = conns.setdefault(rec["connection_id"], _connection(rec))
            conn.fd, conn.local, conn.peer = rec["fd"], rec["local"], rec["peer"]
            data = base64.b64decode(rec["payload_b64"])
            conn.bytes[rec["direction"]] += len(data)
            segments = rec.get("segments")
            call = Call(
                rec["direction"], _ts(rec["ts"]), rec["pid"], rec["tid"], rec["uid"],
                rec["comm"], rec["fd"], int(rec["conn"], 16), rec["total"], data,
                rec["truncated"], rec["lost"], rec.get("unreadable", 0),
                [tuple(s) for s in segments] if segments is not None else None,
                rec["stream_offset"],
            )  # fmt: skip
            writer.emit(DataEvent(conn, rec["message_id"], call))
        elif kind == "connection":
            conn = conns.pop(rec["connection_id"], None) or _connection(rec)
            conn.ended_at, conn.end_reason = _ts(rec["ended_at"]), rec["end_reason"]
            conn.bytes = {"write": rec["bytes_written"], "read": rec["bytes_read"]}
            writer.emit(ConnectionEndEvent(conn))
        elif kind in ("command", "statement"):
            writer.record_line(rec)
        elif kind == "summary":
            writer.summary(rec)
    writer.flush()


def _connection(rec: dict) -> Connection:
    return Connection(rec["connection_id"], rec["pid"], int(rec["conn"], 16), rec["comm"],
                      rec.get("module", ""))  # fmt: skip
