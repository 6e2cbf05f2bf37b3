"""Incremental HTTP/1.x parsing of one direction of a captured connection.

Bytes arrive in whatever pieces SSL_read/SSL_write moved; :class:`Http1Stream`
buffers them and yields a :class:`Rendered` message each time a request or
response is complete: start line, headers, and the body de-chunked and decoded
(gzip/deflate/br). What is left when the connection ends is shown as it is.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from ecap.capture.decoders.bodies import decode_content, show_payload
from ecap.capture.decoders.interface import Decoder, Rendered
from ecap.text import printable

_START_RE = re.compile(rb"^(?:[A-Z]{3,10} \S+ HTTP/1\.[01]|HTTP/1\.[01] \d{3})")
MAX_HEAD = 64 * 1024


def looks_like_http1(data: bytes) -> bool:
    return bool(_START_RE.match(data[:64]))


class Http1Stream:
    """Parser state for one direction (requests or responses)."""

    def __init__(self, *, hex_mode: bool = False) -> None:
        self._buf = bytearray()
        self._hex = hex_mode
        self.last_request_method: str | None = None
        self.broken = False

    def feed(self, data: bytes) -> Iterator[Rendered]:
        self._buf += data
        while self._buf:
            msg = self._parse_one()
            if msg is None:
                return
            yield msg

    def finish(self) -> Iterator[Rendered]:
        """The connection ended: show whatever is left (incomplete message)."""
        if self._buf:
            data = bytes(self._buf)
            self._buf.clear()
            yield Rendered(
                f"incomplete data ({len(data)} bytes)", show_payload(data, hex_mode=self._hex)
            )

    def _parse_one(self) -> Rendered | None:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            first_line = self._buf.find(b"\r\n")
            if len(self._buf) > MAX_HEAD or (
                first_line >= 0 and not looks_like_http1(bytes(self._buf[:first_line]))
            ):
                return self._raw()
            return None  # the head is still arriving
        head = bytes(self._buf[:end]).decode("latin-1")
        lines = head.split("\r\n")
        start = lines[0]
        if not looks_like_http1(start.encode("latin-1")):
            return self._raw()
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
        hmap = {k.lower(): v for k, v in headers}
        body_start = end + 4
        is_response = start.startswith("HTTP/")
        if not is_response:
            self.last_request_method = start.split(" ", 1)[0]
        body: bytes
        if "chunked" in hmap.get("transfer-encoding", "").lower():
            parsed = _dechunk(self._buf, body_start)
            if parsed is None:
                return None
            body, consumed = parsed
        elif "content-length" in hmap:
            try:
                length = int(hmap["content-length"])
            except ValueError:
                length = 0
            if len(self._buf) - body_start < length:
                return None
            body, consumed = bytes(self._buf[body_start : body_start + length]), body_start + length
        elif is_response and not _no_body(start):
            return None  # body runs until the connection closes: wait for finish()
        else:
            body, consumed = b"", body_start
        del self._buf[:consumed]
        return self._render(start, headers, body, hmap.get("content-encoding"))

    def _raw(self) -> Rendered:
        data = bytes(self._buf)
        self._buf.clear()
        self.broken = True
        return Rendered(f"data ({len(data)} bytes)", show_payload(data, hex_mode=self._hex))

    def _render(
        self, start: str, headers: list[tuple[str, str]], body: bytes, encoding: str | None
    ) -> Rendered:
        lines = [printable(start)]
        lines += [f"{printable(k)}: {printable(v)}" for k, v in headers]
        if body:
            decoded, note = decode_content(body, encoding)
            lines.append("")
            if note:
                lines.append(f"[body: {len(body)} bytes, {printable(note)} to {len(decoded)}]")
            lines += show_payload(decoded, hex_mode=self._hex)
        kind = "response" if start.startswith("HTTP/") else "request"
        return Rendered(f"HTTP/1 {kind}", lines)


def _no_body(start: str) -> bool:
    parts = start.split(" ")
    return len(parts) > 1 and (parts[1].startswith("1") or parts[1] in ("204", "304"))


def _dechunk(buf: bytearray, pos: int) -> tuple[bytes, int] | None:
    """(body, end position) of a complete chunked body, None while incomplete."""
    out = bytearray()
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size_text = bytes(buf[pos:eol]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            return bytes(buf[pos:]), len(buf)
        pos = eol + 2
        if size == 0:
            trailer_end = buf.find(b"\r\n", pos)
            if trailer_end < 0:
                return None
            # skip trailers up to the empty line
            while trailer_end != pos:
                pos = trailer_end + 2
                trailer_end = buf.find(b"\r\n", pos)
                if trailer_end < 0:
                    return None
            return bytes(out), pos + 2
        if len(buf) < pos + size + 2:
            return None
        out += buf[pos : pos + size]
        pos += size + 2


DECODER = Decoder(
    name="http1",
    priority=20,
    recognise=looks_like_http1,
    open=lambda _direction, hex_mode, _first: {
        d: Http1Stream(hex_mode=hex_mode) for d in ("write", "read")
    },
)
