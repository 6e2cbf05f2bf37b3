"""From inventory to findings: who hooks what, whose plaintext, and is it allowed.

Probes are grouped by *actor* — the process holding them, or, when no process
does, the bpffs pin or tracefs event that keeps them alive — so one finding says
"pid 4242 (bpftrace) hooks SSL_write in libssl.so.3; 3 processes exposed". The
severity rules (issue 4):

* hooks a plaintext function, authorized live capture ........ info
* same, token genuine but expired, still attached ............ high
* anything else hooking a plaintext function ................. critical
* uprobe on another function .................................. medium
* tracefs plaintext probe defined but disabled, kprobes ....... medium / low
* program pinned with no holder and no attachment seen ........ low
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from ecap import remediation
from ecap.detect import known_tools, owners
from ecap.detect.classify import PLAINTEXT_CLASSES
from ecap.detect.model import Holder, Link, Map, Pin, Probe, Program
from ecap.detect.sessions import AUTHORIZED, EXPIRED, Verdict

if TYPE_CHECKING:
    from ecap.detect.resolve import Resolved

SEVERITIES = ("info", "low", "medium", "high", "critical")
RANK = {s: i for i, s in enumerate(SEVERITIES)}

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

    def holders_of(self, kind: str, obj_id: int) -> list[int]:
        return sorted({h.pid for h in self.holders if h.kind == kind and h.obj_id == obj_id})

    def pins_of(self, kind: str, obj_id: int) -> list[Pin]:
        return [p for p in self.pins if p.kind == kind and p.obj_id == obj_id]

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
    seen = {(p.type, p.target, p.offset) for p in out}
    out.extend(t for t in from_tracefs if (t.type, t.target, t.offset) not in seen)
    return out


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


def _finding_id(*parts: object) -> str:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()
    return f"ECAP-{digest[:12]}"


@dataclass
class _Group:
    actor: tuple[str, object]
    probes: list[Probe] = field(default_factory=list)


def probe_findings(inv: Inventory, victims: Callable[[dict], dict] = owners.victims) -> list[dict]:
    """One finding per actor that hooks user functions (or kprobes).

    ``victims`` finds the processes mapping each hooked file ((st_dev, st_ino) →
    path); the scan
    passes the in-kernel search when it has loaded one.
    """
    groups: dict[tuple[str, object], _Group] = {}
    for probe in inv.probes:
        if probe.type in ("tracepoint", "raw_tracepoint"):
            continue
        key = _actor(inv, probe)
        groups.setdefault(key, _Group(key)).probes.append(probe)

    resolved: dict[tuple[str, int, int | None], Resolved] = {}
    hooked_by_group: dict[tuple[str, object], list[tuple[Probe, Resolved | None]]] = {}
    for key, group in groups.items():
        rows = []
        for p in group.probes:
            res = None
            if p.is_uprobe:
                root_pid = key[1] if key[0] == "pid" else None
                rk = (p.target, p.offset, root_pid)
                if rk not in resolved:
                    from ecap.detect.resolve import resolve  # pyelftools: only if hooked

                    resolved[rk] = resolve(p.target, p.offset, root_pid)  # type: ignore[arg-type]
                res = resolved[rk]
            rows.append((p, res))
        hooked_by_group[key] = rows

    files = {
        r.inode: r.opened for rows in hooked_by_group.values() for _, r in rows if r and r.inode
    }
    victims_by_file = victims(files)

    out = []
    for key, rows in hooked_by_group.items():
        out.append(_probe_finding(inv, key, rows, victims_by_file))
    return out


def _probe_finding(
    inv: Inventory,
    key: tuple[str, object],
    rows: list[tuple[Probe, Resolved | None]],
    victims_by_file: dict,
) -> dict:
    kind, ident = key
    prog_ids = {p.prog_id for p, _ in rows if p.prog_id}
    owner = owners.describe(ident) if kind == "pid" else None  # type: ignore[arg-type]
    if owner is not None:
        owner = {**owner, "kind": "process"}
    hooked, classes = [], set()
    for p, r in rows:
        function = r.function if r else (p.target if not p.is_uprobe else None)
        cls = r.cls if r else "other"
        classes.add(cls)
        entry = {
            "path": p.target if p.is_uprobe else None,
            "offset": p.offset,
            "function": function,
            "delta": r.delta if r else 0,
            "class": cls,
            "type": p.type,
            "source": p.source,
            "prog_id": p.prog_id,
            "link_id": p.link_id,
            "fd": p.fd,
            "event": p.event,
            "enabled": p.enabled,
            "pid_filter": p.pid_filter,
        }
        if r and r.note:
            entry["note"] = r.note
        hooked.append(entry)
    plaintext = bool(classes & set(PLAINTEXT_CLASSES))
    uprobe = any(p.is_uprobe for p, _ in rows)
    # live = attached through BPF, or a tracefs event that is enabled
    enabled = any(
        p.enabled is not False for p, r in rows if r is not None and r.cls in PLAINTEXT_CLASSES
    )

    victims: list[dict] = []
    seen_v: set[int] = set()
    for _p, r in rows:
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
    if plaintext and enabled:
        severity = "info" if authorized else "high" if expired else "critical"
    elif plaintext:
        severity = "medium"
    elif uprobe:
        severity = "info" if authorized else "medium"
    else:
        severity = "low"

    evidence = _evidence(inv, kind, ident, rows, owner, prog_ids, victims, verdict)
    functions = sorted({h["function"] or f"{h['path']}+{h['offset']:#x}" for h in hooked})
    shown = ", ".join(functions[:4]) + (
        f" (+{len(functions) - 4} more)" if len(functions) > 4 else ""
    )
    who = _who(kind, ident, owner)
    if plaintext:
        what = "/".join(sorted(classes & set(PLAINTEXT_CLASSES)))
        title = f"{who} hooks {what} plaintext: {shown}"
        if authorized:
            title = f"Authorized ecap capture: {who} hooks {shown}"
        elif expired:
            title = f"Expired ecap authorization still attached: {who} hooks {shown}"
        category = "plaintext-hook"
        why = (
            "a probe on this function sees data before encryption or as typed/queried: "
            "passwords, tokens, session cookies, query text"
        )
        remedy = [remediation.RESPOND_ROGUE_SNIFFER] if authorized else list(ROGUE_REMEDIATION)
    else:
        title = f"{who} hooks {shown}"
        category = "uprobe" if uprobe else "kprobe"
        why = "code running on every call of another program's functions can read its memory"
        remedy = [remediation.AUDITD_BPF_SYSCALLS, remediation.SECCOMP_DENY_BPF]
    if any(p.source == "tracefs" for p, _ in rows):
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
    }
    return finding


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
    rows: list[tuple[Probe, Resolved | None]],
    owner: dict | None,
    prog_ids: set[int],
    victims: list[dict],
    verdict: Verdict | None,
) -> list[str]:
    ev: list[str] = []
    for p, r in rows:
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
    names = [inv.programs[i].name for i in sorted(prog_ids) if i in inv.programs]
    map_ids = {m for i in prog_ids if i in inv.programs for m in inv.programs[i].map_ids}
    map_names = [inv.maps[m].name for m in sorted(map_ids) if m in inv.maps]
    if names:
        ev.append(f"program names: {', '.join(names)}")
    outputs = [inv.maps[m] for m in sorted(map_ids) if m in inv.maps and inv.maps[m].event_output]
    if outputs:
        ev.append(
            "ships data to user space through "
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


def pinned_program_findings(inv: Inventory, hooked_progs: set[int]) -> list[dict]:
    """Programs kept alive only by a pin, with no attachment we could see."""
    out = []
    for pin in inv.pins:
        if pin.kind != "prog" or pin.obj_id in hooked_progs:
            continue
        if inv.holders_of("prog", pin.obj_id):
            continue
        prog = inv.programs.get(pin.obj_id)
        out.append(
            {
                "id": _finding_id("pinned-program", pin.path, pin.obj_id),
                "severity": "low",
                "category": "pinned-program",
                "title": f"Program {prog.name if prog else pin.obj_id} is pinned at {pin.path} "
                "and held by no process",
                "summary": "a pinned program survives its loader; check what attaches it",
                "hooked": [],
                "owner": {
                    "pid": None,
                    "kind": "pin",
                    "pinned_at": pin.path,
                    "mount_ns": pin.mount_ns,
                    "created_by_uid": [prog.created_by_uid] if prog else [],
                },
                "victims": [],
                "authorized": False,
                "authorization": {},
                "programs": [pin.obj_id],
                "evidence": [f"{pin.kind} {pin.obj_id} pinned at {pin.path} ({pin.mount_ns})"],
                "why": "pins are how a loader leaves probes behind after it exits",
                "remediation": [remediation.AUDITD_BPF_SYSCALLS, remediation.SECCOMP_DENY_BPF],
            }
        )
    return out


def _show(value: object) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_show(v)}" for k, v in value.items())
    if isinstance(value, list):
        return " ".join(map(str, value)) or "none"
    return "unknown" if value is None else str(value)


def _ownerless(
    id_parts: tuple,
    severity: str,
    category: str,
    title: str,
    summary: str,
    evidence: list[str],
    why: str,
    fixes: list[str],
) -> dict:
    """A finding about the host or its logs rather than a live hook: no owner, no victims."""
    return {
        "id": _finding_id(*id_parts),
        "severity": severity,
        "category": category,
        "title": title,
        "summary": summary,
        "hooked": [],
        "owner": None,
        "victims": [],
        "authorized": False,
        "authorization": {},
        "evidence": evidence,
        "why": why,
        "remediation": fixes,
    }


def posture_findings(issues: Iterable) -> list[dict]:
    return [
        _ownerless(
            ("posture", i.key),
            i.severity,
            "posture",
            i.title,
            f"{i.key}: {_show(i.value)}",
            [f"{i.key}: {_show(i.value)}"],
            i.why,
            list(i.remediation),
        )
        for i in issues
    ]


def history_findings(transient: list[dict]) -> list[dict]:
    if not transient:
        return []
    loaders = sorted({t.get("exe") or "?" for t in transient})
    return [
        _ownerless(
            ("history", tuple(t["prog_id"] for t in transient)),
            "info",
            "load-history",
            f"{len(transient)} BPF program(s) were loaded and unloaded since the audit log began",
            "loaded by " + ", ".join(loaders[:10]),
            [
                f"prog {t['prog_id']} loaded by {t.get('exe')} (pid {t.get('pid')}, auid "
                f"{t.get('auid')}) and unloaded"
                for t in transient[:50]
            ],
            "a sniffer that ran between scans is visible only in the audit trail",
            [remediation.AUDITD_BPF_SYSCALLS],
        )
    ]


def denial_findings(denials: list) -> list[dict]:
    """One finding per SELinux domain refused BPF/perf permissions.

    ``denials`` are :class:`ecap.detect.audit_history.AvcDenial`. A refused attempt is
    medium (someone tried and failed); one logged with ``permissive=1`` went through
    and is high.
    """
    groups: dict[str, list] = {}
    for d in denials:
        groups.setdefault(d.domain or "?", []).append(d)
    out = []
    for domain, items in sorted(groups.items()):
        allowed = [d for d in items if d.permissive]
        asked = sorted({f"{d.tclass} {p}" for d in items for p in d.perms})
        who = sorted({d.actor.exe or d.actor.comm or "?" for d in items})
        pids = sorted({d.actor.pid for d in items if d.actor.pid is not None})
        verdict = "logged but allowed" if allowed else "denied"
        out.append(
            _ownerless(
                ("selinux-denial", domain),
                "high" if allowed else "medium",
                "selinux-denial",
                f"SELinux {verdict} {', '.join(asked)} to {domain} ({', '.join(who[:3])})",
                f"{len(items)} AVC record(s), pids {' '.join(map(str, pids)) or '?'}"
                + (f"; {len(allowed)} in permissive mode (not blocked)" if allowed else ""),
                [
                    f"avc denied {{ {' '.join(d.perms)} }} tclass={d.tclass} pid {d.actor.pid} "
                    f"comm {d.actor.comm} exe {d.actor.exe} scontext={d.scontext} "
                    f"permissive={int(d.permissive)}"
                    for d in items[:50]
                ],
                "a process tried to load BPF programs, open perf events or use CAP_BPF/"
                "CAP_PERFMON from a domain that may not: an attempt to install a probe"
                + (", which permissive mode let through" if allowed else ", refused"),
                [remediation.RESPOND_ROGUE_SNIFFER, remediation.SELINUX_CONFINE_BPF],
            )
        )
    return out


def sort_findings(findings: list[dict]) -> list[dict]:
    return sorted(findings, key=lambda f: (-RANK[f["severity"]], f["category"], f["title"]))
