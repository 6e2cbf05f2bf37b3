"""Which file to hook in each authorized process, and where in it.

The answer comes from the process itself, never from the host's library path: a
container's libssl is reached through ``/proc/PID/root``, and a process that links
OpenSSL statically (node) is hooked in its own executable. Offsets come from
:mod:`ecap.elf` (symbol table → PT_LOAD → file offset), the same resolver the
detector uses the other way round, so both always agree on what an offset means.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ecap import procfs
from ecap.elf import NotAnElf, Symbol, open_elf
from ecap.errors import UsageError

DATA_FUNCTIONS = ("SSL_write", "SSL_read", "SSL_write_ex", "SSL_read_ex")
"""Functions that carry plaintext; at least SSL_write and SSL_read must exist."""
LIFECYCLE_FUNCTIONS = ("SSL_do_handshake", "SSL_set_fd", "SSL_shutdown", "SSL_free")
"""Functions that tell us about the connection: handshake, socket fd, end."""
REQUIRED = ("SSL_write", "SSL_read")

_LIBSSL_RE = re.compile(r"/lib(ssl|boringssl)[^/]*\.so(\.[0-9.]+)?$")
_LIBCRYPTO_NAMES = ("libcrypto.so",)


@dataclass(frozen=True)
class HookTarget:
    """One file in one process to attach to, with the functions found in it."""

    pid: int
    path: Path
    """Host-reachable path of the file (through /proc/PID/root)."""
    display_path: str
    """The path as the process sees it (for humans and the journal)."""
    kind: str
    """``library`` (a mapped libssl), ``executable`` (static OpenSSL) or ``override``."""
    version: str | None
    """OpenSSL/BoringSSL version from .rodata, None when no version string was found."""
    symbols: dict[str, Symbol]
    """Function name → symbol with its file offset (what the uprobe is attached at)."""


class NoTlsLibrary(UsageError):
    """The process maps nothing that exports the OpenSSL API."""


def _find_version(pid: int, ssl_path: str, maps_paths: list[str]) -> str | None:
    """OpenSSL keeps its version string in libcrypto, not libssl: look in both."""
    candidates = [ssl_path]
    directory = os.path.dirname(ssl_path)
    candidates += [
        p
        for p in maps_paths
        if os.path.dirname(p) == directory
        and any(n in os.path.basename(p) for n in _LIBCRYPTO_NAMES)
    ]
    candidates += [p for p in maps_paths if "libcrypto" in os.path.basename(p)]
    for candidate in candidates:
        try:
            version = open_elf(procfs.in_root(pid, candidate)).ssl_version()
        except NotAnElf:
            continue
        if version:
            return version
    return None


def _symbols_in(path: Path) -> dict[str, Symbol]:
    try:
        return open_elf(path).find_functions(DATA_FUNCTIONS + LIFECYCLE_FUNCTIONS)
    except NotAnElf:
        return {}


def resolve(pid: int, *, libssl: str | None = None) -> HookTarget:
    """Find the OpenSSL API in process ``pid``.

    Order: ``--libssl`` when given (a path as the process sees it, or a host path);
    otherwise every mapped file whose name looks like libssl; otherwise the
    executable itself (static builds). Raises :class:`NoTlsLibrary` naming what was
    looked for, or :class:`ecap.procfs.ProcessGone`.
    """
    paths = procfs.mapped_files(pid)
    if libssl:
        return _resolve_override(pid, libssl, paths)
    for mapped in paths:
        if _LIBSSL_RE.search(mapped):
            host_path = procfs.in_root(pid, mapped)
            symbols = _symbols_in(host_path)
            if all(name in symbols for name in REQUIRED):
                return HookTarget(
                    pid, host_path, mapped, "library", _find_version(pid, mapped, paths), symbols
                )
    exe = procfs.exe(pid)
    if exe:
        host_path = procfs.PROC / str(pid) / "exe"
        symbols = _symbols_in(host_path)
        if all(name in symbols for name in REQUIRED):
            version = open_elf(host_path).ssl_version()
            return HookTarget(pid, _stable_exe_path(pid, exe), exe, "executable", version, symbols)
    raise NoTlsLibrary(
        f"process {pid} ({procfs.comm(pid)!r}) maps no libssl and its executable "
        f"exports no {'/'.join(REQUIRED)}",
        hint="it may not use OpenSSL (Go, GnuTLS, NSS need other modules), or pass "
        "--libssl PATH if it loads OpenSSL under another name",
    )


def _stable_exe_path(pid: int, exe: str) -> Path:
    """A path for the executable that names the same inode the process runs.

    ``/proc/PID/exe`` resolves to the right file even inside containers, but the
    uprobe layer needs a real path; the process's root-relative path is that, as
    long as it still names the same inode (it may have been replaced since).
    """
    candidate = procfs.in_root(pid, exe)
    try:
        if os.stat(candidate).st_ino == os.stat(procfs.PROC / str(pid) / "exe").st_ino:
            return candidate
    except OSError:
        pass
    return procfs.PROC / str(pid) / "exe"


def _resolve_override(pid: int, libssl: str, paths: list[str]) -> HookTarget:
    mapped_here = libssl in paths
    host_path = procfs.in_root(pid, libssl) if mapped_here else Path(libssl)
    if not host_path.exists():
        raise UsageError(
            f"--libssl {libssl}: no such file (in process {pid} or on the host)",
            hint="give the path shown in /proc/PID/maps",
        )
    symbols = _symbols_in(host_path)
    missing = [name for name in REQUIRED if name not in symbols]
    if missing:
        raise NoTlsLibrary(
            f"--libssl {libssl} does not define {', '.join(missing)}",
            hint="point it at the libssl (or static binary) the process uses",
        )
    if not mapped_here:
        mapped_same = _mapped_same_inode(pid, host_path, paths)
        if mapped_same is None:
            raise UsageError(
                f"--libssl {libssl} is not mapped by process {pid}",
                hint="a probe on a file the process does not run never fires",
            )
    try:
        version = open_elf(host_path).ssl_version() or _find_version(pid, libssl, paths)
    except NotAnElf:
        version = None
    return HookTarget(pid, host_path, libssl, "override", version, symbols)


def _mapped_same_inode(pid: int, host_path: Path, paths: list[str]) -> str | None:
    try:
        want = os.stat(host_path)
    except OSError:
        return None
    for mapped in paths:
        try:
            st = os.stat(procfs.in_root(pid, mapped))
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (want.st_dev, want.st_ino):
            return mapped
    return None
