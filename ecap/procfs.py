"""Readers for /proc that capture, detect and the gate share.

Every function takes a PID and raises :class:`ProcessGone` when the process has
exited (or never existed), so callers that walk many processes can skip vanished
ones without catching a zoo of OSErrors.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

PROC = Path("/proc")
T = TypeVar("T")


class ProcessGone(LookupError):
    """The process exited or is not visible from here."""


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="surrogateescape")
    except (FileNotFoundError, ProcessLookupError) as exc:
        raise ProcessGone(str(path)) from exc


def pid_exists(pid: int) -> bool:
    """True when /proc/PID exists (zombies included)."""
    return (PROC / str(pid)).exists()


def all_pids() -> list[int]:
    """Numeric entries of /proc, in order; a snapshot that may already be stale."""
    return sorted(int(e.name) for e in os.scandir(PROC) if e.name.isdigit())


def stat_fields(pid: int) -> list[str]:
    """Fields of /proc/PID/stat, split after the parenthesised comm.

    ``comm`` may contain spaces and ')' so it is cut at the *last* ')'. Index 0 of
    the result is field 3 (state) of proc(5).
    """
    text = _read_text(PROC / str(pid) / "stat")
    return text[text.rindex(")") + 2 :].split()


def start_time(pid: int) -> int:
    """Process start time in clock ticks since boot (proc(5) field 22).

    Together with the PID this names one process for the life of the system: a
    recycled PID gets a new start time, which is why tokens bind both.
    """
    return int(stat_fields(pid)[19])


def ppid(pid: int) -> int:
    """Parent PID (proc(5) field 4)."""
    return int(stat_fields(pid)[1])


def comm(pid: int) -> str:
    """Thread-group leader's comm (may be attacker-chosen: escape before printing)."""
    return _read_text(PROC / str(pid) / "comm").rstrip("\n")


def cmdline(pid: int) -> list[str]:
    """argv as the process set it (attacker-controlled; escape before printing)."""
    raw = _read_text(PROC / str(pid) / "cmdline")
    return [a for a in raw.split("\0") if a] if raw else []


def _through_exe(pid: int, use: Callable[[Path], T]) -> T | None:
    """``use(/proc/PID/exe)``; None for kernel threads and what we may not read."""
    try:
        return use(PROC / str(pid) / "exe")
    except (FileNotFoundError, ProcessLookupError) as exc:
        if not pid_exists(pid):
            raise ProcessGone(str(pid)) from exc
        return None  # kernel threads have no exe
    except PermissionError:
        return None


def exe(pid: int) -> str | None:
    """Path of the executable as the process's mount namespace sees it."""
    return _through_exe(pid, os.readlink)


def exe_identity(pid: int) -> tuple[int, int] | None:
    """(device, inode) of the file PID executes, through the /proc/PID/exe magic link.

    The link names the file the process exec'd even after it was replaced or
    deleted on disk; a later exec changes it, the start time does not.
    """
    st = _through_exe(pid, os.stat)
    return (st.st_dev, st.st_ino) if st is not None else None


def status(pid: int) -> dict[str, str]:
    """/proc/PID/status as a dict of raw values."""
    out: dict[str, str] = {}
    for line in _read_text(PROC / str(pid) / "status").splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def uids(pid: int) -> tuple[int, int, int, int]:
    """Real, effective, saved and filesystem UIDs."""
    r, e, s, f = (int(x) for x in status(pid)["Uid"].split())
    return r, e, s, f


def threads(pid: int) -> list[int]:
    """Thread IDs of a process (all tasks of the thread group)."""
    try:
        return sorted(int(t) for t in os.listdir(PROC / str(pid) / "task"))
    except FileNotFoundError as exc:
        raise ProcessGone(str(pid)) from exc


def in_root(pid: int, path: str) -> Path:
    """A path as process PID sees it, reachable from here through /proc/PID/root.

    A container's ``/usr/lib/libssl.so.3`` is a different file from the host's;
    opening it through the holder's root is what makes the answer right.
    """
    return PROC / str(pid) / "root" / path.lstrip("/")


@dataclass(frozen=True)
class Mapping:
    """One line of /proc/PID/maps."""

    start: int
    end: int
    perms: str
    offset: int
    dev: str
    inode: int
    path: str
    """Pathname as the process sees it, '' for anonymous, '[heap]'-style for special."""

    @property
    def is_file(self) -> bool:
        return self.path.startswith("/")


_MAPS_RE = re.compile(r"^([0-9a-f]+)-([0-9a-f]+)\s+(\S+)\s+([0-9a-f]+)\s+(\S+)\s+(\d+)\s*(.*)$")


def parse_maps(text: str) -> list[Mapping]:
    """Parse the text of a maps file (split out so recorded samples can be tested)."""
    out = []
    for line in text.splitlines():
        m = _MAPS_RE.match(line)
        if not m:
            continue
        start, end, perms, off, dev, inode, path = m.groups()
        path = path.removesuffix(" (deleted)")
        out.append(
            Mapping(int(start, 16), int(end, 16), perms, int(off, 16), dev, int(inode), path)
        )
    return out


def maps(pid: int) -> list[Mapping]:
    """Memory mappings of PID."""
    return parse_maps(_read_text(PROC / str(pid) / "maps"))


def mapped_files(pid: int) -> list[str]:
    """Distinct file paths mapped by PID, in first-seen order."""
    seen: dict[str, None] = {}
    for m in maps(pid):
        if m.is_file:
            seen.setdefault(m.path, None)
    return list(seen)


_CONTAINER_ID_RE = re.compile(r"([0-9a-f]{64})")


def container_id(pid: int) -> str | None:
    """Container id (64 hex) from the cgroup path, when the process is in one.

    Docker, containerd and CRI-O all embed the full id in the cgroup path
    (``docker-<id>.scope``, ``cri-containerd-<id>.scope``, ``/docker/<id>``).
    """
    text = _read_text(PROC / str(pid) / "cgroup")
    m = _CONTAINER_ID_RE.search(text)
    return m.group(1) if m else None


def sha256_file(path: str | os.PathLike[str], *, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's contents, hex."""
    import hashlib  # loads OpenSSL; most procfs users never hash

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def exe_sha256(pid: int) -> str | None:
    """SHA-256 of the running executable, read through /proc/PID/exe.

    Reading via the magic link hashes the file the process actually runs, even when
    it was replaced or deleted on disk afterwards.
    """
    return _through_exe(pid, sha256_file)


def parent_chain(pid: int, *, limit: int = 32) -> list[int]:
    """PIDs from PID's parent up to init (or as far as visible)."""
    chain: list[int] = []
    cur = pid
    for _ in range(limit):
        try:
            parent = ppid(cur)
        except ProcessGone:
            break
        if parent <= 0 or parent in chain:
            break
        chain.append(parent)
        cur = parent
    return chain


def iter_fds(pid: int) -> Iterator[tuple[int, str]]:
    """(fd number, readlink target) for each open fd; skips fds closed meanwhile."""
    fd_dir = PROC / str(pid) / "fd"
    try:
        entries = list(os.scandir(fd_dir))
    except (FileNotFoundError, ProcessLookupError) as exc:
        raise ProcessGone(str(pid)) from exc
    for entry in entries:
        try:
            yield int(entry.name), os.readlink(entry.path)
        except (FileNotFoundError, ProcessLookupError):
            continue


def fdinfo(pid: int, fd: int) -> dict[str, str]:
    """/proc/PID/fdinfo/FD as a dict (bpf objects expose prog_id, map_id, link_id...)."""
    return parse_fdinfo(_read_text(PROC / str(pid) / "fdinfo" / str(fd)))


def parse_fdinfo(text: str) -> dict[str, str]:
    """Parse fdinfo text; keys may repeat (last wins) and values keep inner spaces."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out
