"""The protocol-decoder registry, and the renderer that picks a decoder per connection.

Adding a protocol is adding a file here that defines ``DECODER``
(see ``interface.py``); HTTP bodies (gzip, deflate, br) are decoded by
``bodies.py`` for the HTTP decoders.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Iterator

from ecap.capture.decoders.bodies import show_payload
from ecap.capture.decoders.interface import Decoder, Rendered, Stream

DIRECTIONS = ("write", "read")


@functools.cache
def registry() -> tuple[Decoder, ...]:
    """Every decoder, in the order they are asked."""
    found = []
    for info in pkgutil.iter_modules(__path__):
        if info.name in ("interface", "bodies"):
            continue
        decoder = getattr(importlib.import_module(f"{__name__}.{info.name}"), "DECODER", None)
        if isinstance(decoder, Decoder):
            found.append(decoder)
    return tuple(sorted(found, key=lambda d: (d.priority, d.name)))


class ConnectionRenderer:
    """Protocol state of one connection (both directions)."""

    def __init__(self, *, hex_mode: bool = False) -> None:
        self._hex = hex_mode
        self._streams: dict[str, Stream] | None = None
        self._next_offset: dict[str, int] = {}
        """Per direction: where the next call should start in the stream."""
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

    def feed_call(self, call) -> Iterator[Rendered]:
        """A whole call; where bytes are missing, the protocol state cannot continue:
        the gap is shown and the rest of the connection is shown raw."""
        expected = self._next_offset.get(call.direction)
        if expected is not None and call.stream_offset > expected:
            yield from self._gap(call.stream_offset - expected, whole_calls=True)
        self._next_offset[call.direction] = call.stream_offset + call.total
        if call.segments is None:
            yield from self.feed(call.direction, call.data)
            return
        pos = expected = 0
        for offset, length in call.segments:
            if offset > expected:
                yield from self._gap(offset - expected)
            yield from self.feed(call.direction, call.data[pos : pos + length])
            pos += length
            expected = offset + length
        missing = min(call.total, expected + call.lost + call.unreadable) - expected
        if missing > 0:
            yield from self._gap(missing)

    def _gap(self, size: int, *, whole_calls: bool = False) -> Iterator[Rendered]:
        yield from self.finish()
        self._streams = None
        self.protocol = "raw"
        what = "calls whose records were all lost" if whole_calls else "missing here"
        yield Rendered(
            f"[{size} bytes {what}: raw data until a call starts a message the decoders know]"
        )

    def finish(self) -> Iterator[Rendered]:
        if self._streams:
            for direction in DIRECTIONS:
                yield from self._streams[direction].finish()

    def _choose(self, direction: str, data: bytes) -> None:
        """Offer a call to the decoders. Asked again for every call of a raw
        connection: one joined midway (or after lost bytes) becomes readable at the
        first call that starts a message or a frame."""
        for decoder in registry():
            if decoder.recognise(data):
                self.protocol = decoder.name
                self._streams = decoder.open(direction, self._hex, data)
                return
        self.protocol = "raw"
