"""Is a live capture authorized? A session file is a claim; this checks it.

``ecap-audit capture`` registers itself under ``$ECAP_RUN_DIR/sessions``. Anyone
who can write there can forge such a file, so a session counts only when all of
these hold: its token verifies against the trust store (signature, host binding,
revocation, lifetime) — or verified until it expired; the token's jti matches;
each target PID is in the token's scope with the same start time; the journal
recorded the gate granting that jti *to the session's capture process* and that
process's ``capture.start`` for this session naming the same programs (journal
entries carry the writer's PID); and the programs the session names are loaded
and held by that process. Anything less, and the probes are judged as if the
file did not exist.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ecap import config, procfs
from ecap.errors import AuthorizationRefused
from ecap.sessions import SessionRecord

if TYPE_CHECKING:
    from ecap.authz.token import Grant
    from ecap.journal import Journal

# Token verification (PyJWT, cryptography) is imported only when a session file
# exists: most scans have none, and those imports dominate start-up time.

AUTHORIZED = "authorized"
EXPIRED = "expired"
REJECTED = "rejected"
MAX_SESSION_BYTES = 64 * 1024
"""A session file holds one token (≤ 16 KiB) and a few ids; anything larger is not one."""
MAX_SESSION_FILES = 1000


@dataclass(frozen=True)
class Verdict:
    """What one session file turned out to be."""

    session_id: str
    status: str
    """``authorized``, ``expired`` (genuine, all matching, but past ``exp``) or ``rejected``."""
    reason: str
    capture_pid: int
    prog_ids: frozenset[int]
    authorization: dict = field(default_factory=dict)
    """operator, reason, expiry, jti, issuer, targets — from the verified token only."""
    capture_alive: bool = True
    """False when the file names a capture process that no longer runs (a capture
    killed with SIGKILL cannot remove its session file or journal its stop)."""
    path: str | None = None


def _read_session_file(dir_fd: int, name: str) -> SessionRecord:
    """One session file, opened without following links or blocking on a FIFO.

    Raises ValueError (with the reason) for anything that is not a small regular
    file holding a well-formed session record.
    """
    try:
        fd = os.open(
            name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd
        )
    except OSError as exc:
        raise ValueError(f"cannot open ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        if st.st_size > MAX_SESSION_BYTES:
            raise ValueError(f"larger than {MAX_SESSION_BYTES} bytes")
        raw = os.read(fd, MAX_SESSION_BYTES + 1)
    finally:
        os.close(fd)
    if len(raw) > MAX_SESSION_BYTES:
        raise ValueError(f"larger than {MAX_SESSION_BYTES} bytes")
    try:
        data = json.loads(raw)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    try:
        record = SessionRecord.from_dict(data)
    except (TypeError, KeyError, ValueError) as exc:
        raise ValueError(f"not a session record ({type(exc).__name__}: {exc})") from None
    _check_types(record)
    return record


def _check_types(r: SessionRecord) -> None:
    def ints(values: object) -> bool:
        return isinstance(values, list) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in values
        )

    if not all(isinstance(v, str) for v in (r.session_id, r.token, r.module, r.jti)):
        raise ValueError("session id, token, module and jti must be strings")
    if not isinstance(r.capture_pid, int) or isinstance(r.capture_pid, bool):
        raise ValueError("capture_pid must be an integer")
    if not isinstance(r.extra, dict):
        raise ValueError("extra must be an object")
    used = r.extra.get("modules", [])
    if not isinstance(used, list) or not all(isinstance(m, str) for m in used):
        raise ValueError("extra.modules must be a list of module names")
    if not ints(r.prog_ids) or not all(
        isinstance(t.pid, int) and isinstance(t.start_time, int) for t in r.targets
    ):
        raise ValueError("prog_ids and targets must be integers")


def _directory_problem(st: os.stat_result) -> str | None:
    """A sessions directory others could write to proves nothing."""
    if st.st_uid not in (0, os.geteuid()):
        return f"the sessions directory is owned by uid {st.st_uid}, not root"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"the sessions directory is writable by others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def read_sessions(
    directory: Path | None = None,
) -> tuple[list[tuple[str, SessionRecord]], list[Verdict], list[str]]:
    """(path, record) for every session file that parses, a rejected verdict for
    every one that does not, and notes about the directory itself.

    Nothing in the directory can stop or hang the scan: files are opened with
    O_NOFOLLOW|O_NONBLOCK and checked with fstat, read up to a size cap, parsed
    with recursion guarded; each failure is that file's rejected claim.
    """
    directory = directory or config.sessions_dir()
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return [], [], []
    except OSError as exc:
        return [], [], [f"sessions directory {directory}: {exc.strerror}"]
    records: list[tuple[str, SessionRecord]] = []
    rejected: list[Verdict] = []
    notes: list[str] = []
    try:
        dir_problem = _directory_problem(os.fstat(dir_fd))
        if dir_problem:
            notes.append(f"{directory}: {dir_problem}; every session in it is rejected")
        names = sorted(n for n in os.listdir(dir_fd) if n.endswith(".json"))
        if len(names) > MAX_SESSION_FILES:
            notes.append(f"{directory}: more than {MAX_SESSION_FILES} session files; rest ignored")
            names = names[:MAX_SESSION_FILES]
        for name in names:
            path = str(directory / name)
            try:
                record = _read_session_file(dir_fd, name)
            except ValueError as exc:
                rejected.append(_rejected_file(name, path, f"session file {exc}"))
                continue
            if dir_problem:
                rejected.append(
                    Verdict(
                        record.session_id,
                        REJECTED,
                        dir_problem,
                        record.capture_pid,
                        frozenset(record.prog_ids),
                        capture_alive=procfs.pid_exists(record.capture_pid),
                        path=path,
                    )
                )
                continue
            records.append((path, record))
    finally:
        os.close(dir_fd)
    return records, rejected, notes


def _rejected_file(name: str, path: str, reason: str) -> Verdict:
    return Verdict(name.removesuffix(".json"), REJECTED, reason, 0, frozenset(), path=path)


@dataclass(frozen=True)
class JournalEvidence:
    """What a journal whose hash chain verifies says about captures."""

    grants: frozenset[tuple[str, int]] = frozenset()
    """(jti, pid of the process the gate granted it to)."""
    starts: dict[str, dict] = field(default_factory=dict)
    """session_id → its ``capture.start`` entry."""
    problem: str | None = None
    """Why the journal proves nothing (unreadable, chain broken)."""


def journal_evidence(journal: Journal) -> JournalEvidence:
    """Grants and capture starts from the journal, if its chain verifies."""
    try:
        status = journal.verify()
    except Exception as exc:  # a missing or unreadable journal proves nothing
        return JournalEvidence(problem=f"journal unreadable: {exc}")
    if not status.ok:
        return JournalEvidence(
            problem=f"journal chain broken at line {status.bad_line}: {status.problem}"
        )
    grants: set[tuple[str, int]] = set()
    starts: dict[str, dict] = {}
    for e in journal.read():
        if e.get("event") == "gate.granted":
            grants.add((str(e.get("jti")), e.get("pid")))
        elif e.get("event") == "capture.start":
            starts[str(e.get("session_id"))] = e
    return JournalEvidence(frozenset(grants), starts)


def _journal_problem(record: SessionRecord, jti: str, evidence: JournalEvidence) -> str | None:
    """Why the journal does not back this session, or None when it does."""
    if evidence.problem:
        return evidence.problem
    if (jti, record.capture_pid) not in evidence.grants:
        return f"the journal has no gate.granted entry for this token to pid {record.capture_pid}"
    start = evidence.starts.get(record.session_id)
    if start is None:
        return "the journal has no capture.start entry for this session"
    if (
        start.get("jti") != jti
        or start.get("pid") != record.capture_pid
        or sorted(start.get("prog_ids") or []) != sorted(record.prog_ids)
    ):
        return (
            "the journal's capture.start for this session names another token, process or programs"
        )
    return None


def verify_claim(record: SessionRecord) -> tuple[str, Grant]:
    """(status, grant): the token verified once, with the gate's composable checks.

    Signature, host, lifetime and revocation first, then the session's own claims
    (its targets with their start times, its module) against the token's scope —
    the same checks the gate runs, so an empty ``modules`` list grants nothing
    here either; a session that hooks through other modules (``auto``) names them
    in ``extra.modules``, and each must be granted too — and the validity window
    last: a token that passes everything but the window is ``expired``, not forged.
    """
    from ecap.authz.policy import AllOf, Allowed, Context, TargetsInScope, TimeWindow, token_checks

    ctx = Context(token=record.token, trust_dir=config.trust_dir())
    used = dict.fromkeys([record.module, *record.extra.get("modules", [])])
    AllOf(
        *token_checks(check_host=True, check_time=False),
        TargetsInScope([(t.pid, t.start_time) for t in record.targets]),
        *(Allowed("module", name) for name in used),
    ).verify(ctx)
    grant = ctx.require_grant()
    try:
        TimeWindow().verify(ctx)
    except AuthorizationRefused:
        if ctx.now < grant.expires_at:  # not yet valid: not a capture that ran out of time
            raise
        return EXPIRED, grant
    return AUTHORIZED, grant


def _journal_override(record: SessionRecord, journal: JournalEvidence) -> str | None:
    """The journal a capture wrote to, when it is not the host's (tests, demos, or
    someone hiding a capture from the host journal)."""
    start = journal.starts.get(record.session_id) or {}
    if start.get("journal_override"):
        return str(start["journal_override"])
    if record.journal and not config.is_host_journal(record.journal):
        return record.journal
    return None


def evaluate(
    record: SessionRecord,
    *,
    held_progs: dict[int, set[int]],
    loaded_progs: set[int],
    journal: JournalEvidence,
    path: str | None = None,
) -> Verdict:
    """Judge one session record against the token, journal and live kernel state.

    ``held_progs`` maps pid → program ids it holds (prog fds, perf events, links).
    """
    alive = procfs.pid_exists(record.capture_pid)

    def rejected(reason: str) -> Verdict:
        return Verdict(
            record.session_id,
            REJECTED,
            reason,
            record.capture_pid,
            frozenset(record.prog_ids),
            capture_alive=alive,
            path=path,
        )

    try:
        status, grant = verify_claim(record)
    except AuthorizationRefused as refusal:
        return rejected(f"token does not verify: {refusal.message}")
    if record.jti and record.jti != grant.jti:
        return rejected("session jti differs from the token's")
    problem = _journal_problem(record, grant.jti, journal)
    if problem:
        return rejected(problem)
    if not record.prog_ids:
        return rejected("the session names no programs")
    missing = set(record.prog_ids) - loaded_progs
    if missing:
        return rejected(f"programs {sorted(missing)} named by the session are not loaded")
    held = held_progs.get(record.capture_pid, set())
    if not set(record.prog_ids) <= held:
        return rejected(
            f"capture pid {record.capture_pid} does not hold the programs the session names"
        )
    authorization = {
        "operator": grant.operator,
        "reason": grant.reason,
        "expires_at": grant.expires_at,
        "issuer": grant.issuer,
        "jti": grant.jti,
        "kid": grant.kid,
        "session_id": record.session_id,
        "targets": [{"pid": t.pid, "start_time": t.start_time} for t in grant.targets],
        "module": record.module,
        **({"modules": record.extra["modules"]} if record.extra.get("modules") else {}),
    }
    reason = "token verified, journal grant found, programs held by the capture process"
    if status == EXPIRED:
        reason = "token genuine but expired while its programs are still attached"
    moved = _journal_override(record, journal)
    if moved:
        authorization["journal_override"] = moved
        reason += f"; WARNING: it journals to {moved}, not the host journal"
    return Verdict(
        record.session_id,
        status,
        reason,
        record.capture_pid,
        frozenset(record.prog_ids),
        authorization,
        capture_alive=alive,
        path=path,
    )


def evaluate_all(
    *, held_progs: dict[int, set[int]], loaded_progs: set[int]
) -> tuple[list[Verdict], list[str]]:
    """Verdicts for every registered session (a rejected one for each file that is
    not a session record), and notes about the sessions directory."""
    records, verdicts, notes = read_sessions()
    if not records:
        return verdicts, notes
    from ecap.journal import Journal

    evidence = journal_evidence(Journal())
    for path, r in records:
        try:
            verdicts.append(
                evaluate(
                    r,
                    held_progs=held_progs,
                    loaded_progs=loaded_progs,
                    journal=evidence,
                    path=path,
                )
            )
        except Exception as exc:  # a hand-made file with odd values is a rejected claim
            verdicts.append(
                _rejected_file(
                    Path(path).name, path, f"session file malformed ({type(exc).__name__})"
                )
            )
    return verdicts, notes
