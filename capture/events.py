"""Ring-buffer records → whole calls.

The kernel sends one call's plaintext as numbered records of at most one chunk
each (``offset``/``len`` within ``total``). :class:`Reassembler` puts them back
together into :class:`Call` objects; a call whose records were partly lost is
still delivered, with the missing bytes counted, never papered over.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ecap.capture.probes import (
    FLAG_LAST,
    FLAG_TRUNCATED,
    KIND_READ,
    KIND_WRITE,
    HeaderLayout,
)


# Record and Call are made ~100k times a second: slotted but not frozen, because a
# frozen dataclass's __init__ goes through object.__setattr__ for every field.
@dataclass(slots=True)
class Record:
    """One ring-buffer record, decoded."""

    ts_ns: int
    ssl: int
    pid: int
    tid: int
    uid: int
    fd: int
    total: int
    offset: int
    len: int
    kind: int
    flags: int
    family: int
    comm: str
    data: bytes


_COMMS: dict[bytes, str] = {}
_HEADER_FIELDS = (
    "ts_ns",
    "ssl",
    "pid",
    "tid",
    "uid",
    "fd",
    "total",
    "offset",
    "len",
    "kind",
    "flags",
    "family",
    "comm",
)


def check_layout(layout: HeaderLayout) -> None:
    """:func:`decode` is positional: the C struct must keep :class:`Record`'s order."""
    if tuple(layout.names) != _HEADER_FIELDS:
        raise RuntimeError(f"struct tls_event fields {layout.names} do not match Record")


def decode(raw: bytes, layout: HeaderLayout) -> Record:
    """Decode one record using the layout bcc derived from the C struct.

    This runs once per record at up to ~100k records/s, so it avoids building
    dicts: the header fields are positional, in the order of the C struct.
    """
    fields = layout.unpack(raw)
    comm_raw = fields[-1]
    comm = _COMMS.get(comm_raw)
    if comm is None:
        comm = comm_raw.split(b"\0", 1)[0].decode("utf-8", "backslashreplace")
        if len(_COMMS) < 4096:
            _COMMS[comm_raw] = comm
    start = layout.data_offset
    return Record(*fields[:-1], comm, raw[start : start + fields[8]])


@dataclass(slots=True)
class Call:
    """One SSL_write/SSL_read call's plaintext, put back together."""

    direction: str
    """``write`` (the process sent it) or ``read`` (the process received it)."""
    ts: float
    """Wall-clock time of the call's return (seconds since the epoch)."""
    pid: int
    tid: int
    uid: int
    comm: str
    fd: int
    ssl: int
    total: int
    """Bytes the call really moved."""
    data: bytes
    """The captured bytes (a prefix of the call's bytes, ``total`` long unless cut)."""
    truncated: int
    """Bytes beyond the per-call limit (counted, not captured)."""
    lost: int
    """Bytes within the limit whose records were lost (ring buffer full)."""


class Clock:
    """Turns CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns) into wall-clock seconds."""

    def __init__(self) -> None:
        self.offset = time.time() - time.monotonic()

    def wall(self, ts_ns: int) -> float:
        return ts_ns / 1e9 + self.offset


class Reassembler:
    """Collects the records of each call (keyed by thread and timestamp)."""

    def __init__(self, clock: Clock, max_call_bytes: int) -> None:
        self._clock = clock
        self._limit = max_call_bytes
        self._pending: dict[tuple[int, int], list[Record]] = {}

    def add(self, rec: Record) -> Call | None:
        """Feed a data record; returns the call once its last record arrived."""
        key = (rec.tid, rec.ts_ns)
        parts = self._pending.get(key)
        if rec.flags & FLAG_LAST:
            if parts is None:
                return self._build([rec])
            parts.append(rec)
            del self._pending[key]
            return self._build(parts)
        if parts is None:
            self._pending[key] = [rec]
        else:
            parts.append(rec)
        return None

    def flush(self) -> list[Call]:
        """Calls whose last record never came (lost): delivered with what arrived."""
        out = [self._build(parts) for parts in self._pending.values()]
        self._pending.clear()
        return out

    def _build(self, parts: list[Record]) -> Call:
        first = parts[0]
        if len(parts) == 1 and first.offset == 0:
            data = first.data
        else:
            parts.sort(key=lambda r: r.offset)
            pieces: list[bytes] = []
            pos = 0
            for part in parts:
                if part.offset > pos:  # a lost record leaves a hole: keep order,
                    pieces.append(b"\0" * (part.offset - pos))  # zero-filled, counted
                pieces.append(part.data)
                pos = part.offset + part.len
            data = b"".join(pieces)
        expected = min(first.total, self._limit)
        received = sum(p.len for p in parts)
        truncated = (
            first.total - self._limit
            if any(p.flags & FLAG_TRUNCATED for p in parts)
            else max(0, first.total - expected)
        )
        return Call(
            direction="write" if first.kind == KIND_WRITE else "read",
            ts=self._clock.wall(first.ts_ns),
            pid=first.pid,
            tid=first.tid,
            uid=first.uid,
            comm=first.comm,
            fd=first.fd,
            ssl=first.ssl,
            total=first.total,
            data=data,
            truncated=truncated,
            lost=max(0, expected - received),
        )


def is_data(rec: Record) -> bool:
    return rec.kind in (KIND_WRITE, KIND_READ)
