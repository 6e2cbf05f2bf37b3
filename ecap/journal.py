"""The tamper-evident journal: every gate decision and capture start/stop.

One JSON object per line. Each entry carries ``seq`` (1, 2, 3...), ``prev`` (the
previous entry's hash; 64 zeros for the first) and ``hash`` = SHA-256 of the
entry's canonical JSON without ``hash``. Editing, deleting, inserting or
reordering any entry breaks the chain at that line, and :func:`verify_file` names
it. Appends take an exclusive ``flock`` so concurrent writers (several captures,
a gate refusal at the same moment) still produce one valid chain, and each append
is fsync'd before the caller goes on. Each entry's hash is also sent to the Linux
audit subsystem so the trail survives the file being wiped.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ecap import config
from ecap.auditlog import AuditSink
from ecap.errors import UsageError

GENESIS = "0" * 64
SCHEMA = "ecap.journal/1"


def entry_hash(entry: dict[str, Any]) -> str:
    """SHA-256 over the canonical JSON of an entry without its own ``hash`` field."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class ChainStatus:
    """Result of checking a journal file."""

    ok: bool
    entries: int
    """Number of entries that verified before the first problem (all of them if ok)."""
    bad_line: int | None = None
    """1-based line number of the first bad entry."""
    problem: str | None = None
    head: str = GENESIS
    """Hash of the last good entry."""


class Journal:
    """Append-only, hash-chained JSONL file (plus the audit-subsystem mirror)."""

    def __init__(self, path: Path | None = None, *, audit: AuditSink | None = None) -> None:
        self.path = Path(path) if path is not None else config.journal_path()
        self._audit = audit if audit is not None else AuditSink()
        self._audit_notice_written = False

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Append one entry and return it (with seq, prev and hash filled in)."""
        entry = self._append_locked(event, fields)
        if (
            not self._audit.send(
                f"op=ecap-journal event={event} seq={entry['seq']} hash={entry['hash']}"
            )
            and not self._audit_notice_written
        ):
            # Say once per process that the off-host copy is missing, not on every entry.
            self._audit_notice_written = True
            self._append_locked(
                "journal.audit_unavailable", {"reason": self._audit.unavailable_reason}
            )
        return entry

    def _append_locked(self, event: str, fields: dict[str, Any]) -> dict[str, Any]:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            last = _last_entry(fd)
            entry: dict[str, Any] = {
                "schema": SCHEMA,
                "seq": (last["seq"] + 1) if last else 1,
                "ts": datetime.now(UTC).isoformat(timespec="microseconds"),
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "uid": os.getuid(),
                "event": event,
                **fields,
                "prev": last["hash"] if last else GENESIS,
            }
            entry["hash"] = entry_hash(entry)
            line = json.dumps(entry, sort_keys=True, ensure_ascii=True) + "\n"
            os.write(fd, line.encode())
            os.fsync(fd)
            return entry
        finally:
            os.close(fd)  # closing releases the flock

    def read(self) -> list[dict[str, Any]]:
        """All entries that parse (use :meth:`verify` to know whether to trust them)."""
        return [e for _, e, _ in _iter_lines(self.path) if e is not None]

    def verify(self) -> ChainStatus:
        return verify_file(self.path)


def _last_entry(fd: int) -> dict[str, Any] | None:
    """The last complete entry of the file open on ``fd`` (reads only the tail)."""
    size = os.fstat(fd).st_size
    if size == 0:
        return None
    block = 4096
    tail = b""
    pos = size
    while pos > 0:
        step = min(block, pos)
        pos -= step
        tail = os.pread(fd, step, pos) + tail
        stripped = tail.rstrip(b"\n")
        nl = stripped.rfind(b"\n")
        if nl >= 0 or pos == 0:
            last_line = stripped[nl + 1 :]
            try:
                entry = json.loads(last_line)
            except json.JSONDecodeError as exc:
                raise UsageError(
                    f"journal {fd_path(fd)} ends with an unreadable line",
                    hint="run 'ecap-audit journal verify' and preserve the file as evidence",
                ) from exc
            return entry
        block *= 2
    return None


def fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return f"fd {fd}"


def _iter_lines(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    """(line number, parsed entry or None, raw line) for each line of the file."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError:
        return
    with f:
        for number, raw in enumerate(f, start=1):
            text = raw.decode("utf-8", "replace")
            try:
                parsed = json.loads(text)
                yield number, parsed if isinstance(parsed, dict) else None, text
            except json.JSONDecodeError:
                yield number, None, text


def verify_file(path: Path) -> ChainStatus:
    """Check every entry's hash, sequence and link to its predecessor."""
    if not Path(path).exists():
        raise UsageError(f"journal {path} does not exist", hint="check --journal / ECAP_JOURNAL")
    prev = GENESIS
    count = 0
    for number, entry, raw in _iter_lines(path):
        problem = _entry_problem(entry, raw, prev, count + 1)
        if problem:
            return ChainStatus(False, count, number, problem, prev)
        assert entry is not None
        prev = entry["hash"]
        count += 1
    return ChainStatus(True, count, head=prev)


def _entry_problem(entry: dict[str, Any] | None, raw: str, prev: str, seq: int) -> str | None:
    """Why this line breaks the chain, or None when it links correctly."""
    if entry is None:
        if not raw.endswith("\n"):
            return "truncated entry (incomplete last line)"
        return "line is not a JSON object (edited or truncated)"
    if entry.get("hash") != entry_hash(entry):
        return "entry hash does not match its content (edited)"
    if entry.get("prev") != prev:
        return "entry does not follow the previous one (deleted, inserted or reordered)"
    if entry.get("seq") != seq:
        return f"sequence number {entry.get('seq')} where {seq} was expected"
    return None


def unfinished_sessions(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Captures whose ``capture.start`` has no ``capture.stop`` (or ``capture.failed``).

    A capture killed with SIGKILL cannot write its stop: the chain stays intact,
    but the record of that session is open-ended. Each item says whether the
    process that wrote the start still runs (``running``: the capture may simply
    still be going) — a PID is only a hint, since PIDs are reused.
    """
    open_starts: dict[str, dict[str, Any]] = {}
    for e in entries:
        event, sid = e.get("event"), e.get("session_id")
        if event == "capture.start" and sid:
            open_starts[str(sid)] = e
        elif event in ("capture.stop", "capture.failed") and sid:
            open_starts.pop(str(sid), None)
    out = []
    for sid, e in open_starts.items():
        pid = e.get("pid")
        running = isinstance(pid, int) and os.path.exists(f"/proc/{pid}")
        out.append(
            {
                "session_id": sid,
                "seq": e.get("seq"),
                "ts": e.get("ts"),
                "pid": pid,
                "operator": e.get("operator"),
                "jti": e.get("jti"),
                "running": running,
            }
        )
    return out
