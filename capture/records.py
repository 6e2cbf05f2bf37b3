"""Ring-buffer records → whole calls, with every missing byte accounted for.

The kernel sends one call's plaintext as numbered records of at most one chunk
each (``offset``/``len`` within ``total``). :class:`Reassembler` puts them back
together into :class:`Call` objects. Bytes can be missing for two reasons, and
both are counted, never papered over: a record the ring had no room for
(``lost``) and user memory the probe could not read (``unreadable``, a record
flagged FAULT that carries no data). A call with holes keeps its received bytes
as separate segments; nothing is zero-filled.

A call is complete when its last record arrives. If that record was lost, the
call is delivered as soon as the same thread's next call starts (its records
always precede that call's in the ring) or when it is older than
:data:`STALE_SECONDS` — in the order it happened, not at the end of the session.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ecap.capture.abi import Abi

STALE_SECONDS = 1.0
"""A call whose last record has not come after this long will not get it."""


# Record and Call are made ~100k times a second: slotted but not frozen, because a
# frozen dataclass's __init__ goes through object.__setattr__ for every field.
@dataclass(slots=True)
class Record:
    """One ring-buffer record, decoded."""

    ts_ns: int
    conn: int
    stream_off: int
    pid: int
    tid: int
    fd: int
    total: int
    offset: int
    len: int
    kind: int
    flags: int
    family: int
    source: int
    """Which of the session's modules sharing the object wrote it (0: the first)."""
    uid: int
    """From the thread's one-time announcement (not sent in every record)."""
    comm: str
    data: bytes


class Decoder:
    """Bytes of a ring record → :class:`Record` (layout from :mod:`ecap.capture.abi`).

    The kernel names each thread once (a THREAD record: uid, gid, comm) instead of
    in every record; the decoder keeps that table and fills it into each record.
    """

    UNKNOWN = (-1, "?")

    def __init__(self, abi: Abi, threadinfo: Any) -> None:
        self._unpack = abi.unpack_header
        self._start = abi.data_offset
        self._fault = abi.FLAG_FAULT
        self._thread_kind = abi.KIND_THREAD
        self._threadinfo = threadinfo
        self.threads: dict[int, tuple[int, str]] = {}
        """tid → (uid, comm)."""

    def __call__(self, raw: bytes | memoryview) -> Record:
        fields = self._unpack(raw)
        start = self._start
        # a copy: ``raw`` may be a view of the ring, which the record outlives
        data = b"" if fields[10] & self._fault else bytes(raw[start : start + fields[8]])
        if fields[9] == self._thread_kind:
            uid, _gid, comm = self._threadinfo.unpack_from(data)
            self.threads[fields[4]] = (
                uid,
                comm.split(b"\0", 1)[0].decode("utf-8", "backslashreplace"),
            )
        uid, comm = self.threads.get(fields[4], self.UNKNOWN)
        return Record(*fields, uid, comm, data)


@dataclass(slots=True)
class Call:
    """One library call's plaintext, put back together."""

    direction: str
    """``write`` (the process sent it) or ``read`` (the process received it)."""
    ts: float
    """Wall-clock time of the call's return (seconds since the epoch)."""
    pid: int
    tid: int
    uid: int
    comm: str
    fd: int
    conn: int
    """The library's connection object (SSL*, session, PRFileDesc*...)."""
    total: int
    """Bytes the call really moved."""
    data: bytes
    """The captured bytes: the segments below, concatenated."""
    truncated: int
    """Bytes beyond the per-call limit (counted, not captured)."""
    lost: int
    """Bytes within the limit whose records were lost (ring buffer full)."""
    unreadable: int = 0
    """Bytes within the limit the probe could not read from the process's memory."""
    segments: list[tuple[int, int]] | None = field(default=None)
    """(offset in the call, length) of each run of captured bytes, when there are
    holes; None when ``data`` is one run starting at offset 0."""
    stream_offset: int = 0
    """Where the call starts in its direction of the connection (bytes moved since
    the capture first saw it): a jump past the previous call's end is a call whose
    records were all lost."""
    source: int = 0
    """Which of the session's modules sharing the kernel object made the call (the
    record's ``source``)."""


class Clock:
    """Turns CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns) into wall-clock seconds.

    A replay uses the offset recorded at the capture (``offset``)."""

    def __init__(self, offset: float | None = None) -> None:
        self.offset = time.time() - time.monotonic() if offset is None else offset

    def wall(self, ts_ns: int) -> float:
        return ts_ns / 1e9 + self.offset


class Reassembler:
    """Collects the records of each thread's current call."""

    def __init__(self, clock: Clock, max_call_bytes: int, abi: Abi) -> None:
        self._clock = clock
        self._limit = max_call_bytes
        self._last = abi.FLAG_LAST
        self._truncated = abi.FLAG_TRUNCATED
        self._fault = abi.FLAG_FAULT
        self._write_kind = abi.KIND_WRITE
        self.pending: dict[int, list[Record]] = {}
        """tid → records of its call in progress."""
        self._since: dict[int, float] = {}
        """tid → when its call's first record arrived."""

    def add(self, rec: Record) -> list[Call]:
        """Feed a data record; returns the calls it completes (usually 0 or 1)."""
        done: list[Call] = []
        parts = self.pending.get(rec.tid)
        if parts is not None and parts[0].ts_ns != rec.ts_ns:
            # The thread's previous call lost its last record: it is complete now.
            done.append(self._build(parts))
            del self.pending[rec.tid]
            parts = None
        if rec.flags & self._last:
            if parts is None:
                done.append(self._build([rec]))
            else:
                parts.append(rec)
                del self.pending[rec.tid]
                done.append(self._build(parts))
            return done
        if parts is None:
            self.pending[rec.tid] = [rec]
            self._since[rec.tid] = time.monotonic()
            if len(self._since) > 2 * len(self.pending) + 64:  # forget finished threads
                self._since = {t: self._since[t] for t in self.pending}
        else:
            parts.append(rec)
        return done

    def stale(self, now: float | None = None) -> list[Call]:
        """Calls whose last record is overdue (it was lost): deliver them now."""
        now = time.monotonic() if now is None else now
        old = [tid for tid in self.pending if now - self._since.get(tid, now) >= STALE_SECONDS]
        return [self._build(self.pending.pop(tid)) for tid in old]

    def flush(self) -> list[Call]:
        """Every incomplete call (end of session)."""
        out = [self._build(parts) for parts in self.pending.values()]
        self.pending.clear()
        return out

    def _build(self, parts: list[Record]) -> Call:
        first = parts[0]
        expected = min(first.total, self._limit)
        truncated = max(0, first.total - self._limit)
        segments: list[tuple[int, int]] = []
        pieces: list[bytes] = []
        unreadable = 0
        for part in parts:  # in ring order, which is offset order
            if part.flags & self._fault:
                unreadable += part.len
                continue
            if segments and segments[-1][0] + segments[-1][1] == part.offset:
                segments[-1] = (segments[-1][0], segments[-1][1] + part.len)
            else:
                segments.append((part.offset, part.len))
            pieces.append(part.data)
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        received = len(data)
        whole = len(segments) == 1 and segments[0][0] == 0 and received == expected
        return Call(
            direction="write" if first.kind == self._write_kind else "read",
            ts=self._clock.wall(first.ts_ns),
            pid=first.pid,
            tid=first.tid,
            uid=first.uid,
            comm=first.comm,
            fd=first.fd,
            conn=first.conn,
            total=first.total,
            data=data,
            truncated=truncated,
            lost=max(0, expected - received - unreadable),
            unreadable=unreadable,
            segments=None if whole else segments,
            stream_offset=first.stream_off,
            source=first.source,
        )
