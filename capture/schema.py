"""The session JSONL schema (``ecap.capture/4``) as data, and a validator.

``capture/SCHEMA.md`` explains each field; this module is what code checks
against — the report reader, the tests, anyone consuming a session file. Adding a
field is compatible; removing or retyping one means a new version.
/2 generalised /1 beyond OpenSSL: ``ssl`` became ``conn`` (the module's connection
object), connections name their ``module``, and calls with holes carry ``segments``.
/3 adds the ``command`` (shells) and ``statement`` (databases) records, the header's
``descendants`` and the summary's per-kind ``events`` counts and ``descendants``;
a /2 file is still read (it is a /3 file without those records).
/4 adds the ``key`` record (a TLS secret's verdict, never the secret: the session
record of a keylog/pcapng capture), the header's ``mode`` and the summary's
``keys``, ``packets``, ``packet_bytes`` and ``packets_dropped`` (those captures
only); /2 and /3 files are still read.
"""

from __future__ import annotations

from typing import Any

SCHEMA = "ecap.capture/4"
READABLE = ("ecap.capture/2", "ecap.capture/3", SCHEMA)
"""Versions this build reads (replay, report)."""

_STR, _INT, _FLOAT, _BOOL = str, int, (int, float), bool
_OPT_STR = (str, type(None))
_OPT_INT = (int, type(None))

FIELDS: dict[str, dict[str, Any]] = {
    "header": {
        "schema": _STR,
        "session_id": _STR,
        "started_at": _FLOAT,
        "module": _STR,
        "identity": _STR,
        "format": _STR,
        "token": _STR,
        "grant": dict,
        "host": dict,
        "pids": list,
        "targets": list,
        "max_call_bytes": _INT,
        "ring_bytes": _INT,
    },
    "event": {
        "connection_id": _INT,
        "message_id": _INT,
        "ts": _STR,
        "pid": _INT,
        "tid": _INT,
        "uid": _INT,
        "comm": _STR,
        "fd": _INT,
        "conn": _STR,
        "direction": _STR,
        "stream_offset": _INT,
        "local": _OPT_STR,
        "peer": _OPT_STR,
        "len": _INT,
        "total": _INT,
        "truncated": _INT,
        "lost": _INT,
        "payload_b64": _STR,
    },
    "handshake": {
        "connection_id": _INT,
        "ts": _STR,
        "pid": _INT,
        "fd": _INT,
        "conn": _STR,
        "peer": _OPT_STR,
    },
    "connection": {
        "connection_id": _INT,
        "module": _STR,
        "pid": _INT,
        "comm": _STR,
        "fd": _INT,
        "fd_source": _STR,
        "conn": _STR,
        "local": _OPT_STR,
        "peer": _OPT_STR,
        "handshake_seen": _BOOL,
        "started_at": _STR,
        "ended_at": _OPT_STR,
        "end_reason": _OPT_STR,
        "messages": _INT,
        "bytes_written": _INT,
        "bytes_read": _INT,
    },
    "command": {
        "shell": _STR,
        "ts": _STR,
        "ended_at": _OPT_STR,
        "pid": _INT,
        "uid": _INT,
        "comm": _STR,
        "tty": _OPT_STR,
        "status": _OPT_INT,
        "ending": _STR,
        "lines": _INT,
        "length": _INT,
        "truncated": _INT,
        "lost": _INT,
        "text": _STR,
    },
    "statement": {
        "server": _STR,
        "ts": _STR,
        "duration": (int, float, type(None)),
        "pid": _INT,
        "tid": _INT,
        "comm": _STR,
        "session": _STR,
        "user": _OPT_STR,
        "database": _OPT_STR,
        "command": _STR,
        "statement_id": _OPT_INT,
        "status": _STR,
        "error": _OPT_STR,
        "rows": _OPT_INT,
        "tags": list,
        "length": _INT,
        "truncated": _INT,
        "lost": _INT,
        "text": _STR,
    },
    "key": {
        "ts": _STR,
        "connection_id": _OPT_INT,
        "pid": _INT,
        "label": _STR,
        "client_random": _STR,
        "verified": _BOOL,
        "reason": _STR,
        "flow": _OPT_STR,
    },
    "summary": {
        "session_id": _STR,
        "events": dict,
        "bytes": dict,
        "connections": _INT,
        "lost_events": _INT,
        "lost_bytes": _INT,
        "truncated_bytes": _INT,
        "unreadable_bytes": _INT,
        "deep_calls": _INT,
        "failed_calls": _INT,
        "max_call_bytes": _INT,
        "stop_reason": _STR,
        "started_at": _FLOAT,
        "stopped_at": _FLOAT,
        "duration": _FLOAT,
    },
}
ENDINGS = ("status", "exit", "signal", "exec", "running")
STATUSES = ("ok", "error", "unknown")
GRANT_FIELDS = ("jti", "operator", "reason", "issuer", "expires_at", "targets", "modules", "modes")


class SchemaError(ValueError):
    """A record does not follow the session schema."""


def validate_record(record: Any, *, first: bool = False) -> str:
    """Check one parsed line; returns its type. The first line must be the header."""
    if not isinstance(record, dict):
        raise SchemaError("record is not a JSON object")
    kind = record.get("type")
    if kind not in FIELDS:
        raise SchemaError(f"unknown record type {kind!r}")
    if first != (kind == "header"):
        raise SchemaError("the header must be the first record, and only the first")
    for name, types in FIELDS[kind].items():
        if name not in record:
            raise SchemaError(f"{kind} record lacks {name!r}")
        value = record[name]
        if isinstance(value, bool) and types is not bool and bool not in _as_tuple(types):
            raise SchemaError(f"{kind}.{name} must not be a boolean")
        if not isinstance(value, types):
            raise SchemaError(f"{kind}.{name} has type {type(value).__name__}")
    if kind == "header":
        if record["schema"] not in READABLE:
            raise SchemaError(f"schema {record['schema']!r} is not one of {', '.join(READABLE)}")
        missing = [f for f in GRANT_FIELDS if f not in record["grant"]]
        if missing:
            raise SchemaError(f"header.grant lacks {', '.join(missing)}")
    if kind == "event":
        if record["direction"] not in ("write", "read"):
            raise SchemaError(f"event.direction {record['direction']!r}")
        _check_segments(record)
    if kind == "command" and record["ending"] not in ENDINGS:
        raise SchemaError(f"command.ending {record['ending']!r}")
    if kind == "statement":
        if record["status"] not in STATUSES:
            raise SchemaError(f"statement.status {record['status']!r}")
        if not all(isinstance(tag, str) for tag in record["tags"]):
            raise SchemaError("statement.tags must be strings")
    if kind in ("command", "statement") and not isinstance(record.get("text_b64", ""), str):
        raise SchemaError(f"{kind}.text_b64 has type {type(record['text_b64']).__name__}")
    return kind


def validate_lines(lines: list[str]) -> list[dict]:
    """Parse and validate a whole session file's lines; the last must be the summary."""
    import json

    records = []
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise SchemaError(f"line {i + 1} is not JSON: {exc}") from exc
        validate_record(record, first=(i == 0))
        records.append(record)
    if not records or records[-1]["type"] != "summary":
        raise SchemaError("the last record must be the summary")
    return records


def _check_segments(record: dict) -> None:
    """Optional fields of a call with holes: they must describe the payload exactly."""
    for name in ("unreadable",):
        if name in record and (not isinstance(record[name], int) or record[name] < 0):
            raise SchemaError(f"event.{name} must be a non-negative integer")
    segments = record.get("segments")
    if segments is None:
        return
    if not isinstance(segments, list) or not all(
        isinstance(s, list) and len(s) == 2 and all(isinstance(v, int) and v >= 0 for v in s)
        for s in segments
    ):
        raise SchemaError("event.segments must be [[offset, length], ...]")
    if sum(length for _, length in segments) != record["len"]:
        raise SchemaError("event.segments do not add up to len")


def _as_tuple(types: Any) -> tuple:
    return types if isinstance(types, tuple) else (types,)
