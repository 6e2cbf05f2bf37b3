"""The hardening-plan report: ``plan.json`` from ``ecap-harden generate`` as a page.

Each control with its threat model (which attacker it stops: an unprivileged user,
root in a container, root on the host), its status on the host, side effects and
one-way warnings, and every generated file inline with a copy button, so a change
board can approve exactly what will be installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ecap.reports import _render, tables
from ecap.reports.tables import as_dict, as_list

PLAN_SCHEMA = "ecap.harden-plan/1"
SCHEMA = "ecap.report.plan/1"
HINT = "pass the plan.json written by 'ecap-harden generate --out DIR' (or DIR itself)"
STOPS = (
    ("unprivileged_user", "unprivileged user"),
    ("container_root", "root in a container"),
    ("host_root", "root on the host"),
)


def load_plan(path: str | Path) -> dict[str, Any]:
    """A plan from ``plan.json`` or from the directory ``generate`` wrote it in."""
    path = Path(path)
    if path.is_dir():
        path = path / "plan.json"
    return _render.load_json(path, schema=PLAN_SCHEMA, what="plan file", hint=HINT)


def build_view(plan: dict[str, Any]) -> dict[str, Any]:
    """The plan report's view model (also its JSON twin)."""
    _render.check_schema(plan, PLAN_SCHEMA, "plan document", HINT)
    files = [f for f in as_list(plan.get("files")) if isinstance(f, dict)]
    anchors = {str(f.get("path")): f"file-{i}" for i, f in enumerate(files, start=1)}
    controls = []
    for c in as_list(plan.get("controls")):
        if not isinstance(c, dict):
            continue
        stops = as_dict(c.get("stops"))
        controls.append(
            {
                "id": str(c.get("id") or ""),
                "title": str(c.get("title") or ""),
                "kind": str(c.get("kind") or ""),
                "blocks": str(c.get("blocks") or ""),
                "stops": [(label, str(stops.get(key) or "?")) for key, label in STOPS],
                "side_effects": str(c.get("side_effects") or ""),
                "one_way": bool(c.get("one_way")),
                "one_way_note": c.get("one_way_note") or "",
                "locks": bool(c.get("locks_in_this_profile")),
                "baselines": [str(b) for b in as_list(c.get("baselines"))],
                "status": str(c.get("status") or "unknown"),
                "current": tables.cell(c.get("current")),
                "expected": tables.cell(c.get("expected")),
                "detail": tables.cell(c.get("detail")),
                "evidence": [str(e) for e in as_list(c.get("evidence"))],
                "recommended": bool(c.get("recommended")),
                "files": [(str(p), anchors.get(str(p))) for p in as_list(c.get("files"))],
            }
        )
    return {
        "schema": SCHEMA,
        "generated_at": _render.now_iso(),
        "generator": _render.generator(),
        "plan": {
            "generated_at": plan.get("generated_at"),
            "profile": plan.get("profile"),
            "tailored": bool(plan.get("tailored")),
            "source": plan.get("source"),
            "apparmor_parser": plan.get("apparmor_parser"),
            "selinux_policy": plan.get("selinux_policy"),
        },
        "host": as_dict(plan.get("host")),
        "summary": {
            "controls": len(controls),
            "recommended": sum(1 for c in controls if c["recommended"]),
            "one_way": sum(1 for c in controls if c["recommended"] and c["one_way"]),
            "locking": sum(1 for c in controls if c["recommended"] and c["locks"]),
            "files": len(files),
        },
        "controls": controls,
        "threats": [
            {
                "attacker": label,
                "stopped_by": [
                    c["title"]
                    for c in controls
                    if c["recommended"] and dict(c["stops"]).get(label) == "yes"
                ],
                "partly": [
                    c["title"]
                    for c in controls
                    if c["recommended"] and dict(c["stops"]).get(label) == "partial"
                ],
            }
            for _, label in STOPS
        ],
        "warnings": [str(w) for w in as_list(plan.get("warnings"))],
        "notes": [str(n) for n in as_list(plan.get("notes"))],
        "exceptions": [
            {
                "what": str(e.get("what") or ""),
                "file": str(e.get("file") or ""),
                "anchor": anchors.get(str(e.get("file"))),
            }
            for e in as_list(plan.get("exceptions"))
            if isinstance(e, dict)
        ],
        "files": [
            {
                "anchor": anchors[str(f.get("path"))],
                "path": str(f.get("path") or ""),
                "kind": str(f.get("kind") or ""),
                "controls": [str(c) for c in as_list(f.get("controls"))],
                "sha256": str(f.get("sha256") or ""),
                "notes": [str(n) for n in as_list(f.get("notes"))],
                "content": str(f.get("content") or ""),
                "lines": str(f.get("content") or "").count("\n"),
            }
            for f in files
        ],
    }


def render_plan_report(
    plan: dict[str, Any], html_path: str | Path, json_path: str | Path | None = None
) -> Path:
    """Write the plan report (and its JSON twin); returns the HTML path."""
    view = build_view(plan)
    html = _render.render_html("plan.html.j2", view)
    return _render.write_report(html, view, html_path, json_path)
