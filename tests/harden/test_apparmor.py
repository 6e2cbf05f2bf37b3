"""AppArmor: every profile compiles with the installed apparmor_parser; broken ones do not."""

from __future__ import annotations

from pathlib import Path

import pytest

from ecap.errors import UsageError
from ecap.harden import apparmor, validate


def _profiles(d: Path) -> list[Path]:
    return sorted(p for p in (d / "apparmor").rglob("*") if p.is_file())


def test_every_generated_profile_compiles(generated) -> None:
    for d in generated.values():
        paths = _profiles(d)
        names = {p.name for p in paths}
        assert {"ecap-deny-tracing", "ecap-audit", "ecap-app-container", "ecap-app-curl"} <= names
        for v in validate.validate_dir(d, load_audit=False, link_selinux=False):
            if v.path.startswith("apparmor/"):
                assert v.ok, (v.path, v.message)
                assert v.validator == "apparmor_parser"


def test_shipped_policy_files_compile_as_installed() -> None:
    src = apparmor.policy_dir()
    ok, msg = validate.apparmor_compile(src / "ecap-audit", [src])
    assert ok, msg


def test_abstraction_denies_what_capture_needs() -> None:
    text = (apparmor.policy_dir() / "abstractions" / "ecap-deny-tracing").read_text()
    for rule in ("deny capability bpf,", "deny capability perfmon,", "deny capability sys_admin,",
                 "deny capability sys_ptrace,", "deny ptrace (read, trace),",
                 "deny /sys/kernel/tracing/{,**}", "deny /sys/kernel/debug/{,**}",
                 "deny /sys/fs/bpf/{,**}"):  # fmt: skip
        assert rule in text


def test_ecap_audit_profile_is_least_privilege() -> None:
    text = (apparmor.policy_dir() / "ecap-audit").read_text()
    assert "capability bpf," in text and "capability perfmon," in text
    assert "ptrace (read)," in text and "deny ptrace (trace)," in text
    assert "network inet" not in text and "change_profile" not in text


def test_header_follows_the_installed_parser() -> None:
    version = apparmor.parser_version()
    assert version is not None and version >= (3, 0)  # Debian 12 ships 3.0.x
    syntax = apparmor.syntax_for(version)
    profile = apparmor.app_profile("/usr/bin/curl", syntax)
    assert "abi <abi/3.0>," in profile and "include if exists <local/ecap-app-curl>" in profile
    old = apparmor.app_profile("/usr/bin/curl", apparmor.syntax_for((2, 13, 3)))
    assert "abi <" not in old and "#include <tunables/global>" in old
    assert "<local/ecap-app-curl>: parser 2.13.3 has no 'include if exists'" in old


def test_broken_profile_is_rejected_with_the_parsers_message(tmp_path, run_harden) -> None:
    d = tmp_path / "out"
    (d / "apparmor").mkdir(parents=True)
    (d / "apparmor" / "broken").write_text(
        "abi <abi/3.0>,\nprofile broken /usr/bin/true {\n  capability bogus_cap,\n}\n"
    )
    ok, msg = validate.apparmor_compile(d / "apparmor" / "broken", [d / "apparmor"])
    assert not ok and "Invalid capability bogus_cap" in msg
    proc = run_harden("validate", str(d))
    assert proc.returncode == 1
    assert "Invalid capability bogus_cap" in proc.stdout
    assert proc.stderr.count("\n") == 1 and "failed validation" in proc.stderr


def test_missing_abstraction_is_reported(tmp_path) -> None:
    d = tmp_path / "apparmor"
    d.mkdir()
    (d / "app").write_text(apparmor.app_profile("/usr/bin/true", apparmor.syntax_for((3, 0))))
    ok, msg = validate.apparmor_compile(d / "app", [d])
    assert not ok and "ecap-deny-tracing" in msg


@pytest.mark.parametrize("exe", ["relative/bin", "/usr/bin/*", "/opt/a b", "/x/../etc", "/a{b}"])
def test_unsafe_executable_paths_are_refused(exe: str) -> None:
    with pytest.raises(UsageError):
        apparmor.app_profile(exe, apparmor.syntax_for((3, 0)))


def test_cli_refuses_unsafe_app_with_exit_2(run_harden, tmp_path) -> None:
    proc = run_harden("generate", "--out", str(tmp_path / "o"), "--app", "/usr/bin/*")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_old_parser_syntax_still_compiles_with_the_real_parser(tmp_path) -> None:
    """2.x output (#include, no ABI, bpf/perfmon commented) is still valid policy."""
    from ecap.harden.artifact import Context
    from ecap.harden.posture import Posture

    old = apparmor.syntax_for((2, 13, 3))
    ctx = Context("balanced", Posture("live", "h", "k", {}), apps=("/usr/bin/curl",))
    arts = apparmor.render(ctx, old)
    for a in arts:
        (tmp_path / a.path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / a.path).write_text(a.content)
    abstraction = arts[0].content
    assert (
        "# deny capability bpf," in abstraction and "\n  deny capability sys_admin," in abstraction
    )
    for a in arts[1:]:
        ok, msg = validate.apparmor_compile(tmp_path / a.path, [tmp_path / "apparmor"])
        assert ok, (a.path, msg)
