"""The fleet report: many ``ecap-detect scan`` documents on one page.

One row per host with its severity counts, hosts with a rogue sniffer (a critical,
unauthorized plaintext hook) first, a host × finding-type matrix, and a compact
section per host that the rows and matrix link to. Per-host sections list the
findings without the ecap-harden snippets (those are in each host's own report),
which keeps 500 hosts well under the size budget.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ecap.detect import document
from ecap.errors import UsageError
from ecap.reports import _render, host, scoring
from ecap.reports.tables import as_dict, as_list

SCHEMA = "ecap.report.fleet/1"


def load_scans(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Scan documents from files (UsageError naming the first bad one)."""
    scans = [host.load_scan(p) for p in paths]
    if not scans:
        raise UsageError("no scan files given", hint="pass one or more HOST.json files")
    return scans


def finding_type(f: dict[str, Any]) -> str:
    """The matrix column a finding falls in (finer than its category for hooks/posture)."""
    if f["category"] == "plaintext-hook":
        if f["authorized"] is True:
            return "authorized capture"
        return "rogue plaintext hook" if f["severity"] == "critical" else "plaintext hook (other)"
    if f["category"] == "posture" and f["evidence"]:
        return "posture: " + f["evidence"][0].split(":", 1)[0]
    return f["category"]


def host_view(scan: dict[str, Any], index: int) -> dict[str, Any]:
    """One host's row, matrix cells and section."""
    document.validate(scan, f"scan document #{index}")
    findings = host.sorted_findings(
        [host.finding_view(f, None) for f in as_list(scan.get("findings")) if isinstance(f, dict)]
    )
    counts = scoring.counts(f["severity"] for f in findings)
    types: dict[str, dict[str, Any]] = {}
    for f in findings:
        cell = types.setdefault(finding_type(f), {"count": 0, "worst": f["severity"]})
        cell["count"] += 1
        if scoring.rank(f["severity"]) < scoring.rank(cell["worst"]):
            cell["worst"] = f["severity"]
    info = as_dict(scan.get("host"))
    return {
        "anchor": f"host-{index}",
        "hostname": str(info.get("hostname") or f"host #{index}"),
        "machine_id": info.get("machine_id"),
        "kernel": info.get("kernel"),
        "scanned_at": scan.get("generated_at"),
        "degraded": bool(as_dict(scan.get("scanner")).get("degraded")),
        "counts": counts,
        "worst": scoring.worst(counts),
        "score": scoring.score(counts),
        "rogue": sum(1 for f in findings if f["rogue"]),
        "types": types,
        "findings": findings,
        "limitations": [str(x) for x in as_list(scan.get("limitations"))],
    }


def _host_order(h: dict[str, Any]) -> tuple:
    worst = scoring.rank(h["worst"]) if h["worst"] else len(scoring.SEVERITIES)
    return (
        0 if h["rogue"] else 1,
        -h["rogue"],
        worst,
        *(-h["counts"][s] for s in scoring.SEVERITIES),
        h["hostname"],
    )


def build_view(
    scans: list[dict[str, Any]], unreachable: Iterable[tuple[str, str]] = ()
) -> dict[str, Any]:
    """The fleet report's view model (also its JSON twin).

    ``unreachable``: (host name, why) for hosts that were to be scanned but gave no
    document (an Ansible run's unreachable or failed hosts): each is a row of the
    report, never silently missing.
    """
    missing = [{"hostname": str(name), "reason": str(why)} for name, why in unreachable]
    if not scans and not missing:
        raise UsageError("no scan documents to report on", hint="pass one or more HOST.json files")
    hosts = sorted((host_view(s, i) for i, s in enumerate(scans, start=1)), key=_host_order)
    columns: dict[str, str] = {}
    for h in hosts:
        for name, cell in h["types"].items():
            if name not in columns or scoring.rank(cell["worst"]) < scoring.rank(columns[name]):
                columns[name] = cell["worst"]
    ordered = sorted(columns, key=lambda n: (scoring.rank(columns[n]), n))
    totals = scoring.counts([])
    for h in hosts:
        for s in scoring.SEVERITIES:
            totals[s] += h["counts"][s]
    return {
        "schema": SCHEMA,
        "generated_at": _render.now_iso(),
        "generator": _render.generator(),
        "totals": {
            "hosts": len(hosts),
            "counts": totals,
            "worst": scoring.worst(totals),
            "rogue_hosts": sum(1 for h in hosts if h["rogue"]),
            "clean_hosts": sum(1 for h in hosts if not h["worst"] or h["worst"] == "info"),
            "unreachable_hosts": len(missing),
        },
        "finding_types": ordered,
        "hosts": hosts,
        "unreachable": missing,
    }


def render_fleet_report(
    scans: list[dict[str, Any]],
    html_path: str | Path,
    json_path: str | Path | None = None,
    unreachable: Iterable[tuple[str, str]] = (),
) -> Path:
    """Write the fleet report (and its JSON twin); returns the HTML path."""
    view = build_view(scans, unreachable)
    html = _render.render_html("fleet.html.j2", view)
    return _render.write_report(html, view, html_path, json_path)
