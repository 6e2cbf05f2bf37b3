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

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ecap import config, procfs
from ecap.errors import AuthorizationRefused
from ecap.sessions import SessionRecord, list_sessions

if TYPE_CHECKING:
    from ecap.authz.token import Grant
    from ecap.journal import Journal

# Token verification (PyJWT, cryptography) is imported only when a session file
# exists: most scans have none, and those imports dominate start-up time.

AUTHORIZED = "authorized"
EXPIRED = "expired"
REJECTED = "rejected"


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


def _expired_but_genuine(token: str) -> bool:
    """True when the token verifies at an instant just before its own expiry."""
    import jwt

    from ecap.authz.verify import verify_token

    try:
        claims = jwt.decode(token, options={"verify_signature": False})
        exp = float(claims["exp"])
    except (jwt.PyJWTError, KeyError, TypeError, ValueError):
        return False
    try:
        verify_token(token, check_host=True, now=exp - 1)
    except AuthorizationRefused:
        return False
    return True


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


def _exec_problem(grant: Grant, pid: int) -> str | None:
    """Does the target still run what the token names? exec() keeps PID and start
    time, so compare the live executable (/proc/PID/exe device/inode and SHA-256)
    with the token's claim."""
    from ecap.authz.policy import executable_problem

    claimed = grant.target_for(pid)
    return executable_problem(pid, claimed) if claimed else None


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
) -> Verdict:
    """Judge one session record against the token, journal and live kernel state.

    ``held_progs`` maps pid → program ids it holds (prog fds, perf events, links).
    """

    import jwt

    from ecap.authz.verify import verify_token

    def rejected(reason: str) -> Verdict:
        return Verdict(
            record.session_id, REJECTED, reason, record.capture_pid, frozenset(record.prog_ids)
        )

    status = AUTHORIZED
    try:
        grant = verify_token(record.token, check_host=True)
    except AuthorizationRefused as refusal:
        if not _expired_but_genuine(record.token):
            return rejected(f"token does not verify: {refusal.message}")
        status = EXPIRED
        claims = jwt.decode(record.token, options={"verify_signature": False})
        grant = verify_token(record.token, check_host=True, now=float(claims["exp"]) - 1)
    if record.jti and record.jti != grant.jti:
        return rejected("session jti differs from the token's")
    scope = {(t.pid, t.start_time) for t in grant.targets}
    for target in record.targets:
        if (target.pid, target.start_time) not in scope:
            return rejected(f"target pid {target.pid} is not in the token's scope")
        try:
            if procfs.start_time(target.pid) != target.start_time:
                return rejected(f"target pid {target.pid} was recycled")
            exec_problem = _exec_problem(grant, target.pid)
        except procfs.ProcessGone:
            exec_problem = None  # exited; the capture may still be attached (judged by programs)
        if exec_problem:
            return rejected(exec_problem)
    if record.module and grant.modules and record.module not in grant.modules:
        return rejected(f"module {record.module!r} is not allowed by the token")
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
    )


def evaluate_all(
    *, held_progs: dict[int, set[int]], loaded_progs: set[int]
) -> tuple[list[Verdict], list[str]]:
    """Verdicts for every registered session, and notes on files that did not parse."""
    records, problems = list_sessions()
    notes = [f"session file {p}: {why}" for p, why in problems]
    if not records:
        return [], notes
    from ecap.journal import Journal

    evidence = journal_evidence(Journal())
    verdicts = []
    for r in records:
        try:
            verdicts.append(
                evaluate(r, held_progs=held_progs, loaded_progs=loaded_progs, journal=evidence)
            )
        except Exception as exc:  # a hand-made file with wrong types is a rejected claim
            verdicts.append(_malformed(r, exc))
    return verdicts, notes


def _malformed(record: SessionRecord, exc: Exception) -> Verdict:
    try:
        progs = frozenset(int(p) for p in record.prog_ids)
        capture_pid = int(record.capture_pid)
    except (TypeError, ValueError):
        progs, capture_pid = frozenset(), 0
    return Verdict(
        str(record.session_id),
        REJECTED,
        f"session file malformed ({type(exc).__name__})",
        capture_pid,
        progs,
    )
