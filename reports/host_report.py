"""Entry point ``ecap-detect`` calls for ``scan --html`` and ``report --html``.

One scan document renders as the host report; several as the fleet report (one
row per host, rogue sniffers first, links into per-host sections).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ecap.errors import UsageError
from ecap.reports.fleet import render_fleet_report
from ecap.reports.host import render_host_report


def write(
    docs: list[dict[str, Any]],
    html_path: str | Path,
    json_path: str | Path | None = None,
    unreachable: list[tuple[str, str]] | None = None,
) -> Path:
    """Host report for one scan, fleet report for more (or when hosts were
    unreachable: they are rows of the fleet report); returns the HTML path."""
    if not docs and not unreachable:
        raise UsageError("no scan documents to report on", hint="pass one or more HOST.json files")
    if len(docs) == 1 and not unreachable:
        return render_host_report(docs[0], html_path, json_path)
    return render_fleet_report(docs, html_path, json_path, unreachable or [])
