"""Findings about the host rather than a hook: posture, load history, stale sessions."""

from __future__ import annotations

from collections.abc import Iterable

from ecap import remediation
from ecap.detect.findings import _finding_id, make_finding
from ecap.detect.sessions import Verdict


def _show(value: object) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_show(v)}" for k, v in value.items())
    if isinstance(value, list):
        return " ".join(map(str, value)) or "none"
    return "unknown" if value is None else str(value)


def posture_findings(issues: Iterable) -> list[dict]:
    return [
        make_finding(
            fid=_finding_id("posture", i.key),
            severity=i.severity,
            category="posture",
            title=i.title,
            summary=f"{i.key}: {_show(i.value)}",
            evidence=[f"{i.key}: {_show(i.value)}"],
            why=i.why,
            remediation=list(i.remediation),
        )
        for i in issues
    ]


def history_findings(transient: list[dict]) -> list[dict]:
    if not transient:
        return []
    loaders = sorted({t.get("exe") or "?" for t in transient})
    return [
        make_finding(
            fid=_finding_id("history", tuple(t["prog_id"] for t in transient)),
            severity="info",
            category="load-history",
            title=f"{len(transient)} BPF program(s) were loaded and unloaded since the audit "
            "log began",
            summary="loaded by " + ", ".join(loaders[:10]),
            evidence=[
                f"prog {t['prog_id']} loaded by {t.get('exe')} (pid {t.get('pid')}, auid "
                f"{t.get('auid')}) and unloaded"
                for t in transient[:50]
            ],
            why="a sniffer that ran between scans is visible only in the audit trail",
            remediation=[remediation.AUDITD_BPF_SYSCALLS],
        )
    ]


def stale_session_findings(verdicts: Iterable[Verdict]) -> list[dict]:
    """Session files whose capture process is gone: a capture killed with SIGKILL
    never removed its file nor journalled its stop (an accountability gap)."""
    return [
        make_finding(
            fid=_finding_id("stale-session", v.session_id, v.capture_pid),
            severity="medium",
            category="stale-session",
            title=f"Stale capture session {v.session_id}: capture pid {v.capture_pid} "
            "is gone but its session file remains",
            summary="the capture did not stop cleanly (killed?): its stop is missing "
            "from the journal (ecap-audit journal verify lists it)",
            programs=sorted(v.prog_ids),
            evidence=[
                f"session file {v.path}" if v.path else f"session {v.session_id}",
                f"capture pid {v.capture_pid} is not running",
                f"session verdict: {v.status} ({v.reason})",
            ],
            why="a capture that ends without its stop record leaves an audit trail "
            "that cannot say when the capture ended or how much it captured",
            remediation=[remediation.AUDITD_BPF_SYSCALLS],
        )
        for v in verdicts
        if not v.capture_alive and v.capture_pid
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
            make_finding(
                fid=_finding_id("selinux-denial", domain),
                severity="high" if allowed else "medium",
                category="selinux-denial",
                title=f"SELinux {verdict} {', '.join(asked)} to {domain} ({', '.join(who[:3])})",
                summary=f"{len(items)} AVC record(s), pids {' '.join(map(str, pids)) or '?'}"
                + (f"; {len(allowed)} in permissive mode (not blocked)" if allowed else ""),
                evidence=[
                    f"avc denied {{ {' '.join(d.perms)} }} tclass={d.tclass} pid {d.actor.pid} "
                    f"comm {d.actor.comm} exe {d.actor.exe} scontext={d.scontext} "
                    f"permissive={int(d.permissive)}"
                    for d in items[:50]
                ],
                why="a process tried to load BPF programs, open perf events or use CAP_BPF/"
                "CAP_PERFMON from a domain that may not: an attempt to install a probe"
                + (", which permissive mode let through" if allowed else ", refused"),
                remediation=[remediation.RESPOND_ROGUE_SNIFFER, remediation.SELINUX_CONFINE_BPF],
            )
        )
    return out
