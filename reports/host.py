"""The host report: one ``ecap-detect scan`` as an HTML page an auditor can read.

Findings come first, most severe first (what is hooked, by whom, whose plaintext,
authorized or not, evidence, why it matters, and the exact ecap-harden snippet
that fixes it), then the inventory tables and the host's posture. The view model
built here is both what the template renders and the report's JSON twin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ecap.detect import document
from ecap.detect.views import VIEWS
from ecap.reports import _render, scoring, tables
from ecap.reports.remedy import Remedies
from ecap.reports.tables import as_dict, as_list

SCHEMA = "ecap.report.host/1"
HINT = document.HINT

INVENTORY: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...]], ...] = tuple(
    (v.key, v.title, v.keys, v.numeric) for v in VIEWS
)
"""The inventory tables, from the views the terminal prints too (detect/views.py)."""


def load_scan(path: str | Path) -> dict[str, Any]:
    """A scan document from a file, validated, or UsageError (exit 2)."""
    return document.load(path)


def finding_view(finding: dict[str, Any], remedies: Remedies | None) -> dict[str, Any]:
    """One finding as the report shows it (remediation expanded when ``remedies``)."""
    ids = [str(c) for c in as_list(finding.get("remediation"))]
    if remedies is not None:
        remediation = [remedies.describe(c) for c in ids]
    else:
        remediation = [{"id": c} for c in ids]
    authorized = finding.get("authorized")
    return {
        "id": str(finding.get("id") or ""),
        "severity": scoring.normalise(finding.get("severity")),
        "category": str(finding.get("category") or "other"),
        "title": str(finding.get("title") or "(untitled finding)"),
        "summary": str(finding.get("summary") or ""),
        "authorized": authorized if isinstance(authorized, bool) else None,
        "authorization": as_dict(finding.get("authorization")),
        "hooked": [h for h in as_list(finding.get("hooked")) if isinstance(h, dict)],
        "owner": as_dict(finding.get("owner")) or None,
        "victims": [v for v in as_list(finding.get("victims")) if isinstance(v, dict)],
        "programs": as_list(finding.get("programs")),
        "evidence": [tables.cell(e) for e in as_list(finding.get("evidence"))],
        "why": str(finding.get("why") or ""),
        "remediation": remediation,
        "rogue": document.is_rogue(finding),
        "capabilities": as_list(finding.get("capabilities"))
        if finding.get("capabilities") is not None
        else None,
        "reach": [str(r) for r in as_list(finding.get("reach"))],
        "destinations": as_dict(finding.get("destinations")) or None,
    }


def sorted_findings(findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Most severe first; unauthorized before authorized; then by title."""
    return sorted(
        findings,
        key=lambda f: (scoring.rank(f["severity"]), f["authorized"] is True, f["title"]),
    )


def posture_rows(posture: dict[str, Any], findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flattened posture settings, each marked with the severity of a finding about it."""
    flagged: dict[str, str] = {}
    for f in findings:
        if f["category"] != "posture":
            continue
        for ev in f["evidence"]:
            key = ev.split(":", 1)[0].strip()
            if key:
                flagged[key] = f["severity"]
    rows = []
    for key, value in _flatten(posture):
        short_key = key.removeprefix("sysctl.")
        status = flagged.get(short_key) or next(
            (sev for k, sev in flagged.items() if short_key.startswith(k + ".")), None
        )
        rows.append({"setting": short_key, "value": tables.cell(value), "finding": status})
    return rows


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``{"a": {"b": 1}}`` → ``[("a.b", 1)]``; lists stay values."""
    if isinstance(value, dict):
        out: list[tuple[str, Any]] = []
        for k, v in value.items():
            out += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    return [(prefix, value)]


def build_view(scan: dict[str, Any], *, snippets: bool = True) -> dict[str, Any]:
    """The host report's view model (also its JSON twin)."""
    document.validate(scan)
    remedies = Remedies(snippets=snippets, scan=scan)
    findings = sorted_findings(
        [finding_view(f, remedies) for f in as_list(scan.get("findings")) if isinstance(f, dict)]
    )
    counts = scoring.counts(f["severity"] for f in findings)
    inventory = as_dict(scan.get("inventory"))
    return {
        "schema": SCHEMA,
        "generated_at": _render.now_iso(),
        "generator": _render.generator(),
        "source": {
            "schema": scan.get("schema"),
            "generated_at": scan.get("generated_at"),
            "tool": as_dict(scan.get("tool")),
        },
        "host": as_dict(scan.get("host")),
        "scanner": as_dict(scan.get("scanner")),
        "counts": counts,
        "worst": scoring.worst(counts),
        "score": scoring.score(counts),
        "rogue": sum(1 for f in findings if f["rogue"]),
        "findings": findings,
        "inventory": [
            {"key": key, **tables.table(title, as_list(inventory.get(key)), pref, num)}
            for key, title, pref, num in INVENTORY
            if key in inventory
        ],
        "posture": posture_rows(as_dict(scan.get("posture")), findings),
        "limitations": [tables.cell(x) for x in as_list(scan.get("limitations"))],
    }


def render_host_report(
    scan: dict[str, Any], html_path: str | Path, json_path: str | Path | None = None
) -> Path:
    """Write the host report (and its JSON twin); returns the HTML path."""
    view = build_view(scan)
    html = _render.render_html("host.html.j2", view)
    return _render.write_report(html, view, html_path, json_path)
