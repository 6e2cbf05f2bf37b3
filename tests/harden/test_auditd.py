"""auditd rules: ausyscall resolves them, auditctl loads them, and they are removed after."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from ecap.harden import auditd, auditd_check, auditrules, posture
from ecap.harden.artifact import Context


def _live() -> list[str]:
    rules = auditrules.live_rules()
    assert rules is not None, "auditctl -l failed"
    return rules


def _rules_text(generated) -> str:
    return (generated["balanced"] / "auditd" / "60-ecap-bpf.rules").read_text()


def test_rules_cover_both_abis_and_the_tracing_interfaces(generated) -> None:
    active = auditd_check.rules(_rules_text(generated))
    for name in ("bpf", "perf_event_open"):
        for arch in ("b64", "b32"):
            assert auditrules.audits_syscall(active, name, arch), (name, arch)
    text = _rules_text(generated)
    assert "uprobe_events" in text and "kprobe_events" in text
    assert "-w /sys/fs/bpf " in text or "/sys/fs/bpf: absent" in text
    assert "/proc/sys/kernel/unprivileged_bpf_disabled" in text


def test_ausyscall_resolves_every_syscall_name(generated) -> None:
    res = auditd_check.resolve(_rules_text(generated))
    assert len(res) == 4
    assert all(r.number is not None for r in res), res
    # b32 numbers differ from b64 ones: each ABI was really looked up
    numbers = {(r.arch, r.name): r.number for r in res}
    assert numbers[("x86_64", "bpf")] != numbers[("i386", "bpf")]


def _ours(text: str) -> set[str]:
    """Our rules that are loaded right now (other tests may load their own meanwhile)."""
    live = {auditd_check.normalize(r) for r in _live()}
    return {auditd_check.normalize(r) for r in auditd_check.rules(text)} & live


def test_rules_load_into_the_kernel_and_are_removed_afterwards(generated) -> None:
    text = _rules_text(generated)
    before = _ours(text)
    res = auditd_check.load_and_remove(text)
    assert res.ok, res
    assert res.loaded and res.listed == len(res.loaded)  # really visible in auditctl -l
    assert _ours(text) == before  # and gone again


def test_kernel_refusal_is_surfaced_and_nothing_is_left(tmp_path: Path) -> None:
    text = (
        "-a always,exit -F arch=b64 -S bpf -F key=ecap-test\n"
        "-w /nonexistent-ecap-dir/sub/file -p wa -k ecap-test\n"
    )
    res = auditd_check.load_and_remove(text)
    assert not res.ok and res.errors
    assert "No such file" in res.errors[0][1] or "nonexistent" in res.errors[0][0]
    assert len(res.loaded) == 1  # the first rule did load ...
    assert _ours(text) == set()  # ... and was removed


def test_unknown_syscall_fails_validation_with_ausyscall_message(tmp_path, run_harden) -> None:
    d = tmp_path / "out" / "auditd"
    d.mkdir(parents=True)
    (d / "x.rules").write_text("-a always,exit -F arch=b64 -S bpff -F key=ecap-test\n")
    proc = run_harden("validate", str(tmp_path / "out"))
    assert proc.returncode == 1
    assert "bpff" in proc.stdout and "Unknown syscall" in proc.stdout


@pytest.fixture
def tracefs_exclusion():
    """Load auditd's sample 'ignore tracefs' rule into the kernel; remove it after."""
    rule = ["-a", "never,filesystem", "-F", "fstype=tracefs"]
    auditctl = shutil.which("auditctl")
    assert auditctl
    added = subprocess.run([auditctl, *rule], capture_output=True, text=True)
    assert added.returncode == 0, added.stderr
    try:
        yield
    finally:
        subprocess.run([auditctl, "-d", *rule[1:]], capture_output=True, text=True)


def test_warns_when_loaded_rules_exclude_tracefs(tracefs_exclusion) -> None:
    live = posture.live()
    assert any(e.fstype == "tracefs" and e.where == "loaded" for e in live.audit_exclusions)
    art = auditd.render(Context("balanced", live))
    assert any(n.startswith("WARNING") and "tracefs" in n for n in art.notes)
    assert "## WARNING" in art.content


def test_warns_when_installed_rule_files_exclude_debugfs(tmp_path, monkeypatch) -> None:
    rules_d = tmp_path / "rules.d"
    rules_d.mkdir()
    (rules_d / "23-ignore-filesystems.rules").write_text("-a never,filesystem -F fstype=debugfs\n")
    monkeypatch.setattr(auditrules, "RULES_DIRS", (rules_d,))
    found = auditrules.tracing_exclusions([])
    assert [(e.fstype, e.where.endswith(":1")) for e in found] == [("debugfs", True)]


def test_no_warning_without_exclusions(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(auditrules, "RULES_DIRS", (tmp_path,))
    monkeypatch.setattr(auditrules, "RULES_FILES", ())
    live = [r for r in _live() if "fstype=" not in r]
    assert auditrules.tracing_exclusions(live) == []
