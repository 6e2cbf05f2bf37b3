"""ecap-detect as a user runs it: exit codes, escaping, degraded mode, clean host."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import ecap_cmd
from tests.detect.conftest import LIBSSL, findings_of, scan

pytestmark = [pytest.mark.bpf]

HOSTILE_COMM = "\x1b]0;pwn\x07[b]<i>"  # OSC retitle + BEL + rich markup + HTML, 15 bytes


def detect(
    *args: str, env: dict | None = None, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*prefix, ecap_cmd("ecap-detect"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_hostile_process_name_is_escaped_everywhere(hook, tmp_path):
    h = hook(f"{LIBSSL}:SSL_write", comm=HOSTILE_COMM)
    out_json = tmp_path / "scan.json"
    out_html = tmp_path / "host.html"
    proc = detect("scan", "--json", str(out_json), "--html", str(out_html), "--fail-on", "critical")
    assert proc.returncode == 1
    # terminal: no raw escape/BEL reaches the analyst's terminal; the name is shown escaped
    assert "\x1b]0;" not in proc.stdout and "\x07" not in proc.stdout
    assert "\\x1b]0;pwn\\x07[b]<i>" in proc.stdout
    # JSON: valid, and the raw name survives exactly (json escapes control characters)
    raw = out_json.read_text()
    assert "\x1b" not in raw and "\\u001b" in raw
    doc = json.loads(raw)
    (f,) = findings_of(doc, pid=h.pid)
    assert f["owner"]["comm"] == HOSTILE_COMM
    assert oct(out_json.stat().st_mode & 0o777) == "0o600"
    # HTML: the report escapes it (no live tag, no raw control character)
    html = out_html.read_text()
    assert "\x1b" not in html and "\x07" not in html
    assert "[b]<i>" not in html and "[b]&lt;i&gt;" in html
    # a single line on stderr says why the exit code is 1
    assert proc.stderr.count("\n") == 1 and "critical" in proc.stderr


def test_json_to_stdout_is_only_json(hook):
    h = hook(f"{LIBSSL}:SSL_read")
    proc = detect("scan", "--json", "-")
    assert proc.returncode == 1  # a critical finding, default --fail-on high
    doc = json.loads(proc.stdout)
    assert doc["schema"] == "ecap.scan/2"
    for key in (
        "generated_at",
        "host",
        "posture",
        "inventory",
        "findings",
        "limitations",
        "summary",
    ):
        assert key in doc
    assert {"hostname", "machine_id", "kernel"} <= doc["host"].keys()
    assert {"programs", "maps", "links", "probes", "pins"} <= doc["inventory"].keys()
    assert {"sysctl", "lockdown", "btf", "mounts", "audit"} <= doc["posture"].keys()
    (f,) = findings_of(doc, pid=h.pid)
    for key in (
        "id",
        "severity",
        "category",
        "title",
        "summary",
        "hooked",
        "owner",
        "victims",
        "authorized",
        "authorization",
        "evidence",
        "why",
        "remediation",
    ):
        assert key in f
    assert doc["summary"]["counts"]["critical"] >= 1


def test_fail_on_threshold_decides_exit_code(hook):
    hook(f"{LIBSSL}:SSL_CTX_new", program="counter")  # medium: a counter in libssl
    assert detect("scan", "--fail-on", "medium", "--no-inventory").returncode == 1
    high = detect("scan", "--fail-on", "critical", "--no-inventory", "--json", "-")
    assert high.returncode in (0, 1)
    doc = json.loads(high.stdout)
    assert (high.returncode == 1) == (doc["summary"]["counts"]["critical"] > 0)


@pytest.mark.parametrize(
    "args",
    [
        ("scan", "--fail-on", "severe"),
        ("scan", "--json", "/nonexistent-dir/x.json"),
        ("scan", "--audit-log", "/nonexistent/audit.log"),
        ("report", "/nonexistent.json", "--html", "/tmp/x.html"),
        ("bogus",),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args):
    proc = detect(*args)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stdout == ""


def test_degraded_without_cap_sys_admin(hook):
    """Without CAP_SYS_ADMIN/BPF/PERFMON the scan still names libbpf-style hooks from
    link fdinfo, and says what it could not see."""
    h = hook(f"{LIBSSL}:SSL_write", mode="link")
    drop = ("setpriv", "--inh-caps=-all", "--bounding-set=-sys_admin,-bpf,-perfmon", "--")
    proc = detect("scan", "--json", "-", prefix=drop)
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["scanner"]["degraded"] is True
    assert "CAP_SYS_ADMIN" not in doc["scanner"]["capabilities"]
    assert any("degraded" in lim for lim in doc["limitations"])
    (f,) = findings_of(doc, pid=h.pid)
    assert {(x["function"], x["source"]) for x in f["hooked"]} == {("SSL_write", "link")}
    assert f["severity"] == "critical"
    progs = {p["id"]: p for p in doc["inventory"]["programs"]}
    assert progs[h.prog_ids[0]]["source"] == "fdinfo"
    assert h.pid in progs[h.prog_ids[0]]["holders"]


def test_processes_vanishing_mid_scan_are_skipped():
    """Short-lived processes come and go during the walk; no scan may fail on them."""
    churn = [subprocess.Popen(["sh", "-c", "while :; do /bin/true; done"]) for _ in range(2)]
    try:
        for _ in range(10):
            doc = scan()
            assert doc["scanner"]["processes"] > 0
    finally:
        for p in churn:
            p.kill()
            p.wait()


def test_clean_machine_has_no_critical_findings():
    doc = scan()
    assert [f["title"] for f in doc["findings"] if f["severity"] == "critical"] == []
    assert all(f["remediation"] for f in doc["findings"])
    proc = detect("scan", "--no-inventory")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_unprivileged_user_gets_a_degraded_scan_not_an_error():
    drop = (
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--",
    )
    proc = detect("scan", "--json", "-", "--fail-on", "critical", prefix=drop)
    assert proc.returncode in (0, 1), proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["scanner"]["degraded"] is True
    assert any("could not be read" in lim for lim in doc["limitations"])
