"""Group calls into connections and name their endpoints.

A connection is one library connection object (``SSL*``, a GnuTLS session, an
NSPR file descriptor — whatever the module's ``identity`` is) in one process. Its
socket fd comes from the kernel side (the library's own set-fd call, a socket
syscall made inside the call, or the socket read just before it); its addresses come from the ``connect`` tracepoint (exact, even for
sockets that close at once) or from ``/proc/PID/fd`` + ``/proc/PID/net/tcp*``
(sockets that existed before the capture started). No kprobes are needed.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Connection:
    """What the capture knows about one TLS connection."""

    id: int
    pid: int
    conn: int
    """The library's connection object (an address in the process)."""
    comm: str
    module: str = ""
    fd: int = -1
    local: str | None = None
    peer: str | None = None
    fd_source: str = "unknown"
    """How the fd was learned: ``kernel`` (from the probes) or ``connect-order``
    (the process's most recent unclaimed connect, used until the kernel says)."""
    started_at: float = 0.0
    ended_at: float | None = None
    end_reason: str | None = None
    handshake: bool = False
    messages: int = 0
    bytes: dict[str, int] = field(default_factory=lambda: {"write": 0, "read": 0})


def format_sockaddr(raw: bytes) -> str | None:
    """``ip:port`` (``[ip6]:port``) from a sockaddr read by the connect tracepoint."""
    if len(raw) < 2:
        return None
    family = struct.unpack_from("<H", raw)[0]
    if family == socket.AF_INET and len(raw) >= 8:
        port = struct.unpack_from(">H", raw, 2)[0]
        return f"{socket.inet_ntop(socket.AF_INET, raw[4:8])}:{port}"
    if family == socket.AF_INET6 and len(raw) >= 24:
        port = struct.unpack_from(">H", raw, 2)[0]
        return f"[{socket.inet_ntop(socket.AF_INET6, raw[8:24])}]:{port}"
    if family == socket.AF_UNIX:
        return "unix"
    return None


def format_endpoint(family: int, addr: bytes, port: int) -> str | None:
    """``ip:port`` (``[ip6]:port``) from the kernel's socket fields."""
    if family == socket.AF_INET:
        return f"{socket.inet_ntop(socket.AF_INET, addr[:4])}:{port}"
    if family == socket.AF_INET6:
        return f"[{socket.inet_ntop(socket.AF_INET6, addr[:16])}]:{port}"
    return None


def _decode_proc_addr(text: str) -> str:
    addr, port = text.split(":")
    raw = bytes.fromhex(addr)
    if len(raw) == 4:
        return f"{socket.inet_ntop(socket.AF_INET, raw[::-1])}:{int(port, 16)}"
    # /proc/net/tcp6 stores four little-endian 32-bit words
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return f"[{socket.inet_ntop(socket.AF_INET6, words)}]:{int(port, 16)}"


def socket_addresses(pid: int, fd: int) -> tuple[str | None, str | None]:
    """(local, peer) of a TCP socket fd, through /proc; (None, None) if unknown."""
    try:
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return None, None
    if not target.startswith("socket:["):
        return None, None
    inode = target[8:-1]
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                next(f, None)
                for line in f:
                    cols = line.split()
                    if len(cols) > 9 and cols[9] == inode:
                        return _decode_proc_addr(cols[1]), _decode_proc_addr(cols[2])
        except OSError:
            continue
    return None, None


class ConnectionTable:
    """Live connections by (pid, connection object), plus what connect() told us per
    (pid, fd)."""

    def __init__(self, module: str = "") -> None:
        self._module = module
        self._by_conn: dict[tuple[int, int], Connection] = {}
        self._connects: dict[tuple[int, int], str] = {}
        self._sockets: dict[tuple[int, int], tuple[int, str | None, str | None]] = {}
        """(pid, connection object) → (fd, local, peer) the kernel read from the socket."""
        self._recent_connects: dict[int, list[int]] = {}
        self._next_id = 1
        self.total = 0
        self.settled: dict[tuple[int, int, int], Connection] = {}
        """(pid, connection object, fd a record names) → its connection, for records
        that :meth:`get` would change nothing for (the capture's hot path looks here
        first). Emptied whenever a connection's fd changes or a connection ends."""

    def note_connect(self, pid: int, fd: int, sockaddr: bytes) -> None:
        peer = format_sockaddr(sockaddr)
        if peer is None or peer == "unix":
            return
        self._connects[(pid, fd)] = peer
        self._recent_connects.setdefault(pid, []).append(fd)

    def note_socket(self, pid: int, conn_obj: int, fd: int, local: str | None,
                    peer: str | None) -> None:  # fmt: skip
        """The kernel tied a connection object to a socket and read both its ends."""
        self._sockets[(pid, conn_obj)] = (fd, local, peer)
        conn = self._by_conn.get((pid, conn_obj))
        if conn is not None:
            self._set_fd(conn, fd, "kernel")

    def get(self, pid: int, conn_obj: int, comm: str, fd: int, ts: float,
            module: str | None = None) -> Connection:  # fmt: skip
        """The connection of this object in this process, created on first sight
        (``module``: whose it is, when the session has several)."""
        key = (pid, conn_obj)
        conn = self._by_conn.get(key)
        if conn is None:
            conn = Connection(self._next_id, pid, conn_obj, comm, module or self._module,
                              started_at=ts)  # fmt: skip
            self._next_id += 1
            self.total += 1
            self._by_conn[key] = conn
        if fd >= 0 and (conn.fd != fd or conn.fd_source != "kernel"):
            self._set_fd(conn, fd, "kernel")
        elif conn.fd < 0:
            guess = self._unclaimed_connect(pid)
            if guess is not None:
                self._set_fd(conn, guess, "connect-order")
        if conn.fd >= 0 and (fd < 0 or conn.fd_source == "kernel"):
            self.settled[(pid, conn_obj, fd)] = conn
        return conn

    def _unclaimed_connect(self, pid: int) -> int | None:
        claimed = {c.fd for c in self._by_conn.values() if c.pid == pid and c.ended_at is None}
        for fd in reversed(self._recent_connects.get(pid, [])):
            if fd not in claimed:
                return fd
        return None

    def _set_fd(self, conn: Connection, fd: int, source: str) -> None:
        self.settled.clear()
        conn.fd = fd
        conn.fd_source = source
        known = self._sockets.get((conn.pid, conn.conn))
        if known is not None and known[0] == fd and (known[1] or known[2]):
            conn.local, conn.peer = known[1] or conn.local, known[2] or conn.peer
            return
        local, peer = socket_addresses(conn.pid, fd)
        conn.local = local or conn.local
        conn.peer = self._connects.get((conn.pid, fd)) or peer or conn.peer

    def end(self, pid: int, conn_obj: int, ts: float, reason: str) -> Connection | None:
        self.settled.clear()
        self._sockets.pop((pid, conn_obj), None)
        conn = self._by_conn.pop((pid, conn_obj), None)
        if conn is not None:
            conn.ended_at, conn.end_reason = ts, reason
        return conn

    def end_fd(self, pid: int, fd: int, ts: float,
               modules: Sequence[str] | None = None) -> list[Connection]:  # fmt: skip
        """A socket closed: its connections (of ``modules``, when given) end and the
        fd may be reused."""
        self._connects.pop((pid, fd), None)
        recent = self._recent_connects.get(pid)
        if recent and fd in recent:
            recent.remove(fd)
        ended = [c for c in self._by_conn.values() if c.pid == pid and c.fd == fd
                 and (modules is None or c.module in modules)]  # fmt: skip
        return [c for c in (self.end(pid, c.conn, ts, "socket closed") for c in ended) if c]

    def end_pid(self, pid: int, ts: float, reason: str) -> list[Connection]:
        ended = [c for c in self._by_conn.values() if c.pid == pid]
        return [c for c in (self.end(pid, c.conn, ts, reason) for c in ended) if c]

    def end_all(self, ts: float, reason: str) -> list[Connection]:
        return [
            c
            for c in (self.end(c.pid, c.conn, ts, reason) for c in list(self._by_conn.values()))
            if c
        ]
