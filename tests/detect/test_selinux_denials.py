"""SELinux AVC denials of BPF/perf permissions in the load history (recorded-format lines).

SELinux is not enabled in this kernel, so the AVC records come from a fixture in the
kernel's record format (tests/detect/fixtures/README.md); they are read with the real
auparse, in the same pass as the AUDIT_BPF records, and reach the scan document.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from ecap.detect import audit_history
from ecap.detect.scan import ScanOptions, run_scan
from tests.conftest import ecap_cmd

FIX = Path(__file__).parent / "fixtures"
LOG = FIX / "audit-avc.log"


def test_watched_avc_denials_are_read_with_their_process_and_context():
    log = audit_history.read_log(LOG)
    assert [(e.prog_id, e.op) for e in log.bpf] == [(950, "LOAD")]  # same pass
    got = [(d.serial, d.domain, d.tclass, d.perms, d.permissive, d.actor.pid) for d in log.denials]
    assert got == [
        (5001, "httpd_t", "bpf", ("prog_load",), False, 7001),
        (5002, "container_t", "capability2", ("bpf",), False, 7105),
        (5002, "container_t", "capability2", ("perfmon",), False, 7105),
        (5003, "staff_t", "perf_event", ("open", "kernel"), True, 7210),
        (5009, "httpd_t", "bpf", ("map_create",), False, 7001),
    ]  # file read, capability sys_admin, capability2 syslog and 'granted' are ignored
    first = log.denials[0]
    assert (first.actor.exe, first.actor.comm, first.actor.uid, first.actor.auid) == (
        "/tmp/.x/sniff",
        "sniff",
        48,
        None,
    )
    assert first.scontext == "system_u:system_r:httpd_t:s0"
    hostile = log.denials[1].actor.comm or ""
    assert "evil" in hostile and "\x1b" not in hostile  # hex-encoded comm decoded, escaped


def test_only_watched_permissions_count():
    assert audit_history.watched_perms("capability2", "bpf,syslog") == ("bpf",)
    assert audit_history.watched_perms("perf_event", "open,cpu") == ("open", "cpu")
    assert audit_history.watched_perms("bpf", "prog_run") == ("prog_run",)
    assert audit_history.watched_perms("capability", "sys_admin") == ()
    assert audit_history.watched_perms("file", "read") == ()


def test_denials_reach_the_scan_as_findings_and_inventory():
    doc = run_scan(ScanOptions(audit_log=LOG))
    denied = {f["title"].split(" to ")[1].split(" ")[0]: f for f in doc["findings"]
              if f["category"] == "selinux-denial"}  # fmt: skip
    assert set(denied) == {"httpd_t", "container_t", "staff_t"}
    httpd = denied["httpd_t"]
    assert httpd["severity"] == "medium" and "bpf map_create, bpf prog_load" in httpd["title"]
    assert "/tmp/.x/sniff" in httpd["title"] and len(httpd["evidence"]) == 2
    assert "selinux-confine-bpf" in httpd["remediation"]
    # permissive=1: logged as denied, but the perf event was opened
    assert denied["staff_t"]["severity"] == "high"
    assert "not blocked" in denied["staff_t"]["summary"]
    rows = doc["inventory"]["selinux_denials"]
    assert len(rows) == 5 and rows[0]["domain"] == "httpd_t" and rows[0]["perms"] == ["prog_load"]
    text = json.dumps(doc)
    assert "\x1b" not in text and "\\u001b" not in text


def test_cli_and_host_report_show_the_denials(tmp_path):
    html = tmp_path / "host.html"
    proc = subprocess.run(
        [ecap_cmd("ecap-detect"), "scan", "--audit-log", str(LOG), "--json", "-",
         "--html", str(html), "--fail-on", "critical"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode in (0, 1), proc.stderr
    assert '"category": "selinux-denial"' in proc.stdout
    page = html.read_text()
    assert "SELinux denials of BPF and perf-event permissions" in page
    assert "httpd_t" in page and "\x1b" not in page
