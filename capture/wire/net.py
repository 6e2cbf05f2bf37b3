"""IPv4/IPv6 + TCP headers: read from captured packets, written for synthetic ones.

Only what ecap needs: the 4-tuple, sequence numbers, flags and the payload of a
TCP segment that starts at its network header (the packet tap is SOCK_DGRAM), and
the inverse for ``pcapng --plaintext``.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
_TCP = struct.Struct("!HHIIBBHHH")
_IP4 = struct.Struct("!BBHHHBBH4s4s")
_IP6 = struct.Struct("!IHBB16s16s")
MAX_SEGMENT = 65535 - 60 - 20
"""Largest payload of one synthetic IPv4 segment (the 16-bit total length)."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    family: int
    """``socket.AF_INET`` or ``socket.AF_INET6``."""
    addr: bytes
    """4 or 16 bytes."""
    port: int

    def __str__(self) -> str:
        from ecap.capture.connections import format_endpoint

        return format_endpoint(self.family, self.addr, self.port) or "?"

    @classmethod
    def parse(cls, text: str | None) -> Endpoint | None:
        """``ip:port`` / ``[ip6]:port`` (as :mod:`ecap.capture.connections` writes them)."""
        if not text or ":" not in text:
            return None
        host, _, port = text.rpartition(":")
        try:
            ip = ipaddress.ip_address(host.strip("[]"))
            return cls(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, ip.packed, int(port))
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class Segment:
    src: Endpoint
    dst: Endpoint
    seq: int
    ack: int
    flags: int
    payload: bytes


def parse(packet: bytes) -> Segment | None:
    """A TCP segment from a packet that starts at its IP header; None otherwise."""
    if len(packet) < 20:
        return None
    version = packet[0] >> 4
    if version == 4:
        ihl = (packet[0] & 0xF) * 4
        total = struct.unpack_from("!H", packet, 2)[0]
        if packet[9] != 6 or ihl < 20 or len(packet) < ihl + 20:
            return None
        family, src, dst, at = socket.AF_INET, packet[12:16], packet[16:20], ihl
        end = min(len(packet), total) if total else len(packet)  # GSO: 0 means "all"
    elif version == 6:
        if len(packet) < 60 or packet[6] != 6:
            return None
        family, src, dst, at = socket.AF_INET6, packet[8:24], packet[24:40], 40
        plen = struct.unpack_from("!H", packet, 4)[0]
        end = min(len(packet), 40 + plen) if plen else len(packet)
    else:
        return None
    sport, dport, seq, ack, off, flags, _w, _c, _u = _TCP.unpack_from(packet, at)
    start = at + (off >> 4) * 4
    return Segment(Endpoint(family, src, sport), Endpoint(family, dst, dport), seq, ack, flags,
                   packet[start:end])  # fmt: skip


def sockinfo_key(local: Endpoint, remote: Endpoint) -> bytes:
    """The kernel's flow key (struct ecap_sockinfo: family, lport, rport, pad, laddr,
    raddr; host byte order, addresses padded to 16 bytes)."""
    return struct.pack("<HHHH16s16s", local.family, local.port, remote.port, 0,
                       local.addr.ljust(16, b"\0"), remote.addr.ljust(16, b"\0"))  # fmt: skip


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def build(src: Endpoint, dst: Endpoint, seq: int, ack: int, flags: int, payload: bytes = b"",
          window: int = 65535) -> bytes:  # fmt: skip
    """One IP packet carrying one TCP segment, checksums right (Wireshark checks
    none by default, but a file ecap writes should be correct everywhere)."""
    tcp = _TCP.pack(src.port, dst.port, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags,
                    window, 0, 0) + payload  # fmt: skip
    if src.family == socket.AF_INET6:
        pseudo = src.addr + dst.addr + struct.pack("!I3xB", len(tcp), 6)
        tcp = tcp[:16] + struct.pack("!H", _checksum(pseudo + tcp)) + tcp[18:]
        return _IP6.pack(6 << 28, len(tcp), 6, 64, src.addr, dst.addr) + tcp
    pseudo = src.addr + dst.addr + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", _checksum(pseudo + tcp)) + tcp[18:]
    head = _IP4.pack(0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0, src.addr, dst.addr)
    return head[:10] + struct.pack("!H", _checksum(head)) + head[12:] + tcp
