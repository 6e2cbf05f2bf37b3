"""Headless Chromium and a strict HTML5 parser, as the report tests use them.

Chromium runs with networking disabled (a dead proxy and a resolver that maps every
name to nothing), a throwaway profile directory and no sandbox (tests run as root).
Each call is one short-lived browser process, waited for and reaped.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path

import html5lib

CHROMIUM = "/usr/bin/chromium"
BASE_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-extensions",
    "--proxy-server=127.0.0.1:9",
    "--host-resolver-rules=MAP * ~NOTFOUND",
)


def chromium(
    url_or_path: Path | str, *flags: str, timeout: float = 90
) -> subprocess.CompletedProcess:
    """Run Chromium once on a file and return the finished process (stdout as text)."""
    assert Path(CHROMIUM).exists(), "chromium is not installed; run make setup"
    url = url_or_path if isinstance(url_or_path, str) else Path(url_or_path).resolve().as_uri()
    profile = tempfile.mkdtemp(prefix="ecap-chromium-")
    try:
        return subprocess.run(
            [CHROMIUM, *BASE_FLAGS, f"--user-data-dir={profile}", *flags, url],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def dump_dom(path: Path) -> str:
    """The DOM after load, with the report's script run."""
    result = chromium(path, "--dump-dom", "--virtual-time-budget=3000")
    assert result.stdout.strip().endswith("</html>"), result.stderr[-2000:]
    return result.stdout


def without_scripts(path: Path, out: Path) -> Path:
    """A copy of a report with its <script> elements removed: the page as read with
    JavaScript off (headless Chromium's --dump-dom needs scripting enabled itself)."""
    text = path.read_text()
    start = text.index("<script")
    end = text.index("</script>", start) + len("</script>")
    assert "<script" not in text[end:], "a report has exactly one script element"
    out.write_text(text[:start] + text[end:])
    return out


def screenshot(path: Path, png: Path, *, size: str = "1280,2000", dark: bool = False) -> bytes:
    """Render ``path`` into ``png`` and return the PNG bytes."""
    flags = [f"--screenshot={png}", f"--window-size={size}", "--hide-scrollbars"]
    if dark:
        flags += ["--force-dark-mode", "--blink-settings=preferredColorScheme=0"]
    result = chromium(path, *flags)
    assert png.exists(), f"no screenshot: {result.stderr[-2000:]}"
    return png.read_bytes()


def print_pdf(path: Path, pdf: Path) -> bytes:
    result = chromium(path, f"--print-to-pdf={pdf}", "--no-pdf-header-footer")
    assert pdf.exists(), f"no PDF: {result.stderr[-2000:]}"
    return pdf.read_bytes()


def first_pixel(png: bytes) -> tuple[int, int, int]:
    """RGB of the top-left pixel of an 8-bit RGB/RGBA PNG.

    For the first pixel of the first row every PNG filter type reduces to the raw
    value (no left, upper or upper-left neighbour), so no unfiltering is needed.
    """
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, ctype, depth = 8, b"", None, None
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos : pos + 8])
        body = png[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            depth, ctype = body[8], body[9]
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert depth == 8 and ctype in (2, 6), f"unexpected PNG format {depth}/{ctype}"
    raw = zlib.decompress(idat)
    return raw[1], raw[2], raw[3]


def assert_valid_html5(path: Path) -> None:
    """Parse with html5lib in strict mode: any parse error raises."""
    parser = html5lib.HTMLParser(strict=True, namespaceHTMLElements=False)
    parser.parse(path.read_bytes())
