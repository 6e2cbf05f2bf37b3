"""Read a BPF ring buffer (BPF_MAP_TYPE_RINGBUF) through its mmap'd pages.

Layout (kernel/bpf/ringbuf.c): page 0 holds the consumer position (mapped
read-write), page 1 the producer position, then the data pages, mapped twice in
a row so a record that wraps around the end reads as one piece. Each record has
an 8-byte header — ``len`` with a BUSY bit (still being written) and a DISCARD
bit, and a page offset — and is padded to 8 bytes.

Records are copied out in batches and the consumer position is published once
per batch, with one aligned 8-byte store (a byte-wise store could be read half
updated by the producer, which would then overwrite unread records). There is
no per-record callback: that is most of what a ring read costs from Python.
"""

from __future__ import annotations

import ctypes
import mmap
import select

_BUSY = 1 << 31
_DISCARD = 1 << 30
_HDR = 8


class RingBuffer:
    """The consumer side of one ring buffer map."""

    def __init__(self, map_fd: int, size: int) -> None:
        if size <= 0 or size & (size - 1) or size % mmap.PAGESIZE:
            raise ValueError(f"ring size {size} is not a power-of-two number of pages")
        page = mmap.PAGESIZE
        self.size = size
        self._mask = size - 1
        self._cons_map = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._prod_map = mmap.mmap(
            map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page
        )
        # Aligned 8-byte loads and stores through ctypes (one mov each on x86-64).
        self._cons = ctypes.c_uint64.from_buffer(self._cons_map, 0)
        self._prod = _ReadOnlyU64(self._prod_map)
        self._data = memoryview(self._prod_map)[page:]
        self._epoll = select.epoll()
        self._epoll.register(map_fd, select.EPOLLIN)

    def wake_on(self, fd: int) -> None:
        """Also end :meth:`wait` when ``fd`` is readable (another source the same
        reader serves, e.g. the packet tap's socket)."""
        self._epoll.register(fd, select.EPOLLIN)

    def pending_bytes(self) -> int:
        """Bytes committed by producers and not yet consumed."""
        return self._prod.value - self._cons.value

    def wait(self, timeout_ms: int) -> None:
        """Sleep until the kernel wakes readers or ``timeout_ms`` passes."""
        self._epoll.poll(timeout_ms / 1000)

    def drain(self, max_bytes: int = 1 << 30) -> list[bytes]:
        """Copy out every complete record (up to about ``max_bytes``), in order."""
        out: list[bytes] = []
        cons = self._cons.value
        prod = self._prod.value
        data = self._data
        mask = self._mask
        taken = 0
        while cons < prod and taken < max_bytes:
            off = cons & mask
            head = int.from_bytes(data[off : off + 4], "little")
            if head & _BUSY:
                break  # a producer is still writing it; records after it wait too
            length = head & ~(_BUSY | _DISCARD)
            if not head & _DISCARD:
                out.append(bytes(data[off + _HDR : off + _HDR + length]))
                taken += length
            cons += (length + _HDR + 7) & ~7
            if cons >= prod:
                prod = self._prod.value
        self._cons.value = cons
        return out

    def close(self) -> None:
        self._epoll.close()
        self._data.release()
        del self._cons, self._prod
        self._cons_map.close()
        self._prod_map.close()


class _ReadOnlyU64:
    """An aligned 8-byte load from a read-only mapping (ctypes cannot wrap one)."""

    def __init__(self, mapping: mmap.mmap) -> None:
        self._view = memoryview(mapping)[:8].cast("Q")

    @property
    def value(self) -> int:
        return self._view[0]
