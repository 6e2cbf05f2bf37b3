"""Attach loaded programs: uprobes through uprobe_multi links, raw tracepoints.

A uprobe attachment is one BPF link (BPF_LINK_CREATE, attach type
BPF_TRACE_UPROBE_MULTI) carrying every offset of one program in one file, each
with the 64-bit cookie the program reads with ``bpf_get_attach_cookie`` — so one
program serves many functions — and scoped to one process (the kernel installs
breakpoints only in that process's address space; other processes mapping the
same library never trap). Since the 2025 kernel fix that made perf's ``uprobe``
PMU require CAP_SYS_ADMIN, this is also the path that works with CAP_BPF +
CAP_PERFMON alone. Raw tracepoints attach by name with BPF_RAW_TRACEPOINT_OPEN.
Neither goes through tracefs (root-only on these hosts), and every attachment is
a file descriptor: when the process dies, even by SIGKILL, the kernel detaches
everything.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import os
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ecap.ebpf import syscall as sc
from ecap.errors import EnvironmentNotReady

BPF_TRACE_UPROBE_MULTI = 48  # enum bpf_attach_type
BPF_F_UPROBE_MULTI_RETURN = 1
ATTACH_ATTEMPTS = 4


class AttachError(EnvironmentNotReady):
    """The kernel refused an attachment; the message names it and why."""


@dataclass
class Attachment:
    """One attached program: the fds that keep it attached."""

    what: str
    fds: list[int]


def uprobe_multi(
    prog_fd: int, path: str, offsets: Sequence[int], cookies: Sequence[int], pid: int, *,
    retprobe: bool, what: str = "",
) -> Attachment:  # fmt: skip
    """Attach ``prog_fd`` at every file offset of ``path``, for process ``pid`` only.

    Transient EBUSY/EINVAL (another tool re-registering the same probe) are retried;
    anything else is an :class:`AttachError` naming the probe.
    """
    n = len(offsets)
    raw_path = ctypes.create_string_buffer(os.fsencode(path))
    offs = (ctypes.c_uint64 * n)(*offsets)
    cooks = (ctypes.c_uint64 * n)(*cookies)
    a = sc.attr(64)
    struct.pack_into("<IIII", a, 0, prog_fd, 0, BPF_TRACE_UPROBE_MULTI, 0)
    struct.pack_into(
        "<QQQQIII", a, 16, ctypes.addressof(raw_path), ctypes.addressof(offs), 0,
        ctypes.addressof(cooks), n, BPF_F_UPROBE_MULTI_RETURN if retprobe else 0, pid,
    )  # fmt: skip
    label = what or f"{path} ({n} offsets)"
    kind = "uretprobe" if retprobe else "uprobe"
    for attempt in range(ATTACH_ATTEMPTS):
        try:
            fd = sc.bpf(sc.LINK_CREATE, a)
        except sc.BpfError as exc:
            if exc.errno in (16, 22) and attempt + 1 < ATTACH_ATTEMPTS:  # EBUSY, EINVAL
                time.sleep(0.05 * (attempt + 1))
                continue
            raise AttachError(
                f"cannot attach {kind}s on {label} (pid {pid}): {exc.strerror}",
                hint="uprobes need CAP_BPF and CAP_PERFMON and a kernel with uprobe_multi "
                "links (6.6+); see 'ecap-audit doctor'",
            ) from None
        return Attachment(f"{kind} {label} pid {pid}", [fd])
    raise AssertionError("unreachable")  # pragma: no cover


def raw_tracepoint(prog_fd: int, name: str) -> Attachment:
    """Attach ``prog_fd`` to the raw tracepoint ``name`` (e.g. ``sys_enter``)."""
    raw = ctypes.create_string_buffer(name.encode())
    a = sc.attr(16)
    struct.pack_into("<QI", a, 0, ctypes.addressof(raw), prog_fd)
    try:
        fd = sc.bpf(sc.RAW_TRACEPOINT_OPEN, a)
    except sc.BpfError as exc:
        raise AttachError(
            f"cannot attach to the raw tracepoint {name}: {exc.strerror}",
            hint="raw tracepoints need CAP_BPF and CAP_PERFMON (see 'ecap-audit doctor')",
        ) from None
    return Attachment(f"raw_tracepoint {name}", [fd])


def detach_all(attachments: list[Attachment]) -> None:
    """Close every attachment's fds (idempotent).

    Each uprobe's release waits for an RCU grace period in the kernel; closed in
    parallel, the whole detach takes one or two of them instead of one per link.
    """
    fds = [fd for att in attachments for fd in att.fds]
    for att in attachments:
        att.fds = []
    if len(fds) <= 4:
        sc.close_quietly(fds)
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(32, len(fds))) as pool:
        list(pool.map(lambda fd: sc.close_quietly([fd]), fds))
