"""Programs that came and went, and attempts SELinux refused, from the audit log.

A sniffer that ran for ten minutes yesterday is gone from every live view. When
auditd is running, the kernel logs each program LOAD and UNLOAD with its id
(AUDIT_BPF, type 1334); joining each to the SYSCALL record of the same event names
the executable and the login uid (auid) that loaded it.

On SELinux hosts the same log holds AVC records (type 1400) for the ``bpf`` and
``perf_event`` classes and ``capability2 { bpf perfmon }``: a denied attempt is
someone trying to load a program or open a probe from a domain that may not — an
attacker failing, which is worth knowing before they succeed. A denial with
``permissive=1`` was logged but *not* blocked. Records are read with Debian's
``auparse``, in one pass for both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from ecap.selinux import AVC_CLASSES

DEFAULT_LOG = Path("/var/log/audit/audit.log")
AUDIT_BPF = 1334
AUDIT_SYSCALL = 1300
AUDIT_AVC = 1400
_UNSET_AUID = 4294967295


@dataclass(frozen=True)
class Actor:
    """The process an audit event names, from the event's SYSCALL record (None: absent)."""

    pid: int | None = None
    exe: str | None = None
    comm: str | None = None
    auid: int | None = None
    """Login uid; None when unset (4294967295: a daemon, not a login session)."""
    uid: int | None = None


@dataclass(frozen=True)
class BpfEvent:
    """One LOAD or UNLOAD of a program, with who did it when the log says so."""

    time: float
    serial: int
    prog_id: int
    op: str
    actor: Actor = field(default_factory=Actor)


@dataclass(frozen=True)
class AvcDenial:
    """One SELinux denial of a BPF/perf permission, with the process that asked."""

    time: float
    serial: int
    tclass: str
    perms: tuple[str, ...]
    """The watched permissions denied (``prog_load``, ``open``, ``bpf``...)."""
    scontext: str | None
    """The process's security context; its type (third field) is the domain."""
    tcontext: str | None
    permissive: bool
    """True: logged as denied but allowed (permissive mode or domain)."""
    actor: Actor = field(default_factory=Actor)
    """From the SYSCALL record; pid and comm from the AVC record itself when there is none."""

    @property
    def domain(self) -> str | None:
        parts = (self.scontext or "").split(":")
        return parts[2] if len(parts) >= 3 else None

    def as_dict(self) -> dict:
        return {
            "time": self.time,
            "serial": self.serial,
            "tclass": self.tclass,
            "perms": list(self.perms),
            "domain": self.domain,
            "scontext": self.scontext,
            "tcontext": self.tcontext,
            "permissive": self.permissive,
            **asdict(self.actor),
        }


@dataclass(frozen=True)
class AuditLog:
    """What one pass over an audit log found."""

    bpf: list[BpfEvent] = field(default_factory=list)
    denials: list[AvcDenial] = field(default_factory=list)


def watched_perms(tclass: str | None, perms: str | None) -> tuple[str, ...]:
    """The permissions of one AVC record that the detector reports (empty: none).

    auparse gives the braces' content comma-separated (``open,kernel``).
    """
    if tclass not in AVC_CLASSES or not perms:
        return ()
    only = AVC_CLASSES[tclass]
    names = [p for p in perms.replace(",", " ").split() if p]
    return tuple(p for p in names if only is None or p in only)


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


def _avc_fields(parser) -> dict[str, str | None]:
    fields = {name: _field(parser, name) for name in ("scontext", "tcontext", "permissive", "pid")}
    fields["comm"] = _interpreted(parser, "comm")  # hex-encoded when odd characters
    return fields


def read_log(path: Path) -> AuditLog:
    """BPF LOAD/UNLOAD events and watched AVC denials in one audit log file, oldest first."""
    import auparse  # Debian python3-audit, via the venv's system site-packages

    parser = auparse.AuParser(auparse.AUSOURCE_FILE, str(path))
    out = AuditLog()
    while parser.parse_next_event():
        bpf: list[tuple[int, str]] = []
        avcs: list[tuple[str, tuple[str, ...], dict[str, str | None]]] = []
        sys_fields: dict[str, str | None] = {}
        parser.first_record()
        while True:
            rtype = parser.get_type()
            if rtype == AUDIT_BPF:
                prog = _int(_field(parser, "prog-id"))
                op = _field(parser, "op")
                if prog is not None and op:
                    bpf.append((prog, op))
            elif rtype == AUDIT_AVC and _field(parser, "seresult") == "denied":
                tclass = _field(parser, "tclass") or ""
                perms = watched_perms(tclass, _field(parser, "seperms"))
                if perms:
                    avcs.append((tclass, perms, _avc_fields(parser)))
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
        if not bpf and not avcs:
            continue
        ts = parser.get_timestamp()
        when = ts.sec + ts.milli / 1000.0
        actor = _actor(sys_fields)
        for prog, op in bpf:
            out.bpf.append(BpfEvent(when, ts.serial, prog, op, actor))
        for tclass, perms, f in avcs:
            who = actor
            if not sys_fields:  # no SYSCALL record: the AVC record names the process
                who = Actor(pid=_int(f["pid"]), comm=_strip_quotes(f["comm"]))
            out.denials.append(
                AvcDenial(when, ts.serial, tclass, perms, f["scontext"], f["tcontext"],
                          f["permissive"] == "1", who)
            )  # fmt: skip
    return out


def _actor(sys_fields: dict[str, str | None]) -> Actor:
    auid = _int(sys_fields.get("auid"))
    return Actor(
        pid=_int(sys_fields.get("pid")),
        exe=_strip_quotes(sys_fields.get("exe")),
        comm=_strip_quotes(sys_fields.get("comm")),
        auid=None if auid == _UNSET_AUID else auid,
        uid=_int(sys_fields.get("uid")),
    )


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
    denials: list[AvcDenial] = field(default_factory=list)
    """SELinux denials of BPF/perf permissions, oldest first."""
    live_loads: dict[int, dict] = field(default_factory=dict)
    """prog id → its LOAD record, for programs still loaded (who loaded what is there)."""


def summarize(
    events: list[BpfEvent], live_ids: set[int], denials: list[AvcDenial] | None = None
) -> History:
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
                    "pid": load.actor.pid if load else None,
                    "exe": load.actor.exe if load else None,
                    "comm": load.actor.comm if load else None,
                    "auid": load.actor.auid if load else None,
                }
            )
    live = {
        prog_id: {"prog_id": prog_id, **_who(ev)}
        for prog_id, ev in loads.items()
        if prog_id in live_ids
    }
    return History(events, transient, list(denials or ()), live)


def _who(ev: BpfEvent) -> dict:
    a = ev.actor
    return {"loaded_at": ev.time, "pid": a.pid, "exe": a.exe, "comm": a.comm, "auid": a.auid}


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
        log = read_log(path)
        return summarize(log.bpf, live_ids, log.denials), None
    except (OSError, RuntimeError) as exc:
        return None, f"cannot read audit log {path}: {exc}"
