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
from ecap.detect.classify import classify
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


def resolve(path: str, offset: int, pid: int | None = None) -> Resolved:
    """Resolve one (path, offset), trying the holder's root first, then ours.

    The file may live in an attacker's container: only regular files are opened
    (a FIFO planted at the path would block the scan), and a malformed ELF gives
    an unnamed hook with a note, never a failed scan.
    """
    note = None
    for i, cand in enumerate(candidates(path, pid)):
        try:
            st = os.stat(cand)
            if not stat.S_ISREG(st.st_mode):
                note = f"{cand}: not a regular file"
                continue
            image = open_elf(cand)
        except (NotAnElf, OSError) as exc:
            note = str(exc)
            continue
        ident = (st.st_dev, st.st_ino)
        moved = i >= 2 and _PROC_ROOT.match(path) is not None
        how = (
            "the root it was attached through is gone; named from the same path here"
            if moved
            else None
        )
        try:
            return _name(image, path, offset, cand, ident, how)
        except Exception as exc:  # malformed ELF from a hostile file: report, don't crash
            return Resolved(
                path,
                offset,
                None,
                0,
                classify(None),
                cand,
                ident,
                f"could not parse {cand}: {type(exc).__name__}",
            )
    return Resolved(path, offset, None, 0, classify(None), None, None, note)


def _name(
    image, path: str, offset: int, cand: str, ident: tuple[int, int], how: str | None
) -> Resolved:
    hit = image.function_at_offset(offset)
    if hit is not None:
        sym, delta = hit
        return Resolved(path, offset, sym.name, delta, classify(sym.name), cand, ident, how)
    table = go_functions(image)
    vaddr = image.offset_to_vaddr(offset)
    if table is not None and vaddr is not None:
        fn = table.function_at(vaddr)
        if fn is not None:
            return Resolved(
                path,
                offset,
                fn.name,
                vaddr - fn.entry,
                classify(fn.name),
                cand,
                ident,
                how or "named from .gopclntab",
            )
    return Resolved(
        path,
        offset,
        None,
        0,
        classify(None),
        cand,
        ident,
        how or "no symbol covers this offset (stripped?)",
    )
