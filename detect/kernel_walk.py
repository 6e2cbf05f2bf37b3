"""The fd and memory-map walks done in the kernel by BPF iterators.

Walking ``/proc/*/fd`` costs one ``readlink`` per fd, and finding victims one
``/proc/PID/maps`` read per process: with thousands of processes that is most of
a scan. The BPF iterators in ``bpf/scan_iter.bpf.c`` visit the same task files,
tasks and memory areas inside the kernel and return only the few records that
matter, the way ``bpftool`` finds the pids holding BPF objects.

The programs are loaded through the light-skeleton loader that
``scripts/build_bpf.py`` generates at build time: one BPF_PROG_TYPE_SYSCALL
program that the kernel runs to create the maps, load the iterator programs and
apply their CO-RE relocations against its own BTF. So this module needs only
bpf(2) — no libbpf, no BTF parsing in Python. If the loader file is absent (not
built) or the kernel refuses it (no BTF, no CAP_SYS_ADMIN, kernel older than
5.17), :class:`KernelWalkUnavailable` says why and the caller walks ``/proc``.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from ecap.detect import bpfsys
from ecap.fsutil import read_to_end

LOADER_NAME = "scan_iter.loader"
LOADER_FORMAT = "ecap.bpf-loader/1"

# bpf(2) commands and constants (include/uapi/linux/bpf.h)
_MAP_CREATE, _MAP_LOOKUP_ELEM, _MAP_UPDATE_ELEM, _PROG_LOAD = 0, 1, 2, 5
_PROG_TEST_RUN, _LINK_CREATE, _ITER_CREATE = 10, 28, 33
_MAP_TYPE_ARRAY = 2
_PROG_TYPE_SYSCALL = 31
_F_SLEEPABLE = 1 << 4
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


def _loader_bytes() -> bytes:
    """The loader file, next to the BPF sources in the ``ecap.bpf`` package."""
    import ecap.bpf

    try:
        return (Path(ecap.bpf.__file__).parent / LOADER_NAME).read_bytes()
    except OSError:
        raise KernelWalkUnavailable(
            f"{LOADER_NAME} not built (make setup builds it with clang)"
        ) from None


def _read_loader() -> tuple[dict, bytes, bytes]:
    head, _, rest = _loader_bytes().partition(b"\n")
    try:
        header = json.loads(head)
        data_size, insns_size = int(header["data_size"]), int(header["insns_size"])
        maps, programs = list(header["maps"]), list(header["programs"])
    except (ValueError, KeyError, TypeError):
        raise KernelWalkUnavailable(f"{LOADER_NAME} is damaged (rebuild: make setup)") from None
    if header.get("format") != LOADER_FORMAT or len(rest) != data_size + insns_size:
        raise KernelWalkUnavailable(f"{LOADER_NAME} is damaged (rebuild: make setup)")
    return {"maps": maps, "programs": programs}, rest[:data_size], rest[data_size:]


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        if fd > 0:
            with contextlib.suppress(OSError):
                os.close(fd)


class KernelWalker:
    """The iterator programs, loaded; use as a context manager so they are unloaded."""

    def __init__(self) -> None:
        layout, data, insns = _read_loader()
        self._map_fds: dict[str, int] = {}
        self._prog_fds: dict[str, int] = {}
        ctx = self._run_loader(layout, data, insns)
        n_maps = len(layout["maps"])
        for i, name in enumerate(layout["maps"]):
            self._map_fds[name] = struct.unpack_from("<i", ctx, 24 + 16 * i)[0]
        for i, name in enumerate(layout["programs"]):
            self._prog_fds[name] = struct.unpack_from("<i", ctx, 24 + 16 * n_maps + 4 * i)[0]
        if min([*self._map_fds.values(), *self._prog_fds.values()], default=0) <= 0:
            self.close()
            raise KernelWalkUnavailable("the BPF loader returned no programs")

    @staticmethod
    def _run_loader(layout: dict, data: bytes, insns: bytes) -> ctypes.Array:
        """Create the loader map, load the loader program, run it: see skel_internal.h."""
        n_maps, n_progs = len(layout["maps"]), len(layout["programs"])
        ctx = ctypes.create_string_buffer(24 + 16 * n_maps + 4 * n_progs)
        struct.pack_into("<I", ctx, 0, len(ctx))
        own: list[int] = []
        try:
            attr = ctypes.create_string_buffer(72)
            struct.pack_into("<IIII", attr, 0, _MAP_TYPE_ARRAY, 4, len(data), 1)
            attr[28:40] = b"__loader.map"
            map_fd = _bpf(_MAP_CREATE, attr, "create the loader map")
            own.append(map_fd)
            key = ctypes.c_uint32(0)
            blob = ctypes.create_string_buffer(data, len(data))
            attr = ctypes.create_string_buffer(32)
            struct.pack_into(
                "<IIQQQ", attr, 0, map_fd, 0, ctypes.addressof(key), ctypes.addressof(blob), 0
            )
            _bpf(_MAP_UPDATE_ELEM, attr, "fill the loader map")

            code = ctypes.create_string_buffer(insns, len(insns))
            license_ = ctypes.create_string_buffer(b"Dual BSD/GPL")
            fd_array = ctypes.c_int32(map_fd)
            attr = ctypes.create_string_buffer(128)
            struct.pack_into(
                "<IIQQ",
                attr,
                0,
                _PROG_TYPE_SYSCALL,
                len(insns) // 8,
                ctypes.addressof(code),
                ctypes.addressof(license_),
            )
            struct.pack_into("<I", attr, 44, _F_SLEEPABLE)
            attr[48:61] = b"__loader.prog"
            struct.pack_into("<Q", attr, 120, ctypes.addressof(fd_array))
            prog_fd = _bpf(_PROG_LOAD, attr, "load the loader program")
            own.append(prog_fd)

            attr = ctypes.create_string_buffer(80)
            struct.pack_into("<I", attr, 0, prog_fd)
            struct.pack_into("<I", attr, 40, len(ctx))
            struct.pack_into("<Q", attr, 48, ctypes.addressof(ctx))
            _bpf(_PROG_TEST_RUN, attr, "run the loader program")
            retval = struct.unpack_from("<i", attr, 4)[0]
            if retval < 0:
                raise KernelWalkUnavailable(
                    f"the kernel refused the iterator programs: {os.strerror(-retval)}"
                )
            return ctx
        finally:
            _close_all(own)

    def close(self) -> None:
        _close_all([*self._prog_fds.values(), *self._map_fds.values()])
        self._prog_fds.clear()
        self._map_fds.clear()

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

    def _map_elem(self, cmd: int, name: str, key: bytes, value: ctypes.Array) -> None:
        kbuf = ctypes.create_string_buffer(key, len(key))
        attr = ctypes.create_string_buffer(32)
        struct.pack_into(
            "<IIQQQ",
            attr,
            0,
            self._map_fds[name],
            0,
            ctypes.addressof(kbuf),
            ctypes.addressof(value),
            0,
        )
        _bpf(cmd, attr, f"access map {name}")

    def _counter(self, index: int, reset: bool = False) -> int:
        key = struct.pack("<I", index)
        value = ctypes.create_string_buffer(8)
        self._map_elem(_MAP_UPDATE_ELEM if reset else _MAP_LOOKUP_ELEM, "counters", key, value)
        return struct.unpack("<Q", value.raw)[0]

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
                self._map_elem(
                    _MAP_UPDATE_ELEM,
                    "hooked_fds",
                    struct.pack("<I", fd),
                    ctypes.create_string_buffer(struct.pack("<I", bit), 4),
                )
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
