"""Content decoding of HTTP bodies (gzip, deflate, br) and how to show a body.

Shared by the HTTP/1 and HTTP/2 renderers. A body that does not decode is shown
as it was captured, with the decoding error named: rendering never hides bytes.
"""

from __future__ import annotations

import zlib

import brotli

from ecap.text import printable

PREVIEW_BYTES = 256
"""Binary bodies show this many bytes as hex unless ``--hex`` asks for all."""


def decode_content(body: bytes, encoding: str | None) -> tuple[bytes, str | None]:
    """(decoded body, note). Unknown or failing encodings return the body as is."""
    if not encoding or not body:
        return body, None
    encoding = encoding.strip().lower()
    try:
        if encoding in ("gzip", "x-gzip"):
            return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(body), "gzip decoded"
        if encoding == "deflate":
            try:
                return zlib.decompress(body), "deflate decoded"
            except zlib.error:
                return zlib.decompress(body, -zlib.MAX_WBITS), "raw deflate decoded"
        if encoding == "br":
            return brotli.decompress(body), "br decoded"
    except (zlib.error, brotli.error) as exc:
        return body, f"{encoding} did not decode ({exc})"
    return body, f"content-encoding {encoding} left as is"


def looks_textual(data: bytes) -> bool:
    if not data:
        return True
    try:
        text = data[:4096].decode("utf-8")
    except UnicodeDecodeError:
        return False
    bad = sum(1 for ch in text if not (ch.isprintable() or ch in "\r\n\t"))
    return bad * 10 <= len(text)  # a few control characters: text, shown escaped


def hexdump(data: bytes, limit: int | None = None) -> list[str]:
    shown = data if limit is None else data[:limit]
    lines = []
    for off in range(0, len(shown), 16):
        row = shown[off : off + 16]
        hexpart = " ".join(f"{b:02x}" for b in row)
        asc = "".join(chr(b) if 32 <= b < 127 else "." for b in row)
        lines.append(f"{off:08x}  {hexpart:<47}  {asc}")
    if limit is not None and len(data) > limit:
        lines.append(f"... {len(data) - limit} more bytes (use --hex to show all)")
    return lines


def show_payload(data: bytes, *, hex_mode: bool) -> list[str]:
    """Lines for a payload: escaped text when textual, otherwise a hex dump."""
    if hex_mode:
        return hexdump(data)
    if looks_textual(data):
        text = data.decode("utf-8", "backslashreplace")
        return [printable(line) for line in text.replace("\r\n", "\n").split("\n")]
    return hexdump(data, PREVIEW_BYTES)
