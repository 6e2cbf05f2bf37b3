"""Turning lists of records into the generic tables the templates print.

The inventory parts of a scan (programs, maps, links, probes, pins...) are lists
of flat-ish dicts whose fields grow as the detector learns more. Rather than a
template per object kind that silently drops new fields, each table lists the
expected columns first and then any other field it finds, so nothing the scan
recorded is hidden from the auditor.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ecap.detect.views import cell  # one cell format for terminal and HTML

__all__ = ["as_dict", "as_list", "cell", "table"]


def as_dict(value: Any) -> dict[str, Any]:
    """``value`` if it is a dict, else empty: input documents are not trusted to be well formed."""
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    """``value`` if it is a list, else empty."""
    return value if isinstance(value, list) else []


def table(
    title: str,
    records: Iterable[Any],
    preferred: Sequence[str] = (),
    numeric: Sequence[str] = (),
) -> dict[str, Any]:
    """``{"title", "columns", "rows", "numeric"}`` for a list of dict records."""
    items = [r for r in records if isinstance(r, dict)]
    columns = [c for c in preferred if any(c in r for r in items)]
    for r in items:
        for key in r:
            if key not in columns:
                columns.append(key)
    rows = [[cell(r.get(c)) for c in columns] for r in items]
    num = [c for c in columns if c in numeric]
    return {"title": title, "columns": columns, "rows": rows, "numeric": num}
