"""Owners (who holds the hook) and victims (whose plaintext it sees).

An owner is described well enough to act on: pid, executable and its SHA-256
(hashed only for owners, never for every process), command line, user, parent
chain, container, and the capabilities that let it sniff. Victims are the
processes that map a hooked file *now*; a ``[uprobes]`` mapping in their address
space shows a uprobe has already fired in them.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import socket

from ecap import caps, procfs
from ecap.detect.kernel_walk import KernelWalker, KernelWalkUnavailable
from ecap.fsutil import read_to_end


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
            **_namespaces(pid),
        }
    except (procfs.ProcessGone, PermissionError, StopIteration, KeyError):
        return None


def _namespaces(pid: int) -> dict:
    """Its pid inside its own pid namespace (NSpid) and its namespaces, so a
    holder in a container is named both ways."""
    out: dict = {"ns_pid": None, "pid_ns": None, "mnt_ns": None}
    with contextlib.suppress(OSError):
        out["pid_ns"] = os.readlink(f"/proc/{pid}/ns/pid")
        out["mnt_ns"] = os.readlink(f"/proc/{pid}/ns/mnt")
    with contextlib.suppress(procfs.ProcessGone, KeyError, ValueError):
        nspid = procfs.status(pid)["NSpid"].split()
        out["ns_pid"] = int(nspid[-1])
    return out


_LOOPBACK = ("127.", "::1", "::ffff:127.")
_WRITE_MODES = ("w", "a", "r+", "a+", "w+")
MAX_DESTINATIONS = 100


def _loopback(ip: str) -> bool:
    return ip.startswith(_LOOPBACK) or ip == "localhost"


def destinations(pid: int) -> dict | None:
    """Where a sniffer's owner can send what it collects: its listening sockets,
    its established connections (with peers) and the regular files it has open
    for writing. None when the process is gone.

    eCapture's remote API listens on 28256 on every address by default; a
    listener on a non-loopback address is marked ``exposed``.
    """
    import psutil  # only for owners of findings

    try:
        proc = psutil.Process(pid)
        conns = proc.net_connections(kind="inet")
        files = proc.open_files()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        return {"error": "access denied", "listening": [], "connections": [], "files_written": []}
    listening, connected = [], []
    for c in conns:
        proto = "tcp" if c.type == socket.SOCK_STREAM else "udp"
        if c.status == psutil.CONN_LISTEN or (proto == "udp" and not c.raddr):
            ip, port = c.laddr.ip, c.laddr.port
            listening.append(
                {"proto": proto, "address": ip, "port": port, "exposed": not _loopback(ip)}
            )
        elif c.raddr:
            connected.append(
                {
                    "proto": proto,
                    "local": f"{c.laddr.ip}:{c.laddr.port}",
                    "peer": f"{c.raddr.ip}:{c.raddr.port}",
                    "status": c.status,
                    "remote": not _loopback(c.raddr.ip),
                }
            )
    written = sorted({f.path for f in files if getattr(f, "mode", "r") in _WRITE_MODES})
    return {
        "listening": listening[:MAX_DESTINATIONS],
        "connections": connected[:MAX_DESTINATIONS],
        "files_written": written[:MAX_DESTINATIONS],
    }


def destination_evidence(dest: dict) -> list[str]:
    """Evidence lines: where the loot goes, exposed listeners first."""
    out = []
    for lst in dest.get("listening", []):
        where = f"{lst['proto']} {lst['address']}:{lst['port']}"
        if lst["exposed"]:
            out.append(f"LISTENS on {where}, reachable from other hosts (not loopback)")
        else:
            out.append(f"listens on {where}")
    for c in dest.get("connections", [])[:20]:
        out.append(f"connected {c['proto']} {c['local']} -> {c['peer']} ({c['status']})")
    for path in dest.get("files_written", [])[:20]:
        out.append(f"writes file {path}")
    return out


def _dev_field(dev: int) -> str:
    return f"{os.major(dev):02x}:{os.minor(dev):02x}"


def victims(
    files: dict[tuple[int, int], str | None],
    *,
    kernel: KernelWalker | None = None,
    limit: int = 500,
) -> dict[tuple[int, int], list[dict]]:
    """For each hooked file ((st_dev, st_ino) → the path it was opened by), the
    processes mapping it now.

    Every answer comes from the processes' ``/proc/PID/maps`` (which also shows
    the ``[uprobes]`` area). Without ``kernel`` every process's maps is read; with
    it, only those the files' reverse maps name (:meth:`KernelWalker.mappers`).
    """
    out: dict[tuple[int, int], list[dict]] = {f: [] for f in files}
    if not files:
        return out
    me = str(os.getpid())  # the scanner itself may map libssl; it is no victim
    pids = None
    if kernel is not None:
        with contextlib.suppress(KernelWalkUnavailable):  # then: read every maps
            candidates = kernel.mappers({k: p for k, p in files.items() if p})
            pids = [str(pid) for pid in sorted(candidates)]
    if pids is None:
        pids = [n for n in os.listdir("/proc") if n.isdigit()]
    for pid, key, fired_in in _maps_hits(set(files), [p for p in pids if p != me]):
        if len(out[key]) >= limit:
            continue
        try:
            comm = procfs.comm(pid)
            exe = procfs.exe(pid)
        except procfs.ProcessGone:
            continue
        out[key].append({"pid": pid, "comm": comm, "exe": exe, "uprobes_mapping": fired_in})
    return out


def _maps_hits(
    files: set[tuple[int, int]], pids: list[str]
) -> list[tuple[int, tuple[int, int], bool]]:
    """(pid, file, [uprobes] present) from one pass over these ``/proc/PID/maps``.

    Read as bytes by a few threads when there are many (the kernel's text
    generation dominates and runs outside the GIL); a substring test on the inode
    number skips most processes before any line is parsed.
    """
    wanted = {(_dev_field(dev).encode(), str(ino).encode()): (dev, ino) for dev, ino in files}
    needles = {ino for _dev, ino in wanted}
    if len(pids) < 256:  # below this, starting threads costs more than they save
        return sorted(_scan_maps(pids, wanted, needles))
    from concurrent.futures import ThreadPoolExecutor  # (imports logging: only when used)

    chunks = [pids[i::_WORKERS] for i in range(_WORKERS)]
    with ThreadPoolExecutor(_WORKERS) as pool:
        parts = pool.map(lambda c: _scan_maps(c, wanted, needles), chunks)
        return sorted(hit for part in parts for hit in part)


_WORKERS = 4


def _read_all(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return read_to_end(fd)
    finally:
        os.close(fd)


def _scan_maps(pids: list[str], wanted: dict, needles: set[bytes]) -> list[tuple]:
    found = []
    for name in pids:
        try:
            text = _read_all(f"/proc/{name}/maps")
        except OSError:
            continue
        if not any(n in text for n in needles):
            continue
        keys = set()
        for line in text.splitlines():
            parts = line.split(None, 5)
            if len(parts) >= 5 and (parts[3], parts[4]) in wanted:
                keys.add(wanted[(parts[3], parts[4])])
        fired = b"[uprobes]" in text
        found += [(int(name), key, fired) for key in keys]
    return found
