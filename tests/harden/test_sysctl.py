"""The sysctl file: commented lines, only keys this kernel has, tailoring from a scan."""

from __future__ import annotations

from pathlib import Path

from ecap.harden import posture, sysctl
from ecap.harden.artifact import Context
from ecap.harden.controls import sysctl_controls
from ecap.host import read_sysctl, sysctl_path

from .conftest import FIXTURES


def test_every_key_exists_under_proc_sys_or_is_reported_absent(generated) -> None:
    for profile, d in generated.items():
        text = (d / "sysctl" / "99-ecap-hardening.conf").read_text()
        values = sysctl.parse(text)
        assert values, profile
        for key in values:
            assert sysctl_path(key).exists(), key
        for c in sysctl_controls():
            if profile in c.settings and not sysctl_path(c.sysctl).exists():
                assert f"# {c.sysctl}: absent on this kernel" in text
                assert c.sysctl not in values


def test_each_setting_line_is_commented_with_what_it_blocks(generated) -> None:
    lines = (generated["strict"] / "sysctl" / "99-ecap-hardening.conf").read_text().splitlines()
    for i, line in enumerate(lines):
        if line and not line.startswith("#"):
            block = lines[max(0, i - 5) : i]
            assert any(b.startswith("# Blocks:") for b in block), line
            assert any(b.startswith("# Side effect:") for b in block), line


def test_profiles_differ_where_the_catalogue_says() -> None:
    live = posture.live()
    balanced = sysctl.parse(sysctl.render(Context("balanced", live)).content)
    strict = sysctl.parse(sysctl.render(Context("strict", live)).content)
    if read_sysctl("kernel.unprivileged_bpf_disabled") is not None:
        assert balanced["kernel.unprivileged_bpf_disabled"] == "2"
        assert strict["kernel.unprivileged_bpf_disabled"] == "1"
    assert "kernel.kexec_load_disabled" not in balanced
    assert strict["net.core.bpf_jit_harden"] == balanced["net.core.bpf_jit_harden"] == "2"


def test_tailored_file_keeps_only_what_the_scanned_host_lacks() -> None:
    scanned = posture.from_scan(FIXTURES / "scan-vm.json")
    art = sysctl.render(Context("balanced", scanned, tailored=True))
    values = sysctl.parse(art.content)
    # The scan recorded jit_harden=0 and kptr_restrict=0 (lacking), the others accepted.
    assert values == {"net.core.bpf_jit_harden": "2", "kernel.kptr_restrict": "2"}
    assert any("already 2 on the host" in n for n in art.notes)
    assert any("kernel.yama.ptrace_scope: absent" in n for n in art.notes)


def test_scan_without_a_key_is_unknown_not_hardened(tmp_path: Path) -> None:
    scan = tmp_path / "scan.json"
    scan.write_text('{"schema": "ecap.scan/1", "host": {"hostname": "h", "kernel": "6.1"},'
                    ' "posture": {"sysctl": {}}, "findings": []}')  # fmt: skip
    values = sysctl.parse(sysctl.render(Context("balanced", posture.from_scan(scan), True)).content)
    assert "kernel.unprivileged_bpf_disabled" in values and "kernel.kptr_restrict" in values
