"""From inventory to findings: who hooks what, whose plaintext, and is it allowed.

Probes are grouped by *actor* — the process holding them, or, when no process
does, the bpffs pin or tracefs event that keeps them alive — so one finding says
"pid 4242 (bpftrace) hooks SSL_write in libssl.so.3; 3 processes exposed". Each
hook is judged by what its program can do and where it hooks
(:mod:`ecap.detect.judge`, the rule table); an authorized ecap capture makes the
finding ``info``, a genuine but expired one ``high``. Programs without a visible
attachment are :mod:`ecap.detect.program_findings`; posture, history and stale
sessions are :mod:`ecap.detect.host_findings`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from ecap import remediation
from ecap.detect import capabilities as capmod
from ecap.detect import known_tools, owners
from ecap.detect.classify import DATA_REACH, PARTIAL_PLAINTEXT_REACH, reach
from ecap.detect.document import RANK, SEVERITIES
from ecap.detect.judge import (
    COUNTER,
    LEGACY,
    SIGNALS,
    SNIFFER,
    TAMPERING,
    UNKNOWN,
    HookVerdict,
    judge_hook,
    worse,
)
from ecap.detect.model import Holder, Link, Map, Pin, Probe, Program
from ecap.detect.sessions import AUTHORIZED, EXPIRED, Verdict

if TYPE_CHECKING:
    from ecap.detect.resolve import Resolved

__all__ = ["RANK", "SEVERITIES"]  # re-exported: the one severity order (detect/document.py)

ROGUE_REMEDIATION = (
    remediation.RESPOND_ROGUE_SNIFFER,
    remediation.AUDITD_BPF_SYSCALLS,
    remediation.SECCOMP_DENY_BPF,
    remediation.APPARMOR_DENY_TRACING,
    remediation.CONTAINER_CAPABILITIES,
)


@dataclass
class Inventory:
    """Everything collected, indexed for reasoning."""

    programs: dict[int, Program]
    maps: dict[int, Map]
    links: dict[int, Link]
    holders: list[Holder]
    probes: list[Probe]
    pins: list[Pin]
    verdicts: list[Verdict] = field(default_factory=list)
    _by_object: dict[tuple[str, int], list[int]] | None = field(default=None, repr=False)
    _pins_by_object: dict[tuple[str, int], list[Pin]] | None = field(default=None, repr=False)

    def holders_of(self, kind: str, obj_id: int) -> list[int]:
        """Pids with an fd on this object (indexed once: scans with thousands of
        probes ask for every one of them)."""
        if self._by_object is None:
            index: dict[tuple[str, int], set[int]] = {}
            for h in self.holders:
                index.setdefault((h.kind, h.obj_id), set()).add(h.pid)
            self._by_object = {k: sorted(v) for k, v in index.items()}
        return self._by_object.get((kind, obj_id), [])

    def pins_of(self, kind: str, obj_id: int) -> list[Pin]:
        if self._pins_by_object is None:
            pins: dict[tuple[str, int], list[Pin]] = {}
            for p in self.pins:
                pins.setdefault((p.kind, p.obj_id), []).append(p)
            self._pins_by_object = pins
        return self._pins_by_object.get((kind, obj_id), [])

    def held_progs(self) -> dict[int, set[int]]:
        """pid → ids of programs it keeps alive (directly, via a link or a perf event)."""
        out: dict[int, set[int]] = {}
        for h in self.holders:
            prog = h.obj_id if h.kind == "prog" else h.prog_id
            if prog:
                out.setdefault(h.pid, set()).add(prog)
        return out


def link_probes(links: Iterable[Link]) -> list[Probe]:
    """Probes described by perf-event and uprobe_multi links (kernel ≥ 6.6 / 6.8)."""
    out: list[Probe] = []
    for link in links:
        info = link.info
        if link.type == "perf_event" and info.get("perf_event_type") in ("uprobe", "uretprobe"):
            out.append(
                Probe(
                    "link",
                    info["perf_event_type"],
                    info.get("file", ""),
                    info.get("offset", 0),
                    link.prog_id,
                    link.id,
                )
            )
        elif link.type == "perf_event" and info.get("perf_event_type") in ("kprobe", "kretprobe"):
            out.append(
                Probe(
                    "link",
                    info["perf_event_type"],
                    info.get("func", ""),
                    info.get("offset", 0),
                    link.prog_id,
                    link.id,
                )
            )
        elif link.type == "perf_event" and info.get("perf_event_type") == "tracepoint":
            out.append(
                Probe("link", "tracepoint", info.get("tracepoint", ""), 0, link.prog_id, link.id)
            )
        elif link.type == "uprobe_multi":
            kind = "uretprobe" if info.get("retprobe") else "uprobe"
            for off in info.get("offsets", []):
                out.append(
                    Probe(
                        "uprobe_multi",
                        kind,
                        info.get("path", ""),
                        off,
                        link.prog_id,
                        link.id,
                        pid_filter=info.get("pid") or None,
                    )
                )
    return out


def merge_probes(
    fd_probes: list[Probe], from_links: list[Probe], from_tracefs: list[Probe]
) -> list[Probe]:
    """One probe per hook: a link, its fdinfo and the perf fd behind it are one attachment.

    Probes are keyed by (program, type, target, offset); later sightings only
    fill in what earlier ones lacked (link id, holder, fd). A tracefs event that a
    perf/BPF probe already covers is not listed twice.
    """
    merged: dict[tuple, Probe] = {}
    for p in [*fd_probes, *from_links]:
        key = (p.prog_id, p.type, p.target, p.offset, p.source == "uprobe_multi")
        old = merged.get(key)
        if old is None:
            merged[key] = p
            continue
        merged[key] = replace(
            old,
            link_id=old.link_id if old.link_id is not None else p.link_id,
            holder_pid=old.holder_pid or p.holder_pid,
            fd=old.fd if old.fd is not None else p.fd,
        )
    out = list(merged.values())
    holders: dict[tuple, set[int]] = {}
    for p in out:
        if p.holder_pid:
            holders.setdefault((p.type, p.target, p.offset), set()).add(p.holder_pid)
    out.extend(t for t in from_tracefs if t.enabled or not _loader_event_of(t, holders))
    return out


def _loader_event_of(event: Probe, holders: dict[tuple, set[int]]) -> bool:
    """Whether a disabled tracefs event is a BPF loader's own way in to a probe the
    fd walk already reports: bcc's and libbpf's tracefs fallbacks define an event
    (left disabled) named after the attaching process (``…_bcc_PID``,
    ``libbpf_PID_…``) and attach through a perf fd that process holds. Any other
    disabled event is a probe of its own, even where a BPF program hooks the same
    place (bpftrace on SSL_read must not hide someone's ``r:…SSL_read`` event); an
    *enabled* one records to the ftrace buffer by itself, whoever else hooks there."""
    named = _LOADER_EVENT.search(event.event or "")
    if named is None:
        return False
    pid = int(named.group("bcc") or named.group("libbpf"))
    return pid in holders.get((event.type, event.target, event.offset), ())


_LOADER_EVENT = re.compile(r"_bcc_(?P<bcc>\d+)$|/libbpf_(?P<libbpf>\d+)_")
"""The attaching process in a tracefs fallback's event name (``group/event``)."""


def _actor(inv: Inventory, probe: Probe) -> tuple[str, object]:
    if probe.holder_pid:
        return ("pid", probe.holder_pid)
    if probe.source == "tracefs":
        return ("tracefs", probe.event)
    # A link names its holder more precisely than the program it runs, so it goes first.
    for kind, obj_id in (("link", probe.link_id), ("prog", probe.prog_id)):
        if not obj_id:  # ids start at 1; 0/None means the probe has no such object
            continue
        pids = inv.holders_of(kind, obj_id)
        if pids:
            return ("pid", pids[0])
        pins = inv.pins_of(kind, obj_id)
        if pins:
            return ("pin", pins[0].path)
    return ("kernel", probe.link_id or probe.prog_id)


def _verdict_for(inv: Inventory, pid: int | None, prog_ids: set[int]) -> Verdict | None:
    """The session that covers these programs held by this pid, if any claims to."""
    if not prog_ids:
        return None
    for v in inv.verdicts:
        if v.capture_pid == pid and prog_ids <= v.prog_ids:
            return v
    return None


def _claims(inv: Inventory, prog_ids: set[int]) -> list[Verdict]:
    return [v for v in inv.verdicts if prog_ids & v.prog_ids]


def make_finding(
    *,
    fid: str,
    severity: str,
    category: str,
    title: str,
    summary: str,
    evidence: list[str],
    why: str,
    remediation: list[str],
    owner: dict | None = None,
    programs: list[int] | None = None,
    capabilities: list[str] | None = None,
) -> dict:
    """A finding with every field a hook finding has (readers rely on one shape)."""
    return {
        "id": fid,
        "severity": severity,
        "category": category,
        "title": title,
        "summary": summary,
        "hooked": [],
        "owner": owner,
        "victims": [],
        "authorized": False,
        "authorization": {},
        "programs": programs or [],
        "evidence": evidence,
        "why": why,
        "remediation": remediation,
        "capabilities": capabilities,
        "reach": [],
        "destinations": None,
    }


def _finding_id(*parts: object) -> str:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()
    return f"ECAP-{digest[:12]}"


@dataclass
class _Group:
    actor: tuple[str, object]
    probes: list[Probe] = field(default_factory=list)


@dataclass(frozen=True)
class _Hook:
    """One probe, resolved and judged."""

    probe: Probe
    resolved: Resolved | None
    reach: str
    caps: tuple[str, ...] | None
    verdict: HookVerdict


def probe_findings(
    inv: Inventory,
    victims: Callable[[dict], dict] = owners.victims,
    kernel_inodes: dict[tuple[int, int], tuple[int, int]] | None = None,
) -> list[dict]:
    """One finding per actor whose hooks matter (uprobes, kprobes, data tracepoints).

    ``victims`` finds the processes mapping each hooked file ((st_dev, st_ino) →
    path); the scan passes the in-kernel search when it has loaded one.
    ``kernel_inodes`` maps (holder pid, fd) of a perf-event uprobe to the inode the
    kernel hooked, when the in-kernel walk could read it.
    """
    kernel_inodes = kernel_inodes or {}
    groups: dict[tuple[str, object], _Group] = {}
    for probe in inv.probes:
        key = _actor(inv, probe)
        groups.setdefault(key, _Group(key)).probes.append(probe)

    resolved: dict[tuple, Resolved] = {}
    files: dict = {}  # per hooked file, shared by all its offsets
    hooked_by_group: dict[tuple[str, object], list[_Hook]] = {}
    for key, group in groups.items():
        rows = []
        for p in group.probes:
            res = None
            if p.is_uprobe:
                root_pid = key[1] if key[0] == "pid" else None
                kino = kernel_inodes.get((p.holder_pid, p.fd)) if p.fd is not None else None
                rk = (p.target, p.offset, root_pid, kino)
                if rk not in resolved:
                    from ecap.detect.resolve import resolve  # pyelftools: only if hooked

                    resolved[rk] = resolve(p.target, p.offset, root_pid, kino, files=files)  # type: ignore[arg-type]
                res = resolved[rk]
            rows.append(_judged(inv, p, res))
        rows = [h for h in rows if h.verdict.report]
        if rows:
            hooked_by_group[key] = rows

    files = {
        h.resolved.inode: h.resolved.opened
        for rows in hooked_by_group.values()
        for h in rows
        if h.resolved and h.resolved.inode
    }
    victims_by_file = victims(files)

    return [
        _probe_finding(inv, key, rows, victims_by_file) for key, rows in hooked_by_group.items()
    ]


def _judged(inv: Inventory, p: Probe, res: Resolved | None) -> _Hook:
    cls = res.cls if res is not None else reach(p.target, None, p.type)
    prog = inv.programs.get(p.prog_id) if p.prog_id else None
    caps = prog.capabilities if prog is not None else None
    verdict = judge_hook(
        reach=cls,
        probe_type=p.type,
        caps=caps,
        has_program=p.source != "tracefs",
        enabled=p.enabled is not False,
        path_problem=bool(res and res.path_problem),
    )
    return _Hook(p, res, cls, caps, verdict)


_WHY = {
    SNIFFER: "a program that reads user memory and ships it to user space, attached where "
    "plaintext passes, sees data before encryption or as typed/queried: passwords, tokens, "
    "session cookies, query text",
    UNKNOWN: "a probe on this function sees data before encryption or as typed/queried: "
    "passwords, tokens, session cookies, query text (what the program can do is unknown "
    "to this scan)",
    LEGACY: "a probe on this function sees data before encryption or as typed/queried: "
    "passwords, tokens, session cookies, query text",
    TAMPERING: "a program that writes the memory of the processes it hooks, or changes "
    "what their functions return, can alter data, credentials and control flow",
    SIGNALS: "a program that sends signals from a hook can stop or kill the processes "
    "that run the hooked code",
    COUNTER: "it cannot read memory or ship data out (it counts or filters), but it runs "
    "on every call of another program's function",
}


def _probe_finding(
    inv: Inventory,
    key: tuple[str, object],
    rows: list[_Hook],
    victims_by_file: dict,
) -> dict:
    kind, ident = key
    prog_ids = {h.probe.prog_id for h in rows if h.probe.prog_id}
    owner = owners.describe(ident) if kind == "pid" else None  # type: ignore[arg-type]
    if owner is not None:
        owner = {**owner, "kind": "process"}
    hooked = [_hooked_entry(h) for h in rows]
    reaches = {h.reach for h in rows}
    plaintext = any(h.verdict.plaintext for h in rows)
    uprobe = any(h.probe.is_uprobe for h in rows)
    kinds = {h.verdict.kind for h in rows}

    victims: list[dict] = []
    seen_v: set[int] = set()
    for h in rows:
        r = h.resolved
        if r and r.inode:
            for v in victims_by_file.get(r.inode, []):
                if v["pid"] not in seen_v:
                    seen_v.add(v["pid"])
                    victims.append({**v, "file": r.path})

    verdict = _verdict_for(inv, ident if kind == "pid" else None, prog_ids)  # type: ignore[arg-type]
    authorized = verdict is not None and verdict.status == AUTHORIZED
    expired = verdict is not None and verdict.status == EXPIRED
    if authorized or expired:
        # the kernel hides a perf uprobe's pid filter; the verified token names the targets
        scope = {t["pid"] for t in verdict.authorization.get("targets", [])}  # type: ignore[union-attr]
        victims = [{**v, "authorized_target": v["pid"] in scope} for v in victims]
    worst = "info"
    for h in rows:
        worst = worse(worst, h.verdict.severity)
    tampering = TAMPERING in kinds
    if authorized and not tampering:
        severity = "info"
    elif expired and not tampering:
        severity = "high"  # genuine, but nobody may capture on it any more
    else:
        severity = worst

    evidence = _evidence(inv, kind, ident, rows, owner, prog_ids, victims, verdict)
    functions = sorted({h["function"] or f"{h['path']}+{h['offset']:#x}" for h in hooked})
    shown = ", ".join(functions[:4]) + (
        f" (+{len(functions) - 4} more)" if len(functions) > 4 else ""
    )
    who = _who(kind, ident, owner)
    caps = _union_caps(h.caps for h in rows if h.probe.source != "tracefs")
    can = f" ({capmod.describe(caps)})" if any(h.probe.source != "tracefs" for h in rows) else ""
    if tampering:
        title = f"{who} can tamper with the processes it hooks: {shown}{can}"
        category = "tampering"
        why = _WHY[TAMPERING]
        remedy = list(ROGUE_REMEDIATION)
    elif plaintext:
        what = "/".join(sorted(reaches & set(DATA_REACH))) or "plaintext"
        title = f"{who} hooks {what} plaintext: {shown}{can}"
        if authorized:
            title = f"Authorized ecap capture: {who} hooks {shown}"
        elif expired:
            title = f"Expired ecap authorization still attached: {who} hooks {shown}"
        category = "plaintext-hook"
        why = _WHY[SNIFFER if SNIFFER in kinds else UNKNOWN if UNKNOWN in kinds else LEGACY]
        if reaches <= set(PARTIAL_PLAINTEXT_REACH):
            why += (
                "; at the I/O or syscall level that is everything the process does not "
                "encrypt itself (files, pipes, plain sockets)"
            )
        remedy = [remediation.RESPOND_ROGUE_SNIFFER] if authorized else list(ROGUE_REMEDIATION)
    else:
        title = f"{who} hooks {shown}{can}"
        category = "uprobe" if uprobe else "tracepoint" if _only_tracepoints(rows) else "kprobe"
        if SIGNALS in kinds:
            why = _WHY[SIGNALS]
        elif SNIFFER in kinds:
            why = (
                "it reads the memory of the processes running the hooked code and ships "
                "it to user space"
            )
        elif COUNTER in kinds:
            why = _WHY[COUNTER]
        else:
            why = "code running on every call of another program's functions can read its memory"
        remedy = [remediation.AUDITD_BPF_SYSCALLS, remediation.SECCOMP_DENY_BPF]
    if any(h.probe.source == "tracefs" for h in rows):
        remedy += [remediation.MOUNTS_TRACEFS_DEBUGFS, remediation.AUDITD_TRACING_WATCHES]
    summary = (
        f"{len(hooked)} probe(s) on {len({h['path'] or h['function'] for h in hooked})} "
        f"target(s); {len(victims)} process(es) currently map a hooked file"
    )
    finding = {
        "id": _finding_id(category, kind, ident, sorted(functions)),
        "severity": severity,
        "category": category,
        "title": title,
        "summary": summary,
        "hooked": hooked,
        "owner": owner or _static_owner(inv, kind, ident, prog_ids),
        "victims": victims,
        "authorized": authorized,
        "authorization": verdict.authorization
        if verdict and verdict.status in (AUTHORIZED, EXPIRED)
        else {},
        "programs": sorted(prog_ids),
        "evidence": evidence,
        "why": why,
        "remediation": list(dict.fromkeys(remedy)),
        "capabilities": caps,
        "reach": sorted(reaches),
        # where the loot goes: asked of sniffers' owners only (a decoy counter holding
        # thousands of fds costs nothing here)
        "destinations": owners.destinations(ident)  # type: ignore[arg-type]
        if kind == "pid" and kinds & {SNIFFER, UNKNOWN, TAMPERING}
        else None,
    }
    if finding["destinations"]:
        finding["evidence"] += owners.destination_evidence(finding["destinations"])
    return finding


def _only_tracepoints(rows: list[_Hook]) -> bool:
    return all(h.probe.type in ("tracepoint", "raw_tracepoint") for h in rows)


def _union_caps(caps: Iterable[tuple[str, ...] | None]) -> list[str] | None:
    """The union of known capabilities; None when none of them is known."""
    known = [c for c in caps if c is not None]
    if not known:
        return None
    have = {c for cs in known for c in cs}
    return [c for c in capmod.ALL if c in have]


def _hooked_entry(h: _Hook) -> dict:
    p, r = h.probe, h.resolved
    function = r.function if r else (p.target if not p.is_uprobe else None)
    entry = {
        "path": p.target if p.is_uprobe else None,
        "offset": p.offset,
        "function": function,
        "delta": r.delta if r else 0,
        "class": h.reach,
        "type": p.type,
        "source": p.source,
        "prog_id": p.prog_id,
        "link_id": p.link_id,
        "fd": p.fd,
        "event": p.event,
        "enabled": p.enabled,
        "pid_filter": p.pid_filter,
        "capabilities": list(h.caps) if h.caps is not None else None,
        "judged": h.verdict.kind,
    }
    if r and r.note:
        entry["note"] = r.note
    if r and r.path_problem:
        entry["path_problem"] = r.path_problem
    return entry


def program_evidence(inv: Inventory, prog_ids: Iterable[int]) -> list[str]:
    """What each program calls and can do, from its translated instructions."""
    out = []
    for i in sorted(prog_ids):
        prog = inv.programs.get(i)
        if prog is None:
            continue
        if prog.helpers is None:
            out.append(f"prog {i}: helper calls unknown (instructions or addresses not readable)")
            continue
        calls = ", ".join(prog.helpers[:12]) + (" ..." if len(prog.helpers) > 12 else "")
        out.append(
            f"prog {i} ({prog.type}) calls {calls or 'no helpers'}: "
            f"{capmod.describe(prog.capabilities)}"
        )
    return out


def _who(kind: str, ident: object, owner: dict | None) -> str:
    if kind == "pid":
        return f"pid {ident} ({owner['comm']})" if owner else f"pid {ident} (exited)"
    if kind == "pin":
        return f"pinned object {ident} (no process holds it)"
    if kind == "tracefs":
        return f"tracefs event {ident}"
    return f"kernel object {ident} (no holder or pin visible)"


def _static_owner(inv: Inventory, kind: str, ident: object, prog_ids: set[int]) -> dict:
    """For hooks no process holds: what keeps them alive, and who loaded them."""
    out: dict = {"pid": None, "kind": kind}
    if kind == "pin":
        out["pinned_at"] = ident
        pins = [p for p in inv.pins if p.path == ident]
        if pins:
            out["mount_ns"] = pins[0].mount_ns
    elif kind == "tracefs":
        out["tracefs_event"] = ident
    uids = sorted(
        {
            inv.programs[i].created_by_uid
            for i in prog_ids
            if i in inv.programs and inv.programs[i].created_by_uid is not None
        }
    )
    if uids:
        out["created_by_uid"] = uids
    return out


def _evidence(
    inv: Inventory,
    kind: str,
    ident: object,
    rows: list[_Hook],
    owner: dict | None,
    prog_ids: set[int],
    victims: list[dict],
    verdict: Verdict | None,
) -> list[str]:
    ev: list[str] = []
    for h in rows:
        p, r = h.probe, h.resolved
        where = f"{p.target}:{p.offset:#x}" if p.is_uprobe else p.target
        via = {
            "perf_event": f"perf_event fd {p.fd} of pid {p.holder_pid} (BPF_TASK_FD_QUERY)",
            "link": f"bpf link {p.link_id}",
            "uprobe_multi": f"uprobe_multi link {p.link_id}",
            "tracefs": f"tracefs event {p.event} ({'enabled' if p.enabled else 'disabled'})",
        }.get(p.source, p.source)
        name = f" = {r.function}+{r.delta:#x}" if r and r.function else ""
        prog = f" runs prog {p.prog_id}" if p.prog_id else ""
        ev.append(f"{p.type} at {where}{name} via {via}{prog}")
        if r and r.note:
            ev.append(f"{where}: {r.note}")
        if r and r.path_problem:
            ev.append(f"{where}: {r.path_problem}")
    ev += program_evidence(inv, prog_ids)
    names = [inv.programs[i].name for i in sorted(prog_ids) if i in inv.programs]
    map_ids = {m for i in prog_ids if i in inv.programs for m in inv.programs[i].map_ids}
    map_names = [inv.maps[m].name for m in sorted(map_ids) if m in inv.maps]
    if names:
        ev.append(f"program names: {', '.join(names)}")
    outputs = [inv.maps[m] for m in sorted(map_ids) if m in inv.maps and inv.maps[m].event_output]
    if outputs:
        ships = any(
            inv.programs[i].capabilities is None or capmod.OUTPUT in inv.programs[i].capabilities
            for i in prog_ids
            if i in inv.programs
        )
        ev.append(
            ("ships data to user space through " if ships else "refers to (but never writes) ")
            + ", ".join(f"{m.type} map {m.name or m.id}" for m in outputs)
        )
    ev += known_tools.evidence(
        owner.get("exe") if owner else None,
        owner.get("cmdline", []) if owner else [],
        names,
        map_names,
    )
    fired = [v["pid"] for v in victims if v.get("uprobes_mapping")]
    if fired:
        ev.append(
            f"[uprobes] mapping present in pid(s) {', '.join(map(str, fired[:20]))}: "
            "a uprobe has fired there"
        )
    if kind == "pid":
        for pin in inv.pins:
            if pin.kind == "prog" and pin.obj_id in prog_ids:
                ev.append(f"program {pin.obj_id} also pinned at {pin.path}")
    for claim in _claims(inv, prog_ids):
        if claim is not verdict or claim.status not in (AUTHORIZED, EXPIRED):
            ev.append(
                f"session {claim.session_id} claims these programs but was not accepted: "
                f"{claim.reason}"
            )
    if verdict is not None and verdict.status in (AUTHORIZED, EXPIRED):
        ev.append(f"session {verdict.session_id}: {verdict.reason}")
    return ev


def sort_findings(findings: list[dict]) -> list[dict]:
    return sorted(findings, key=lambda f: (-RANK[f["severity"]], f["category"], f["title"]))
