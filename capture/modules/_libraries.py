"""Finding a TLS library in a process: what the TLS modules (tls, gnutls, nss) share.

Which file to hook comes from the process itself, never from the host's library
path: a container's library is reached through ``/proc/PID/root``, and a process
that links the library statically is hooked in its own executable. Offsets come
from :mod:`ecap.elf` (symbol table → PT_LOAD → file offset), the same resolver the
detector uses the other way round, so both always agree on what an offset means.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Found:
    """A file in the process that defines a library's functions."""

    host_path: Path
    """Reachable from here (through /proc/PID/root, or /proc/PID/exe)."""
    shown: str
    """The path as the process sees it."""
    kind: str
    """``library`` or ``executable``."""
    offsets: dict[str, int]
    """Function name → file offset, for the functions the file defines."""


def offsets_in(path: Path, functions: tuple[str, ...]) -> dict[str, int]:
    """File offsets of those of ``functions`` that ``path`` defines ({} if not an ELF)."""
    from ecap.elf import NotAnElf, open_elf

    try:
        return {n: s.file_offset for n, s in open_elf(path).find_functions(functions).items()}
    except NotAnElf:
        return {}


def find_mapped(pid: int, name: re.Pattern[str], functions: tuple[str, ...],
                required: tuple[str, ...], paths: list[str] | None = None) -> Found | None:  # fmt: skip
    """The first file mapped by ``pid`` whose path matches ``name`` and that defines
    every ``required`` function."""
    from ecap import procfs

    for mapped in procfs.mapped_files(pid) if paths is None else paths:
        if name.search(mapped):
            host_path = procfs.in_root(pid, mapped)
            offsets = offsets_in(host_path, functions)
            if all(f in offsets for f in required):
                return Found(host_path, mapped, "library", offsets)
    return None


def find_in_executable(pid: int, functions: tuple[str, ...],
                       required: tuple[str, ...]) -> Found | None:  # fmt: skip
    """The process's own executable, when it defines every ``required`` function
    (the library linked statically)."""
    from ecap import procfs

    exe = procfs.exe(pid)
    if not exe:
        return None
    offsets = offsets_in(procfs.PROC / str(pid) / "exe", functions)
    if not all(f in offsets for f in required):
        return None
    return Found(stable_exe_path(pid, exe), exe, "executable", offsets)


def stable_exe_path(pid: int, exe: str) -> Path:
    """A path for the executable that names the same inode the process runs.

    ``/proc/PID/exe`` resolves to the right file even inside containers, but the
    uprobe layer needs a real path; the process's root-relative path is that, as
    long as it still names the same inode (it may have been replaced since).
    """
    from ecap import procfs

    candidate = procfs.in_root(pid, exe)
    try:
        if os.stat(candidate).st_ino == os.stat(procfs.PROC / str(pid) / "exe").st_ino:
            return candidate
    except OSError:
        pass
    return procfs.PROC / str(pid) / "exe"


def version_in(path: Path, pattern: re.Pattern[bytes]) -> str | None:
    """The library's own version string (``pattern``'s first group in .rodata)."""
    from ecap.elf import NotAnElf, open_elf

    try:
        return open_elf(path).rodata_search(pattern)
    except NotAnElf:
        return None
