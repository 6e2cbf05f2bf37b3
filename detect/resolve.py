"""Probe target → function name: the step no other detector performs.

A perf-event uprobe exposes only ``(path, file offset)``. The path is as the
attaching process saw it, so it is opened through that process's root
(``/proc/PID/root``) — a container's libssl is not the host's. The offset maps to
a function through PT_LOAD and ``.symtab``/``.dynsym`` (:mod:`ecap.elf`), or
through ``.gopclntab`` for stripped Go binaries (:mod:`ecap.gopclntab`).
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass

from ecap import procfs
from ecap.detect.classify import CRYPTO, OTHER, crypto_file, reach
from ecap.elf import NotAnElf, open_elf
from ecap.gopclntab import go_functions


@dataclass(frozen=True)
class Resolved:
    """Where a probe sits, in words."""

    path: str
    offset: int
    function: str | None
    delta: int
    """Bytes into the function (0: on the entry)."""
    cls: str
    opened: str | None
    """The path actually opened (through a process root), None if unreadable."""
    inode: tuple[int, int] | None
    """(st_dev, st_ino) of the opened file: how victims are matched across namespaces."""
    note: str | None = None
    path_problem: str | None = None
    """Why the path may not name the file the kernel hooked: it is now a symlink,
    missing, unreadable, or another inode than the kernel holds."""


_PROC_ROOT = re.compile(r"^/proc/(?:\d+|self)/root(/.*)$")


def candidates(path: str, pid: int | None) -> list[str]:
    """Paths to try, best first: through the holder's root, as given, and — for
    targets named ``/proc/PID/root/...`` whose process has exited — the path
    inside that root read from the holder's (or our) root."""
    out = []
    if pid:
        out.append(str(procfs.in_root(pid, path)))
    out.append(path)
    m = _PROC_ROOT.match(path)
    if m:
        if pid:
            out.append(str(procfs.in_root(pid, m.group(1))))
        out.append(m.group(1))
    return out


def path_problem(cand: str, kernel_inode: tuple[int, int] | None = None) -> str | None:
    """Why ``cand`` may not be the file a probe was attached to, or None.

    A symlink is a problem only when the kernel's inode is unknown or differs:
    attaching through ``libz.so.1 -> libz.so.1.2.13`` is ordinary, re-pointing the
    link after attaching is a path game.
    """
    try:
        lst = os.lstat(cand)
    except FileNotFoundError:
        return "the path no longer exists"
    except OSError as exc:
        return f"the path cannot be examined ({exc.strerror})"
    try:
        st = os.stat(cand)
    except OSError as exc:
        return f"the path cannot be followed ({exc.strerror})"
    if kernel_inode is not None and (st.st_dev, st.st_ino) != kernel_inode:
        return "the path now names another file than the inode the kernel hooked"
    if stat.S_ISLNK(lst.st_mode) and kernel_inode is None:
        target = os.readlink(cand)
        return f"the path is now a symlink (to {target}); the file hooked cannot be confirmed"
    if not os.access(cand, os.R_OK):
        return "the file is not readable"
    return None


@dataclass(frozen=True)
class _File:
    """What is known about one hooked file, whatever offsets are hooked in it."""

    opened: str | None
    inode: tuple[int, int] | None
    image: object | None
    how: str | None
    note: str | None
    problem: str | None
    real_name: str | None
    """The opened file's real path (for reach by file name), resolved once."""


def _open_file(path: str, pid: int | None, kernel_inode: tuple[int, int] | None) -> _File:
    """Find and open the hooked file once per (path, holder root, kernel inode).

    Everything here is per file — a scan with 1,500 decoy probes in one library
    stats, follows and parses it once, not 1,500 times.
    """
    note = None
    cands = candidates(path, pid)
    problem = path_problem(cands[0], kernel_inode)
    if problem and kernel_inode is not None:
        mapped = file_by_inode(kernel_inode)
        if mapped is not None:  # the hooked file itself, through a process that maps it
            cands.append(mapped)
    for i, cand in enumerate(cands):
        try:
            st = os.stat(cand)
            if not stat.S_ISREG(st.st_mode):
                note = f"{cand}: not a regular file"
                continue
            ident = (st.st_dev, st.st_ino)
            if kernel_inode is not None and ident != kernel_inode:
                note = f"{cand}: another file than the inode the kernel hooked"
                continue
            image = open_elf(cand)
        except (NotAnElf, OSError) as exc:
            note = str(exc)
            continue
        how = None
        if i >= 2 and _PROC_ROOT.match(path) is not None:
            how = "the root it was attached through is gone; named from the same path here"
        real = os.path.realpath(cand)
        if "/map_files/" in cand:
            how = f"named from the inode the kernel hooked ({real}, mapped by another process)"
        return _File(cand, ident, image, how, None, problem, real)
    return _File(None, kernel_inode, None, None, note, problem, None)


def resolve(
    path: str,
    offset: int,
    pid: int | None = None,
    kernel_inode: tuple[int, int] | None = None,
    *,
    files: dict | None = None,
) -> Resolved:
    """Resolve one (path, offset), trying the holder's root first, then ours.

    The file may live in an attacker's container: only regular files are opened
    (a FIFO planted at the path would block the scan), and a malformed ELF gives
    an unnamed hook with a note, never a failed scan. With ``kernel_inode`` (the
    (st_dev, st_ino) the kernel hooked, from the in-kernel walk) a path that now
    names another file is not used to name the function. ``files`` caches the
    per-file work across calls of one scan.
    """
    files = {} if files is None else files
    key = (path, pid, kernel_inode)
    f = files.get(key)
    if f is None:
        f = files[key] = _open_file(path, pid, kernel_inode)
    if f.image is None:
        return Resolved(
            path, offset, None, 0, _reach(None, path, None), None, f.inode, f.note, f.problem
        )
    try:
        return _name(f, path, offset)
    except Exception as exc:  # malformed ELF from a hostile file: report, don't crash
        return Resolved(
            path,
            offset,
            None,
            0,
            _reach(None, path, f.real_name),
            f.opened,
            f.inode,
            f"could not parse {f.opened}: {type(exc).__name__}",
            f.problem,
        )


def file_by_inode(inode: tuple[int, int]) -> str | None:
    """A ``/proc/PID/map_files/RANGE`` path that opens this exact file (by inode),
    from the first process that maps it; None when none does.

    Used only when a probe's path no longer leads to the inode the kernel hooked
    (a re-pointed symlink, a replaced or deleted file): the memory maps name the
    real file whatever happened to its path.
    """
    dev, ino = inode
    needle = b" %s " % str(ino).encode()
    dev_field = f"{os.major(dev):02x}:{os.minor(dev):02x}".encode()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/maps", "rb") as f:
                text = f.read()
        except OSError:
            continue
        if needle not in text:
            continue
        for line in text.splitlines():
            parts = line.split(None, 5)
            if len(parts) >= 5 and parts[3] == dev_field and parts[4] == str(ino).encode():
                return f"/proc/{name}/map_files/{parts[0].decode()}"
    return None


def _reach(function: str | None, path: str, real_name: str | None) -> str:
    """Reach by function name, or by the file: as given, or as it really is."""
    cls = reach(function, path, "uprobe")
    if cls == OTHER and real_name and crypto_file(real_name):
        return CRYPTO
    return cls


def _name(f: _File, path: str, offset: int) -> Resolved:
    image = f.image
    hit = image.function_at_offset(offset)  # type: ignore[attr-defined]
    if hit is not None:
        sym, delta = hit
        return Resolved(
            path,
            offset,
            sym.name,
            delta,
            _reach(sym.name, path, f.real_name),
            f.opened,
            f.inode,
            f.how,
            f.problem,
        )
    table = go_functions(image)
    vaddr = image.offset_to_vaddr(offset)  # type: ignore[attr-defined]
    if table is not None and vaddr is not None:
        fn = table.function_at(vaddr)
        if fn is not None:
            return Resolved(
                path,
                offset,
                fn.name,
                vaddr - fn.entry,
                _reach(fn.name, path, f.real_name),
                f.opened,
                f.inode,
                f.how or "named from .gopclntab",
                f.problem,
            )
    return Resolved(
        path,
        offset,
        None,
        0,
        _reach(None, path, f.real_name),
        f.opened,
        f.inode,
        f.how or "no symbol covers this offset (stripped?)",
        f.problem,
    )
