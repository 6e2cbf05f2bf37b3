"""The fleet report from several real scan files: the rogue host comes first."""

from __future__ import annotations

import json
import re
import subprocess
from html import unescape
from pathlib import Path

import pytest

from ecap.errors import UsageError
from ecap.reports.fleet import load_scans, render_fleet_report
from tests import tls_helpers
from tests.conftest import ecap_cmd
from tests.reports import browser
from tests.reports.conftest import (
    hostile_copy,
    isolated_env,
    run_scan,
    scan_seeing,
    start_rogue_sniffer,
)

HOSTILE_HOST = "<img src=x onerror=\"document.documentElement.setAttribute('data-pwned','host')\">"


def _clean(doc: dict) -> dict:
    """A scan of this host as a clean fleet member would see it.

    This machine is shared with tests that run their own sniffers at the same time;
    their plaintext hooks are removed so that the "clean" hosts really are.
    """
    doc["findings"] = [f for f in doc["findings"] if f.get("category") != "plaintext-hook"]
    return doc


@pytest.fixture(scope="module")
def fleet_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], int]:
    base = tmp_path_factory.mktemp("fleet")
    env = isolated_env(base / "ecap")
    files = []
    for name in ("web-1", HOSTILE_HOST):
        doc = _clean(run_scan(env, base / "tmp.json"))
        doc["host"]["hostname"] = name
        path = base / f"clean-{len(files)}.json"
        path.write_text(json.dumps(doc))
        files.append(path)
    sniffer = start_rogue_sniffer(hostile_copy(base / "bin", "/usr/bin/bpftrace"))
    try:
        doc = scan_seeing(env, base / "tmp.json", sniffer.pid)
    finally:
        tls_helpers.stop_process(sniffer)
    doc["host"]["hostname"] = "db-7"
    rogue = base / "rogue.json"
    rogue.write_text(json.dumps(doc))
    files.insert(1, rogue)  # given in the middle, must come out first
    return files, sniffer.pid


def test_cli_fleet_report_lists_rogue_host_first_with_matrix_and_anchors(fleet_files, tmp_path):
    files, _ = fleet_files
    out = tmp_path / "fleet.html"
    r = subprocess.run(
        [ecap_cmd("ecap-detect"), "report", *map(str, files), "--html", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    browser.assert_valid_html5(out)
    dom = browser.dump_dom(out)
    hosts = re.search(r'<table class="data" aria-label="hosts">.*?<tbody>(.*?)</tbody>', dom, re.S)
    rows = re.findall(
        r"<tr( class=\"rogue\")?><td><a href=\"#(host-\d+)\">(.*?)</a>", hosts.group(1)
    )
    assert unescape(rows[0][2]) == "db-7"
    assert rows[0][0] and not any(rogue for rogue, _, _ in rows[1:])
    for _, anchor, _ in rows:  # every row links to a per-host section that exists
        assert f'<section class="hostsec" id="{anchor}">' in dom
    matrix = re.search(r'aria-label="host by finding type">.*?<thead>(.*?)</thead>', dom, re.S)
    columns = [
        unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<th>(.*?)</th>", matrix.group(1))
    ]
    assert columns[1] == "rogue plaintext hook"  # most severe type first
    # hostile host name: shown as text, never run
    assert "data-pwned=" not in dom and dom.count("<script") == 1
    assert HOSTILE_HOST in unescape(re.sub(r"<[^>]+>", " ", dom))
    png = browser.screenshot(out, tmp_path / "fleet.png", size="1280,1400")
    assert len(png) > 10_000


def test_library_fleet_report_and_json_twin(fleet_files, tmp_path):
    files, sniffer_pid = fleet_files
    view_path = tmp_path / "fleet.json"
    render_fleet_report(load_scans(files), tmp_path / "fleet.html", view_path)
    view = json.loads(view_path.read_text())
    assert view["schema"] == "ecap.report.fleet/1"
    assert view["hosts"][0]["hostname"] == "db-7"
    assert view["totals"]["hosts"] == 3 and view["totals"]["rogue_hosts"] == 1
    rogue = view["hosts"][0]
    assert rogue["types"]["rogue plaintext hook"]["worst"] == "critical"
    assert any((f["owner"] or {}).get("pid") == sniffer_pid for f in rogue["findings"])


def test_fleet_bad_inputs(tmp_path):
    with pytest.raises(UsageError, match="no scan files"):
        load_scans([])
    bad = tmp_path / "plan.json"
    bad.write_text('{"schema": "ecap.harden-plan/1"}')
    with pytest.raises(UsageError, match=r"expected 'ecap\.scan/2'"):
        load_scans([bad])
    with pytest.raises(UsageError, match="not found"):
        load_scans([tmp_path / "missing.json"])
