"""Owners (who holds the hook) and victims (whose plaintext it sees).

An owner is described well enough to act on: pid, executable and its SHA-256
(hashed only for owners, never for every process), command line, user, parent
chain, container, and the capabilities that let it sniff. Victims are the
processes that map a hooked file *now*; a ``[uprobes]`` mapping in their address
space shows a uprobe has already fired in them.
"""

from __future__ import annotations

import os
import pwd

from ecap import caps, procfs


def _user(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def describe(pid: int, *, hash_exe: bool = True) -> dict | None:
    """Everything we can say about a live process; None when it is gone."""
    try:
        real, eff, _s, _f = procfs.uids(pid)
        chain = procfs.parent_chain(pid)
        parents = []
        for p in chain:
            try:
                parents.append({"pid": p, "comm": procfs.comm(p), "exe": procfs.exe(p)})
            except procfs.ProcessGone:
                break
        effective = caps.effective(pid)
        return {
            "pid": pid,
            "comm": procfs.comm(pid),
            "exe": procfs.exe(pid),
            "exe_sha256": procfs.exe_sha256(pid) if hash_exe else None,
            "cmdline": procfs.cmdline(pid),
            "uid": real,
            "euid": eff,
            "user": _user(eff),
            "start_time": procfs.start_time(pid),
            "parent_chain": parents,
            "container_id": procfs.container_id(pid),
            "capabilities": [c for c in caps.SNIFFER_RELEVANT if c in effective],
        }
    except (procfs.ProcessGone, PermissionError, StopIteration, KeyError):
        return None


def _dev_field(dev: int) -> str:
    return f"{os.major(dev):02x}:{os.minor(dev):02x}"


def victims(files: set[tuple[int, int]], *, limit: int = 500) -> dict[tuple[int, int], list[dict]]:
    """For each (st_dev, st_ino), the processes mapping that file now.

    One pass over every ``/proc/PID/maps``; a cheap substring test on the inode
    number skips most processes before any line is parsed.
    """
    out: dict[tuple[int, int], list[dict]] = {f: [] for f in files}
    if not files:
        return out
    wanted = {(_dev_field(dev), str(ino)): (dev, ino) for dev, ino in files}
    needles = {ino for _dev, ino in wanted}
    me = str(os.getpid())  # the scanner itself may map libssl; it is no victim
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or entry.name == me:
            continue
        try:
            with open(f"/proc/{entry.name}/maps", errors="surrogateescape") as f:
                text = f.read()
        except OSError:
            continue
        if not any(n in text for n in needles):
            continue
        pid = int(entry.name)
        hit: set[tuple[int, int]] = set()
        for line in text.splitlines():
            parts = line.split(None, 5)
            if len(parts) >= 5 and (parts[3], parts[4]) in wanted:
                hit.add(wanted[(parts[3], parts[4])])
        if not hit:
            continue
        uprobes = "[uprobes]" in text
        try:
            comm = procfs.comm(pid)
            exe = procfs.exe(pid)
        except procfs.ProcessGone:
            continue
        for key in hit:
            if len(out[key]) < limit:
                out[key].append({"pid": pid, "comm": comm, "exe": exe, "uprobes_mapping": uprobes})
    return out
