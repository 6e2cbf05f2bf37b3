"""The scan document for a human at a terminal (rich): findings first, worst first.

Every host-derived string goes through :func:`ecap.text.for_rich`, so control
characters are shown as ``\\xNN`` and ``[bold]``-style markup in a process name
is printed, not interpreted.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import IO

from rich.console import Console
from rich.table import Table
from rich.text import Text

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
        key = (fn, hk.get("class"), hk.get("path") or "", hk.get("offset") or 0, hk.get("source"))
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
        for (fn, cls, path, off, src), types in _hook_lines(f.get("hooked", [])).items():
            kinds = "+".join(sorted(set(types)))
            times = f" ×{len(types)}" if len(types) > len(set(types)) else ""
            console.print(
                f"  hooks [bold]{_e(fn)}[/bold] ({_e(cls)}; {_e(kinds)}{times}) "
                f"in {_e(path)} @ {off:#x} via {_e(src)}"
            )
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
    console.print()
    t = Table(title="BPF programs", title_justify="left", show_lines=False)
    for col in ("id", "type", "name", "tag", "uid", "maps", "holders"):
        t.add_column(col)
    for p in inv["programs"]:
        t.add_row(
            str(p["id"]),
            _e(p["type"]),
            _e(p["name"]),
            _e(p["tag"]),
            _e(p.get("created_by_uid")),
            ",".join(map(str, p.get("map_ids", []))),
            ",".join(map(str, p.get("holders", []))),
        )
    console.print(t)
    t = Table(title="BPF maps", title_justify="left")
    for col in ("id", "type", "name", "key", "value", "entries", "holders"):
        t.add_column(col)
    for m in inv["maps"]:
        t.add_row(
            str(m["id"]),
            _e(m["type"]) + (" ⇢ user" if m.get("event_output") else ""),
            _e(m["name"]),
            str(m.get("key_size")),
            str(m.get("value_size")),
            str(m.get("max_entries")),
            ",".join(map(str, m.get("holders", []))),
        )
    console.print(t)
    if inv["links"]:
        t = Table(title="BPF links", title_justify="left")
        for col in ("id", "type", "prog", "info", "holders"):
            t.add_column(col)
        for lk in inv["links"]:
            info = " ".join(f"{k}={v}" for k, v in lk.get("info", {}).items())
            t.add_row(
                str(lk["id"]),
                _e(lk["type"]),
                str(lk["prog_id"]),
                _e(info)[:80],
                ",".join(map(str, lk.get("holders", []))),
            )
        console.print(t)
    if inv["probes"]:
        t = Table(title="Probes (uprobe / kprobe / tracepoint attachments)", title_justify="left")
        for col in ("source", "type", "target", "offset", "prog", "holder"):
            t.add_column(col)
        for p in inv["probes"]:
            t.add_row(
                _e(p["source"]),
                _e(p["type"]),
                _e(p["target"]),
                f"{p.get('offset') or 0:#x}",
                _e(p.get("prog_id")),
                _e(p.get("holder_pid") or p.get("event")),
            )
        console.print(t)
    if inv["pins"]:
        t = Table(title="bpffs pins", title_justify="left")
        for col in ("path", "kind", "id", "mount ns"):
            t.add_column(col)
        for p in inv["pins"]:
            t.add_row(_e(p["path"]), _e(p["kind"]), str(p["obj_id"]), _e(p["mount_ns"]))
        console.print(t)
