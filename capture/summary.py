"""The end-of-capture summary as text (stderr, and the text sink's last lines)."""

from __future__ import annotations

from typing import Any

from ecap.text import printable


def summary_lines(summary: dict[str, Any]) -> list[str]:
    ev, by = summary["events"], summary["bytes"]
    lines = [
        f"capture stopped: {printable(summary['stop_reason'])} after {summary['duration']:.1f}s",
        f"  written: {ev['write']} events, {by['write']} bytes; "
        f"read: {ev['read']} events, {by['read']} bytes; "
        f"connections: {summary['connections']}",
        f"  lost: {summary['lost_events']} events, {summary['lost_bytes']} bytes; "
        f"truncated: {summary['truncated_bytes']} bytes (limit {summary['max_call_bytes']} "
        f"per call)",
    ]
    other = {k: v for k, v in ev.items() if k not in ("write", "read")}
    if other:
        lines.insert(2, "  " + "; ".join(f"{printable(k)}s: {v}" for k, v in sorted(other.items())))
    if summary.get("descendants"):
        lines.append(f"  descendants covered: {summary['descendants']}")
    if summary.get("unreadable_bytes"):
        lines.append(
            f"  unreadable: {summary['unreadable_bytes']} bytes (process memory not present "
            "when the probe read it; shown as gaps, never as data)"
        )
    if summary.get("deep_calls"):
        lines.append(
            f"  not captured: {summary['deep_calls']} calls nested deeper than the kernel "
            "side follows"
        )
    return lines
