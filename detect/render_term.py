"""The scan document for a human at a terminal (rich): findings first, worst first.

Every host-derived string goes through :func:`ecap.text.for_rich`, so control
characters are shown as ``\\xNN`` and ``[bold]``-style markup in a process name
is printed, not interpreted.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import IO

from rich.console import Console
from rich.text import Text

from ecap.detect.views import VIEWS, line
from ecap.text import for_rich

STYLE = {
    "critical": "bold white on red",
    "high": "bold red",
    "medium": "yellow",
    "low": "cyan",
    "info": "green",
}


def _e(value: object) -> str:
    return for_rich(str(value)) if value is not None else ""


def _owner_line(owner: dict | None) -> str:
    if not owner:
        return ""
    if owner.get("pid") is None:
        where = owner.get("pinned_at") or owner.get("tracefs_event") or owner.get("kind")
        return f"no process holds it ({_e(owner.get('kind'))}: {_e(where)})"
    parts = [f"pid {owner['pid']}", _e(owner.get("comm")), _e(owner.get("exe"))]
    if owner.get("user") is not None:
        parts.append(f"user {_e(owner['user'])}")
    if owner.get("container_id"):
        parts.append(f"container {_e(owner['container_id'][:12])}")
    if owner.get("capabilities"):
        parts.append("caps " + ",".join(_e(c) for c in owner["capabilities"]))
    line = " · ".join(p for p in parts if p)
    if owner.get("cmdline"):
        line += "\n    cmdline: " + _e(" ".join(owner["cmdline"]))[:300]
    if owner.get("exe_sha256"):
        line += f"\n    sha256: {_e(owner['exe_sha256'])}"
    chain = owner.get("parent_chain") or []
    if chain:
        line += "\n    parents: " + " ← ".join(f"{p['pid']} {_e(p.get('comm'))}" for p in chain[:8])
    return line


def _hook_lines(hooked: list[dict]) -> dict[tuple, list[str]]:
    """Collapse repeated attachments of one function into one line with a count."""
    lines: dict[tuple, list[str]] = {}
    for hk in hooked:
        fn = hk.get("function") or "?"
        if hk.get("delta"):
            fn += f"+{hk['delta']:#x}"
        caps = hk.get("capabilities")
        can = "unknown" if caps is None else ", ".join(caps) or "nothing but count/filter"
        if hk.get("source") == "tracefs":
            can = "ftrace event (no BPF program)"
        key = (
            fn,
            hk.get("class"),
            hk.get("path") or "",
            hk.get("offset") or 0,
            hk.get("source"),
            can,
        )
        lines.setdefault(key, []).append(hk.get("type") or "?")
    return lines


def render(doc: dict, out: IO[str], *, inventory: bool = True, color: bool | None = None) -> None:
    console = Console(
        file=out,
        highlight=False,
        soft_wrap=False,
        width=120,
        force_terminal=color,
        no_color=color is False,
    )
    h = doc["host"]
    console.print(
        f"[bold]ecap-detect scan[/bold] of {_e(h.get('hostname'))} (kernel {_e(h.get('kernel'))}) "
        f"at {_e(doc.get('generated_at'))} — {doc['scanner']['processes']} processes, "
        f"{doc['scanner']['fds']} fds, {doc['scanner']['duration_ms']} ms"
    )
    counts = doc["summary"]["counts"]
    line = Text("findings: ")
    for sev in ("critical", "high", "medium", "low", "info"):
        line.append(f"{sev} {counts.get(sev, 0)}  ", style=STYLE[sev] if counts.get(sev) else "")
    console.print(line)

    for f in doc["findings"]:
        sev = f["severity"]
        console.print()
        console.print(
            f"[{STYLE[sev]}]{sev.upper():8}[/] [bold]{_e(f['title'])}[/bold]  "
            f"[dim]{_e(f['id'])} · {_e(f['category'])}[/dim]"
        )
        if f.get("summary"):
            console.print(f"  {_e(f['summary'])}")
        for (fn, cls, path, off, src, can), types in _hook_lines(f.get("hooked", [])).items():
            kinds = "+".join(sorted(set(types)))
            times = f" ×{len(types)}" if len(types) > len(set(types)) else ""
            where = f"in {_e(path)} @ {off:#x} " if path else ""
            console.print(
                f"  hooks [bold]{_e(fn)}[/bold] ({_e(cls)}; {_e(kinds)}{times}) "
                f"{where}via {_e(src)}; program can: {_e(can)}"
            )
        if f.get("capabilities") is not None and not f.get("hooked"):
            console.print(f"  programs can: {_e(', '.join(f['capabilities']) or 'nothing')}")
        dest = f.get("destinations") or {}
        for lst in dest.get("listening", []):
            flag = "[bold red]EXPOSED[/] " if lst.get("exposed") else ""
            console.print(
                f"  loot: {flag}listens on {_e(lst.get('proto'))} "
                f"{_e(lst.get('address'))}:{_e(lst.get('port'))}"
            )
        for c in dest.get("connections", [])[:8]:
            console.print(f"  loot: connected to {_e(c.get('peer'))} ({_e(c.get('status'))})")
        for path_w in dest.get("files_written", [])[:8]:
            console.print(f"  loot: writes {_e(path_w)}")
        if f.get("owner"):
            console.print(f"  owner: {_owner_line(f['owner'])}")
        if f.get("authorized") or f.get("authorization"):
            a = f.get("authorization") or {}
            exp = a.get("expires_at")
            exp_s = datetime.fromtimestamp(exp, UTC).isoformat() if exp else "?"
            console.print(
                f"  authorization: operator {_e(a.get('operator'))}, reason "
                f"{_e(a.get('reason'))!r}, expires {exp_s}, jti {_e(a.get('jti'))}"
            )
        victims = f.get("victims") or []
        if victims:
            shown = ", ".join(
                f"{v['pid']} {_e(v.get('comm'))}"
                + (" [uprobes]" if v.get("uprobes_mapping") else "")
                for v in victims[:12]
            )
            more = f" (+{len(victims) - 12} more)" if len(victims) > 12 else ""
            console.print(f"  victims: {shown}{more}")
        for ev in [e for e in f.get("evidence", []) if e != f.get("summary")][:12]:
            console.print(f"  [dim]· {_e(ev)}[/dim]")
        if f.get("why"):
            console.print(f"  why: {_e(f['why'])}")
        if f.get("remediation"):
            console.print(
                f"  fix: {', '.join(_e(r) for r in f['remediation'])} "
                "[dim](ecap-harden generate --from SCAN.json)[/dim]"
            )

    if inventory:
        _inventory(console, doc["inventory"])
    if doc.get("limitations"):
        console.print()
        console.print("[bold]Limitations[/bold] (what this scan could not see):")
        for lim in doc["limitations"]:
            console.print(f"  - {_e(lim)}")


def _inventory(console: Console, inv: dict) -> None:
    """Every inventory kind through its view (detect/views.py): the HTML report
    prints the same columns, and fields no column names still show as key=value."""
    for view in VIEWS:
        records = [r for r in inv.get(view.key) or [] if isinstance(r, dict)]
        if not records:
            continue
        console.print()
        console.print(f"[bold]{_e(view.title)}[/bold] ({len(records)})")
        for record in records:
            console.print(f"  {_e(line(view, record))}")
