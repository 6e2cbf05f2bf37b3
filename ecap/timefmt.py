"""Timestamps as ecap writes them: ISO-8601 in UTC."""

from __future__ import annotations

from datetime import UTC, datetime


def iso_utc(ts: float | None, timespec: str = "microseconds") -> str | None:
    """Epoch seconds → ``2026-11-25T21:54:41.123456+00:00``; None stays None."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec=timespec)
