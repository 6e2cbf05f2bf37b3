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


Event = DataEvent | HandshakeEvent | ConnectionEndEvent | CommandEvent | StatementEvent
