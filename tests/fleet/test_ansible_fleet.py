"""The fleet playbooks (deploy/ansible) with ansible-core over SSH to test hosts.

One scan run over all four hosts (three answer, one is unreachable) is shared by
the report assertions; the hardening plan is previewed in check mode, applied,
and applied again (no change); the watcher service playbook installs its unit
and configuration, and the installed command starts.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ecap.detect.document import SCHEMA as SCAN_SCHEMA
from tests.conftest import ecap_cmd
from tests.fleet.conftest import Fleet

pytestmark = [pytest.mark.slow]

RECAP = re.compile(
    r"^(?P<host>\S+)\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+"
    r"unreachable=(?P<unreachable>\d+)\s+failed=(?P<failed>\d+)",
    re.M,
)


def recap(output: str) -> dict[str, dict[str, int]]:
    return {
        m["host"]: {k: int(m[k]) for k in ("ok", "changed", "unreachable", "failed")}
        for m in RECAP.finditer(output)
    }


@pytest.fixture(scope="module")
def scanned(fleet: Fleet) -> tuple[Fleet, subprocess.CompletedProcess[str], Path]:
    out = fleet.base / "fleet-out"
    result = fleet.playbook("scan.yml", *fleet.scan_args(out))
    return fleet, result, out


def test_scan_playbook_installs_scans_and_reports_every_host(scanned):
    fleet, result, out = scanned
    log = result.stdout + result.stderr
    rows = recap(log)
    # Ansible's own contract: exit 4 when a host was unreachable, the others done
    assert result.returncode == 4, log[-3000:]
    for h in fleet.reachable:
        assert rows[h.name]["failed"] == 0 and rows[h.name]["unreachable"] == 0, log[-3000:]
        assert Path(h.paths()["ecap_prefix"], "bin", "ecap-detect").exists()
        doc = json.loads((out / "scans" / f"{h.name}.json").read_text())
        assert doc["schema"] == SCAN_SCHEMA
        assert doc["host"]["hostname"] == h.name  # scanned inside that host's UTS namespace
    assert rows["fleet-4"]["unreachable"] == 1
    assert rows["localhost"]["failed"] == 0


def test_fleet_report_lists_hosts_by_name_and_the_unreachable_one(scanned):
    fleet, _result, out = scanned
    html = (out / "fleet.html").read_text()
    for h in fleet.reachable:
        assert f">{h.name}</a>" in html
    assert re.search(r"fleet-4 <span class=\"bad\">\(unreachable\)</span>", html)
    assert "3 hosts" in html or "across 3 hosts" in html
    assert "1 host(s) could not be scanned" in html


def test_hardening_plan_check_mode_then_apply_then_no_change(scanned):
    fleet = scanned[0]
    plan = fleet.base / "plan"
    gen = subprocess.run(
        [ecap_cmd("ecap-harden"), "generate", "--profile", "balanced", "--out", str(plan)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert gen.returncode == 0, gen.stderr
    sysctl = (plan / "sysctl" / "99-ecap-hardening.conf").read_text()
    # One host: the scan test already drives every host; this one is about the
    # playbook's idempotence and check mode, which a host shows as well as three.
    hosts = fleet.reachable[:1]
    targets = {h.name: Path(h.paths()["ecap_sysctl_dir"], "99-ecap-hardening.conf") for h in hosts}
    args = ("-e", f"ecap_harden_plan={plan}")

    check = fleet.playbook("harden.yml", *args, "--check", "--diff", limit=hosts)
    log = check.stdout + check.stderr
    assert check.returncode == 0, log[-3000:]
    assert all(recap(log)[name]["changed"] > 0 for name in targets), log[-2000:]
    assert "+kernel.unprivileged_bpf_disabled" in log.replace(" ", "")  # the diff is shown
    assert not [p for p in targets.values() if p.exists()], "check mode wrote files"

    apply = fleet.playbook("harden.yml", *args, limit=hosts)
    log = apply.stdout + apply.stderr
    assert apply.returncode == 0, log[-3000:]
    for name, path in targets.items():
        assert recap(log)[name]["changed"] > 0
        assert path.read_text() == sysctl
        rules = Path(fleet.hosts[0].paths()["ecap_audit_rules_dir"], "60-ecap-bpf.rules")
        assert rules.read_text() == (plan / "auditd" / "60-ecap-bpf.rules").read_text()
        deny = Path(
            fleet.hosts[0].paths()["ecap_apparmor_dir"], "abstractions", "ecap-deny-tracing"
        )
        assert deny.exists()

    again = fleet.playbook("harden.yml", *args, limit=hosts)
    log = again.stdout + again.stderr
    assert again.returncode == 0, log[-3000:]
    assert all(recap(log)[name]["changed"] == 0 for name in targets), log[-2000:]


def test_watch_playbook_installs_a_unit_that_verifies_and_a_watcher_that_starts(scanned):
    fleet = scanned[0]
    config = {"json": "WATCH_LOG", "format": "ecap", "syslog": False, "min_severity": "high"}
    result = fleet.playbook(
        "watch.yml",
        "-e",
        f"ecap_wheelhouse={fleet.wheelhouse}",
        "-e",
        json.dumps({"ecap_watch_config": config}),
        "--skip-tags",
        "install",  # scan.yml installed it; users skip it the same way
        limit=fleet.reachable[:1],
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    host = fleet.reachable[0]
    paths = host.paths()
    unit = Path(paths["ecap_systemd_dir"], "ecap-detect-watch.service")
    text = unit.read_text()
    exec_start = re.search(r"^ExecStart=(.*)$", text, re.M)[1].split()
    assert exec_start[0] == f"{paths['ecap_prefix']}/bin/ecap-detect"
    assert exec_start[-1] == f"{paths['ecap_etc_dir']}/watch.toml"
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    # the installed watcher, started the way the unit starts it (no systemd here)
    toml = Path(exec_start[-1])
    log_file = host.root / "watch.jsonl"
    toml.write_text(toml.read_text().replace("WATCH_LOG", str(log_file)))
    proc = subprocess.Popen(exec_start, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (log_file.exists() and '"type":"start"' in log_file.read_text()):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "installed watcher did not start"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert proc.returncode == 0
    records = [json.loads(x) for x in log_file.read_text().splitlines()]
    assert records[0]["type"] == "start" and records[-1]["type"] == "stop"
    assert records[0]["options"]["min_severity"] == "high"
    assert sys.executable  # (the installed venv, not the test's, ran it)
    assert Path(paths["ecap_prefix"], "bin", "python").exists()
