"""What protocol renderers hand to the text writer."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Rendered:
    """One readable unit: an HTTP message, an HTTP/2 frame summary, or raw data."""

    title: str
    """One line, already escaped (e.g. ``HTTP/1.1 request``)."""
    lines: list[str] = field(default_factory=list)
    """Body of the unit, every line escaped for the terminal."""
