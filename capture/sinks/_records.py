"""Shell commands and SQL statements as session records and as text lines.

One definition of each, shared by the jsonl sink (the record), the text sink and
``ecap-audit replay`` (the line), so a replayed session reads like the live one.
"""

from __future__ import annotations

import base64
import time
from typing import Any

from ecap.capture.events import CommandEvent, StatementEvent
from ecap.text import json_safe_str, printable
from ecap.timefmt import iso_utc


def _text_fields(text: bytes) -> dict[str, Any]:
    """``text`` as UTF-8 for people and grep; ``text_b64`` too when the bytes are not
    valid UTF-8 (``text`` then shows them as ``\\xNN``), so nothing is ambiguous."""
    try:
        return {"text": text.decode("utf-8")}
    except UnicodeDecodeError:
        return {
            "text": text.decode("utf-8", "backslashreplace"),
            "text_b64": base64.b64encode(text).decode("ascii"),
        }


def command_record(e: CommandEvent) -> dict[str, Any]:
    return {
        "type": "command", "shell": e.shell, "ts": iso_utc(e.ts), "ended_at": iso_utc(e.ended_at),
        "pid": e.pid, "uid": e.uid, "comm": json_safe_str(e.comm), "tty": e.tty,
        "status": e.status, "ending": e.ending, "lines": e.lines, "length": e.length,
        "truncated": e.truncated, "lost": e.lost, **_text_fields(e.text),
    }  # fmt: skip


def statement_record(e: StatementEvent) -> dict[str, Any]:
    return {
        "type": "statement", "server": e.server, "ts": iso_utc(e.ts), "duration": e.duration,
        "pid": e.pid, "tid": e.tid, "comm": json_safe_str(e.comm), "session": e.session,
        "user": None if e.user is None else json_safe_str(e.user),
        "database": None if e.database is None else json_safe_str(e.database),
        "command": e.command, "statement_id": e.statement_id, "status": e.status,
        "error": e.error, "rows": e.rows, "tags": list(e.tags), "length": e.length,
        "truncated": e.truncated, "lost": e.lost, **_text_fields(e.text),
    }  # fmt: skip


def _clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int(ts * 1e6) % 1000000:06d}"


def _missing(truncated: int, lost: int) -> str:
    note = f" [{truncated} bytes beyond the limit not captured]" if truncated else ""
    return note + (f" [{lost} bytes lost]" if lost else "")


def command_line(rec: dict[str, Any]) -> str:
    """One readable line for a ``command`` record (every field escaped)."""
    ending = rec["ending"]
    if ending in ("status", "exit"):
        outcome = f"status {rec['status']}" if rec["status"] is not None else "status ?"
        outcome += " (exit)" if ending == "exit" else ""
    elif ending == "signal":
        outcome = f"killed by signal {rec['status']}"
    else:
        outcome = ending
    ts = _ts(rec["ts"])
    took = ""
    if rec.get("ended_at"):
        took = f" {max(0.0, _ts(rec['ended_at']) - ts):.3f}s"
    return (
        f"{_clock(ts)} pid {rec['pid']} uid {rec['uid']} {printable(rec['tty'] or 'no tty')} "
        f"{printable(rec['shell'])} [{printable(outcome)}]{took}"
        f"{_missing(rec['truncated'], rec['lost'])}  $ {printable(_shown(rec))}"
    )


def statement_line(rec: dict[str, Any]) -> str:
    """One readable line for a ``statement`` record (every field escaped)."""
    who = f"user {rec['user'] or '?'} db {rec['database'] or '?'}"
    if rec["status"] == "error":
        outcome = f"error {rec['error']}"
    else:
        outcome = rec["status"]
        if rec["tags"]:
            outcome += " " + ", ".join(rec["tags"])
        if rec["rows"] is not None:
            outcome += f" ({rec['rows']} rows)"
    took = f" {rec['duration'] * 1000:.3f}ms" if rec["duration"] is not None else ""
    command = rec["command"] + (
        f" #{rec['statement_id']}" if rec.get("statement_id") is not None else ""
    )
    return (
        f"{_clock(_ts(rec['ts']))} pid {rec['pid']} {printable(rec['server'])} "
        f"{printable(who)} [{printable(outcome)}]{took}"
        f"{_missing(rec['truncated'], rec['lost'])}  {printable(command)}: "
        f"{printable(_shown(rec))}"
    )


def _shown(rec: dict[str, Any]) -> bytes:
    if "text_b64" in rec:
        return base64.b64decode(rec["text_b64"])
    return rec["text"].encode("utf-8", "surrogateescape")


def _ts(text: str | None) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text).timestamp() if text else 0.0
