"""The one place reports are rendered, written and read.

Every report goes through :func:`render` with the same jinja2 environment:
templates come from the installed ``ecap.reports`` package, autoescape is on for
every template, and a ``finalize`` hook makes every value printed into the page
visible text (terminal escape bytes and other control characters become ``\\xNN``),
so host-derived strings — process names, paths, command lines chosen by whoever
runs the process we report on — can neither inject markup nor make the document
invalid HTML. A Content-Security-Policy with a per-render nonce allows only the
report's own inline style and script, as a second wall behind the escaping.
"""

from __future__ import annotations

import functools
import json
import math
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from ecap.errors import UsageError
from ecap.fsutil import write_private_atomic
from ecap.text import printable

TEMPLATES = Path(__file__).resolve().parent / "templates"
MAX_INPUT_BYTES = 512 * 1024 * 1024
"""Refuse inputs larger than this before reading them (a scan is kilobytes)."""


def visible(value: str) -> str:
    """``value`` with control characters shown as escapes; newlines and tabs kept.

    Unlike :func:`ecap.text.printable` this keeps backslashes and line breaks as
    they are, so generated files and remediation snippets shown in a report stay
    exactly what the user would copy.
    """
    if value.isprintable():
        return value
    out = []
    for ch in value:
        code = ord(ch)
        if ch in "\n\t" or ch.isprintable():
            out.append(ch)
        elif 0xDC80 <= code <= 0xDCFF:  # surrogate-escaped byte of a file name
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        else:
            out.append(f"\\u{code:04x}")
    return "".join(out)


def _finalize(value: Any) -> Any:
    """Applied by jinja2 to every ``{{ expression }}`` before autoescaping."""
    if value is None:
        return ""
    if isinstance(value, Markup):
        return value
    if isinstance(value, str):
        return visible(value)
    return value


def when(ts: Any) -> str:
    """Epoch seconds (or an ISO string) as ``YYYY-MM-DD HH:MM:SSZ``; ``-`` if unknown."""
    if ts is None or ts == "":
        return "-"
    if isinstance(ts, int | float) and math.isfinite(ts):
        try:
            return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        except (OverflowError, OSError, ValueError):
            return str(ts)
    return str(ts)


def human_bytes(n: Any) -> str:
    """1536 → ``1.5 KiB``; non-numbers are shown as they are."""
    if not isinstance(n, int | float) or isinstance(n, bool):
        return "-" if n is None else str(n)
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)


def short(value: Any, keep: int = 16) -> str:
    """A long hash or id cut to ``keep`` characters plus an ellipsis."""
    text = "" if value is None else str(value)
    return text if len(text) <= keep else text[:keep] + "…"


@functools.cache
def environment() -> jinja2.Environment:
    """The jinja2 environment every report uses (autoescape on for all templates)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        undefined=jinja2.ChainableUndefined,
        finalize=_finalize,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = when
    env.filters["bytes"] = human_bytes
    env.filters["short"] = short
    env.filters["visible"] = visible
    return env


@functools.cache
def _assets() -> dict[str, Markup]:
    """The report's own stylesheet and script, inlined (no file or network fetches)."""
    return {
        "css": Markup((TEMPLATES / "style.css").read_text()),
        "js": Markup((TEMPLATES / "report.js").read_text()),
    }


def render_html(template: str, view: dict[str, Any]) -> str:
    """Render ``template`` with the view model and a fresh CSP nonce."""
    return (
        environment()
        .get_template(template)
        .render(view=view, nonce=secrets.token_urlsafe(18), assets=_assets())
    )


def generator() -> dict[str, str]:
    """Who made the report (shown in the footer and kept in the JSON twin)."""
    try:
        from importlib.metadata import version

        ver = version("ecap")
    except Exception:  # a source checkout without metadata
        ver = "unknown"
    return {"tool": "ecap", "version": ver}


def write_report(
    html: str,
    view: dict[str, Any],
    html_path: str | Path,
    json_path: str | Path | None,
) -> Path:
    """Write the HTML (and the JSON twin) atomically, 0600: reports describe hosts."""
    if json_path is not None:
        write_private_atomic(json_path, to_json(view))
    return write_private_atomic(html_path, html)


def to_json(view: dict[str, Any]) -> str:
    """The JSON twin: the same view model the HTML was rendered from."""
    return json.dumps(view, indent=2, sort_keys=False, ensure_ascii=True, default=str) + "\n"


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _read_text(path: Path, what: str, hint: str) -> str:
    from ecap.detect.document import read_bounded  # the one bounded reader of inputs

    raw = read_bounded(path, f"{what} {printable(str(path))}", hint, MAX_INPUT_BYTES)
    return raw.decode("utf-8", errors="surrogateescape")


def load_json(path: str | Path, *, schema: str, what: str, hint: str) -> dict[str, Any]:
    """A JSON document with the expected ``schema`` field, or UsageError (exit 2)."""
    path = Path(path)
    text = _read_text(path, what, hint)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{what} {printable(str(path))} is not JSON ({exc.msg} at line {exc.lineno})",
            hint=hint,
        ) from None
    check_schema(data, schema, f"{what} {printable(str(path))}", hint)
    return data


def check_schema(data: Any, schema: str, what: str, hint: str) -> None:
    """UsageError unless ``data`` is an object whose ``schema`` is ``schema``."""
    if not isinstance(data, dict):
        raise UsageError(f"{what} is a JSON {type(data).__name__}, not an object", hint=hint)
    if data.get("schema") != schema:
        found = printable(repr(data.get("schema")))
        raise UsageError(f"{what} has schema {found}, expected {schema!r}", hint=hint)


MAX_JSONL_LINE = 64 * 1024 * 1024
"""A JSON-lines file is read a line at a time, whatever its size; a single line
longer than this is refused (a capture's record is at most ~1.4 MiB)."""


def iter_jsonl(path: str | Path, *, what: str, hint: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line, streamed; UsageError on the
    first bad line."""
    path = Path(path)
    shown = printable(str(path))
    try:
        f = open(path, encoding="utf-8", errors="surrogateescape")  # noqa: SIM115
    except FileNotFoundError:
        raise UsageError(f"{what} {shown} not found", hint=hint) from None
    except IsADirectoryError:
        raise UsageError(f"{what} {shown} is a directory", hint=hint) from None
    except OSError as exc:
        raise UsageError(f"cannot read {what} {shown}: {exc.strerror}", hint=hint) from None
    with f:
        yield from _json_lines(f, path, what, hint)


def _json_lines(f: Any, path: Path, what: str, hint: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in enumerate(iter(lambda: f.readline(MAX_JSONL_LINE + 1), ""), start=1):
        if len(line) > MAX_JSONL_LINE:
            raise UsageError(
                f"{what} {printable(str(path))} line {number} is longer than any real one",
                hint=hint,
            )
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(
                f"{what} {printable(str(path))} line {number} is not JSON ({exc.msg})", hint=hint
            ) from None
        if not isinstance(obj, dict):
            raise UsageError(
                f"{what} {printable(str(path))} line {number} is not a JSON object", hint=hint
            )
        yield number, obj
