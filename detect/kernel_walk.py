"""The fd and memory-map walks done in the kernel by BPF iterators.

Walking ``/proc/*/fd`` costs one ``readlink`` per fd, and finding victims one
``/proc/PID/maps`` read per process: with thousands of processes that is most of
a scan. The BPF iterators in ``bpf/scan_iter.bpf.c`` visit the same task files,
tasks and memory areas inside the kernel and return only the few records that
matter, the way ``bpftool`` finds the pids holding BPF objects.

The programs are loaded through ecap's one BPF layer (:mod:`ecap.ebpf.loader`),
which runs the light-skeleton loader that ``scripts/build_bpf.py`` generates at
build time: the kernel creates the maps, loads the iterator programs and applies
their CO-RE relocations against its own BTF. So this module needs only bpf(2) —
no libbpf, no BTF parsing in Python. If the loader file is absent (not
built) or the kernel refuses it (no BTF, no CAP_SYS_ADMIN, kernel older than
5.17), :class:`KernelWalkUnavailable` says why and the caller walks ``/proc``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import struct
from dataclasses import dataclass

from ecap.detect import bpfsys
from ecap.ebpf import loader
from ecap.fsutil import read_to_end

LOADER_NAME = "scan_iter.loader"

# bpf(2) commands and constants (include/uapi/linux/bpf.h)
_LINK_CREATE, _ITER_CREATE = 28, 33
_TRACE_ITER = 28

# Record layouts written by bpf/scan_iter.bpf.c
_FD_RECORD = struct.Struct("<IIIIIIQ")  # tgid, fd, kind, id, prog_id, dev, ino
_TASK_RECORD = struct.Struct("<IIQ")  # tgid, mount namespace inode, hooked-file bitmask
FD_KINDS = {1: "prog", 2: "map", 3: "link", 4: "perf_event"}
MAX_HOOKED_FILES = 64  # one bit each in a u64 mask


class KernelWalkUnavailable(RuntimeError):
    """The in-kernel walk cannot run here; the message says why in one line."""


@dataclass(frozen=True)
class FdRecord:
    """One fd that refers to a BPF object or a perf event with a program on it."""

    pid: int
    fd: int
    kind: str
    obj_id: int
    prog_id: int
    hooked_inode: tuple[int, int] | None = None
    """For uprobes: (st_dev, st_ino) of the file the kernel hooked."""


def _user_dev(kdev: int) -> int:
    """The kernel's dev_t (major << 20 | minor) as user space's st_dev."""
    return os.makedev(kdev >> 20, kdev & 0xFFFFF)


def _loader_bytes(name: str | None = None) -> bytes:
    """A loader file (the scan's, by default), next to the BPF sources."""
    name = name or LOADER_NAME
    try:
        return (loader.loader_dir() / name).read_bytes()
    except OSError:
        raise KernelWalkUnavailable(f"{name} not built (make setup builds it with clang)") from None


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        if fd > 0:
            with contextlib.suppress(OSError):
                os.close(fd)


class KernelWalker:
    """The iterator programs, loaded; use as a context manager so they are unloaded."""

    def __init__(self) -> None:
        try:
            image = loader.read_image(LOADER_NAME.removesuffix(".loader"), _loader_bytes())
            self._obj = loader.load(image)
        except loader.LoadError as exc:
            raise KernelWalkUnavailable(exc.one_line()) from None
        self._prog_fds = self._obj.prog_fds

    def close(self) -> None:
        self._obj.close()

    def __enter__(self) -> KernelWalker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, program: str, pid: int = 0) -> bytes:
        """Attach one iterator (over one process's tasks when ``pid``), read all it
        writes, detach."""
        link_info = ctypes.create_string_buffer(16)
        struct.pack_into("<II", link_info, 0, 0, pid)  # bpf_iter_link_info.task: tid, pid
        attr = ctypes.create_string_buffer(32)
        struct.pack_into(
            "<IIIIQI",
            attr,
            0,
            self._prog_fds[program],
            0,
            _TRACE_ITER,
            0,
            ctypes.addressof(link_info) if pid else 0,
            len(link_info) if pid else 0,
        )
        link_fd = _bpf(_LINK_CREATE, attr, f"attach the {program} iterator")
        try:
            attr = ctypes.create_string_buffer(8)
            struct.pack_into("<I", attr, 0, link_fd)
            iter_fd = _bpf(_ITER_CREATE, attr, f"start the {program} iterator")
            try:
                return read_to_end(iter_fd, 1 << 20)
            finally:
                os.close(iter_fd)
        finally:
            os.close(link_fd)

    def _counter(self, index: int, reset: bool = False) -> int:
        counters = self._obj.map("counters")
        key = struct.pack("<I", index)
        if reset:
            counters.update(key, bytes(8))
            return 0
        return struct.unpack("<Q", counters.lookup(key) or bytes(8))[0]

    def fds(self) -> tuple[list[FdRecord], int]:
        """Every BPF-object fd and program-carrying perf-event fd, and the fds visited."""
        self._counter(0, reset=True)
        raw = self._run("task_files")
        records = [
            FdRecord(
                tgid,
                fd,
                FD_KINDS[kind],
                obj_id,
                prog_id,
                (_user_dev(dev), ino) if ino else None,
            )
            for tgid, fd, kind, obj_id, prog_id, dev, ino in _FD_RECORD.iter_unpack(raw)
            if kind in FD_KINDS
        ]
        self._records = records
        return records, self._counter(0)

    def uprobe_inodes(self) -> dict[tuple[int, int], tuple[int, int]]:
        """(pid, fd) of each uprobe perf event or perf-event link → the inode the
        kernel hooked (from this walker's fd walk, run now if it has not run)."""
        records = getattr(self, "_records", None)
        if records is None:
            records, _ = self.fds()
        return {(r.pid, r.fd): r.hooked_inode for r in records if r.hooked_inode}

    def processes(self) -> list[tuple[int, int]]:
        """(pid, mount-namespace inode) of every process (thread-group leader)."""
        return [(tgid, mnt) for tgid, mnt, _ in _TASK_RECORD.iter_unpack(self._run("tasks"))]

    def mappers(self, files: dict[tuple[int, int], str]) -> dict[int, set[tuple[int, int]]]:
        """Candidate victims: pid → the hooked files ((st_dev, st_ino) → openable
        path) some memory area of it maps, from each file's reverse map.

        The trees are read without their lock, so callers confirm each candidate
        (``/proc/PID/maps``); a file that changed identity since it was resolved is
        left out, never matched by name.
        """
        if len(files) > MAX_HOOKED_FILES:
            raise KernelWalkUnavailable(f"more than {MAX_HOOKED_FILES} hooked files")
        opened: dict[int, tuple[int, int]] = {}
        try:
            for bit, (ident, path) in enumerate(files.items()):
                try:
                    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
                except OSError:
                    continue
                opened[fd] = ident
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) != ident:
                    continue
                self._obj.map("hooked_fds").update(struct.pack("<I", fd), struct.pack("<I", bit))
            self._counter(1, reset=True)
            self._run("hooked_files", pid=os.getpid())
            if self._counter(1):
                raise KernelWalkUnavailable(
                    "a hooked file's reverse map was too large, or changed, to walk to the end"
                )
            raw = self._run("tasks")
        finally:
            _close_all(list(opened))
        by_bit = list(files)
        out: dict[int, set[tuple[int, int]]] = {}
        for tgid, _mnt, mask in _TASK_RECORD.iter_unpack(raw):
            if mask:
                out[tgid] = {by_bit[b] for b in range(len(by_bit)) if mask >> b & 1}
        return out


def _bpf(cmd: int, attr: ctypes.Array, what: str) -> int:
    try:
        return bpfsys.bpf(cmd, attr)
    except bpfsys.BpfError as exc:
        raise KernelWalkUnavailable(f"could not {what}: {os.strerror(exc.errno)}") from None
