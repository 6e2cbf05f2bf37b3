"""Making host-derived strings safe to show.

Process names, command lines, paths and captured payloads are chosen by whoever
runs the process — possibly the attacker we are reporting on. A comm of
``\\x1b]0;pwned\\x07`` must not retitle the analyst's terminal, and ``[bold]`` must
not restyle a rich table. JSON is escaped by ``json.dumps``; HTML by jinja2
autoescape; this module covers the terminal.
"""

from __future__ import annotations

import os

_ASCII_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F)} | {ord("\\"): "\\\\"}


def printable(value: str | bytes) -> str:
    """Replace control and non-printable characters with visible ``\\xNN`` escapes.

    Accepts bytes (decoded as UTF-8 with invalid sequences escaped) or str
    (surrogate-escaped file names included). Printable Unicode is kept.
    """
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="backslashreplace")
    if value.isascii():  # the common case, in C: controls and backslash by table
        return value.translate(_ASCII_ESCAPES)
    out = []
    for ch in value:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # surrogateescape'd byte from os.fsdecode
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch == "\\":
            out.append("\\\\")
        elif ch.isprintable() or ch == " ":
            out.append(ch)
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        else:
            out.append(f"\\u{code:04x}")
    return "".join(out)


def for_rich(value: str | bytes | os.PathLike[str] | None) -> str:
    """Printable and with rich markup neutralised: safe inside rich tables/text."""
    if value is None:
        return ""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    from rich.markup import escape  # rich only where terminal output is made

    return escape(printable(value))


def json_safe_str(value: str) -> str:
    """A str that ``json.dumps`` can encode: surrogate-escaped bytes become ``\\xNN``.

    File names and comm values read with surrogateescape are not valid UTF-8 and
    would make ``json.dumps(..., ensure_ascii=False)`` fail or emit lone surrogates.
    """
    if value.isascii():  # the common case, decided in C
        return value
    if any(0xDC80 <= ord(c) <= 0xDCFF for c in value):
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return value
