"""The host report, rendered from a real scan with a hostile rogue sniffer running."""

from __future__ import annotations

import json
import re
import stat
import subprocess
from html import unescape
from pathlib import Path

import pytest

from ecap.errors import UsageError
from ecap.reports.host import render_host_report
from tests.conftest import ecap_cmd
from tests.reports import browser
from tests.reports.conftest import INJECT_ARGV0, INJECT_DIR, PWNED, RealScan, own_finding


@pytest.fixture(scope="module")
def host_report(
    rogue_scan: RealScan, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("host-report")
    html, twin = out / "host.html", out / "host.json"
    render_host_report(rogue_scan.doc, html, twin)
    return html, twin


def test_rogue_sniffer_is_the_first_finding_with_owner_victims_and_remediation(
    rogue_scan, host_report
):
    html, _ = host_report
    dom = browser.dump_dom(html)
    finding = own_finding(rogue_scan)
    assert finding["severity"] == "critical" and finding["authorized"] is False
    articles = re.findall(
        r'<article class="finding sev-(\w+)" id="f(\d+)">(.*?)</article>', dom, re.S
    )
    assert articles and articles[0][0] == "critical"
    ours = next(body for _, _, body in articles if f"pid {rogue_scan.sniffer_pid} " in body)
    text = unescape(re.sub(r"<[^>]+>", "", ours))
    assert "SSL_write" in text and "libssl.so.3" in text
    assert f"{len(finding['victims'])} process(es) map a hooked file now" in text
    assert str(rogue_scan.victim_pid) in ours
    assert "no verified ecap authorization" in text
    assert "Respond to a rogue sniffer" in text
    # the copy buttons were made visible by the report's own script (CSP nonce works)
    assert 'data-js="on"' in dom
    assert re.search(r'<button type="button" class="copy" data-copy="[^"]+">Copy</button>', ours)


def test_hostile_names_are_escaped_and_no_script_from_host_data_runs(rogue_scan, host_report):
    html, twin = host_report
    browser.assert_valid_html5(html)
    raw = html.read_text()
    assert "\x1b" not in raw and "\x07" not in raw
    assert "&lt;script&gt;document.documentElement.setAttribute(" in raw
    dom = browser.dump_dom(html)
    assert PWNED not in dom.split("<body", 1)[0] and "data-pwned=" not in dom
    assert dom.count("<script") == 1, "only the report's own script element may exist"
    text = unescape(re.sub(r"<[^>]+>", " ", dom))
    assert INJECT_DIR in text  # shown literally, as text
    assert "\\x1b]0;owned\\x07" in text  # control bytes made visible
    assert INJECT_ARGV0.split("\x1b")[0] in text
    doc = json.loads(twin.read_text())
    owners = [f["owner"] for f in doc["findings"] if f.get("owner")]
    assert any(o.get("exe") == rogue_scan.sniffer_exe for o in owners)


def test_remediation_snippet_is_what_ecap_harden_generates(rogue_scan, host_report, tmp_path):
    """Snippets shown are ecap-harden's own output for this scan, verbatim."""
    html, twin = host_report
    doc = json.loads(twin.read_text())
    generated = tmp_path / "gen"
    r = subprocess.run(
        [
            ecap_cmd("ecap-harden"),
            "generate",
            "--from",
            str(rogue_scan.path),
            "--out",
            str(generated),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    snippets = [
        (s["path"], s["text"])
        for f in doc["findings"]
        for rem in f["remediation"]
        for s in rem.get("snippets", [])
    ]
    compared = set()
    for path, text in snippets:
        target = generated / path
        if not target.exists():  # tailored out: the scanned host already meets it
            continue
        if path.startswith("sysctl/"):
            assert text.strip() in target.read_text()  # the very block, comments included
        else:
            assert text == target.read_text()
        compared.add(path)
    assert {"response/rogue-sniffer.md", "seccomp/ecap-seccomp.json"} <= compared
    guide = next(text for path, text in snippets if path == "response/rogue-sniffer.md")
    assert guide == (generated / "response" / "rogue-sniffer.md").read_text()
    assert guide.strip().splitlines()[0] in unescape(html.read_text())


def test_inventory_and_posture_tables(rogue_scan, host_report):
    html, twin = host_report
    doc = json.loads(twin.read_text())
    keys = [t["key"] for t in doc["inventory"]]
    for key in ("programs", "maps", "links", "probes", "pins"):
        assert key in keys
    probes = next(t for t in doc["inventory"] if t["key"] == "probes")
    holder = probes["columns"].index("holder_pid")
    assert any(row[holder] == str(rogue_scan.sniffer_pid) for row in probes["rows"])
    settings = {row["setting"] for row in doc["posture"]}
    assert "kernel.unprivileged_bpf_disabled" in settings
    dom = browser.dump_dom(html)
    # filter boxes exist only with JS on, one per data table
    assert dom.count('class="tools"') == dom.count('class="data')
    assert doc["counts"]["critical"] >= 1 and doc["score"]["value"] <= 20


def test_screenshots_light_dark_print_and_javascript_off(host_report, tmp_path):
    html, _ = host_report
    light = browser.screenshot(html, tmp_path / "light.png")
    dark = browser.screenshot(html, tmp_path / "dark.png", dark=True)
    assert sum(browser.first_pixel(light)) > 600  # white page
    assert sum(browser.first_pixel(dark)) < 150  # dark page
    pdf = browser.print_pdf(html, tmp_path / "host.pdf")
    assert pdf.startswith(b"%PDF") and pdf.count(b"/Type /Page") >= 2
    static = browser.without_scripts(html, tmp_path / "nojs.html")
    dom = browser.dump_dom(static)
    assert 'data-js="on"' not in dom and 'class="tools"' not in dom
    assert "<details" in dom and "Evidence" in dom
    assert re.search(r'class="copy" data-copy="[^"]+" hidden', dom), "copy buttons hide without JS"


def test_cli_scan_html_writes_private_report(rogue_scan, tmp_path):
    from tests.reports.conftest import isolated_env

    out = tmp_path / "cli.html"
    r = subprocess.run(
        [ecap_cmd("ecap-detect"), "scan", "--html", str(out), "--fail-on", "critical"],
        env=isolated_env(tmp_path / "ecap"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1, r.stderr  # the rogue sniffer is critical
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    browser.assert_valid_html5(out)
    assert f"pid {rogue_scan.sniffer_pid} " in out.read_text()


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json", "is not JSON"),
        ('{"schema": "ecap.capture/1"}', "expected 'ecap.scan/2'"),
        ("[1, 2]", "not an object"),
    ],
)
def test_bad_scan_input_is_a_usage_error_and_writes_nothing(tmp_path, content, message):
    from ecap.reports.host import load_scan

    bad = tmp_path / "bad.json"
    bad.write_text(content)
    with pytest.raises(UsageError, match=message):
        render_host_report(load_scan(bad), tmp_path / "out.html")
    assert not (tmp_path / "out.html").exists()
    r = subprocess.run(
        [ecap_cmd("ecap-detect"), "report", str(bad), "--html", str(tmp_path / "out.html")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert not (tmp_path / "out.html").exists()


SORT_JS = """(() => {
  const table = document.querySelector('table[aria-label="Processes holding BPF objects"]');
  const col = [...table.tHead.rows[0].cells].findIndex(c => c.textContent.trim() === "fd");
  const read = () => [...table.tBodies[0].rows].map(r => Number(r.cells[col].textContent));
  const button = table.tHead.rows[0].cells[col].querySelector("button.sort");
  button.click();
  const asc = read();
  button.click();
  return [asc, read(), table.tHead.rows[0].cells[col].getAttribute("aria-sort")];
})()"""

FILTER_JS = """((query) => {
  const table = document.querySelector('table[aria-label="Processes holding BPF objects"]');
  const input = table.previousElementSibling.querySelector("input[type=search]");
  input.value = query;
  input.dispatchEvent(new Event("input"));
  const shown = [...table.tBodies[0].rows].filter(r => !r.hidden).map(r => r.textContent);
  return [shown, table.tBodies[0].rows.length,
          table.previousElementSibling.querySelector(".count").textContent];
})"""

COPY_JS = """(async () => {
  const button = document.querySelector("button.copy");
  button.click();
  await new Promise(r => setTimeout(r, 200));
  return [button.textContent, await navigator.clipboard.readText(),
          document.getElementById(button.dataset.copy).textContent];
})()"""


def test_tables_sort_and_filter_copy_buttons_copy_and_print_expands(rogue_scan, host_report):
    """Interact with the page in Chromium through the DevTools protocol."""
    from tests.reports.cdp import Browser

    html, _ = host_report
    with Browser(html) as b:
        asc, desc, state = b.eval(SORT_JS)
        assert len(asc) >= 4  # the sniffer alone holds maps, a program and a perf event
        assert asc == sorted(asc) and desc == sorted(asc, reverse=True)
        assert state == "descending"
        shown, total, count = b.eval(FILTER_JS + "('no such row')")
        assert shown == [] and count == f"0 of {total} rows"
        shown, total, count = b.eval(FILTER_JS + f"('{rogue_scan.sniffer_pid}')")
        assert shown and all(str(rogue_scan.sniffer_pid) in row for row in shown)
        assert count == f"{len(shown)} of {total} rows"

        b.call(
            "Browser.grantPermissions",
            permissions=["clipboardReadWrite", "clipboardSanitizedWrite"],
        )
        label, clipboard, snippet = b.eval(COPY_JS)
        assert label == "Copied" and clipboard == snippet and snippet.strip()

        b.page_call("Emulation.setEmulatedMedia", media="print")
        assert b.eval("getComputedStyle(document.querySelector('.tools')).display") == "none"
        closed = "document.querySelectorAll('details:not([open])').length"
        assert b.eval(closed) > 0
        assert b.eval(f"window.dispatchEvent(new Event('beforeprint')); {closed}") == 0
        assert b.eval(f"window.dispatchEvent(new Event('afterprint')); {closed}") > 0


def test_authorized_capture_is_reported_as_authorized(tmp_path):
    """A scan taken while a real ecap capture runs: that hook is authorized, info."""
    from tests.reports.conftest import capture_session, run_scan

    session = capture_session(
        tmp_path / "cap", during=lambda env: run_scan(env, tmp_path / "s.json")
    )
    scan = session.during
    html = render_host_report(scan, tmp_path / "host.html", tmp_path / "host.json")
    view = json.loads((tmp_path / "host.json").read_text())
    ours = [
        f
        for f in view["findings"]
        if f["authorized"] is True and str(session.client_pid) in json.dumps(f["authorization"])
    ]
    assert ours and ours[0]["severity"] == "info"
    assert ours[0]["authorization"]["operator"] == "<b>alice</b>"
    text = unescape(re.sub(r"<[^>]+>", "", html.read_text()))
    assert "yes: ecap session, operator <b>alice</b>, reason “INC-6 <i>report</i>”" in text
    browser.assert_valid_html5(html)
