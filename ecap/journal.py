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

import contextlib
import fcntl
import hashlib
import json
import os
import re
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from ecap import config, fsutil
from ecap.auditlog import AuditSink
from ecap.errors import EnvironmentNotReady, UsageError

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
        self.override: str | None = (
            None if config.is_host_journal(self.path) else os.path.abspath(self.path)
        )
        """The path, when this is not the host journal: every entry and audit record says so."""

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Append one entry and return it (with seq, prev and hash filled in).

        All or nothing: a failed append (a full disk) leaves the file as it was and
        raises :class:`EnvironmentNotReady` (exit 4), so nothing that needed the
        entry goes ahead unrecorded.
        """
        with self._locked() as fd:
            entry = self._write_entry(fd, event, fields)
        self._mirror(entry)
        return entry

    def _mirror(self, entry: dict[str, Any]) -> None:
        """Send the entry's hash to the audit subsystem (said once per process if absent)."""
        message = f"op=ecap-journal event={entry['event']} seq={entry['seq']} hash={entry['hash']}"
        if self.override:
            message += f" journal={audit_value(self.override)}"
        if not self._audit.send(message) and not self._audit_notice_written:
            # Say once per process that the off-host copy is missing, not on every entry.
            self._audit_notice_written = True
            with self._locked() as fd:
                self._write_entry(
                    fd, "journal.audit_unavailable", {"reason": self._audit.unavailable_reason}
                )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[int]:
        """The journal open for appending (never through a link), under an exclusive flock."""
        fd = fsutil.open_append_private(self.path, what="journal")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)  # closing releases the flock

    def _write_entry(self, fd: int, event: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Chain and write one entry on the locked fd; on failure cut the file back."""
        size = os.fstat(fd).st_size
        last = _last_entry(fd, size)
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
        if self.override:
            entry["journal_override"] = self.override
        entry["hash"] = entry_hash(entry)
        line = json.dumps(entry, sort_keys=True, ensure_ascii=True) + "\n"
        try:
            fsutil.write_all(fd, line.encode())
            os.fsync(fd)
        except OSError as exc:
            self._cut_back(fd, size, event, exc)
        return entry

    def _cut_back(self, fd: int, size: int, event: str, exc: OSError) -> NoReturn:
        """Undo a partial append (still under the lock) and fail with exit 4."""
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
            left = "the journal is unchanged"
        except OSError:
            left = "the journal may end with a partial entry ('ecap-audit journal repair')"
        raise EnvironmentNotReady(
            f"cannot append to journal {self.path}: {exc.strerror or exc}; "
            f"{event} was not recorded and {left}",
            hint="free space on its file system (or fix the error), then try again",
        ) from exc

    def repair(self) -> RepairResult:
        """Recover a journal whose last entry was cut short (a crash mid-write).

        Only the tail after the last newline is touched, and only when every entry
        before it verifies: a chain broken anywhere else is evidence, refused with
        exit 2. The torn bytes are moved to a 0600 evidence file beside the
        journal, the file is cut back to its last complete entry, and the repair
        is itself journaled (``journal.repaired``, with the removed bytes' size and
        SHA-256). A complete entry that lacks only its newline is kept.
        """
        with self._locked() as fd:
            data = fsutil.read_to_end(fd)
            cut = data.rfind(b"\n") + 1
            body, tail = data[:cut], data[cut:]
            status = verify_lines(enumerate(body.splitlines(keepends=True), start=1))
            if not status.ok:
                raise UsageError(
                    f"journal {self.path} is broken at line {status.bad_line}: {status.problem}; "
                    "that is not a torn last entry and repair does not touch it",
                    hint="preserve the file as evidence and compare it with the audit log",
                )
            if not tail:
                return RepairResult("none", status.entries)
            try:
                if (
                    _entry_problem(
                        _json_object(tail),
                        tail.decode("utf-8", "replace") + "\n",
                        status.head,
                        status.entries + 1,
                    )
                    is None
                ):
                    fsutil.write_all(fd, b"\n")
                    fields: dict[str, Any] = {
                        "action": "completed",
                        "completed_seq": status.entries + 1,
                    }
                    evidence = None
                else:
                    evidence = self._keep_torn(tail)
                    os.ftruncate(fd, len(body))
                    fields = {
                        "action": "removed",
                        "removed_bytes": len(tail),
                        "removed_sha256": hashlib.sha256(tail).hexdigest(),
                        "evidence": str(evidence),
                    }
                os.fsync(fd)
            except OSError as exc:
                self._cut_back(fd, len(data), "journal.repaired", exc)
            entry = self._write_entry(fd, "journal.repaired", fields)
        self._mirror(entry)
        return RepairResult(fields["action"], entry["seq"], len(tail), evidence, entry)

    def _keep_torn(self, tail: bytes) -> Path:
        """Save the torn bytes as evidence: ``JOURNAL.torn-<UTC time>`` (0600, new file)."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        path = self.path.with_name(f"{self.path.name}.torn-{stamp}")
        fd = fsutil.create_private_file(path)
        try:
            fsutil.write_all(fd, tail)
            os.fsync(fd)
        finally:
            os.close(fd)
        return path

    def read(self) -> list[dict[str, Any]]:
        """All entries that parse (use :meth:`verify` to know whether to trust them)."""
        return [e for _, e, _ in _iter_lines(self.path) if e is not None]

    def verify(self) -> ChainStatus:
        return verify_file(self.path)


@dataclass(frozen=True)
class RepairResult:
    """What ``journal repair`` did."""

    action: str
    """``none`` (nothing torn), ``removed`` (torn bytes cut off) or ``completed``."""
    entries: int
    """Entries in the journal afterwards (the repair's own entry included)."""
    removed_bytes: int = 0
    evidence: Path | None = None
    """Where the removed bytes were kept."""
    entry: dict[str, Any] | None = None
    """The ``journal.repaired`` entry."""


def audit_value(text: str) -> str:
    """A value for an audit record field: quoted when plain, hex-encoded otherwise
    (the audit subsystem's own convention for untrusted strings)."""
    if _AUDIT_PLAIN.match(text):
        return f'"{text}"'
    return text.encode("utf-8", "surrogateescape").hex().upper()


_AUDIT_PLAIN = re.compile(r"^[A-Za-z0-9/._:+-]+$")


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        parsed = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return parsed if isinstance(parsed, dict) else None


def _last_entry(fd: int, size: int) -> dict[str, Any] | None:
    """The last complete entry of the file open on ``fd`` (reads only the tail)."""
    if size == 0:
        return None
    if os.pread(fd, 1, size - 1) != b"\n":
        raise EnvironmentNotReady(
            f"journal {fd_path(fd)} ends with an incomplete entry (a write was cut short)",
            hint="run 'ecap-audit journal repair' (it keeps the torn bytes as evidence)",
        )
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
            entry = _json_object(stripped[nl + 1 :])
            if entry is None:
                raise UsageError(
                    f"journal {fd_path(fd)} ends with an unreadable line",
                    hint="run 'ecap-audit journal verify' and preserve the file as evidence",
                )
            return entry
        block *= 2
    return None


def fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return f"fd {fd}"


def _parse_lines(
    lines: Iterable[tuple[int, bytes]],
) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    """(line number, parsed entry or None, raw line) for each numbered raw line."""
    for number, raw in lines:
        text = raw.decode("utf-8", "replace")
        try:
            parsed = json.loads(text)
            yield number, parsed if isinstance(parsed, dict) else None, text
        except json.JSONDecodeError:
            yield number, None, text


def _iter_lines(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    """(line number, parsed entry or None, raw line) for each line of the file."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError:
        return
    with f:
        yield from _parse_lines(enumerate(f, start=1))


def verify_file(path: Path) -> ChainStatus:
    """Check every entry's hash, sequence and link to its predecessor."""
    if not Path(path).exists():
        raise UsageError(f"journal {path} does not exist", hint="check --journal / ECAP_JOURNAL")
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the with below
    except FileNotFoundError:
        return ChainStatus(True, 0)
    with f:
        return verify_lines(enumerate(f, start=1))


def verify_lines(lines: Iterable[tuple[int, bytes]]) -> ChainStatus:
    """:func:`verify_file` over numbered raw lines (the repair checks what it keeps)."""
    prev = GENESIS
    count = 0
    for number, entry, raw in _parse_lines(lines):
        problem = _entry_problem(entry, raw, prev, count + 1)
        if problem:
            return ChainStatus(False, count, number, problem, prev)
        assert entry is not None
        prev = entry["hash"]
        count += 1
    return ChainStatus(True, count, head=prev)


TORN_TAIL = "truncated entry (incomplete last line)"


def _entry_problem(entry: dict[str, Any] | None, raw: str, prev: str, seq: int) -> str | None:
    """Why this line breaks the chain, or None when it links correctly."""
    if entry is None:
        if not raw.endswith("\n"):
            return TORN_TAIL
        return "line is not a JSON object (edited or truncated)"
    if entry.get("hash") != entry_hash(entry):
        return "entry hash does not match its content (edited)"
    if entry.get("prev") != prev:
        return "entry does not follow the previous one (deleted, inserted or reordered)"
    if entry.get("seq") != seq:
        return f"sequence number {entry.get('seq')} where {seq} was expected"
    if not raw.endswith("\n"):
        return TORN_TAIL  # a whole entry, but the write stopped before its newline
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
