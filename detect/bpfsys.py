"""The bpf(2) queries the detector needs (the system call itself is
:mod:`ecap.ebpf.syscall`, shared with capture).

No bpftool and no libbpf at run time: the scan must work on a host that has
neither, and the syscall is small. Attribute and info structures are built as
zeroed byte buffers and read with :mod:`struct` at the offsets of
``include/uapi/linux/bpf.h``; the kernel accepts a larger buffer than it knows
as long as the tail is zero, and fills only what it knows, so one layout serves
kernels from 5.x to 6.18 (fields a kernel lacks simply read as zero).
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

from ecap.ebpf.syscall import BpfError as BpfError
from ecap.ebpf.syscall import bpf as bpf

T = TypeVar("T")

# enum bpf_cmd
MAP_LOOKUP_ELEM = 1
OBJ_PIN = 6
OBJ_GET = 7
PROG_GET_NEXT_ID = 11
MAP_GET_NEXT_ID = 12
PROG_GET_FD_BY_ID = 13
MAP_GET_FD_BY_ID = 14
OBJ_GET_INFO_BY_FD = 15
BTF_GET_FD_BY_ID = 19
TASK_FD_QUERY = 20
LINK_GET_FD_BY_ID = 30
LINK_GET_NEXT_ID = 31
ENABLE_STATS = 32
STATS_RUN_TIME = 0

# enum bpf_task_fd_type
FD_TYPE_NAMES = {
    0: "raw_tracepoint",
    1: "tracepoint",
    2: "kprobe",
    3: "kretprobe",
    4: "uprobe",
    5: "uretprobe",
}

# ENOENT: no program on the event; 524 (kernel ENOTSUPP): not a perf event;
# EBADF/ESRCH: fd or task gone meanwhile.
_NOT_A_BPF_PERF_EVENT = (errno.ENOENT, 524, errno.EOPNOTSUPP, errno.EBADF, errno.ESRCH)


def _attr(size: int = 128) -> ctypes.Array:
    return ctypes.create_string_buffer(size)


def _addr(buf: ctypes.Array | None) -> int:
    return 0 if buf is None else ctypes.addressof(buf)


def iter_ids(cmd: int) -> Iterator[int]:
    """All ids of one object kind (PROG/MAP/LINK_GET_NEXT_ID), ascending."""
    start = 0
    while True:
        attr = _attr(16)
        struct.pack_into("<I", attr, 0, start)
        try:
            bpf(cmd, attr)
        except BpfError as exc:
            if exc.errno == errno.ENOENT:
                return
            raise
        start = struct.unpack_from("<I", attr, 4)[0]
        yield start


def read_each(next_cmd: int, fd_cmd: int, read: Callable[[int], T]) -> list[T]:
    """``read(fd)`` for every object of one kind, walking ids with ``next_cmd``.

    Objects freed between GET_NEXT_ID and GET_FD_BY_ID (ENOENT) are skipped: a
    scan races with loaders by nature. Other errors (EPERM without
    CAP_SYS_ADMIN) propagate so the caller can degrade to fdinfo.
    """
    out: list[T] = []
    for obj_id in iter_ids(next_cmd):
        try:
            with Fd(fd_by_id(fd_cmd, obj_id)) as fd:
                out.append(read(fd))
        except BpfError as exc:
            if exc.errno == errno.ENOENT:
                continue
            raise
    return out


def fd_by_id(cmd: int, obj_id: int) -> int:
    """An fd for the object with this id (ENOENT when it vanished meanwhile)."""
    attr = _attr(16)
    struct.pack_into("<I", attr, 0, obj_id)
    return bpf(cmd, attr)


def info_by_fd(fd: int, info: ctypes.Array) -> int:
    """Fill ``info`` (a zeroed or pre-seeded buffer) for fd; returns the kernel's length."""
    attr = _attr(16)
    struct.pack_into("<IIQ", attr, 0, fd, len(info), ctypes.addressof(info))
    bpf(OBJ_GET_INFO_BY_FD, attr)
    return struct.unpack_from("<I", attr, 4)[0]


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    """MAP_LOOKUP_ELEM from user space; None for an empty slot (ENOENT)."""
    kbuf = ctypes.create_string_buffer(key, len(key))
    vbuf = ctypes.create_string_buffer(max(value_size, 1))
    attr = _attr(32)
    struct.pack_into("<IIQQ", attr, 0, fd, 0, ctypes.addressof(kbuf), ctypes.addressof(vbuf))
    try:
        bpf(MAP_LOOKUP_ELEM, attr)
    except BpfError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
    return vbuf.raw[:value_size]


def enable_stats() -> int:
    """BPF_ENABLE_STATS(run time): run counts are kept while the returned fd is open.

    Unlike writing ``kernel.bpf_stats_enabled``, nothing stays changed when the
    fd is closed (or the scanner dies).
    """
    attr = _attr(8)
    struct.pack_into("<I", attr, 0, STATS_RUN_TIME)
    return bpf(ENABLE_STATS, attr)


def obj_get(path: str) -> int:
    """Open a pinned object (BPF_OBJ_GET) read-only."""
    raw = ctypes.create_string_buffer(os.fsencode(path))
    attr = _attr(24)
    struct.pack_into("<QII", attr, 0, ctypes.addressof(raw), 0, 0)
    return bpf(OBJ_GET, attr)


def obj_pin(fd: int, path: str) -> None:
    """Pin an object at a bpffs path (used by tests and demos that make pins)."""
    raw = ctypes.create_string_buffer(os.fsencode(path))
    attr = _attr(24)
    struct.pack_into("<QI", attr, 0, ctypes.addressof(raw), fd)
    bpf(OBJ_PIN, attr)


_query = threading.local()  # buffers reused per thread: the /proc walk runs several


def task_fd_query(pid: int, fd: int) -> tuple[int, str, str, int, int] | None:
    """BPF_TASK_FD_QUERY on a perf-event fd of another process.

    Returns (prog_id, probe type, name, probe_offset, probe_addr) where name is the
    target file for uprobes, the symbol for kprobes, the tracepoint name otherwise;
    None when the perf event has no BPF program (an ordinary perf counter).
    """
    if not hasattr(_query, "buf"):  # a host may have thousands of perf fds to ask
        _query.buf, _query.attr = ctypes.create_string_buffer(4096), _attr(48)
    buf, attr = _query.buf, _query.attr
    ctypes.memset(attr, 0, len(attr))
    struct.pack_into("<IIIIQ", attr, 0, pid, fd, 0, len(buf), ctypes.addressof(buf))
    try:
        bpf(TASK_FD_QUERY, attr)
    except BpfError as exc:
        if exc.errno in _NOT_A_BPF_PERF_EVENT:
            return None
        raise
    prog_id, fd_type, probe_offset, probe_addr = struct.unpack_from("<IIQQ", attr, 24)
    name = buf.value.decode("utf-8", "surrogateescape")
    return prog_id, FD_TYPE_NAMES.get(fd_type, f"type{fd_type}"), name, probe_offset, probe_addr


def cstr(buf: bytes | ctypes.Array, offset: int = 0, size: int | None = None) -> str:
    """A NUL-terminated string from a buffer, surrogate-escaped (names are untrusted)."""
    raw = bytes(buf[offset : offset + size] if size is not None else buf[offset:])
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


class Fd:
    """Close an fd on exit from a with-block (bpf fds must never leak from a scan)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> int:
        return self.fd

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)
