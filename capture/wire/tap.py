"""Between the pipeline and a keylog or pcapng sink: packet tap, verifier, record.

A :class:`WireTap` is the writer the pipeline writes to for those outputs. It
passes the sink what it consumes; with a packet ring (keylog, pcapng) it gives
every :class:`~ecap.capture.events.SecretEvent` to the :class:`KeyVerifier` (a
secret never reaches a sink unproven) and feeds it the ring's packets; and it
keeps the session record beside the output (``OUTPUT.session.jsonl``: header,
handshakes, connections, each key's verdict without the secret, summary — what
``ecap-audit report`` reads; no plaintext, no secret).
"""

from __future__ import annotations

import socket
import time
from typing import IO, Any

from ecap import procfs
from ecap.capture.connections import Connection
from ecap.capture.events import DATA, HANDSHAKE, KEY, PACKET, SECRET, Event
from ecap.capture.sinks.interface import SinkWriter
from ecap.capture.wire.net import Endpoint, sockinfo_key
from ecap.capture.wire.verifier import KeyVerifier
from ecap.ebpf.packet_ring import PacketRing

SESSION_SUFFIX = ".session.jsonl"
FINISH_GRACE_SECONDS = 1.0
QUIET_MS = 100
"""At the end, the packet ring is read until it stays empty this long (at most
``FINISH_GRACE_SECONDS``)."""
"""The session record of a keylog/pcapng capture is written beside its output."""


class WireTap:
    """The writer the pipeline sees in keylog/pcapng sessions."""

    def __init__(self, sink: SinkWriter, consumes: frozenset[str], ring: PacketRing | None,
                 flow_owner: Any, *, module: str, record: SinkWriter | None,
                 exporter: bool = True) -> None:  # fmt: skip
        """``ring``: the packet tap (None: no keys, no packets — pcapng --plaintext);
        ``flow_owner(key bytes) → pid | None`` asks the kernel whose flow it is;
        ``record``: the session record's writer (None: none is kept); ``exporter``:
        the module's library derives an EXPORTER_SECRET (SecretSource)."""
        self._sink = sink
        self._consumes = consumes
        self._ring = ring
        self._flow_owner = flow_owner
        self._record = record
        self._by_ends: dict[tuple[int, str, str], Connection] = {}
        self.verifier = KeyVerifier(self._out, module=module, owner=self._owner,
                                    comm=self._comm, connection_for=self._connection_for,
                                    packets=PACKET in consumes, exporter=exporter)  # fmt: skip

    # -- SinkWriter ---------------------------------------------------------------
    def header(self, info: dict[str, Any]) -> None:
        self._sink.header(info)
        if self._record is not None:
            self._record.header(info)
            self._record.flush()

    def emit(self, event: Event) -> None:
        kind = event.kind
        if kind == SECRET:
            self.verifier.secret(event)  # type: ignore[arg-type]
            return
        if kind in (DATA, HANDSHAKE):
            conn = event.conn  # type: ignore[union-attr]
            if conn.local and conn.peer:
                self._by_ends[(conn.pid, conn.local, conn.peer)] = conn
            if kind == DATA:  # plaintext never goes into the session record
                if DATA in self._consumes:
                    self._sink.emit(event)
                return
        if self._record is not None and kind != PACKET:
            self._record.emit(event)
        if kind in self._consumes:
            self._sink.emit(event)

    def _out(self, event: Event) -> None:
        """What the verifier decided, in the order it decided it."""
        if event.kind == KEY and self._record is not None:
            self._record.emit(event)
            self._record.flush()
        if event.kind in self._consumes:
            self._sink.emit(event)

    def summary(self, summary: dict[str, Any]) -> None:
        self._sink.summary(summary)
        if self._record is not None:
            self._record.summary(summary)

    def flush(self) -> None:
        self._sink.flush()
        if self._record is not None:
            self._record.flush()

    # -- the packet side ----------------------------------------------------------
    def poll(self) -> int:
        """Judge the packets the ring holds; returns how many."""
        if self._ring is None:
            return 0
        packets = self._ring.drain()
        for pkt in packets:
            self.verifier.packet(pkt)
        self.verifier.tick()
        return len(packets)

    def finish(self) -> None:
        """Read the ring dry — waiting a moment for a connection's last packets (the
        FIN a process's exit sends, its peer's answer) — then judge what is left."""
        deadline = time.monotonic() + FINISH_GRACE_SECONDS
        while self._ring is not None and time.monotonic() < deadline:
            if not self.poll():
                self._ring.wait(QUIET_MS)
                if not self.poll():
                    break
        self.verifier.finish()
        self.verifier.forget_settled()

    def close(self) -> None:
        if self._ring is not None:
            self._ring.close()

    def counts(self) -> dict[str, Any]:
        if self._ring is None:
            return {}
        _received, dropped = self._ring.stats()
        out = self.verifier.counts.as_summary()
        out["packets_dropped"] = dropped
        return out

    # -- attribution --------------------------------------------------------------
    def _owner(self, local: Endpoint, remote: Endpoint) -> int | None:
        try:
            return self._flow_owner(sockinfo_key(local, remote))
        except OSError:  # the flow table is gone (the session is ending): not ours
            return None

    def _connection_for(
        self, pid: int | None, local: Endpoint, remote: Endpoint
    ) -> Connection | None:
        return self._by_ends.get((pid or 0, str(local), str(remote)))

    @staticmethod
    def _comm(pid: int | None, conn: Connection | None) -> str:
        if conn is not None:
            return conn.comm
        if pid is None:
            return "?"
        try:
            return procfs.comm(pid)
        except procfs.ProcessGone:
            return "?"


def interface_name(ifindex: int) -> str:
    try:
        return socket.if_indextoname(ifindex)
    except OSError:
        return f"if{ifindex}"


def open_session_record(out: IO[bytes]) -> SinkWriter:
    from ecap.capture.sinks.jsonl import JsonlWriter

    return JsonlWriter(out)
