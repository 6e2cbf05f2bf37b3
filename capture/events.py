"""What the engine hands to output sinks: one small type per event kind.

A sink declares the kinds it consumes (``Sink.consumes``) and a module the kinds
it emits (``CaptureModule.emits``); the engine routes each event by its
``kind``. A new kind (a shell command, a SQL statement, a TLS secret) is a new
type here and a name in those two sets — no switch to edit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ecap.capture.connections import Connection
from ecap.capture.records import Call

DATA = "data"
HANDSHAKE = "handshake"
CONNECTION = "connection"
RECORDS = "records"
"""Not an event: a sink that consumes RECORDS gets the kernel's records verbatim,
in batches (``--format raw``), and the engine decodes nothing for it."""


@dataclass(slots=True)
class DataEvent:
    """Plaintext one call moved."""

    kind: ClassVar[str] = DATA
    conn: Connection
    message_id: int
    call: Call


@dataclass(slots=True)
class HandshakeEvent:
    """The library completed a TLS handshake on a connection."""

    kind: ClassVar[str] = HANDSHAKE
    conn: Connection
    ts: float


@dataclass(slots=True)
class ConnectionEndEvent:
    """A connection ended (library, socket close, process exit, or capture stop)."""

    kind: ClassVar[str] = CONNECTION
    conn: Connection


Event = DataEvent | HandshakeEvent | ConnectionEndEvent
