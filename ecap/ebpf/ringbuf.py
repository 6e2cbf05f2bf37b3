"""Read a BPF ring buffer (BPF_MAP_TYPE_RINGBUF) through its mmap'd pages.

Layout (kernel/bpf/ringbuf.c): page 0 holds the consumer position (mapped
read-write), page 1 the producer position, then the data pages, mapped twice in
a row so a record that wraps around the end reads as one piece. Each record has
an 8-byte header — ``len`` with a BUSY bit (still being written) and a DISCARD
bit, and a page offset — and is padded to 8 bytes.

Records are taken in batches — copied out (``drain``), or lent as views of the
mapping until ``commit`` (``peek``: what is written out verbatim needs no copy in
user space) — and the consumer position is published once per batch, with one
aligned 8-byte store (a byte-wise store could be read half updated by the
producer, which would then overwrite unread records). There is no per-record
callback: that is most of what a ring read costs from Python.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import select
import struct
from typing import Any

_BUSY = 1 << 31
_DISCARD = 1 << 30
_LEN = _DISCARD - 1
_HDR = 8
_U32 = struct.Struct("<I")


class RingBuffer:
    """The consumer side of one ring buffer map."""

    def __init__(self, map_fd: int, size: int) -> None:
        if size <= 0 or size & (size - 1) or size % mmap.PAGESIZE:
            raise ValueError(f"ring size {size} is not a power-of-two number of pages")
        page = mmap.PAGESIZE
        cons_map = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        prod_map = mmap.mmap(map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        self._bind(cons_map, prod_map, size)
        self._epoll: select.epoll | None = select.epoll()
        self._epoll.register(map_fd, select.EPOLLIN)

    @classmethod
    def over(cls, cons_map: mmap.mmap, prod_map: mmap.mmap, size: int) -> RingBuffer:
        """A reader of a ring laid out in ordinary memory, as the kernel maps one
        (the consumer page; the producer page then the data pages twice): for
        tests and benchmarks of the reader itself. It cannot ``wait``."""
        ring = cls.__new__(cls)
        ring._bind(cons_map, prod_map, size)
        ring._epoll = None
        return ring

    def _bind(self, cons_map: mmap.mmap, prod_map: mmap.mmap, size: int) -> None:
        self.size = size
        self._mask = size - 1
        self._page = mmap.PAGESIZE
        self._cons_map, self._prod_map = cons_map, prod_map
        # Aligned 8-byte loads and stores through ctypes (one mov each on x86-64).
        self._cons = ctypes.c_uint64.from_buffer(cons_map, 0)
        self._prod = _ReadOnlyU64(prod_map)
        self._peeked = self._cons.value

    def wake_on(self, fd: int) -> None:
        """Also end :meth:`wait` when ``fd`` is readable (another source the same
        reader serves, e.g. the packet tap's socket)."""
        self._epoll.register(fd, select.EPOLLIN)

    def pending_bytes(self) -> int:
        """Bytes committed by producers and not yet consumed."""
        return self._prod.value - self._cons.value

    def wait(self, timeout_ms: int) -> None:
        """Sleep until the kernel wakes readers or ``timeout_ms`` passes."""
        assert self._epoll is not None
        self._epoll.poll(timeout_ms / 1000)

    def drain(self, max_bytes: int = 1 << 30) -> list[bytes]:
        """Copy out every complete record (up to about ``max_bytes``), in order, and
        give their space back to the producers.

        Each record is one slice of the mapping (one copy, no intermediate view).
        """
        out, cons = self._take(self._prod_map, max_bytes)
        self._cons.value = cons
        return out

    def peek(self, max_bytes: int = 1 << 30) -> list[memoryview]:
        """Every complete record (up to about ``max_bytes``), in order, as views of
        the mapping — no copy. They stay valid until :meth:`commit`, which gives
        their space back to the producers: use them (write them out) before it and
        keep none after it."""
        out, self._peeked = self._take(memoryview(self._prod_map), max_bytes)
        return out

    def commit(self) -> None:
        """Consume what the last :meth:`peek` returned."""
        self._cons.value = self._peeked

    def _take(self, ring: Any, max_bytes: int) -> tuple[list[Any], int]:
        """(records sliced from ``ring`` — the mapping or a view of it, so copies or
        views — and the consumer position after them). This loop runs for every
        record the kernel writes."""
        out: list[Any] = []
        append = out.append
        cons = self._cons.value
        prod = self._prod.value
        base, mask = self._page, self._mask
        head_at = _U32.unpack_from
        taken = 0
        while cons < prod and taken < max_bytes:
            off = base + (cons & mask)
            head = head_at(ring, off)[0]
            if head & _BUSY:
                break  # a producer is still writing it; records after it wait too
            length = head & _LEN
            if not head & _DISCARD:
                append(ring[off + _HDR : off + _HDR + length])
                taken += length
            cons += (length + _HDR + 7) & ~7
            if cons >= prod:
                prod = self._prod.value
        return out, cons

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()
        del self._cons, self._prod
        self._cons_map.close()
        # views from an interrupted peek may still exist: then it is unmapped when they go
        with contextlib.suppress(BufferError):
            self._prod_map.close()


class _ReadOnlyU64:
    """An aligned 8-byte load from a read-only mapping (ctypes cannot wrap one)."""

    def __init__(self, mapping: mmap.mmap) -> None:
        self._view = memoryview(mapping)[:8].cast("Q")

    @property
    def value(self) -> int:
        return self._view[0]
