"""``--format raw``: the kernel's records, verbatim, rendered later.

The fastest output there is: the capture decodes nothing, so it keeps up with the
kernel at rates where decoding would fall behind and the ring would overflow. The
file (schema ``ecap.capture-raw/1``, see ``capture/SCHEMA.md``) is one JSON header
line — the session header plus the record layout and the capture's clock — then
framed records, then the summary:

    {"type": "header", "schema": "ecap.capture-raw/1", ..., "record_abi": {...}}\\n
    b"R" <u32 length, little-endian> <record bytes>      (as many as were captured)
    b"S" <u32 length> <summary JSON>                      (last)

``ecap-audit replay FILE [--format text|jsonl]`` renders it exactly as a live capture
would have (the same pipeline), and ``ecap-audit report`` reads it directly.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
from typing import IO, Any

from ecap.capture.events import RECORDS, Event
from ecap.capture.sinks.interface import Sink, SinkOptions

SCHEMA = "ecap.capture-raw/1"
RECORD_TAG = b"R"
SUMMARY_TAG = b"S"
FRAME = struct.Struct("<cI")


_IOV_MAX = os.sysconf("SC_IOV_MAX")


def write_all(fd: int, parts: list[Any]) -> None:
    """``writev`` every part to ``fd``, however many calls it takes."""
    i = 0
    while i < len(parts):
        done = os.writev(fd, parts[i : i + _IOV_MAX])
        while i < len(parts) and done >= len(parts[i]):
            done -= len(parts[i])
            i += 1
        if done:
            parts[i] = memoryview(parts[i])[done:]


class RawWriter:
    def __init__(self, out: IO[bytes], options: SinkOptions) -> None:
        if options.abi is None:
            raise ValueError("raw output needs the record layout")
        self._out = out
        self._options = options
        self._frames: dict[int, bytes] = {}
        """Record length → its frame header (records of a capture come in few sizes)."""

    def header(self, info: dict[str, Any]) -> None:
        doc = {
            "type": "header",
            "schema": SCHEMA,
            **info,
            "record_abi": self._options.abi.to_json(),
            "clock_offset": self._options.clock_offset,
        }
        self._out.write(json.dumps(doc, separators=(",", ":")).encode() + b"\n")

    def records(self, batch: Sequence[bytes | memoryview]) -> None:
        """Frame and write the records (views of the ring are written straight from
        it: one ``writev`` per batch, no copy in user space)."""
        frames, pack = self._frames, FRAME.pack
        parts: list[Any] = []
        add = parts.append
        for raw in batch:
            n = len(raw)
            frame = frames.get(n)
            if frame is None:
                if len(frames) > 4096:
                    frames.clear()
                frame = frames[n] = pack(RECORD_TAG, n)
            add(frame)
            add(raw)
        try:
            fd = self._out.fileno()
        except (AttributeError, OSError, ValueError):  # an in-memory file (tests)
            self._out.write(b"".join(parts))
            return
        self._out.flush()  # what the writer buffered (the header) goes first
        write_all(fd, parts)

    def emit(self, event: Event) -> None:  # pragma: no cover - the engine never calls it
        raise TypeError("the raw sink takes records, not events")

    def summary(self, summary: dict[str, Any]) -> None:
        body = json.dumps({"type": "summary", **summary}, separators=(",", ":")).encode()
        self._out.write(FRAME.pack(SUMMARY_TAG, len(body)) + body)

    def flush(self) -> None:
        self._out.flush()


SINK = Sink(
    name="raw",
    summary="the kernel's records verbatim, the fastest mode (render with 'ecap-audit replay')",
    token_mode="raw",
    consumes=frozenset({RECORDS}),
    open=RawWriter,
)
