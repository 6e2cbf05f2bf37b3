"""What a protocol decoder is, and what it hands to the text sink.

One file per protocol in this package, each defining ``DECODER``. The connection
renderer offers a connection's first bytes to every decoder, in ``priority``
order; the first that recognises them gets the connection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Rendered:
    """One readable unit: an HTTP message, an HTTP/2 frame summary, or raw data."""

    title: str
    """One line, already escaped (e.g. ``HTTP/1.1 request``)."""
    lines: list[str] = field(default_factory=list)
    """Body of the unit, every line escaped for the terminal."""


class Stream(Protocol):
    """Parser state for one direction of one connection."""

    broken: bool
    """Set when the bytes turn out not to be this protocol (the renderer falls back)."""

    def feed(self, data: bytes) -> Iterator[Rendered]: ...
    def finish(self) -> Iterator[Rendered]: ...


@dataclass(frozen=True)
class Decoder:
    """One protocol."""

    name: str
    """``http1``, ``http2``..."""
    priority: int
    """Lower is asked first (HTTP/2's preface is more specific than an HTTP/1 line)."""
    recognise: Callable[[bytes], bool]
    """Do these bytes start this protocol? Asked with a connection's first call
    (either direction) and, while no decoder has it, with each later call — a
    capture that joined midway sees no protocol start."""
    open: Callable[[str, bool, bytes], dict[str, Stream]]
    """(direction the first bytes went, hex mode, those bytes) → a stream per
    direction; the bytes tell a connection's start from its middle."""
