"""bpf(2) and perf_event_open(2) through ctypes.

Attribute structures are zeroed byte buffers filled with :mod:`struct` at the
offsets of ``include/uapi/linux/bpf.h`` and ``perf_event.h``; the kernel accepts
a buffer larger than it knows as long as the tail is zero, so one layout serves
kernels from 5.x to 6.18.
"""

from __future__ import annotations

import contextlib
import ctypes
import os

_MACHINE = os.uname().machine
NR_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280}.get(_MACHINE, 321)
NR_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241, "riscv64": 241}.get(_MACHINE, 298)

# enum bpf_cmd (the ones this layer issues; detect adds its own queries)
MAP_CREATE = 0
MAP_LOOKUP_ELEM = 1
MAP_UPDATE_ELEM = 2
MAP_DELETE_ELEM = 3
MAP_GET_NEXT_KEY = 4
PROG_LOAD = 5
PROG_TEST_RUN = 10
OBJ_GET_INFO_BY_FD = 15
RAW_TRACEPOINT_OPEN = 17
LINK_CREATE = 28
ITER_CREATE = 33

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


class BpfError(OSError):
    """A bpf(2) command failed; ``errno`` says why (EPERM without the capability)."""


def bpf(cmd: int, attr: ctypes.Array) -> int:
    """Call bpf(2) with an attribute buffer; returns the result or raises BpfError."""
    ret = _syscall(
        ctypes.c_long(NR_BPF), ctypes.c_int(cmd), ctypes.c_void_p(ctypes.addressof(attr)),
        ctypes.c_uint(len(attr)),
    )  # fmt: skip
    if ret < 0:
        err = ctypes.get_errno()
        raise BpfError(err, f"bpf cmd {cmd}: {os.strerror(err)}")
    return ret


def perf_event_open(attr: ctypes.Array, pid: int, cpu: int, group_fd: int, flags: int) -> int:
    """perf_event_open(2); returns the fd or raises OSError with the errno."""
    ret = _syscall(
        ctypes.c_long(NR_PERF_EVENT_OPEN), ctypes.c_void_p(ctypes.addressof(attr)),
        ctypes.c_int(pid), ctypes.c_int(cpu), ctypes.c_int(group_fd), ctypes.c_ulong(flags),
    )  # fmt: skip
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def attr(size: int = 128) -> ctypes.Array:
    """A zeroed attribute buffer."""
    return ctypes.create_string_buffer(size)


def addr(buf: ctypes.Array | None) -> int:
    return 0 if buf is None else ctypes.addressof(buf)


def close_quietly(fds: list[int]) -> None:
    """Close fds, ignoring ones already closed (cleanup paths must not raise)."""
    for fd in fds:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
