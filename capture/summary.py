"""The end-of-capture summary as text (stderr, and the text sink's last lines)."""

from __future__ import annotations

from typing import Any

from ecap.text import printable


def summary_lines(summary: dict[str, Any]) -> list[str]:
    ev, by = summary["events"], summary["bytes"]
    traffic = (
        f"  written: {ev['write']} events, {by['write']} bytes; "
        f"read: {ev['read']} events, {by['read']} bytes; "
        f"connections: {summary['connections']}"
    )
    if isinstance(summary.get("keys"), dict):  # keylog/pcapng copy no plaintext at all
        traffic = (
            f"  connections: {summary['connections']} (no plaintext copied out of the "
            "processes: keys and packets are the output)"
        )
    lines = [
        f"capture stopped: {printable(summary['stop_reason'])} after {summary['duration']:.1f}s",
        traffic,
        f"  lost: {summary['lost_events']} events, {summary['lost_bytes']} bytes; "
        f"truncated: {summary['truncated_bytes']} bytes (limit {summary['max_call_bytes']} "
        f"per call)",
    ]
    other = {k: v for k, v in ev.items() if k not in ("write", "read")}
    if other:
        lines.insert(2, "  " + "; ".join(f"{printable(k)}s: {v}" for k, v in sorted(other.items())))
    keys = summary.get("keys")
    if isinstance(keys, dict):
        line = f"  keys: {keys['verified']} proven and written"
        if keys["not_verified"]:
            reasons = "; ".join(f"{printable(r)} ({n})"
                                for r, n in keys["not_verified_reasons"].items())  # fmt: skip
            line += f", {keys['not_verified']} NOT verified and not written: {reasons}"
        lines.append(line)
        lines.append(
            f"  packets: {summary['packets']} ({summary['packet_bytes']} bytes) of the "
            f"authorized connections; {summary['packets_dropped']} dropped by a full ring"
        )
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
