"""What ``capture mysqld`` and ``capture postgres`` share: statement texts (chunked
records, put back together) and sessions (who and which database), turned into
one :class:`StatementEvent` per statement with its outcome."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ecap.capture.events import StatementEvent
from ecap.capture.modules.interface import RecordContext
from ecap.capture.records import Call, Reassembler


@dataclass
class Session:
    """Who a server session is, as far as it could be read."""

    user: str | None = None
    database: str | None = None


@dataclass
class Statement:
    """A statement between its text and its outcome."""

    ts: float
    pid: int
    tid: int
    comm: str
    session: str
    command: str
    text: bytes
    length: int
    truncated: int
    lost: int
    tags: list[str] = field(default_factory=list)
    rows: int | None = None
    error: str | None = None
    statement_id: int | None = None


def cstr(raw: bytes) -> str | None:
    """A NUL-terminated field of a record struct; None when empty."""
    text = raw.split(b"\0", 1)[0].decode("utf-8", "backslashreplace")
    return text or None


def binary_version(path: Any, pattern: bytes) -> str | None:
    """The first match of ``pattern`` (one group) in the file's read-only data."""
    from ecap.elf import NotAnElf, open_elf

    try:
        data = open_elf(path).section_data(".rodata") or b""
    except NotAnElf:
        return None
    m = re.search(pattern, data)
    return m.group(1).decode("ascii", "replace") if m else None


class StatementRecords:
    """Shared state and event writing; subclasses route their record kinds."""

    server = ""

    def __init__(self, ctx: RecordContext) -> None:
        self.ctx = ctx
        self.abi = ctx.abi
        self.reasm = Reassembler(ctx.clock, ctx.max_call_bytes, ctx.abi)
        self.sessions: dict[tuple[int, str], Session] = {}
        self.written = 0
        self.login = ctx.abi.struct("ecap_login")
        self.handlers: dict[int, Any] = {}

    def session(self, pid: int, key: str) -> Session:
        return self.sessions.setdefault((pid, key), Session())

    def on_login(self, pid: int, key: str, data: bytes) -> None:
        user, host, database = self.login.unpack_from(data)
        name = cstr(user)
        where = cstr(host)
        self.sessions[(pid, key)] = Session(
            f"{name}@{where}" if name and where else name, cstr(database)
        )

    def statement(self, call: Call, session: str, command: str) -> Statement:
        return Statement(call.ts, call.pid, call.tid, call.comm, session, command, call.data,
                         call.total, call.truncated, call.lost + call.unreadable)  # fmt: skip

    def write(self, st: Statement, status: str, duration: float | None) -> None:
        who = self.sessions.get((st.pid, st.session), Session())
        self.written += 1
        self.ctx.emit(
            StatementEvent(
                server=self.server, ts=st.ts, duration=duration, pid=st.pid, tid=st.tid,
                comm=st.comm, session=st.session, user=who.user, database=who.database,
                command=st.command, text=st.text, length=st.length, truncated=st.truncated,
                lost=st.lost, status=status, error=st.error, rows=st.rows, tags=st.tags,
                statement_id=st.statement_id,
            )
        )  # fmt: skip

    def forget(self, pid: int) -> None:
        for key in [k for k in self.sessions if k[0] == pid]:
            del self.sessions[key]

    def counts(self) -> dict[str, int]:
        return {"statement": self.written}
