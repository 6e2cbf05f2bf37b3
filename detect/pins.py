"""Objects pinned in bpffs — in every mount namespace, not just ours.

A sniffer can pin its programs or links and exit: nothing then holds an fd, and
only the pin keeps the hook alive. Containers mount their own bpffs, invisible
from the host's ``/sys/fs/bpf``; so each distinct mount namespace's
``/proc/PID/mountinfo`` is read and its bpffs walked through ``/proc/PID/root``.
One bpffs instance mounted in many places is walked once (keyed by st_dev).
"""

from __future__ import annotations

import os

from ecap.detect import bpfsys
from ecap.detect.model import Pin
from ecap.procfs import parse_fdinfo

_KINDS = {
    "anon_inode:bpf-prog": ("prog", "prog_id"),
    "anon_inode:bpf-map": ("map", "map_id"),
    "anon_inode:bpf-link": ("link", "link_id"),
    "anon_inode:bpf_link": ("link", "link_id"),
}
_MAX_ENTRIES = 100_000


def bpffs_mountpoints(mountinfo: str) -> list[str]:
    """Mount points of fstype ``bpf`` in a mountinfo text (octal escapes decoded)."""
    out = []
    for line in mountinfo.splitlines():
        pre, sep, post = line.partition(" - ")
        if not sep or not post.startswith("bpf "):
            continue
        fields = pre.split()
        if len(fields) >= 5:
            mp = fields[4]
            if "\\" in mp:
                mp = mp.encode().decode("unicode_escape")
            out.append(mp)
    return out


def namespaces() -> dict[str, int]:
    """One live PID per distinct mount namespace (``mnt:[4026531841]`` → pid)."""
    seen: dict[str, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            ns = os.readlink(f"/proc/{entry.name}/ns/mnt")
        except OSError:
            continue
        seen.setdefault(ns, int(entry.name))
    return seen


def _identify(path: str) -> tuple[str, int] | None:
    try:
        fd = bpfsys.obj_get(path)
    except OSError:
        return None
    try:
        kind_key = _KINDS.get(os.readlink(f"/proc/self/fd/{fd}"))
        if kind_key is None:
            return None
        with open(f"/proc/self/fdinfo/{fd}") as f:
            info = parse_fdinfo(f.read())
        return kind_key[0], int(info.get(kind_key[1], "0"))
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)


def list_pins(mount_namespaces: dict[str, int] | None = None) -> tuple[list[Pin], list[str]]:
    """Every pinned object, and notes about bpffs mounts that could not be read.

    ``mount_namespaces`` (ns → pid) saves a pass over /proc when the fd walk
    already collected it.
    """
    pins: list[Pin] = []
    notes: list[str] = []
    walked: set[int] = set()
    for ns, pid in (mount_namespaces or namespaces()).items():
        try:
            with open(f"/proc/{pid}/mountinfo", errors="surrogateescape") as f:
                points = bpffs_mountpoints(f.read())
        except OSError:
            continue
        for mp in points:
            root = f"/proc/{pid}/root{mp}" if mp != "/" else f"/proc/{pid}/root"
            try:
                dev = os.stat(root).st_dev
            except OSError as exc:
                notes.append(f"bpffs {mp} in {ns}: {exc.strerror}")
                continue
            if dev in walked:
                continue
            walked.add(dev)
            count = 0
            for dirpath, _dirs, files in os.walk(root):
                for fname in files:
                    count += 1
                    if count > _MAX_ENTRIES:
                        notes.append(f"bpffs {mp} in {ns}: more than {_MAX_ENTRIES} entries")
                        break
                    full = os.path.join(dirpath, fname)
                    found = _identify(full)
                    if found is None:
                        continue
                    shown = mp.rstrip("/") + full[len(root) :]
                    pins.append(Pin(shown, found[0], found[1], ns, pid))
    return pins, notes
