"""An AF_PACKET socket whose packets pass a BPF socket filter, read through a
TPACKET_V3 ring mapped into this process.

Why a ring and not ``recv``: the kernel copies each accepted packet into blocks of
a shared mapping, so a burst (a 1 MiB response on loopback is a handful of 64 KiB
segments in microseconds) waits there — sized by the caller, not by
``net.core.rmem_max`` — until the reader takes a whole block at once; a block that
is only partly filled is handed over after ``RETIRE_MS`` anyway. What the ring
could not take is counted by the kernel (``PACKET_STATISTICS``), never silent.

The socket is ``SOCK_DGRAM`` on every interface: a packet starts at its network
header whatever the link layer, and the filter program (which decides what enters
at all) sees the same bytes. It is bound only once the filter is attached, so not
one packet reaches the socket unfiltered.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import select
import socket
import struct
from dataclasses import dataclass

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
TPACKET_V3 = 2
SO_ATTACH_BPF = 50
TP_STATUS_USER = 1
BLOCK_SIZE = 1 << 20
"""Bytes per ring block: more than the largest packet (a 64 KiB GSO segment)."""
RETIRE_MS = 10
"""A block that is not full is handed to the reader after this long."""
PACKET_OUTGOING = 4

_REQ3 = struct.Struct("7I")
_BLOCK = struct.Struct("<8xIII")  # block_status, num_pkts, offset_to_first_pkt
_PKT = struct.Struct("<IIIIIIHH")  # next_offset, sec, nsec, snaplen, len, status, mac, net
_SLL = struct.Struct("<HHiHBB")  # family, protocol (BE), ifindex, hatype, pkttype, halen
_SLL_AT = 48  # TPACKET_ALIGN(sizeof(struct tpacket3_hdr))
_STATS = struct.Struct("III")  # tpacket_stats_v3: packets, drops, freeze_q_cnt


@dataclass(slots=True)
class Packet:
    """One packet as the interface saw it (from the network header on)."""

    ts_ns: int
    """Wall-clock time the kernel took it (nanoseconds since the epoch: a float of
    seconds would round it to a quarter microsecond)."""
    ifindex: int
    outgoing: bool
    """The host sent it (``PACKET_OUTGOING``); otherwise it arrived."""
    data: bytes
    wire_len: int
    """Its length on the wire (``data`` is shorter only if the ring truncated it)."""


class _SockaddrLL(ctypes.Structure):
    _fields_ = [
        ("family", ctypes.c_ushort),
        ("protocol", ctypes.c_ushort),
        ("ifindex", ctypes.c_int),
        ("hatype", ctypes.c_ushort),
        ("pkttype", ctypes.c_ubyte),
        ("halen", ctypes.c_ubyte),
        ("addr", ctypes.c_ubyte * 8),
    ]


def _bind_all(sock: socket.socket) -> None:
    """bind(2) to every interface (ifindex 0), which Python's AF_PACKET address
    tuple cannot express (it wants an interface name)."""
    libc = ctypes.CDLL(None, use_errno=True)
    addr = _SockaddrLL(socket.AF_PACKET, socket.htons(ETH_P_ALL), 0)
    if libc.bind(sock.fileno(), ctypes.byref(addr), ctypes.sizeof(addr)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class PacketRing:
    """The filtered packet socket and its ring (close it to stop)."""

    def __init__(self, filter_fd: int, ring_bytes: int) -> None:
        blocks = max(2, ring_bytes // BLOCK_SIZE)
        # Protocol 0: the socket takes no packet before bind, when the filter is set.
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)
        try:
            self._sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            frame = 2048
            req = _REQ3.pack(BLOCK_SIZE, blocks, frame, BLOCK_SIZE // frame * blocks,
                             RETIRE_MS, 0, 0)  # fmt: skip
            self._sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
            self._sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_BPF, filter_fd)
            self._map = mmap.mmap(self._sock.fileno(), BLOCK_SIZE * blocks, mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE)  # fmt: skip
            _bind_all(self._sock)
        except BaseException:
            self._sock.close()
            raise
        self._blocks = blocks
        self._next = 0
        self._status = [
            ctypes.c_uint32.from_buffer(self._map, i * BLOCK_SIZE + 8) for i in range(blocks)
        ]
        self._poll = select.poll()
        self._poll.register(self._sock.fileno(), select.POLLIN | select.POLLERR)
        self.received = 0
        self.dropped = 0

    def fileno(self) -> int:
        return self._sock.fileno()

    def wait(self, timeout_ms: int) -> None:
        self._poll.poll(timeout_ms)

    def drain(self, max_blocks: int | None = None) -> list[Packet]:
        """Every packet of the blocks the kernel handed over, in order."""
        out: list[Packet] = []
        view = self._map
        taken = 0
        while self._status[self._next].value & TP_STATUS_USER:
            base = self._next * BLOCK_SIZE
            _status, count, first = _BLOCK.unpack_from(view, base)
            at = base + first
            for _ in range(count):
                nxt, sec, nsec, snaplen, length, _st, mac, _net = _PKT.unpack_from(view, at)
                _fam, _proto, ifindex, _ha, pkttype, _hl = _SLL.unpack_from(view, at + _SLL_AT)
                out.append(Packet(sec * 1_000_000_000 + nsec, ifindex, pkttype == PACKET_OUTGOING,
                                  view[at + mac : at + mac + snaplen], length))  # fmt: skip
                at += nxt
            self._status[self._next].value = 0  # TP_STATUS_KERNEL: the block is theirs again
            self._next = (self._next + 1) % self._blocks
            taken += 1
            if max_blocks is not None and taken >= max_blocks:
                break
        self.received += len(out)
        return out

    def stats(self) -> tuple[int, int]:
        """(packets the filter accepted, packets the ring had no room for) so far."""
        raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS.size)
        _packets, drops, _freeze = _STATS.unpack(raw)
        self.dropped += drops  # the kernel resets its counters on every read
        return self.received, self.dropped

    def close(self) -> None:
        if self._sock.fileno() < 0:
            return
        self._poll.unregister(self._sock.fileno())
        del self._status
        self._map.close()
        self._sock.close()
