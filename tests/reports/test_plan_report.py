"""The hardening-plan report from real ``ecap-harden generate`` output."""

from __future__ import annotations

import json
import re
import stat
import subprocess
from html import unescape
from pathlib import Path

import pytest

from ecap.errors import UsageError
from ecap.reports.plan import load_plan, render_plan_report
from tests.conftest import ecap_cmd
from tests.reports import browser
from tests.reports.conftest import isolated_env, run_scan

HOSTILE_HOST = "<script>document.documentElement.setAttribute('data-pwned','plan')</script>\x1b[2J"


def _generate(out: Path, *args: str) -> dict:
    r = subprocess.run(
        [ecap_cmd("ecap-harden"), "generate", *args, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    return json.loads((out / "plan.json").read_text())


@pytest.fixture(scope="module")
def strict_plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``generate --profile strict --from SCAN`` for a scan whose host name is hostile."""
    base = tmp_path_factory.mktemp("plan")
    doc = run_scan(isolated_env(base / "ecap"), base / "scan.json")
    doc["host"]["hostname"] = HOSTILE_HOST
    scan = base / "hostile-scan.json"
    scan.write_text(json.dumps(doc))
    out = base / "strict"
    _generate(out, "--profile", "strict", "--from", str(scan))
    return out


def test_plan_report_shows_controls_threat_model_warnings_and_files(strict_plan, tmp_path):
    plan = load_plan(strict_plan)
    html = render_plan_report(plan, tmp_path / "plan.html", tmp_path / "plan-report.json")
    assert stat.S_IMODE(html.stat().st_mode) == 0o600
    browser.assert_valid_html5(html)
    dom = browser.dump_dom(html)
    text = unescape(re.sub(r"<[^>]+>", "", dom))
    for control in plan["controls"]:
        assert control["id"] in text and control["title"] in text
    # every generated file inline, verbatim (control bytes made visible)
    pres = [unescape(p) for p in re.findall(r'<pre id="content-file-\d+">(.*?)</pre>', dom, re.S)]
    assert len(pres) == len(plan["files"])
    for f, shown in zip(plan["files"], pres, strict=True):
        assert shown == f["content"].replace("\x1b", "\\x1b")
        assert f["sha256"] in text
    for warning in plan["warnings"]:
        assert warning.replace("\x1b", "\\x1b") in text
    assert any(c["one_way"] and c["recommended"] for c in plan["controls"])
    assert "root on the host" in text and "lock until reboot here" in text
    # hostile host name from the scan: text only
    assert "data-pwned=" not in dom and dom.count("<script") == 1
    assert "&lt;script&gt;document.documentElement" in html.read_text()
    twin = json.loads((tmp_path / "plan-report.json").read_text())
    assert twin["schema"] == "ecap.report.plan/1"
    assert twin["summary"]["files"] == len(plan["files"])
    keys = {
        "unprivileged user": "unprivileged_user",
        "root in a container": "container_root",
        "root on the host": "host_root",
    }
    for threat in twin["threats"]:
        key = keys[threat["attacker"]]
        assert threat["stopped_by"] == [
            c["title"] for c in plan["controls"] if c["recommended"] and c["stops"][key] == "yes"
        ]
        for title in threat["stopped_by"] + threat["partly"]:
            assert title in text
    png = browser.screenshot(html, tmp_path / "plan.png")
    assert len(png) > 10_000


def test_balanced_live_plan_renders(tmp_path):
    plan = _generate(tmp_path / "balanced")
    html = render_plan_report(plan, tmp_path / "plan.html")
    browser.assert_valid_html5(html)
    assert plan["profile"] == "balanced" and "balanced" in html.read_text()


def test_bad_plan_inputs(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        load_plan(tmp_path)  # a directory without plan.json
    scan_like = tmp_path / "x.json"
    scan_like.write_text('{"schema": "ecap.scan/1"}')
    with pytest.raises(UsageError, match="expected"):
        load_plan(scan_like)
    with pytest.raises(UsageError, match="expected"):
        render_plan_report({"schema": "nope"}, tmp_path / "out.html")
    assert not (tmp_path / "out.html").exists()
