"""What an output sink is: a name, the token mode it needs, the events it takes.

One file per sink in this package, each defining ``SINK``. The ``--format``
vocabulary, the token's ``modes`` vocabulary and the module×format check all
come from these declarations (:mod:`ecap.capture.sinks`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, Protocol

from ecap.capture.events import Event


@dataclass(frozen=True)
class SinkOptions:
    """How the operator asked for the output to look, and what a sink that keeps
    records undecoded must write down to decode them later."""

    hex_mode: bool = False
    colour: bool = False
    abi: Any = None
    """The records' :class:`ecap.capture.abi.Abi` (raw mode)."""
    clock_offset: float = 0.0
    """Wall clock minus CLOCK_MONOTONIC at the capture (raw mode)."""


class SinkWriter(Protocol):
    """A sink's writer for one session.

    A writer may also define ``whole_call(conn, message_id, direction, ts, pid, tid,
    uid, comm, stream_offset, data)``: the pipeline then calls it, instead of
    ``emit(DataEvent(...))``, for each call it captured whole in one record (the
    whole call, nothing missing; nearly every call), so that no ``Call`` and no
    ``DataEvent`` are made for them. It must write what ``emit`` would have.
    ``data`` is a bytes-like object — live, a view of the ring buffer — valid only
    during the call: copy what must be kept.
    """

    def header(self, info: dict[str, Any]) -> None: ...
    def emit(self, event: Event) -> None: ...
    def records(self, batch: list[bytes]) -> None:
        """Only for sinks that consume ``RECORDS``: the kernel's records, verbatim."""

    def summary(self, summary: dict[str, Any]) -> None: ...
    def flush(self) -> None: ...


@dataclass(frozen=True)
class Sink:
    """One output mode."""

    name: str
    """``--format`` value."""
    summary: str
    """One line for ``--help``."""
    token_mode: str
    """Output mode the token must grant (``authorize --mode``)."""
    consumes: frozenset[str]
    """Event kinds it writes (:mod:`ecap.capture.events`); a module emitting none of
    them cannot feed it, and the pair is refused before the gate."""
    open: Callable[[IO[bytes], SinkOptions], SinkWriter]
    explicit: bool = False
    """Its token mode must be asked for by name (``request --mode``): a request
    without ``--mode`` does not include it. Keys decrypt a connection for anyone
    who recorded it, so keylog and pcapng are never granted by default."""
    record_beside: bool = False
    """Its file is not a session record (keys, packets): the capture keeps one beside
    it (``OUTPUT.session.jsonl``, no plaintext, no secret) for ``ecap-audit report``."""
    variants: tuple[tuple[str, Sink], ...] = ()
    """(flag, sink) pairs: ``--format NAME --FLAG`` writes with that other sink
    (``pcapng --plaintext``). A variant is a whole sink: its own events, its own
    token mode."""

    @property
    def needs_keys(self) -> bool:
        """It writes proven TLS keys or wire packets: the capture must run the packet
        tap and the key verifier, and the module must have a secrets source."""
        from ecap.capture.events import KEY, PACKET

        return bool(self.consumes & {KEY, PACKET})
