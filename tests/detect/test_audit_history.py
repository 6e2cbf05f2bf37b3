"""Load history from a real audit trail: a program that came and went is reported.

Starts a private auditd (its own config, log in a temp dir) with one syscall rule
for bpf(2) so each AUDIT_BPF record has its SYSCALL record; loads and unloads a
program; scans with ``--audit-log``. Rule, daemon and the audit enabled flag are
restored afterwards.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ecap_cmd
from tests.detect.conftest import LIBSSL, scan, stop

pytestmark = [pytest.mark.bpf, pytest.mark.slow]

RULE = ["-a", "always,exit", "-F", "arch=b64", "-S", "bpf", "-k", "ecap-detect-test"]


def auditctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["auditctl", *args], capture_output=True, text=True, timeout=10)


def _status() -> dict[str, int]:
    out = {}
    for line in auditctl("-s").stdout.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            out[key] = int(value)
    return out


@pytest.fixture
def private_auditd(tmp_path: Path) -> Iterator[Path]:
    before = _status()
    assert before.get("pid", 0) == 0, "an audit daemon is already running on this host"
    conf_dir = tmp_path / "audit"
    conf_dir.mkdir(mode=0o750)
    log = tmp_path / "audit" / "audit.log"
    text = Path("/etc/audit/auditd.conf").read_text()
    text = re.sub(r"(?m)^log_file\s*=.*$", f"log_file = {log}", text)
    text = re.sub(r"(?m)^flush\s*=.*$", "flush = SYNC", text)
    text = re.sub(r"(?m)^log_group\s*=.*$", "log_group = root", text)
    conf = conf_dir / "auditd.conf"
    conf.write_text(text)
    conf.chmod(0o640)
    daemon = subprocess.Popen(
        ["auditd", "-n", "-c", str(conf_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    added = False
    try:
        deadline = time.monotonic() + 20
        while _status().get("pid") != daemon.pid:
            assert daemon.poll() is None, daemon.stderr.read() if daemon.stderr else ""
            assert time.monotonic() < deadline, "auditd did not register"
            time.sleep(0.2)
        assert auditctl(*RULE).returncode == 0
        added = True
        yield log
    finally:
        if added:
            auditctl("-d", *RULE[1:])
        stop(daemon)
        auditctl("-e", str(before.get("enabled", 0)))


def test_program_that_came_and_went_is_in_the_history(private_auditd, hook):
    h = hook(f"{LIBSSL}:SSL_write")
    prog_id = h.prog_ids[0]
    assert h.proc is not None
    stop(h.proc)
    deadline = time.monotonic() + 30
    doc = scan(audit_log=private_auditd)
    while not any(t["prog_id"] == prog_id for t in doc["inventory"]["history"] or []):
        assert time.monotonic() < deadline, "no LOAD/UNLOAD pair for our program in the log"
        time.sleep(0.5)
        doc = scan(audit_log=private_auditd)
    (entry,) = [t for t in doc["inventory"]["history"] if t["prog_id"] == prog_id]
    assert entry["pid"] == h.pid
    assert entry["exe"] and "python" in entry["exe"]
    assert entry["unloaded_at"] >= entry["loaded_at"]
    (f,) = [f for f in doc["findings"] if f["category"] == "load-history"]
    assert any(f"prog {prog_id} " in e for e in f["evidence"])
    # while auditd records bpf(2), the posture no longer reports it as unaudited
    assert doc["posture"]["audit"]["rules_bpf"] is True
    # the CLI reads the same file
    proc = subprocess.run(
        [
            ecap_cmd("ecap-detect"),
            "scan",
            "--audit-log",
            str(private_auditd),
            "--json",
            "-",
            "--fail-on",
            "critical",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode in (0, 1)
    assert f'"prog_id": {prog_id}' in proc.stdout


def test_an_unheld_program_names_its_loader_from_the_audit_log(private_auditd):
    """The loader sent its fds over a unix socket and exited: audit still knows it."""
    import os
    import signal

    from tests.detect.conftest import read_ready
    from tests.detect.test_corpus import start

    proc = start("unheld")
    facts = read_ready(proc)
    proc.wait(timeout=30)
    try:
        deadline = time.monotonic() + 30
        while True:
            doc = scan(audit_log=private_auditd)
            (f,) = [x for x in doc["findings"] if x["programs"] == facts["prog_ids"]]
            if f["owner"].get("loaded_by"):
                break
            assert time.monotonic() < deadline, "no LOAD record for the unheld program"
            time.sleep(0.5)
        assert f["category"] == "unheld-program"
        assert f["owner"]["loaded_by"]["pid"] == proc.pid
        assert any(e.startswith("audit: loaded by ") and "python" in e for e in f["evidence"])
    finally:
        os.kill(facts["sleeper"], signal.SIGKILL)
