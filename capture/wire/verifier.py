"""Secrets proven against the wire: the client random must be the one in a
ClientHello of an authorized connection, and the secret must decrypt a record of
that connection. Anything else is counted, reported and never written.

Secrets (from the module's probes) and packets (from the packet tap) arrive on
two paths and in either order; each is kept until the other side can judge it:

- a secret waits for the ClientHello whose random it carries (``ORPHAN_SECONDS``:
  then "no ClientHello with this client random"), then for a record it decrypts
  (until its connection settles: then "no record of its connection decrypted");
- a connection's packets are held (``hold``) until its secrets are judged — so a
  writer that embeds keys (pcapng) puts them before the first packet they
  decrypt — and released when every secret its TLS version derives was judged,
  when it shows it is not TLS or that its handshake came before the capture saw
  it (nothing there can be proven), or ``HOLD_SECONDS`` after its ClientHello.

TLS 1.3: each traffic secret must decrypt a record of its direction as sequence
number 0 under it (the first record it protects). EXPORTER_SECRET protects no
record: it is written when the client random matched and a traffic secret of the
same connection, read the same way at the same time, decrypted its record.
TLS 1.2: the master secret (``CLIENT_RANDOM``) expands, with both randoms, into
keys that must decrypt the first record after a ChangeCipherSpec (the Finished).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ecap.capture.connections import Connection
from ecap.capture.events import KeyEvent, PacketEvent, SecretEvent
from ecap.capture.wire import keys as keysched
from ecap.capture.wire.net import Endpoint, parse
from ecap.capture.wire.tls import TLS13, TlsConversation
from ecap.ebpf.packet_ring import Packet

HOLD_SECONDS = 2.0
ORPHAN_SECONDS = 2.0
MAX_HELD_BYTES = 64 << 20
"""Packets held for all connections at most; past it the oldest connection is
settled early (its unproven secrets counted as such)."""

TLS13_TRAFFIC = {
    "CLIENT_HANDSHAKE_TRAFFIC_SECRET": True,
    "SERVER_HANDSHAKE_TRAFFIC_SECRET": False,
    "CLIENT_TRAFFIC_SECRET_0": True,
    "SERVER_TRAFFIC_SECRET_0": False,
}
"""TLS 1.3 traffic secrets → whether the client's records are the ones they protect."""
EXPORTER = ("EXPORTER_SECRET",)
TLS12 = "CLIENT_RANDOM"
LABELS = (*TLS13_TRAFFIC, *EXPORTER, TLS12)
"""The NSS key-log labels ecap writes (what a full TLS 1.2 / 1.3 handshake derives)."""


@dataclass
class _Secret:
    event: SecretEvent
    arrived: float
    done: bool = False


@dataclass
class Flow:
    """One TCP connection of an authorized process, as the packets show it."""

    id: int
    local: Endpoint
    """The authorized process's end."""
    remote: Endpoint
    pid: int | None
    tls: TlsConversation = field(default_factory=TlsConversation)
    conn: Connection | None = None
    held: list[tuple[Packet, bool]] | None = field(default_factory=list)
    """Packets not yet released (None once the flow settled)."""
    held_bytes: int = 0
    created: float = 0.0
    hello_at: float | None = None
    secrets: list[_Secret] = field(default_factory=list)
    judged: set[str] = field(default_factory=set)
    verified: set[str] = field(default_factory=set)
    comm: str | None = None
    """The process name its packets carry, read once (not once per packet)."""

    @property
    def name(self) -> str:
        return f"{self.local} -> {self.remote}"

    @property
    def judged_all(self) -> bool:
        """Settled, and every secret it got was judged: its TLS need not be read on."""
        return self.held is None and all(s.done for s in self.secrets)


@dataclass
class KeyCounts:
    verified: int = 0
    not_verified: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    packets: int = 0
    packet_bytes: int = 0

    def as_summary(self) -> dict[str, Any]:
        return {
            "keys": {
                "verified": self.verified,
                "not_verified": self.not_verified,
                "not_verified_reasons": dict(sorted(self.reasons.items())),
            },
            "packets": self.packets,
            "packet_bytes": self.packet_bytes,
        }


class KeyVerifier:
    """Judges secrets against packets; hands :class:`KeyEvent` and (when ``hold``)
    :class:`PacketEvent` to ``emit`` in an order a key-embedding writer can use."""

    def __init__(self, emit: Callable[[Any], None], *, module: str,
                 owner: Callable[[Endpoint, Endpoint], int | None],
                 comm: Callable[[int | None, Connection | None], str],
                 connection_for: Callable[[int | None, Endpoint, Endpoint], Connection | None],
                 packets: bool, exporter: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        """``owner(local, remote)``: the pid the kernel attributed a flow to (None: not
        ours); ``connection_for``: ecap's connection for a flow's ends; ``packets``:
        pass the packets on (pcapng) rather than only judge keys with them;
        ``exporter``: the library hands over an EXPORTER_SECRET in TLS 1.3 (Go does
        not: without this, each of its connections would wait ``HOLD_SECONDS`` for
        one)."""
        self._emit = emit
        self._module = module
        self._owner = owner
        self._comm = comm
        self._connection_for = connection_for
        self._packets = packets
        self._tls13_labels = (*TLS13_TRAFFIC, *EXPORTER) if exporter else tuple(TLS13_TRAFFIC)
        self._now = clock
        self.flows: dict[tuple[Endpoint, Endpoint], Flow] = {}
        self._by_random: dict[bytes, Flow] = {}
        self._orphans: list[_Secret] = []
        self._next_id = 1
        self._held_total = 0
        self.counts = KeyCounts()

    # -- packets ----------------------------------------------------------------
    def packet(self, pkt: Packet) -> None:
        seg = parse(pkt.data)
        if seg is None:
            return
        flow = self.flows.get((seg.src, seg.dst)) or self.flows.get((seg.dst, seg.src))
        if flow is None:
            flow = self._new_flow(seg.src, seg.dst)
            if flow is None:
                return
        sent = seg.src == flow.local
        self.counts.packets += 1
        self.counts.packet_bytes += pkt.wire_len
        had_hello = flow.tls.client_random is not None
        records = [] if flow.judged_all else flow.tls.add(seg)
        if flow.held is not None:
            if self._packets:
                flow.held.append((pkt, sent))
                flow.held_bytes += len(pkt.data)
                self._held_total += len(pkt.data)
        else:
            self._release(flow, [(pkt, sent)])
        if not had_hello and flow.tls.client_random is not None:
            flow.hello_at = self._now()
            self._by_random[flow.tls.client_random] = flow
            self._adopt_orphans(flow)
        if records or flow.secrets:
            self._judge(flow)
        self._maybe_settle(flow)
        if self._held_total > MAX_HELD_BYTES:
            oldest = min(
                (f for f in self.flows.values() if f.held), key=lambda f: f.id, default=None
            )
            if oldest is not None:
                self._settle(oldest)

    def _new_flow(self, a: Endpoint, b: Endpoint) -> Flow | None:
        for local, remote in ((a, b), (b, a)):
            pid = self._owner(local, remote)
            if pid is not None:
                flow = Flow(self._next_id, local, remote, pid, created=self._now())
                self._next_id += 1
                self.flows[(local, remote)] = flow
                return flow
        return None

    # -- secrets ----------------------------------------------------------------
    def secret(self, event: SecretEvent) -> None:
        item = _Secret(event, self._now())
        if event.label not in LABELS:
            self._fail(
                item, None, f"{event.label or 'an unnamed secret'} is not a secret ecap writes"
            )
            return
        if not event.random_read:
            self._fail(item, None, "the client random could not be read from the library")
            return
        if not event.secret:
            self._fail(item, None, f"the library passed a {event.secret_len}-byte secret")
            return
        flow = self._by_random.get(event.client_random)
        if flow is None:
            self._orphans.append(item)
            return
        self._attach(flow, item)
        self._judge(flow)
        self._maybe_settle(flow)

    def _adopt_orphans(self, flow: Flow) -> None:
        mine = [s for s in self._orphans if s.event.client_random == flow.tls.client_random]
        for item in mine:
            self._orphans.remove(item)
            self._attach(flow, item)

    def _attach(self, flow: Flow, item: _Secret) -> None:
        if flow.conn is None:
            flow.conn = item.event.conn
        if item.event.label in flow.judged:
            item.done = True  # the library logged it twice: judged once
            return
        flow.secrets.append(item)

    def _judge(self, flow: Flow) -> None:
        tls = flow.tls
        if tls.version is None or tls.suite is None:
            return  # no ServerHello yet
        suite = keysched.SUITES.get(tls.suite)
        for item in flow.secrets:
            if item.done or item.event.label in EXPORTER:
                continue
            label = item.event.label
            if suite is None:
                self._fail(
                    item, flow, f"cipher suite 0x{tls.suite:04x} is not one ecap can verify with"
                )
                continue
            if (label == TLS12) == (tls.version == TLS13):
                version = "1.3" if tls.version == TLS13 else "1.2"
                self._fail(item, flow, f"{label} does not belong to the connection's TLS {version}")
                continue
            secret = item.event.secret
            if len(secret) != (48 if label == TLS12 else suite.hash.digest_size):
                self._fail(item, flow, f"a {len(secret)}-byte secret does not fit {suite.name}")
                continue
            proof = self._decrypts(flow, suite, label, secret)
            if proof:
                self._verify(item, flow, proof)
        if flow.verified:
            for item in flow.secrets:
                if not item.done and item.event.label in EXPORTER:
                    self._verify(item, flow, "it protects no record; its connection's traffic "
                                 "secrets decrypted their records")  # fmt: skip

    def _decrypts(self, flow: Flow, suite: keysched.Suite, label: str, secret: bytes) -> str | None:
        tls = flow.tls
        if label == TLS12:
            assert tls.client_random and tls.server_random
            k = keysched.tls12_keys(suite, secret, tls.client_random, tls.server_random)
            for client_side, key, iv in ((True, k.client_key, k.client_iv),
                                         (False, k.server_key, k.server_iv)):  # fmt: skip
                d = tls.sender_of(client_side)
                first = [r for r in (d.protected if d else []) if r.seq == 0][:1]
                if first and keysched.tls12_decrypts(suite, key, iv, first[0]):
                    side = "client" if client_side else "server"
                    return f"decrypted the {side}'s first protected record ({suite.name})"
            return None
        d = tls.sender_of(TLS13_TRAFFIC[label])
        key, iv = keysched.tls13_traffic_keys(suite, secret)
        for record in d.protected if d else []:
            if keysched.tls13_decrypts(suite, key, iv, record):
                return f"decrypted application_data record #{record.seq} of its direction ({suite.name})"
        return None

    # -- outcomes ---------------------------------------------------------------
    def _verify(self, item: _Secret, flow: Flow, proof: str) -> None:
        item.done = True
        label = item.event.label
        flow.judged.add(label)
        flow.verified.add(label)
        self.counts.verified += 1
        ev = item.event
        self._emit(KeyEvent(ev.ts, ev.conn.pid, ev.conn, label, ev.client_random, ev.secret, True,
                            f"client random matched the ClientHello; {proof}", flow.name))  # fmt: skip

    def _fail(self, item: _Secret, flow: Flow | None, reason: str) -> None:
        item.done = True
        if flow is not None:
            flow.judged.add(item.event.label)
        self.counts.not_verified += 1
        self.counts.reasons[reason] = self.counts.reasons.get(reason, 0) + 1
        ev = item.event
        self._emit(KeyEvent(ev.ts, ev.conn.pid, ev.conn, ev.label, ev.client_random, b"", False,
                            reason, flow.name if flow else None))  # fmt: skip

    # -- settling ---------------------------------------------------------------
    def _expected(self, flow: Flow) -> tuple[str, ...] | None:
        tls = flow.tls
        if tls.version is None:
            return None
        return self._tls13_labels if tls.version == TLS13 else (TLS12,)

    def _maybe_settle(self, flow: Flow) -> None:
        if flow.held is None:
            return
        if flow.tls.not_tls or flow.tls.joined_late:  # nothing to prove: no waiting
            self._settle(flow)
            return
        expected = self._expected(flow)
        if expected is not None and all(label in flow.judged for label in expected):
            self._settle(flow)

    def _settle(self, flow: Flow) -> None:
        """No more waiting: what was not proven fails, the held packets go out."""
        for item in flow.secrets:
            if not item.done:
                why = ("its connection's traffic secrets did not decrypt"
                       if item.event.label in EXPORTER
                       else "no record of its connection decrypted with it")  # fmt: skip
                self._fail(item, flow, why)
        held, flow.held = flow.held or [], None
        self._held_total -= flow.held_bytes
        flow.held_bytes = 0
        self._release(flow, held)

    def _release(self, flow: Flow, packets: list[tuple[Packet, bool]]) -> None:
        if not self._packets or not packets:
            return
        if flow.conn is None:
            flow.conn = self._connection_for(flow.pid, flow.local, flow.remote)
        if flow.conn is None and flow.comm is None:
            flow.comm = self._comm(flow.pid, None)
        comm = flow.conn.comm if flow.conn is not None else flow.comm
        cid = flow.conn.id if flow.conn is not None else None
        for pkt, sent in packets:
            self._emit(PacketEvent(pkt.ts_ns, pkt.data, pkt.wire_len, pkt.ifindex, sent, flow.pid,
                                   comm, self._module, cid, flow.id))  # fmt: skip

    def tick(self) -> None:
        """Time-outs: orphan secrets fail, connections held too long settle; what
        judged connections kept for the proof is let go."""
        now = self._now()
        for item in [s for s in self._orphans if now - s.arrived >= ORPHAN_SECONDS]:
            self._orphans.remove(item)
            self._fail(item, None, "no ClientHello on the wire carries its client random")
        for flow in self.flows.values():
            if flow.held is not None:
                if now - (flow.hello_at or flow.created) >= HOLD_SECONDS:
                    self._settle(flow)
                continue
            for item in flow.secrets:  # came after its connection settled
                if not item.done and now - item.arrived >= HOLD_SECONDS:
                    self._fail(item, flow, "no record of its connection decrypted with it")
        self.forget_settled()

    def finish(self) -> None:
        """The capture stops: everything pending is judged with what there is."""
        for item in self._orphans:
            self._fail(item, None, "no ClientHello on the wire carries its client random")
        self._orphans.clear()
        for flow in self.flows.values():
            self._settle(flow)  # a settled one only fails its late secrets

    def forget_settled(self) -> None:
        """Drop what judged connections kept for verification (long sessions keep
        only each connection's ends and owner, for the packets still to come)."""
        for flow in self.flows.values():
            if flow.judged_all and flow.tls.directions:
                flow.tls.directions.clear()
