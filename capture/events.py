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
COMMAND = "command"
STATEMENT = "statement"
SECRET = "secret"
"""A secret as a library reported it — unproven: only the engine's key verifier
(:mod:`ecap.capture.wire.verifier`) takes it; no sink ever sees one."""
KEY = "key"
"""A secret after the verifier judged it against the wire (verified or not)."""
PACKET = "packet"
"""A packet of an authorized process's connection, as the interface saw it."""


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


@dataclass(slots=True)
class CommandEvent:
    """One command an interactive shell read (all its lines), and how it ended."""

    kind: ClassVar[str] = COMMAND
    shell: str
    """The module: ``bash`` or ``zsh``."""
    ts: float
    """When its first line was read (wall clock)."""
    ended_at: float | None
    """When the shell went on to the next command, exec'd or exited (None: still running)."""
    pid: int
    uid: int
    comm: str
    tty: str | None
    text: bytes
    """The command as typed (lines joined by newlines), up to the per-command limit."""
    lines: int
    length: int
    """Bytes the command really had (``text`` may be shorter: truncated, lost)."""
    truncated: int
    lost: int
    status: int | None
    """Its exit status (0-255) when known."""
    ending: str
    """``status`` (the shell read its next command), ``exit`` (the shell exited with
    the status), ``signal`` (killed: ``status`` is the signal), ``exec`` (the shell
    was replaced by the command), ``running`` (the capture stopped first)."""


@dataclass(slots=True)
class StatementEvent:
    """One statement a database server executed, and its real outcome."""

    kind: ClassVar[str] = STATEMENT
    server: str
    """The module: ``mysqld`` or ``postgres``."""
    ts: float
    """When the server started on it (wall clock)."""
    duration: float | None
    pid: int
    tid: int
    comm: str
    session: str
    """The server's session: the connection object (``THD*``) for MariaDB/MySQL, the
    backend process for PostgreSQL."""
    user: str | None
    database: str | None
    command: str
    """The protocol step: ``query``, ``prepare``, ``execute``, ``init_db`` (MariaDB /
    MySQL), ``simple`` or ``extended`` (PostgreSQL)."""
    text: bytes
    length: int
    truncated: int
    lost: int
    status: str
    """``ok``, ``error`` or ``unknown``."""
    error: str | None
    """The server's error number (MariaDB / MySQL) or SQLSTATE (PostgreSQL)."""
    rows: int | None
    """Rows affected (MariaDB / MySQL OK) or processed (PostgreSQL completion)."""
    tags: list[str]
    """PostgreSQL: the completion tag of each command the statement ran."""
    statement_id: int | None = None
    """A prepared statement's id as the client knows it (COM_STMT_EXECUTE)."""


@dataclass(slots=True)
class SecretEvent:
    """One secret the library handed to its key-log function (not yet proven)."""

    kind: ClassVar[str] = SECRET
    conn: Connection
    ts: float
    label: str
    client_random: bytes
    """As read from the library's memory (``random_read`` False: it could not be)."""
    random_read: bool
    secret: bytes
    secret_len: int
    """The length the library passed (``secret`` is empty when it was too long)."""


@dataclass(slots=True)
class KeyEvent:
    """A secret after its proof. Only a ``verified`` one carries the secret; a sink
    writes those and counts the others."""

    kind: ClassVar[str] = KEY
    ts: float
    pid: int
    conn: Connection | None
    """The library's connection it came from."""
    label: str
    client_random: bytes
    secret: bytes
    """Empty unless ``verified``."""
    verified: bool
    reason: str
    """How it was proven, or why it was not (one clause, no secret in it)."""
    flow: str | None
    """``local -> remote`` of the TCP connection it was proven on (None: no match)."""


@dataclass(slots=True)
class PacketEvent:
    """One packet of an authorized process's TCP connection (from the IP header on)."""

    kind: ClassVar[str] = PACKET
    ts_ns: int
    """When the interface saw it (nanoseconds since the epoch)."""
    data: bytes
    wire_len: int
    ifindex: int
    sent: bool
    """Sent by the authorized process's end (else received by it)."""
    pid: int | None
    comm: str
    module: str
    connection_id: int | None
    """ecap's connection id (the session record's), None when no library call of
    the connection was seen."""
    flow_id: int


Event = (
    DataEvent | HandshakeEvent | ConnectionEndEvent | CommandEvent | StatementEvent
    | SecretEvent | KeyEvent | PacketEvent
)  # fmt: skip
