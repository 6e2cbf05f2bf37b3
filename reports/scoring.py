"""Severity order, counts and the posture score shown on host and fleet reports.

The score is deliberately simple so an auditor can recompute it by hand from the
counts: start at 100, subtract a weight per finding, floor at 0; any critical
finding caps it at 20 (a rogue plaintext sniffer makes every other setting moot).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ecap.detect import document

SEVERITIES: tuple[str, ...] = tuple(reversed(document.SEVERITIES))
"""Display order, most severe first: the scan document's one order, reversed."""
WEIGHTS: dict[str, int] = {"critical": 50, "high": 20, "medium": 8, "low": 3, "info": 0}
CRITICAL_CAP = 20
GRADES: tuple[tuple[int, str], ...] = ((90, "A"), (75, "B"), (60, "C"), (40, "D"), (0, "F"))


def normalise(severity: Any) -> str:
    """A known severity name; anything else counts as ``info`` rather than vanishing."""
    text = str(severity or "").strip().lower()
    return text if text in SEVERITIES else "info"


def rank(severity: Any) -> int:
    """0 for critical ... 4 for info: sort key, most severe first."""
    return SEVERITIES.index(normalise(severity))


def counts(severities: Iterable[Any]) -> dict[str, int]:
    out = dict.fromkeys(SEVERITIES, 0)
    for s in severities:
        out[normalise(s)] += 1
    return out


def worst(c: dict[str, int]) -> str | None:
    """The most severe level with a non-zero count, or None for a clean host."""
    return next((s for s in SEVERITIES if c.get(s)), None)


def score(c: dict[str, int]) -> dict[str, Any]:
    """``{"value", "grade", "explanation"}`` for severity counts."""
    value = 100 - sum(WEIGHTS[s] * c.get(s, 0) for s in SEVERITIES)
    value = max(0, value)
    if c.get("critical"):
        value = min(value, CRITICAL_CAP)
    grade = next(g for floor, g in GRADES if value >= floor)
    parts = [f"{c[s]}×{s} (−{WEIGHTS[s]})" for s in SEVERITIES if c.get(s) and WEIGHTS[s]]
    explanation = "100 " + " ".join(parts) if parts else "100: no weighted findings"
    if c.get("critical"):
        explanation += f"; capped at {CRITICAL_CAP} because of a critical finding"
    return {"value": value, "grade": grade, "explanation": explanation}
