"""Programs that came and went: AUDIT_BPF (type 1334) records from the audit log.

A sniffer that ran for ten minutes yesterday is gone from every live view. When
auditd is running, the kernel logs each program LOAD and UNLOAD with its id;
joining each to the SYSCALL record of the same event names the executable and
the login uid (auid) that loaded it. Records are read with Debian's ``auparse``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_LOG = Path("/var/log/audit/audit.log")
AUDIT_BPF = 1334
AUDIT_SYSCALL = 1300
_UNSET_AUID = 4294967295


@dataclass(frozen=True)
class BpfEvent:
    """One LOAD or UNLOAD of a program, with who did it when the log says so."""

    time: float
    serial: int
    prog_id: int
    op: str
    pid: int | None = None
    exe: str | None = None
    comm: str | None = None
    auid: int | None = None
    uid: int | None = None


def _field(parser, name: str) -> str | None:
    parser.first_field()
    if not parser.find_field(name):
        return None
    return parser.get_field_str()


def _interpreted(parser, name: str) -> str | None:
    parser.first_field()
    if not parser.find_field(name):
        return None
    try:
        return parser.interpret_field()
    except Exception:
        return parser.get_field_str()


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def read_events(path: Path) -> list[BpfEvent]:
    """All BPF LOAD/UNLOAD events in one audit log file, oldest first."""
    import auparse  # Debian python3-audit, via the venv's system site-packages

    parser = auparse.AuParser(auparse.AUSOURCE_FILE, str(path))
    out: list[BpfEvent] = []
    while parser.parse_next_event():
        bpf: list[tuple[int, str]] = []
        sys_fields: dict[str, str | None] = {}
        parser.first_record()
        while True:
            rtype = parser.get_type()
            if rtype == AUDIT_BPF:
                prog = _int(_field(parser, "prog-id"))
                op = _field(parser, "op")
                if prog is not None and op:
                    bpf.append((prog, op))
            elif rtype == AUDIT_SYSCALL:
                sys_fields = {
                    "pid": _field(parser, "pid"),
                    "exe": _interpreted(parser, "exe"),
                    "comm": _interpreted(parser, "comm"),
                    "auid": _field(parser, "auid"),
                    "uid": _field(parser, "uid"),
                }
            if not parser.next_record():
                break
        if not bpf:
            continue
        ts = parser.get_timestamp()
        when = ts.sec + ts.milli / 1000.0
        for prog, op in bpf:
            auid = _int(sys_fields.get("auid"))
            out.append(
                BpfEvent(
                    time=when,
                    serial=ts.serial,
                    prog_id=prog,
                    op=op,
                    pid=_int(sys_fields.get("pid")),
                    exe=_strip_quotes(sys_fields.get("exe")),
                    comm=_strip_quotes(sys_fields.get("comm")),
                    auid=None if auid == _UNSET_AUID else auid,
                    uid=_int(sys_fields.get("uid")),
                )
            )
    return out


def _strip_quotes(value: str | None) -> str | None:
    if value and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


@dataclass(frozen=True)
class History:
    """Programs by fate: loaded and unloaded (came and went), or loaded and still there."""

    events: list[BpfEvent]
    transient: list[dict]
    """One dict per program id that was loaded and unloaded: load event + unload time."""
    live_loads: dict[int, dict] = field(default_factory=dict)
    """prog id → its LOAD record, for programs still loaded (who loaded what is there)."""


def summarize(events: list[BpfEvent], live_ids: set[int]) -> History:
    loads: dict[int, BpfEvent] = {}
    transient: list[dict] = []
    for ev in events:
        if ev.op == "LOAD":
            loads[ev.prog_id] = ev
        elif ev.op == "UNLOAD" and ev.prog_id not in live_ids:
            load = loads.pop(ev.prog_id, None)
            transient.append(
                {
                    "prog_id": ev.prog_id,
                    "loaded_at": load.time if load else None,
                    "unloaded_at": ev.time,
                    "pid": load.pid if load else None,
                    "exe": load.exe if load else None,
                    "comm": load.comm if load else None,
                    "auid": load.auid if load else None,
                }
            )
    live = {
        prog_id: {"prog_id": prog_id, **_who(ev)}
        for prog_id, ev in loads.items()
        if prog_id in live_ids
    }
    return History(events, transient, live)


def _who(ev: BpfEvent) -> dict:
    return {"loaded_at": ev.time, "pid": ev.pid, "exe": ev.exe, "comm": ev.comm, "auid": ev.auid}


def load_history(path: Path | None, live_ids: set[int]) -> tuple[History | None, str | None]:
    """History from ``path`` (default the auditd log); (None, why) when unavailable."""
    path = path or DEFAULT_LOG
    try:
        present = path.is_file()
    except OSError as exc:  # e.g. /var/log/audit is 0750 and we are not root
        return None, f"cannot read audit log {path}: {exc.strerror}"
    if not present:
        return None, f"no audit log at {path}: program load history not available"
    try:
        import auparse  # noqa: F401
    except ImportError:
        return None, "python auparse bindings missing: program load history not read"
    try:
        return summarize(read_events(path), live_ids), None
    except (OSError, RuntimeError) as exc:
        return None, f"cannot read audit log {path}: {exc}"
