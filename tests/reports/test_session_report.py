"""The capture session report from a real ``ecap-audit capture tls --format jsonl``."""

from __future__ import annotations

import json
import re
import shutil
import stat
import subprocess
from html import unescape
from pathlib import Path

import pytest

from ecap.authz import keys
from tests import tls_helpers
from tests.conftest import ecap_cmd
from tests.reports import browser
from tests.reports.conftest import Session, isolated_env


def _report(
    s: Session, jsonl: Path, out: Path, env: dict | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            ecap_cmd("ecap-audit"),
            "report",
            str(jsonl),
            "--html",
            str(out / "s.html"),
            "--json",
            str(out / "s.json"),
        ],
        env=env or s.env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _checks(view: dict) -> dict[str, bool | None]:
    return {c["name"]: c["ok"] for c in view["checks"]}


def test_report_verifies_authorization_scope_traffic_and_journal(session, tmp_path):
    r = _report(session, session.jsonl, tmp_path)
    assert r.returncode == 0, r.stderr
    html, twin = tmp_path / "s.html", tmp_path / "s.json"
    for path in (html, twin):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    view = json.loads(twin.read_text())
    assert view["verdict_ok"] is True, view["checks"]
    assert all(_checks(view).values())
    assert view["token"]["verified"] and view["token"]["claims"]["operator"] == "<b>alice</b>"
    assert [t["pid"] for t in view["token"]["claims"]["targets"]] == [session.client_pid]
    [conn] = view["connections"]
    assert conn["peer"] == f"127.0.0.1:{session.server.port}"
    assert conn["bytes_written"] == len(session.received)
    assert conn["bytes_read"] == len(session.sent)
    assert conn["truncated"] == 0 and conn["lost"] == 0
    events = [e["event"] for e in view["journal"]["entries"]]
    assert events == ["gate.granted", "capture.start", "capture.stop"]
    assert view["journal"]["ok"] and all(e["in_verified_chain"] for e in view["journal"]["entries"])
    # the fixture journals outside the host journal: flagged, though not a violation
    [warning] = view["warnings"]
    assert f"journaled to {session.env['ECAP_JOURNAL']}, not the host journal" in warning

    browser.assert_valid_html5(html)
    dom = browser.dump_dom(html)
    text = unescape(re.sub(r"<[^>]+>", "", dom))
    assert "Verdict: inside its authorization" in text
    assert "Warning: journaled to" in text
    assert "script>\\x1b[31m" in text  # the hostile comm, visible and inert
    assert "<b>alice</b>" in text and "data-pwned=" not in dom and dom.count("<script") == 1
    assert len(browser.screenshot(html, tmp_path / "session.png")) > 10_000


def test_report_holds_no_captured_plaintext(session, tmp_path):
    assert _report(session, session.jsonl, tmp_path).returncode == 0
    body = tls_helpers.HELLO.decode().strip()
    for path in (tmp_path / "s.html", tmp_path / "s.json"):
        text = path.read_text()
        assert body not in text and "X-Ecap-Test" not in text and "payload_b64" not in text


def _rewrite(src: Path, dst: Path, edit) -> Path:
    records = [json.loads(line) for line in src.read_text().splitlines() if line.strip()]
    for rec in records:
        edit(rec)
    dst.write_text("".join(json.dumps(r) + "\n" for r in records))
    return dst


def test_tampered_session_file_is_flagged(session, tmp_path):
    def edit(rec: dict) -> None:
        if rec["type"] == "header":
            rec["grant"]["operator"] = "somebody-else"
            rec["host"]["hostname"] = "another-host"
        if rec["type"] == "event" and rec["direction"] == "read":
            rec["pid"] = 1
        if rec["type"] == "summary":
            rec["stopped_at"] += 2 * 3600  # the token was valid for one hour

    forged = _rewrite(session.jsonl, tmp_path / "forged.jsonl", edit)
    assert _report(session, forged, tmp_path).returncode == 0
    view = json.loads((tmp_path / "s.json").read_text())
    checks = _checks(view)
    assert checks["header claims match the token"] is False
    assert checks["every recorded event comes from an authorized PID"] is False
    assert checks["captured on the authorized host"] is False
    assert checks["stopped before the token expired"] is False
    assert checks["every target process is in scope (PID and start time)"] is True
    assert view["verdict"] == "VIOLATIONS found"
    assert "VIOLATED" in (tmp_path / "s.html").read_text()


def test_token_from_an_untrusted_key_is_not_verified(session, tmp_path):
    env = isolated_env(tmp_path / "other")
    _, pub, _ = keys.generate(tmp_path / "other-signer")
    keys.install_trusted(pub, Path(env["ECAP_TRUST_DIR"]))
    env["ECAP_JOURNAL"] = session.env["ECAP_JOURNAL"]
    assert _report(session, session.jsonl, tmp_path, env).returncode == 0
    view = json.loads((tmp_path / "s.json").read_text())
    assert view["token"]["verified"] is False and "NOT verified" in view["token"]["at_start"]
    assert view["verdict_ok"] is False and view["token"]["claims"] is None


def test_broken_journal_chain_is_reported(session, tmp_path):
    journal = tmp_path / "journal.jsonl"
    shutil.copy(session.env["ECAP_JOURNAL"], journal)
    lines = journal.read_text().splitlines(keepends=True)
    first = json.loads(lines[0])
    first["reason"] = "edited after the fact"
    lines[0] = json.dumps(first, sort_keys=True) + "\n"
    journal.write_text("".join(lines))
    env = {**session.env, "ECAP_JOURNAL": str(journal)}
    assert _report(session, session.jsonl, tmp_path, env).returncode == 0
    view = json.loads((tmp_path / "s.json").read_text())
    assert view["journal"]["ok"] is False and view["journal"]["bad_line"] == 1
    assert _checks(view)["journal hash chain intact"] is False
    assert not any(e["in_verified_chain"] for e in view["journal"]["entries"])
    assert "chain BROKEN at line 1" in unescape((tmp_path / "s.html").read_text())


@pytest.mark.parametrize(
    "content, message",
    [
        ("hello\n", "line 1 is not JSON"),
        ('{"schema": "ecap.scan/1", "findings": []}\n', "does not start with a header"),
        ('{"type": "header", "schema": "ecap.capture/9"}\n', "expected 'ecap.capture/4'"),
        ("", "is empty"),
        ("[1]\n", "not a JSON object"),
    ],
)
def test_bad_session_input_exits_2_with_one_line_and_writes_nothing(
    session, tmp_path, content, message
):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(content)
    r = _report(session, bad, tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr
    assert not (tmp_path / "s.html").exists() and not (tmp_path / "s.json").exists()


def test_missing_session_file_exits_2(session, tmp_path):
    r = _report(session, tmp_path / "nope.jsonl", tmp_path)
    assert r.returncode == 2 and "not found" in r.stderr and r.stderr.count("\n") == 1
