"""``--format pcapng``: the connections as they crossed the interface, keys inside.

**Encrypted** (default): the packets of the authorized processes' TCP connections
from the packet tap (only theirs: the kernel filters by the flows it attributed
to them), each with a comment naming the process, module and connection, and a
Decryption Secrets Block with the proven keys written before the first packet
they decrypt (the verifier holds a connection's packets until its keys are
judged). ``tshark -r FILE`` / Wireshark open it decrypted, no key file needed.

**--plaintext**: no packets from the wire and no keys — the captured plaintext
as synthetic TCP/IP segments per connection, with the connection's real
addresses and ports and sequence numbers from the stream offsets (a lost call is
a gap in the sequence, as it would be on the wire). Works for every module
that produces connections, also where keys are out of reach (NSS).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import IO, Any

from ecap.capture.events import (
    CONNECTION,
    DATA,
    HANDSHAKE,
    KEY,
    PACKET,
    ConnectionEndEvent,
    DataEvent,
    Event,
    PacketEvent,
)
from ecap.capture.sinks._pcapng import PcapngFile
from ecap.capture.sinks.interface import Sink, SinkOptions
from ecap.capture.sinks.keylog import key_line
from ecap.capture.wire import net
from ecap.text import printable


def _session_comment(info: dict[str, Any], what: str) -> str:
    grant = info.get("grant") or {}
    return (
        f"ecap-audit session {info['session_id']}: {what}; module {info['module']}; pids "
        f"{','.join(str(p) for p in info.get('pids', []))}; operator {grant.get('operator')}; "
        f"token {grant.get('jti')}"
    )


def packet_comment(pid: int | None, comm: str, module: str, connection_id: int | None) -> str:
    who = f"pid {pid if pid is not None else '?'} ({printable(comm)}) {module}"
    return who + (f" connection {connection_id}" if connection_id is not None else "")


class WirePcapngWriter:
    """Packets and proven keys, keys first."""

    def __init__(self, out: IO[bytes], _options: SinkOptions) -> None:
        self._out = out
        self._file: PcapngFile | None = None
        self._keys: list[bytes] = []
        self._interfaces: dict[int, int] = {}
        """ifindex → the file's interface id."""

    def header(self, info: dict[str, Any]) -> None:
        self._file = PcapngFile(self._out, _session_comment(info, "packets with proven TLS keys"))

    def emit(self, event: Event) -> None:
        assert self._file is not None
        if event.kind == KEY:
            if event.verified:  # type: ignore[union-attr]
                self._keys.append(key_line(event))  # type: ignore[arg-type]
            return
        if event.kind == PACKET:
            self._flush_keys()
            p: PacketEvent = event  # type: ignore[assignment]
            interface = self._interfaces.get(p.ifindex)
            if interface is None:  # named once: if_indextoname is a syscall
                from ecap.capture.wire.tap import interface_name

                interface = self._interfaces[p.ifindex] = self._file.interface(
                    interface_name(p.ifindex)
                )
            self._file.packet(interface, p.ts_ns, p.data,
                              p.wire_len, outbound=p.sent,
                              comment=packet_comment(p.pid, p.comm, p.module, p.connection_id))  # fmt: skip

    def _flush_keys(self) -> None:
        if self._keys and self._file is not None:
            self._file.secrets(b"".join(self._keys))
            self._keys.clear()

    def summary(self, summary: dict[str, Any]) -> None:
        self._flush_keys()

    def flush(self) -> None:
        self._out.flush()


@dataclass
class _Stream:
    """One synthetic connection: its two ends and the next sequence numbers."""

    local: net.Endpoint
    remote: net.Endpoint
    known: bool
    sent: int = 0
    """Bytes the authorized process's side sent (stream offset reached)."""
    received: int = 0


PLACEHOLDER_LOCAL = "192.0.2.1"
PLACEHOLDER_REMOTE = "198.51.100.1"
"""Documentation addresses (RFC 5737) for a connection whose socket was not seen."""


class PlaintextPcapngWriter:
    """Captured plaintext as TCP/IP segments, one stream per connection."""

    def __init__(self, out: IO[bytes], _options: SinkOptions) -> None:
        self._out = out
        self._file: PcapngFile | None = None
        self._iface = 0
        self._streams: dict[int, _Stream] = {}

    def header(self, info: dict[str, Any]) -> None:
        self._file = PcapngFile(self._out, _session_comment(
            info, "synthetic TCP/IP segments carrying the captured plaintext"))  # fmt: skip
        self._iface = self._file.interface("ecap-plaintext")

    def _stream(self, conn: Any) -> _Stream:
        s = self._streams.get(conn.id)
        if s is None:
            local, remote = net.Endpoint.parse(conn.local), net.Endpoint.parse(conn.peer)
            known = local is not None and remote is not None and local.family == remote.family
            if not known:
                local = net.Endpoint.parse(f"{PLACEHOLDER_LOCAL}:{40000 + conn.id % 20000}")
                remote = net.Endpoint.parse(f"{PLACEHOLDER_REMOTE}:443")
            assert local is not None and remote is not None
            s = self._streams[conn.id] = _Stream(local, remote, known)
        return s

    def emit(self, event: Event) -> None:
        if event.kind == DATA:
            self._data(event)  # type: ignore[arg-type]
        elif event.kind == CONNECTION:
            self._end(event)  # type: ignore[arg-type]

    def _data(self, event: DataEvent) -> None:
        assert self._file is not None
        conn, call = event.conn, event.call
        s = self._stream(conn)
        sent = call.direction == "write"
        comment = packet_comment(call.pid, call.comm, conn.module, conn.id) + (
            "" if s.known else "; addresses unknown (socket not seen): placeholders"
        )
        pieces = call.segments or [(0, len(call.data))]
        at = 0
        for offset, length in pieces:
            chunk = call.data[at : at + length]
            at += length
            position = call.stream_offset + offset
            for start in range(0, len(chunk), net.MAX_SEGMENT):
                part = chunk[start : start + net.MAX_SEGMENT]
                seq = 1 + position + start
                if sent:
                    src, dst, ack = s.local, s.remote, 1 + s.received
                else:
                    src, dst, ack = s.remote, s.local, 1 + s.sent
                packet = net.build(src, dst, seq, ack, net.ACK | net.PSH, part)
                self._file.packet(self._iface, int(call.ts * 1e9), packet, len(packet), outbound=sent,
                                  comment=comment)  # fmt: skip
        end = call.stream_offset + call.total
        if sent:
            s.sent = max(s.sent, end)
        else:
            s.received = max(s.received, end)

    def _end(self, event: ConnectionEndEvent) -> None:
        assert self._file is not None
        conn = event.conn
        s = self._streams.pop(conn.id, None)
        if s is None:
            return
        packet = net.build(s.local, s.remote, 1 + s.sent, 1 + s.received, net.FIN | net.ACK)
        comment = packet_comment(conn.pid, conn.comm, conn.module, conn.id) + (
            f"; connection ended: {conn.end_reason or 'unknown'}"
        )
        self._file.packet(self._iface, int((conn.ended_at or conn.started_at) * 1e9), packet, len(packet),
                          outbound=True, comment=comment)  # fmt: skip

    def summary(self, summary: dict[str, Any]) -> None:
        """Nothing to add: pcapng has no trailer."""

    def flush(self) -> None:
        self._out.flush()


PLAINTEXT = Sink(
    name="pcapng-plaintext",
    summary="the captured plaintext as synthetic TCP/IP packets per connection (any module, "
    "no keys)",
    token_mode="pcapng",
    consumes=frozenset({DATA, HANDSHAKE, CONNECTION}),
    open=PlaintextPcapngWriter,
    explicit=True,
    record_beside=True,
)

SINK = Sink(
    name="pcapng",
    summary="the connections' packets as they crossed the interface, with the proven TLS keys "
    "inside (opens decrypted in Wireshark); with --plaintext: the plaintext as "
    "synthetic packets",
    token_mode="pcapng",
    consumes=frozenset({KEY, PACKET}),
    open=WirePcapngWriter,
    explicit=True,
    record_beside=True,
    variants=(("plaintext", PLAINTEXT),),
)
