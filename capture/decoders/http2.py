"""HTTP/2 rendering of one direction of a captured connection.

Frames are split and parsed with ``hyperframe`` (the frame layer of the ``h2``
project) and header blocks decoded with ``hpack``; each direction has its own
HPACK dynamic table, exactly as the two endpoints do. A stream's headers are
shown when its header block completes and its body (decoded gzip/deflate/br)
when the stream ends in that direction.

A capture that joins a connection midway (the common case for an incident
responder) never sees the client preface, so HTTP/2 is also recognised from the
frame layer itself (:func:`looks_like_frames`); a direction whose first bytes fall
inside a frame is shown raw until a call starts on a frame boundary. The HPACK
tables were partly built before the attach: header fields that refer to those
lost entries are counted and named as not decodable, while everything encoded
literally or indexed since the attach decodes exactly (:class:`TableSinceAttach`).
"""

from __future__ import annotations

from collections.abc import Iterator

import hpack
from hpack.exceptions import InvalidTableIndex
from hpack.table import HeaderTable
from hyperframe.exceptions import HyperframeError
from hyperframe.frame import (
    FRAMES,
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PushPromiseFrame,
    RstStreamFrame,
    SettingsFrame,
)

from ecap.capture.decoders.bodies import decode_content, show_payload
from ecap.capture.decoders.interface import Decoder, Rendered
from ecap.text import printable

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER = 9


def starts_with_preface(data: bytes) -> bool:
    return data.startswith(PREFACE[: len(data)] if len(data) < len(PREFACE) else PREFACE)


_MAX_LENGTH = (1 << 24) - 1
_FIXED_LENGTH = {2: 5, 3: 4, 6: 8, 8: 4}
"""PRIORITY, RST_STREAM, PING, WINDOW_UPDATE: their payload has one size."""
_SETTINGS, _GOAWAY = 4, 7
_KNOWN = {
    ftype: (sum(flag.bit for flag in cls.defined_flags), cls.stream_association)
    for ftype, cls in FRAMES.items()
    if ftype <= 9  # RFC 9113's own types; extensions prove nothing
}


def _header_ok(header: bytes) -> int | None:
    """The frame's length when ``header`` is a plausible HTTP/2 frame header."""
    length = int.from_bytes(header[0:3], "big")
    ftype, flags = header[3], header[4]
    stream = int.from_bytes(header[5:9], "big")
    rule = _KNOWN.get(ftype)
    if rule is None or stream >> 31 or length > _MAX_LENGTH:
        return None
    allowed_flags, association = rule
    if flags & ~allowed_flags:
        return None
    if (association == "has-stream" and stream == 0) or (
        association == "no-stream" and stream != 0
    ):
        return None
    fixed = _FIXED_LENGTH.get(ftype)
    if fixed is not None and length != fixed:
        return None
    if (ftype == _SETTINGS and length % 6) or (ftype == _GOAWAY and length < 8):
        return None
    return length


def looks_like_frames(data: bytes) -> bool:
    """Do these bytes start, at their first byte, with well-formed HTTP/2 frames?

    Every whole frame must pass; a last frame may run on into the next call (its
    header must still pass). One whole frame at least, or a header announcing
    more than the call holds.
    """
    pos = 0
    while len(data) - pos >= FRAME_HEADER:
        length = _header_ok(data[pos : pos + FRAME_HEADER])
        if length is None:
            return False
        pos += FRAME_HEADER + length
    return pos > 0


LOST = b"\x00lost"
"""What a reference to an HPACK entry from before the attach decodes to."""


class TableSinceAttach(HeaderTable):
    """An HPACK table of which only the entries added since the attach are known.

    New entries go in at the front, so they keep their indices whatever came
    before; an index past them names an entry added before the capture started.
    That entry decodes to :data:`LOST` (and is counted) instead of failing the
    whole header block, and an entry added with a lost name keeps its place.
    """

    def __init__(self) -> None:
        super().__init__()
        self.lost = 0

    def get_by_index(self, index: int) -> tuple[bytes, bytes]:
        try:
            return super().get_by_index(index)
        except InvalidTableIndex:
            if index <= self.STATIC_TABLE_LENGTH:
                raise
            self.lost += 1
            return LOST, LOST


class Http2Stream:
    """Frame parser and HPACK decoder for one direction."""

    def __init__(self, *, expect_preface: bool, hex_mode: bool = False,
                 mid_connection: bool = False) -> None:  # fmt: skip
        """``mid_connection``: the capture joined after the connection started."""
        self._buf = bytearray()
        self._need_preface = expect_preface
        self._hpack = hpack.Decoder()
        self._mid = mid_connection
        self._synced = not mid_connection
        if mid_connection:
            self._hpack.header_table = TableSinceAttach()
            # The table size the peer allowed was announced before the attach.
            self._hpack.max_allowed_table_size = _MAX_LENGTH
        self._hex = hex_mode
        self.peer: Http2Stream | None = None
        """The other direction's stream (its decoder obeys this side's SETTINGS)."""
        self._header_block: dict[int, bytearray] = {}
        self._header_end_stream: dict[int, bool] = {}
        self._bodies: dict[int, bytearray] = {}
        self._encodings: dict[int, str | None] = {}
        self.broken = False

    def feed(self, data: bytes) -> Iterator[Rendered]:
        if not self._synced:
            if not looks_like_frames(data):
                yield Rendered(
                    f"HTTP/2 data ({len(data)} bytes) before the first frame boundary seen",
                    show_payload(data, hex_mode=self._hex),
                )
                return
            self._synced = True
            yield Rendered("HTTP/2 frames (the capture joined this connection midway: no preface)")
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
            if isinstance(frame, SettingsFrame) and self.peer is not None:
                # This side's SETTINGS bound the table the other side encodes with.
                size = frame.settings.get(SettingsFrame.HEADER_TABLE_SIZE)
                if size is not None:
                    self.peer._hpack.max_allowed_table_size = size
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
        lost = 0
        for name, value in headers:
            if value == LOST:
                lost += 1
                continue
            shown = "(name not decodable)" if name == LOST else printable(name)
            lines.append(f"{shown}: {printable(value)}")
            if name.lower() == b"content-encoding":
                self._encodings[sid] = value.decode("latin-1")
        if lost:
            lines.append(
                f"[{lost} header field(s) not decodable: they name HPACK table entries "
                "the peer added before the capture attached]"
            )
        end = self._header_end_stream.pop(sid, False)
        yield Rendered(f"HTTP/2 stream {sid} headers" + (" (end of stream)" if end else ""), lines)

    def _body(self, sid: int, body: bytes, *, complete: bool) -> Rendered:
        decoded, note = decode_content(body, self._encodings.pop(sid, None))
        title = f"HTTP/2 stream {sid} body, {len(body)} bytes"
        if not complete:
            title += " (stream did not end)"
        lines = [f"[{printable(note)} to {len(decoded)} bytes]"] if note else []
        return Rendered(title, lines + show_payload(decoded, hex_mode=self._hex))


def _open(direction: str, hex_mode: bool, first: bytes) -> dict[str, Http2Stream]:
    """The side that sent the preface is the client; the other side sends none.
    Without a preface the capture joined midway: both directions resynchronise."""
    other = "read" if direction == "write" else "write"
    mid = not starts_with_preface(first)
    this = Http2Stream(expect_preface=not mid, hex_mode=hex_mode, mid_connection=mid)
    that = Http2Stream(expect_preface=False, hex_mode=hex_mode, mid_connection=mid)
    this.peer, that.peer = that, this
    return {direction: this, other: that}


def _recognise(data: bytes) -> bool:
    return (len(data) >= 3 and starts_with_preface(data)) or looks_like_frames(data)


DECODER = Decoder(
    name="http2",
    priority=10,
    recognise=_recognise,
    open=_open,
)
