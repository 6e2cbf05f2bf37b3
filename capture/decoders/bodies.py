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


_ASCII_CONTROLS = bytes(
    0 if byte in b"\t\n\r" or 0x20 <= byte < 0x7F else 1 for byte in range(0x80)
) + bytes(0x80)
"""1 for the ASCII bytes text does not have (controls but tab and line ends, DEL)."""


def looks_textual(data: bytes) -> bool:
    """UTF-8 with at most one character in ten not printable (shown escaped).

    Judged on the first 4 KiB. Runs for every payload the text view shows, so ASCII
    (nearly every HTTP/1 payload) is counted by a byte table in C; a per-character
    loop cost the text capture half its time.
    """
    if not data:
        return True
    head = data[:4096]
    if head.isascii():
        return head.translate(_ASCII_CONTROLS).count(1) * 10 <= len(head)
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3 or exc.reason != "unexpected end of data":
            return False
        text = head[: exc.start].decode("utf-8")  # a character cut by the 4 KiB limit
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
