"""The scan document as a contract: its name, its JSON Schema, and the one loader.

``ecap-detect scan --json`` writes it; ``ecap-detect report``, ``ecap-harden
generate --from`` and the HTML reports read it — all through :func:`load` (or
:func:`validate` for a document already in memory), so every reader refuses the
same bad input with the same one-line error and exit 2. The schema is published
in the repository as ``detect/scan.schema.json`` (JSON Schema 2020-12, for other
tools too); the fields are described in ``detect/SCHEMA.md``.

Hostile documents are bounded before they cost anything: the file size is checked
before reading, ``NaN``/``Infinity`` are refused while parsing, nesting deeper than
the parser's recursion limit is refused, and the schema caps every string and
list a report would render.
"""

from __future__ import annotations

import functools
import json
import os
import stat
from pathlib import Path
from typing import Any

from ecap.errors import UsageError
from ecap.text import printable

SCHEMA = "ecap.scan/2"
"""What ``ecap-detect scan`` writes (2: program capabilities, reach, destinations)."""
READABLE = ("ecap.scan/1", SCHEMA)
"""What readers accept: a fleet may still hold documents from older scanners."""
SEVERITIES = ("info", "low", "medium", "high", "critical")
"""The one severity order, least severe first."""
RANK = {s: i for i, s in enumerate(SEVERITIES)}
MAX_BYTES = 64 * 1024 * 1024
"""A scan of a busy host is a few MiB; a bigger file is refused before it is read."""
SCHEMA_FILE = Path(__file__).with_name("scan.schema.json")
HINT = "pass the JSON written by 'ecap-detect scan --json FILE'"


def is_rogue(finding: dict[str, Any]) -> bool:
    """A rogue finding: critical, not an authorized capture, about a BPF object.

    The one definition the host and fleet reports (and ``watch``) count by:
    posture and history findings are never critical, so in practice this is a
    plaintext sniffer, a tampering program, or anything else the rules rate
    critical that no authorization covers.
    """
    return (
        finding.get("severity") == "critical"
        and finding.get("authorized") is not True
        and bool(finding.get("programs") or finding.get("hooked"))
    )


@functools.cache
def json_schema() -> dict[str, Any]:
    """The published JSON Schema of the scan document."""
    return json.loads(SCHEMA_FILE.read_text())


@functools.cache
def _validator():
    from jsonschema import Draft202012Validator  # only readers pay for it

    return Draft202012Validator(json_schema())


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def validate(doc: Any, what: str = "scan document", hint: str = HINT) -> dict[str, Any]:
    """``doc`` if it is a valid scan document; UsageError naming the first problem."""
    if not isinstance(doc, dict):
        raise UsageError(f"{what} is a JSON {type(doc).__name__}, not an object", hint=hint)
    if doc.get("schema") not in READABLE:
        found = printable(repr(doc.get("schema")))[:80]
        raise UsageError(f"{what} has schema {found}, expected {SCHEMA!r}", hint=hint)
    try:
        error = next(iter(_validator().iter_errors(doc)), None)
    except RecursionError:
        raise UsageError(f"{what} is nested too deeply", hint=hint) from None
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        message = printable(error.message)
        if len(message) > 160:
            message = message[:160] + "…"
        raise UsageError(f"{what}: {where}: {message}", hint=hint)
    return doc


def loads(text: str | bytes, what: str = "scan document", hint: str = HINT) -> dict[str, Any]:
    """Parse and validate a scan document's text."""
    if len(text) > MAX_BYTES:
        raise UsageError(f"{what} is larger than {MAX_BYTES} bytes", hint=hint)
    try:
        doc = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise UsageError(f"{what} is nested too deeply", hint=hint) from None
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{what} is not JSON ({exc.msg} at line {exc.lineno})", hint=hint
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"{what} is not valid JSON ({printable(str(exc))})", hint=hint) from None
    return validate(doc, what, hint)


def read_bounded(
    path: str | os.PathLike[str], what: str, hint: str, limit: int = MAX_BYTES
) -> bytes:
    """The bytes of an input document, or UsageError naming what is wrong with it.

    Only a regular file is read (opened non-blocking, so a FIFO cannot hang the
    reader), and only when it is at most ``limit`` bytes: checked with fstat on
    the open file, and again while reading. Every ecap reader of documents uses it.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UsageError(f"{what} not found", hint=hint) from None
    except IsADirectoryError:
        raise UsageError(f"{what} is a directory", hint=hint) from None
    except OSError as exc:
        raise UsageError(f"cannot read {what}: {exc.strerror}", hint=hint) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise UsageError(f"{what} is a directory", hint=hint)
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"{what} is not a regular file", hint=hint)
        if st.st_size > limit:
            raise UsageError(
                f"{what} is {st.st_size} bytes, larger than any real one ({limit})", hint=hint
            )
        with os.fdopen(os.dup(fd), "rb") as f:
            raw = f.read(limit + 1)
    except OSError as exc:
        raise UsageError(f"cannot read {what}: {exc.strerror}", hint=hint) from None
    finally:
        os.close(fd)
    if len(raw) > limit:
        raise UsageError(f"{what} grew past {limit} bytes while being read", hint=hint)
    return raw


def load(path: str | os.PathLike[str], hint: str = HINT) -> dict[str, Any]:
    """Read, parse and validate a scan document file (UsageError, exit 2, otherwise)."""
    what = f"scan file {printable(str(path))}"
    raw = read_bounded(path, what, hint)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{what} is not UTF-8 text", hint=hint) from None
    return loads(text, what, hint)
