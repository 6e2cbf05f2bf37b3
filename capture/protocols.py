"""Pick the protocol of a connection from its first bytes and render it.

HTTP/2 is recognised by its connection preface (in whichever direction it
appears: the target may be the client or the server), HTTP/1.x by its start
line; anything else is shown as escaped text or hex, one call at a time.
"""

from __future__ import annotations

from collections.abc import Iterator

from ecap.capture.bodies import show_payload
from ecap.capture.http1 import Http1Stream, looks_like_http1
from ecap.capture.http2 import Http2Stream, starts_with_preface
from ecap.capture.render_types import Rendered

DIRECTIONS = ("write", "read")


class ConnectionRenderer:
    """Protocol state of one connection (both directions)."""

    def __init__(self, *, hex_mode: bool = False) -> None:
        self._hex = hex_mode
        self._streams: dict[str, Http1Stream | Http2Stream] | None = None
        self.protocol = "unknown"

    def feed(self, direction: str, data: bytes) -> Iterator[Rendered]:
        if self._streams is None:
            self._choose(direction, data)
        if self._streams is None:
            yield Rendered(f"data ({len(data)} bytes)", show_payload(data, hex_mode=self._hex))
            return
        stream = self._streams[direction]
        yield from stream.feed(data)
        if stream.broken:  # not the protocol we thought: fall back to raw display
            self._streams = None
            self.protocol = "raw"

    def finish(self) -> Iterator[Rendered]:
        if self._streams:
            for direction in DIRECTIONS:
                yield from self._streams[direction].finish()

    def _choose(self, direction: str, data: bytes) -> None:
        if self.protocol == "raw":
            return
        other = "read" if direction == "write" else "write"
        if starts_with_preface(data) and len(data) >= 3:
            self.protocol = "http2"
            self._streams = {
                direction: Http2Stream(expect_preface=True, hex_mode=self._hex),
                other: Http2Stream(expect_preface=False, hex_mode=self._hex),
            }
        elif looks_like_http1(data):
            self.protocol = "http1"
            self._streams = {d: Http1Stream(hex_mode=self._hex) for d in DIRECTIONS}
        else:
            self.protocol = "raw"
