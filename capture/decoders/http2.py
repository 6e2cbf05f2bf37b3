"""HTTP/2 rendering of one direction of a captured connection.

Frames are split and parsed with ``hyperframe`` (the frame layer of the ``h2``
project) and header blocks decoded with ``hpack``; each direction has its own
HPACK dynamic table, exactly as the two endpoints do. A stream's headers are
shown when its header block completes and its body (decoded gzip/deflate/br)
when the stream ends in that direction.
"""

from __future__ import annotations

from collections.abc import Iterator

import hpack
from hyperframe.exceptions import HyperframeError
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PushPromiseFrame,
    RstStreamFrame,
)

from ecap.capture.decoders.bodies import decode_content, show_payload
from ecap.capture.decoders.interface import Decoder, Rendered
from ecap.text import printable

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER = 9


def starts_with_preface(data: bytes) -> bool:
    return data.startswith(PREFACE[: len(data)] if len(data) < len(PREFACE) else PREFACE)


class Http2Stream:
    """Frame parser and HPACK decoder for one direction."""

    def __init__(self, *, expect_preface: bool, hex_mode: bool = False) -> None:
        self._buf = bytearray()
        self._need_preface = expect_preface
        self._hpack = hpack.Decoder()
        self._hex = hex_mode
        self._header_block: dict[int, bytearray] = {}
        self._header_end_stream: dict[int, bool] = {}
        self._bodies: dict[int, bytearray] = {}
        self._encodings: dict[int, str | None] = {}
        self.broken = False

    def feed(self, data: bytes) -> Iterator[Rendered]:
        self._buf += data
        if self._need_preface:
            if len(self._buf) < len(PREFACE):
                return
            if not self._buf.startswith(PREFACE):
                self.broken = True
                return
            del self._buf[: len(PREFACE)]
            self._need_preface = False
            yield Rendered("HTTP/2 connection preface")
        while len(self._buf) >= FRAME_HEADER and not self.broken:
            try:
                frame, length = Frame.parse_frame_header(memoryview(self._buf[:FRAME_HEADER]))
            except HyperframeError as exc:
                self.broken = True
                yield Rendered(f"HTTP/2 framing error: {printable(str(exc))}")
                return
            if len(self._buf) < FRAME_HEADER + length:
                return
            body = memoryview(bytes(self._buf[FRAME_HEADER : FRAME_HEADER + length]))
            del self._buf[: FRAME_HEADER + length]
            try:
                frame.parse_body(body)
            except HyperframeError as exc:
                yield Rendered(f"HTTP/2 bad frame: {printable(str(exc))}")
                continue
            yield from self._on_frame(frame)

    def finish(self) -> Iterator[Rendered]:
        for stream_id, body in list(self._bodies.items()):
            if body:
                yield self._body(stream_id, bytes(body), complete=False)
        self._bodies.clear()

    def _on_frame(self, frame: Frame) -> Iterator[Rendered]:
        sid = frame.stream_id
        if isinstance(frame, HeadersFrame | PushPromiseFrame):
            self._header_block[sid] = bytearray(frame.data)
            self._header_end_stream[sid] = "END_STREAM" in frame.flags
            if "END_HEADERS" in frame.flags:
                yield from self._headers_done(sid)
        elif isinstance(frame, ContinuationFrame):
            self._header_block.setdefault(sid, bytearray()).extend(frame.data)
            if "END_HEADERS" in frame.flags:
                yield from self._headers_done(sid)
        elif isinstance(frame, DataFrame):
            self._bodies.setdefault(sid, bytearray()).extend(frame.data)
            if "END_STREAM" in frame.flags:
                yield self._body(sid, bytes(self._bodies.pop(sid)), complete=True)
        elif isinstance(frame, RstStreamFrame):
            yield Rendered(f"HTTP/2 RST_STREAM stream {sid} error {frame.error_code}")
        elif isinstance(frame, GoAwayFrame):
            yield Rendered(
                f"HTTP/2 GOAWAY last stream {frame.last_stream_id} error {frame.error_code}"
            )
        else:
            name = type(frame).__name__.removesuffix("Frame").upper()
            flags = ",".join(sorted(frame.flags))
            yield Rendered(f"HTTP/2 {name} stream {sid}" + (f" [{flags}]" if flags else ""))

    def _headers_done(self, sid: int) -> Iterator[Rendered]:
        block = bytes(self._header_block.pop(sid, b""))
        try:
            headers = self._hpack.decode(block, raw=True)
        except hpack.HPACKError as exc:
            self.broken = True
            yield Rendered(f"HTTP/2 stream {sid} headers did not decode: {printable(str(exc))}")
            return
        lines = []
        for name, value in headers:
            lines.append(f"{printable(name)}: {printable(value)}")
            if name.lower() == b"content-encoding":
                self._encodings[sid] = value.decode("latin-1")
        end = self._header_end_stream.pop(sid, False)
        yield Rendered(f"HTTP/2 stream {sid} headers" + (" (end of stream)" if end else ""), lines)

    def _body(self, sid: int, body: bytes, *, complete: bool) -> Rendered:
        decoded, note = decode_content(body, self._encodings.pop(sid, None))
        title = f"HTTP/2 stream {sid} body, {len(body)} bytes"
        if not complete:
            title += " (stream did not end)"
        lines = [f"[{printable(note)} to {len(decoded)} bytes]"] if note else []
        return Rendered(title, lines + show_payload(decoded, hex_mode=self._hex))


def _open(direction: str, hex_mode: bool) -> dict[str, Http2Stream]:
    """The side that sent the preface is the client; the other side sends none."""
    other = "read" if direction == "write" else "write"
    return {
        direction: Http2Stream(expect_preface=True, hex_mode=hex_mode),
        other: Http2Stream(expect_preface=False, hex_mode=hex_mode),
    }


DECODER = Decoder(
    name="http2",
    priority=10,
    recognise=lambda data: len(data) >= 3 and starts_with_preface(data),
    open=_open,
)
