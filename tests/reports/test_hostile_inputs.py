"""Every string of real report inputs replaced by hostile text: still valid, still inert.

The real scan, plan and session documents are taken from the other tests'
fixtures; each string value (not keys that select the schema or record type) is
prefixed with markup, a script and terminal control bytes. Rendering must not fail,
must produce strict-valid HTML5 with exactly one script element (the report's
own), and must show the hostile text escaped. No browser here: the browser-level
checks are in the per-report tests.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ecap.reports import _render
from ecap.reports.fleet import render_fleet_report
from ecap.reports.host import render_host_report
from ecap.reports.plan import render_plan_report
from ecap.reports.session import render_session_report
from tests.reports import browser

EVIL = "<script>alert(1)</script><img src=x onerror=alert(2)>\"'&\x1b[31m\x07\x00\ufffe"
KEEP = {"schema", "type", "severity"}
"""Keys whose values are enumerated by the documents' schemas: a poisoned one is refused
(test_poisoned_severity_is_refused), so only the free text is poisoned here."""


def poison(value: Any, key: str = "") -> Any:
    if isinstance(value, str):
        return value if key in KEEP else EVIL + value
    if isinstance(value, dict):
        return {k: poison(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [poison(v, key) for v in value]
    return value


def check(html: Path) -> None:
    browser.assert_valid_html5(html)
    raw = html.read_text()
    assert len(re.findall(r"<script\b", raw)) == 1
    assert "<img" not in raw and "\x1b" not in raw and "\x00" not in raw
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;" in raw


def test_visible_shows_control_characters_and_keeps_layout():
    assert _render.visible("a\x1b[31mb\tc\nd\\e") == "a\\x1b[31mb\tc\nd\\e"
    assert _render.visible("\u202e\udcff") == "\\u202e\\xff"


def test_poisoned_scan_host_and_fleet(rogue_scan, tmp_path):
    doc = poison(rogue_scan.doc)
    check(render_host_report(doc, tmp_path / "host.html", tmp_path / "host.json"))
    json.loads((tmp_path / "host.json").read_text())
    check(render_fleet_report([doc, rogue_scan.doc], tmp_path / "fleet.html"))


def test_poisoned_severity_is_refused(rogue_scan, tmp_path):
    import pytest

    from ecap.errors import UsageError

    doc = json.loads(json.dumps(rogue_scan.doc))
    doc["findings"][0]["severity"] = EVIL + "critical"
    with pytest.raises(UsageError, match="findings/0/severity"):
        render_host_report(doc, tmp_path / "host.html")
    assert not (tmp_path / "host.html").exists()


def test_poisoned_plan(tmp_path):
    import subprocess

    from tests.conftest import ecap_cmd

    r = subprocess.run(
        [ecap_cmd("ecap-harden"), "generate", "--out", str(tmp_path / "gen")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    plan = poison(json.loads((tmp_path / "gen" / "plan.json").read_text()))
    check(render_plan_report(plan, tmp_path / "plan.html"))


def test_poisoned_session(session, tmp_path):
    lines = [json.loads(x) for x in session.jsonl.read_text().splitlines() if x.strip()]
    poisoned = tmp_path / "poisoned.jsonl"
    poisoned.write_text("".join(json.dumps(poison(r)) + "\n" for r in lines))
    check(
        render_session_report(
            poisoned,
            tmp_path / "s.html",
            tmp_path / "s.json",
            journal=Path(session.env["ECAP_JOURNAL"]),
        )
    )


def test_minimal_documents_render_valid_pages(tmp_path):
    """A scan or plan with nothing in it is a clean host / empty plan, not a crash."""
    scan = {"schema": "ecap.scan/1"}
    check_empty = browser.assert_valid_html5
    check_empty(render_host_report(scan, tmp_path / "host.html"))
    assert "No findings" in (tmp_path / "host.html").read_text()
    check_empty(render_fleet_report([scan, scan], tmp_path / "fleet.html"))
    assert "No host has an unauthorized plaintext hook" in (tmp_path / "fleet.html").read_text()
    check_empty(render_plan_report({"schema": "ecap.harden-plan/1"}, tmp_path / "plan.html"))
