"""Read a recorded session back — JSONL or raw — and render it, as a stream.

The JSONL file (``--format jsonl``) is the session record; a raw file (``--format
raw``) holds the kernel's records verbatim with their layout. Both are read a record
at a time, whatever their size: ``ecap-audit replay`` turns either into the text
view or JSONL, and :func:`iter_session_records` gives ``ecap-audit report`` the
session's records (a raw file's are produced by the same pipeline a live capture
uses, so they are exactly what ``--format jsonl`` would have written).

``ecap-audit replay SESSION [--format text|jsonl] [--hex]``
"""

from __future__ import annotations

import base64
import io
import json
import struct
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from ecap.capture import modules as module_registry
from ecap.capture.abi import Abi
from ecap.capture.connections import Connection
from ecap.capture.events import ConnectionEndEvent, DataEvent
from ecap.capture.pipeline import Pipeline, summary_counts
from ecap.capture.records import Call, Clock
from ecap.capture.schema import SCHEMA, SchemaError, validate_record
from ecap.capture.sinks import raw as raw_sink
from ecap.capture.sinks.interface import SinkWriter
from ecap.capture.sinks.jsonl import JsonlWriter
from ecap.capture.sinks.text import TextWriter
from ecap.errors import UsageError
from ecap.text import printable

MAX_LINE = 64 << 20
"""A JSONL line longer than this is not a session record (a call is at most 1 MiB)."""
MAX_RECORD = 1 << 20
RAW_ONLY_KEYS = ("record_abi", "clock_offset")
HINT = "pass a session file written by 'ecap-audit capture --format jsonl' or '--format raw'"


def _ts(text: str | None) -> float:
    return datetime.fromisoformat(text).timestamp() if text else 0.0


def _open(path: Path) -> IO[bytes]:
    try:
        return open(path, "rb")
    except OSError as exc:
        raise UsageError(f"cannot read {printable(str(path))}: {exc.strerror}", hint=HINT) from exc


def _bad(path: Path, problem: str) -> UsageError:
    return UsageError(f"{printable(str(path))} is not a capture session: {problem}", hint=HINT)


def _header(path: Path, f: IO[bytes]) -> dict[str, Any]:
    line = f.readline(MAX_LINE)
    try:
        header = json.loads(line)
    except ValueError:
        raise _bad(path, "its first line is not a JSON header") from None
    if not isinstance(header, dict):
        raise _bad(path, "its first line is not a JSON object")
    schema = header.get("schema")
    try:
        if schema == raw_sink.SCHEMA:
            validate_record({k: v for k, v in header.items() if k not in RAW_ONLY_KEYS}
                            | {"schema": SCHEMA}, first=True)  # fmt: skip
        else:
            validate_record(header, first=True)
    except SchemaError as exc:
        raise _bad(path, str(exc)) from None
    return header


def _jsonl_records(path: Path, f: IO[bytes]) -> Iterator[dict[str, Any]]:
    """The records after the header, each validated; the last must be the summary."""
    last = None
    for number, line in enumerate(iter(lambda: f.readline(MAX_LINE + 1), b""), start=2):
        if len(line) > MAX_LINE:
            raise _bad(path, f"line {number} is longer than {MAX_LINE} bytes")
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            validate_record(record)
        except ValueError as exc:  # SchemaError is one
            raise _bad(path, f"line {number}: {exc}") from None
        last = record
        yield record
    if last is None or last["type"] != "summary":
        raise _bad(path, "the last record must be the summary (was the capture interrupted?)")


def _raw_frames(path: Path, f: IO[bytes]) -> Iterator[tuple[bytes, bytes]]:
    """(tag, body) frames of a raw file; the summary frame ends it."""
    while True:
        head = f.read(raw_sink.FRAME.size)
        if not head:
            raise _bad(path, "it ends without a summary (was the capture interrupted?)")
        if len(head) < raw_sink.FRAME.size:
            raise _bad(path, "it ends in the middle of a record")
        tag, size = raw_sink.FRAME.unpack(head)
        if tag not in (raw_sink.RECORD_TAG, raw_sink.SUMMARY_TAG) or size > MAX_RECORD:
            raise _bad(path, f"damaged at byte {f.tell() - len(head)}")
        body = f.read(size)
        if len(body) < size:
            raise _bad(path, "it ends in the middle of a record")
        yield tag, body
        if tag == raw_sink.SUMMARY_TAG:
            return


def _raw_through(path: Path, f: IO[bytes], header: dict[str, Any],
                 writer: SinkWriter) -> Iterator[None]:  # fmt: skip
    """Feed a raw file's records to ``writer`` through the pipeline a live capture runs;
    yields after the header and after every batch (callers stream the output)."""
    try:
        abi = Abi.from_json(header["record_abi"])
        clock = Clock(offset=float(header["clock_offset"]))
    except (ValueError, TypeError, KeyError) as exc:
        raise _bad(path, str(exc)) from None
    writer.header({k: v for k, v in header.items() if k not in (*RAW_ONLY_KEYS, "type", "schema")})
    yield
    module = str(header["module"])
    try:
        records = module_registry.get(module).records
    except UsageError:
        raise _bad(
            path, f"it was captured by the {module!r} module, which this build lacks"
        ) from None
    used = header.get("modules")
    sources = [[str(m) for m in used]] if isinstance(used, list) and used else None
    pipeline = Pipeline(abi, clock, int(header["max_call_bytes"]), module, writer, records=records,
                        sources=sources)  # fmt: skip
    batch: list[bytes] = []
    try:
        for tag, body in _raw_frames(path, f):
            if tag == raw_sink.RECORD_TAG:
                batch.append(body)
                if len(batch) >= 1024:
                    pipeline.feed(batch)
                    batch.clear()
                    yield
                continue
            pipeline.feed(batch)
            summary = json.loads(body)
            pipeline.finish(float(summary.get("stopped_at") or 0.0))
            writer.summary({k: v for k, v in summary.items() if k != "type"}
                           | summary_counts(pipeline))  # fmt: skip
            yield
    except (struct.error, ValueError, IndexError, AttributeError) as exc:
        raise _bad(path, f"a record does not decode ({exc})") from None


def _render_jsonl(records: Iterator[dict[str, Any]], header: dict[str, Any],
                  writer: SinkWriter) -> None:  # fmt: skip
    writer.header({k: v for k, v in header.items() if k not in ("type", "schema")})
    conns: dict[int, Connection] = {}
    for rec in records:
        kind = rec["type"]
        if kind == "event":
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
            writer.summary({k: v for k, v in rec.items() if k != "type"})


def _connection(rec: dict) -> Connection:
    return Connection(rec["connection_id"], rec["pid"], int(rec["conn"], 16), rec["comm"],
                      rec.get("module", ""))  # fmt: skip


def render_session(path: Path, out: IO[bytes], *, fmt: str = "text", hex_mode: bool = False,
                   colour: bool = False) -> None:  # fmt: skip
    """Validate the session file as it is read and write its rendering to ``out``."""
    writer: SinkWriter
    if fmt == "jsonl":
        writer = JsonlWriter(out)
    elif fmt == "text":
        writer = TextWriter(out, colour=colour, hex_mode=hex_mode)
    else:
        raise UsageError(f"replay renders text or jsonl, not {fmt!r}")
    with _open(path) as f:
        header = _header(path, f)
        if header["schema"] == raw_sink.SCHEMA:
            for _ in _raw_through(path, f, header, writer):
                pass
        else:
            _render_jsonl(_jsonl_records(path, f), header, writer)
    writer.flush()


def looks_raw(path: Path) -> bool:
    """Does the file start like a raw session (a cheap sniff; the reader checks all)?"""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return f'"schema":"{raw_sink.SCHEMA}"'.encode() in head


def iter_session_records(path: Path) -> Iterator[dict[str, Any]]:
    """The session's records (header first, summary last) from a JSONL or raw file,
    as dicts in the JSONL schema — streamed, whatever the file's size."""
    with _open(path) as f:
        header = _header(path, f)
        if header["schema"] != raw_sink.SCHEMA:
            yield header
            yield from _jsonl_records(path, f)
            return
        lines = _LineCollector()
        for _ in _raw_through(path, f, header, JsonlWriter(lines)):  # type: ignore[arg-type]
            for line in lines.take():
                yield json.loads(line)


class _LineCollector(io.RawIOBase):
    """A byte sink that hands back complete lines (the JSONL writer's output)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._buf += data
        return len(data)

    def take(self) -> list[bytes]:
        end = self._buf.rfind(b"\n") + 1
        if not end:
            return []
        out = bytes(self._buf[:end]).splitlines()
        del self._buf[:end]
        return out
