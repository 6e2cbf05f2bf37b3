"""``--format raw``: the kernel's records verbatim, rendered afterwards.

A raw capture renders (``ecap-audit replay``) to the very session a live
``--format jsonl`` capture writes — the same pipeline runs on the same records —
and ``ecap-audit report`` reads it directly. A damaged raw file is refused in one
line. The raw mode is a token mode of its own.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from ecap.capture.schema import validate_lines
from tests import tls_helpers
from tests.capture.conftest import assert_calls_match, read_stream
from tests.conftest import ecap_cmd

pytestmark = [pytest.mark.bpf, pytest.mark.slow]


def _replay(path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([ecap_cmd("ecap-audit"), "replay", str(path), *args],
                          capture_output=True, timeout=120)  # fmt: skip


def test_raw_capture_replays_to_the_session_a_jsonl_capture_writes(
    tls_server, clients, start_capture, ecap_env, tmp_path
):
    n = 4 << 20
    client = tls_helpers.python_client(tls_server, f"/bytes?n={n}&seed=11")
    clients.append(client)
    run = start_capture([client.pid], fmt="raw")
    tls_helpers.release(client)
    assert len(client.stdout.read()) == n
    client.wait(30)
    assert run.wait(60) == 0, run.stderr
    assert oct(run.output.stat().st_mode & 0o777) == "0o600"
    raw = run.output.read_bytes()
    assert raw.startswith(b'{"type":"header","schema":"ecap.capture-raw/1"')

    replayed = _replay(run.output, "--format", "jsonl")
    assert replayed.returncode == 0, replayed.stderr
    records = validate_lines(replayed.stdout.decode().splitlines())
    received, sent = tls_server.transcript()
    assert read_stream(records, "write", client.pid) == received
    totals = assert_calls_match(records, client.pid, "read", sent)
    summary = records[-1]
    assert totals["lost"] + totals["lost_calls"] == summary["lost_bytes"]
    if summary["lost_bytes"] == 0:
        captured = read_stream(records, "read", client.pid)
        assert hashlib.sha256(captured).digest() == hashlib.sha256(sent).digest()
    assert summary["stop_reason"] == "all targets exited"
    assert summary["connections"] == 1
    (conn,) = [r for r in records if r["type"] == "connection"]
    assert conn["peer"] == f"127.0.0.1:{tls_server.port}" and conn["comm"].startswith("python")
    # the capture counted the same calls and bytes it never decoded
    live_summary = run.stderr
    assert (
        f"read: {summary['events']['read']} events, {summary['bytes']['read']} bytes"
        in live_summary
    )

    text = _replay(run.output)
    assert text.returncode == 0 and b"HTTP/1.1 200 OK" in text.stdout

    html = tmp_path / "report.html"
    report = subprocess.run(
        [ecap_cmd("ecap-audit"), "report", str(run.output), "--html", str(html),
         "--json", str(tmp_path / "report.json")],
        env=ecap_env.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    view = json.loads((tmp_path / "report.json").read_text())
    assert view["token"]["verified"] and view["session"]["format"] == "raw"
    assert [c["bytes_read"] for c in view["connections"]] == [summary["bytes"]["read"]]


def test_a_damaged_raw_file_is_refused_in_one_line(tls_server, clients, start_capture, tmp_path):
    client = tls_helpers.python_client(tls_server, "/hello")
    clients.append(client)
    run = start_capture([client.pid], fmt="raw")
    tls_helpers.release(client)
    client.wait(30)
    assert run.wait(60) == 0, run.stderr
    raw = run.output.read_bytes()
    header_end = raw.index(b"\n") + 1
    for name, damaged, needle in (
        ("cut", raw[:-10], "ends"),
        ("tag", raw[:header_end] + b"X" + raw[header_end + 1 :], "damaged at byte"),
        ("header", b'{"type":"header","schema":"ecap.capture-raw/1"}\n' + raw[header_end:],
         "lacks"),
    ):  # fmt: skip
        path = tmp_path / f"{name}.raw"
        path.write_bytes(damaged)
        proc = _replay(path, "--format", "jsonl")
        assert proc.returncode == 2, (name, proc.stderr)
        (line,) = proc.stderr.decode().strip().splitlines()
        assert "is not a capture session" in line and needle in line, (name, line)


def test_raw_is_a_token_mode_of_its_own(tls_server, clients, start_capture, ecap_env):
    client = tls_helpers.python_client(tls_server, "/hello")
    clients.append(client)
    token = ecap_env.write_token(ecap_env.authorize([client.pid], modes=["jsonl"]))
    proc = subprocess.run(
        [ecap_cmd("ecap-audit"), "capture", "tls", "--pid", str(client.pid), "--token",
         str(token), "--format", "raw", "--output", str(ecap_env.root / "x.raw")],
        env=ecap_env.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 3 and "mode 'raw' is not allowed" in proc.stderr
