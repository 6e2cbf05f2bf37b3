"""A TCP connection's two byte streams, read as TLS as far as keys need it.

From the packets: each direction's bytes in sequence order (retransmissions and
overlaps taken once, a gap stops that direction), cut into TLS records; the
ClientHello's random (which side is the client), the ServerHello's random, version
and cipher suite; and the first protected records of each direction, numbered the
way the record layer numbers them — every record of type application_data in TLS
1.3 (the trial decryption finds which key's sequence 0 each is), the records after
ChangeCipherSpec in TLS 1.2. That is all a secret needs to be proven.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ecap.capture.wire.net import Endpoint, Segment

MAX_PROTECTED = 48
"""Protected records kept per direction: enough to reach the first application
record behind any handshake, bounded for long connections."""
MAX_STREAM = 1 << 20
"""Bytes of a direction read at most (the handshake and first records are early)."""
MAX_OUT_OF_ORDER = 256
HANDSHAKE, CHANGE_CIPHER_SPEC, APPLICATION_DATA = 22, 20, 23
TLS13 = 0x0304
HRR_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")
"""A ServerHello with this random is a HelloRetryRequest (RFC 8446 4.1.3)."""


@dataclass(slots=True)
class Record:
    type: int
    header: bytes
    """The 5-byte record header (the TLS 1.3 additional data)."""
    body: bytes
    seq: int
    """TLS 1.2: its sequence number under the keys in force (0 = first after CCS);
    TLS 1.3: its ordinal among this direction's application_data records."""


@dataclass
class Direction:
    """One direction of the connection (bytes sent by ``sender``)."""

    sender: Endpoint
    next_seq: int | None = None
    pending: dict[int, bytes] = field(default_factory=dict)
    buffer: bytearray = field(default_factory=bytearray)
    read: int = 0
    broken: bool = False
    """Not TLS, or a gap: nothing more is read from it."""
    handshake: bytearray = field(default_factory=bytearray)
    """Plaintext handshake messages (ClientHello, ServerHello) not yet parsed."""
    after_ccs: int | None = None
    """TLS 1.2: records seen since this direction's ChangeCipherSpec."""
    app_records: int = 0
    protected: list[Record] = field(default_factory=list)


@dataclass
class TlsConversation:
    """What the packets of one TCP connection say about its TLS."""

    directions: dict[Endpoint, Direction] = field(default_factory=dict)
    client: Endpoint | None = None
    client_random: bytes | None = None
    server_random: bytes | None = None
    version: int | None = None
    suite: int | None = None
    not_tls: bool = False
    joined_late: bool = False
    """A record other than a handshake came before any ClientHello: the handshake
    happened before the packets were seen, so no secret of it can be proven here."""

    def add(self, seg: Segment) -> list[Record]:
        """Feed one segment; returns the protected records it completed."""
        d = self.directions.get(seg.src)
        if d is None:
            d = self.directions[seg.src] = Direction(seg.src)
        if d.broken:
            return []
        seq = seg.seq
        if seg.flags & 0x02:  # SYN: data starts one after
            d.next_seq = (seq + 1) & 0xFFFFFFFF
            seq = d.next_seq
        if not seg.payload:
            return []
        if d.next_seq is None:
            d.next_seq = seq
        return self._take(d, seq, seg.payload)

    def _take(self, d: Direction, seq: int, data: bytes) -> list[Record]:
        delta = (seq - d.next_seq + (1 << 31)) % (1 << 32) - (1 << 31)  # wrap-aware
        if delta < 0:
            data, delta = data[-delta:], 0  # the part already read is a retransmission
            if not data:
                return []
        if delta > 0:
            if len(d.pending) < MAX_OUT_OF_ORDER:
                d.pending[seq] = data
            else:
                d.broken = True
            return []
        out = self._stream(d, data)
        while d.next_seq in d.pending and not d.broken:
            out += self._stream(d, d.pending.pop(d.next_seq))
        return out

    def _stream(self, d: Direction, data: bytes) -> list[Record]:
        d.next_seq = (d.next_seq + len(data)) & 0xFFFFFFFF
        if d.read >= MAX_STREAM:
            return []
        d.read += len(data)
        d.buffer += data
        out: list[Record] = []
        while len(d.buffer) >= 5:
            rtype, _version, length = struct.unpack_from("!BHH", d.buffer)
            if rtype not in (20, 21, 22, 23, 24) or length > (1 << 14) + 2048:
                d.broken = True
                if self.client is None:
                    self.not_tls = True
                break
            if len(d.buffer) < 5 + length:
                break
            header, body = bytes(d.buffer[:5]), bytes(d.buffer[5 : 5 + length])
            del d.buffer[: 5 + length]
            record = self._record(d, rtype, header, body)
            if record is not None:
                out.append(record)
        return out

    def _record(self, d: Direction, rtype: int, header: bytes, body: bytes) -> Record | None:
        if self.client is None and rtype != HANDSHAKE:
            self.joined_late = True  # a TLS stream starts with the ClientHello
        tls13 = self.version == TLS13
        if rtype == CHANGE_CIPHER_SPEC:
            if not tls13:
                d.after_ccs = 0
            return None
        if tls13 and rtype == APPLICATION_DATA:
            return self._protect(d, Record(rtype, header, body, d.app_records), count=True)
        if d.after_ccs is not None:  # TLS 1.2: everything after CCS is protected
            record = Record(rtype, header, body, d.after_ccs)
            d.after_ccs += 1
            return self._protect(d, record)
        if rtype == HANDSHAKE:
            d.handshake += body
            self._hellos(d)
        return None

    def _protect(self, d: Direction, record: Record, count: bool = False) -> Record | None:
        if count:
            d.app_records += 1
        if len(d.protected) >= MAX_PROTECTED:
            return None
        d.protected.append(record)
        return record

    def _hellos(self, d: Direction) -> None:
        while len(d.handshake) >= 4:
            kind = d.handshake[0]
            length = int.from_bytes(d.handshake[1:4], "big")
            if len(d.handshake) < 4 + length:
                return
            msg = bytes(d.handshake[4 : 4 + length])
            del d.handshake[: 4 + length]
            if kind == 1 and len(msg) >= 34 and self.client in (None, d.sender):
                self.client = d.sender
                self.client_random = msg[2:34]
            elif kind == 2 and len(msg) >= 38 and self.client not in (None, d.sender):
                self._server_hello(msg)

    def _server_hello(self, msg: bytes) -> None:
        random = msg[2:34]
        if random == HRR_RANDOM:
            return  # a HelloRetryRequest: the real ServerHello follows
        version = struct.unpack_from("!H", msg)[0]
        sid = msg[34]
        at = 35 + sid
        if len(msg) < at + 3:
            return
        suite = struct.unpack_from("!H", msg, at)[0]
        at += 3
        if len(msg) >= at + 2:
            end = at + 2 + struct.unpack_from("!H", msg, at)[0]
            at += 2
            while at + 4 <= min(end, len(msg)):
                ext, size = struct.unpack_from("!HH", msg, at)
                if ext == 0x002B and size == 2:  # supported_versions: the chosen one
                    version = struct.unpack_from("!H", msg, at + 4)[0]
                at += 4 + size
        self.server_random, self.suite, self.version = random, suite, version

    def sender_of(self, client_side: bool) -> Direction | None:
        """The client's (or the server's) direction, once the ClientHello was seen."""
        if self.client is None:
            return None
        for sender, d in self.directions.items():
            if (sender == self.client) == client_side:
                return d
        return None
