"""The watcher's kernel event source: one raw tracepoint program and its ring buffer.

``bpf/watch_events.bpf.c`` runs at every syscall exit and reports, through a
BPF ring buffer, the bpf(2) commands that attach, detach or pin, every
``perf_event_open`` and every ``PERF_EVENT_IOC_SET_BPF``. This module loads it
through the same light-skeleton loader as the scan's iterators (bpf(2) only: no
compiler, libbpf or tracefs at run time), attaches it with
BPF_RAW_TRACEPOINT_OPEN and reads the ring from an mmap, the way libbpf's
``ring_buffer__poll`` does. Loader, attach and ring reading are kept together
here so that they can move onto ecap's shared BPF loading layer in one piece.

Everything is held by file descriptors of this process: if the watcher is
killed (even with SIGKILL) the kernel detaches and frees it all.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import struct
from dataclasses import dataclass

from ecap.detect import bpfsys
from ecap.detect.kernel_walk import KernelWalkUnavailable, load_skeleton

LOADER_NAME = "watch_events.loader"
PROGRAM = "watch_sys_exit"
TRACEPOINT = b"sys_exit"

_MAP_LOOKUP_ELEM, _MAP_UPDATE_ELEM, _RAW_TRACEPOINT_OPEN = 1, 2, 17
_RINGBUF_BUSY, _RINGBUF_DISCARD, _RINGBUF_HDR = 1 << 31, 1 << 30, 8

# struct watch_event in bpf/watch_events.bpf.c
_EVENT = struct.Struct("<QIIIIq16s")
KINDS = {1: "bpf", 2: "perf_event_open", 3: "perf_set_bpf"}
BPF_COMMANDS = {
    6: "BPF_OBJ_PIN",
    8: "BPF_PROG_ATTACH",
    9: "BPF_PROG_DETACH",
    17: "BPF_RAW_TRACEPOINT_OPEN",
    28: "BPF_LINK_CREATE",
    29: "BPF_LINK_UPDATE",
    34: "BPF_LINK_DETACH",
}


class EventSourceUnavailable(RuntimeError):
    """The event programs cannot run here; the message says why in one line."""


@dataclass(frozen=True)
class KernelEvent:
    """One syscall the event program reported."""

    pid: int
    tid: int
    kind: str
    """``bpf``, ``perf_event_open`` or ``perf_set_bpf``."""
    command: str
    """The bpf(2) command name for ``bpf`` events, else the syscall's own name."""
    ret: int
    comm: str
    monotonic_ns: int
    """When the syscall returned (CLOCK_MONOTONIC, as ``time.monotonic_ns()``)."""


def _decode(raw: bytes) -> KernelEvent:
    ktime, tgid, tid, kind, cmd, ret, comm = _EVENT.unpack_from(raw)
    name = KINDS.get(kind, f"kind{kind}")
    command = BPF_COMMANDS.get(cmd, f"bpf cmd {cmd}") if kind == 1 else name
    return KernelEvent(tgid, tid, name, command, ret, bpfsys.cstr(comm), ktime)


class _RingReader:
    """Consumer side of a BPF_MAP_TYPE_RINGBUF, read from its mmap.

    Page 0 (read-write) holds the consumer position; from page 1 on (read-only)
    the producer position, then the data area mapped twice in a row, so a
    record that wraps around the end reads as one contiguous slice.
    """

    def __init__(self, map_fd: int, size: int) -> None:
        page = mmap.PAGESIZE
        self._mask = size - 1
        self._consumer = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        try:
            self._producer = mmap.mmap(
                map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page
            )
        except OSError:
            self._consumer.close()
            raise
        self._data = page

    def drain(self, limit: int = 4096) -> list[bytes]:
        """Every committed record, oldest first (at most ``limit`` per call)."""
        out: list[bytes] = []
        cons = struct.unpack_from("<Q", self._consumer, 0)[0]
        prod = struct.unpack_from("<Q", self._producer, 0)[0]
        while cons < prod and len(out) < limit:
            at = self._data + (cons & self._mask)
            head = struct.unpack_from("<I", self._producer, at)[0]
            if head & _RINGBUF_BUSY:
                break  # reserved, not yet submitted
            length = head & ~(_RINGBUF_BUSY | _RINGBUF_DISCARD)
            if not head & _RINGBUF_DISCARD:
                out.append(bytes(self._producer[at + _RINGBUF_HDR : at + _RINGBUF_HDR + length]))
            cons += (length + _RINGBUF_HDR + 7) & ~7
            struct.pack_into("<Q", self._consumer, 0, cons)
        return out

    def close(self) -> None:
        self._producer.close()
        self._consumer.close()


class EventSource:
    """The loaded, attached event program; a context manager that detaches it."""

    def __init__(self, *, ignore_pid: int | None = None) -> None:
        try:
            self._maps, self._progs = load_skeleton(LOADER_NAME)
        except KernelWalkUnavailable as exc:
            raise EventSourceUnavailable(str(exc)) from None
        self._link = -1
        self._ring: _RingReader | None = None
        try:
            self._set_u32("config", 0, os.getpid() if ignore_pid is None else ignore_pid)
            self._ring = _RingReader(self._maps["events"], _ringbuf_size(self._maps["events"]))
            self._link = self._attach()
        except (OSError, ValueError) as exc:
            self.close()
            raise EventSourceUnavailable(f"could not attach the event program: {exc}") from None

    def _attach(self) -> int:
        name = ctypes.create_string_buffer(TRACEPOINT)
        attr = ctypes.create_string_buffer(16)
        struct.pack_into("<QI", attr, 0, ctypes.addressof(name), self._progs[PROGRAM])
        return bpfsys.bpf(_RAW_TRACEPOINT_OPEN, attr)

    def _elem(self, cmd: int, map_name: str, key: int, value: ctypes.Array) -> None:
        kbuf = ctypes.create_string_buffer(struct.pack("<I", key), 4)
        attr = ctypes.create_string_buffer(32)
        struct.pack_into(
            "<IIQQQ",
            attr,
            0,
            self._maps[map_name],
            0,
            ctypes.addressof(kbuf),
            ctypes.addressof(value),
            0,
        )
        bpfsys.bpf(cmd, attr)

    def _set_u32(self, map_name: str, key: int, value: int) -> None:
        self._elem(
            _MAP_UPDATE_ELEM,
            map_name,
            key,
            ctypes.create_string_buffer(struct.pack("<I", value), 4),
        )

    def counters(self) -> dict[str, int]:
        """Events the kernel sent, and dropped because the ring was full."""
        out = {}
        for index, name in enumerate(("sent", "dropped")):
            value = ctypes.create_string_buffer(8)
            self._elem(_MAP_LOOKUP_ELEM, "counters", index, value)
            out[name] = struct.unpack("<Q", value.raw)[0]
        return out

    def fileno(self) -> int:
        """Readable (poll/select) when records are waiting in the ring."""
        return self._maps["events"]

    def read(self) -> list[KernelEvent]:
        """Every record waiting in the ring, decoded."""
        if self._ring is None:
            return []
        return [_decode(raw) for raw in self._ring.drain() if len(raw) >= _EVENT.size]

    def program_ids(self) -> list[int]:
        """Kernel ids of this source's programs (what the watcher registers as its own)."""
        return sorted(_prog_id(fd) for fd in self._progs.values())

    def close(self) -> None:
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        fds = [self._link, *self._progs.values(), *self._maps.values()]
        self._link = -1
        self._progs, self._maps = {}, {}
        for fd in fds:
            if fd > 0:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def __enter__(self) -> EventSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _prog_id(fd: int) -> int:
    info = ctypes.create_string_buffer(256)
    bpfsys.info_by_fd(fd, info)
    return struct.unpack_from("<I", info, 4)[0]  # bpf_prog_info.id


def _ringbuf_size(fd: int) -> int:
    info = ctypes.create_string_buffer(96)
    bpfsys.info_by_fd(fd, info)
    return struct.unpack_from("<I", info, 16)[0]  # bpf_map_info.max_entries


def program_tags(name: str = LOADER_NAME) -> dict[str, str]:
    """Program name → kernel tag of the programs ``name`` loads, loaded and freed again.

    The tag is the kernel's hash of a program's instructions (map references
    zeroed), so it identifies *code*, whatever a program is called. A scan uses
    it to recognise the watcher's programs by what they are.
    """
    try:
        maps, progs = load_skeleton(name)
    except KernelWalkUnavailable as exc:
        raise EventSourceUnavailable(str(exc)) from None
    try:
        out = {}
        for prog_name, fd in progs.items():
            info = ctypes.create_string_buffer(256)
            bpfsys.info_by_fd(fd, info)
            out[prog_name] = bytes(info[8:16]).hex()  # bpf_prog_info.tag
        return out
    finally:
        for fd in [*progs.values(), *maps.values()]:
            with contextlib.suppress(OSError):
                os.close(fd)
