"""generate → validate end to end, plan.json, tailoring, and one-line errors."""

from __future__ import annotations

import hashlib
import json
import stat

import pytest

from ecap.errors import UsageError
from ecap.harden import generate, posture
from ecap.harden.artifact import Context
from ecap.remediation import ALL_CONTROL_IDS

from .conftest import FIXTURES


def test_generated_directory_validates_with_the_real_tools(generated, run_harden) -> None:
    # The SELinux modules are compiled here; linking them with the installed policy
    # (~10 s a time) is test_selinux's.
    for d in generated.values():
        proc = run_harden("validate", str(d), "--json", "--no-selinux-link")
        doc = json.loads(proc.stdout)
        assert proc.returncode == 0, [r for r in doc["results"] if not r["ok"]]
        validators = {r["validator"] for r in doc["results"]}
        assert {"apparmor_parser", "libseccomp", "auditctl", "/proc/sys", "plan"} <= validators
        assert {"kubernetes-validate (strict, offline)", "checkmodule"} <= validators
        assert "ecap kyverno structure check" in validators


def test_files_are_private_and_plan_lists_them(generated) -> None:
    d = generated["balanced"]
    plan = json.loads((d / "plan.json").read_text())
    assert plan["schema"] == "ecap.harden-plan/1"
    assert {c["id"] for c in plan["controls"]} == set(ALL_CONTROL_IDS)
    for f in plan["files"]:
        path = d / f["path"]
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert hashlib.sha256(path.read_bytes()).hexdigest() == f["sha256"]
        assert f["content"] == path.read_text()
    c = {c["id"]: c for c in plan["controls"]}["sysctl-unprivileged-bpf"]
    assert c["stops"] == {"unprivileged_user": "yes", "container_root": "no", "host_root": "no"}
    assert c["one_way"] and not c["locks_in_this_profile"]
    assert {e["file"] for e in plan["exceptions"]} == {
        "apparmor/ecap-audit", "selinux/ecap_audit.te", "kubernetes/kyverno-clusterpolicy.yaml",
        "kubernetes/capture-pod.yaml", "docker/compose.yaml"}  # fmt: skip


def test_strict_plan_warns_about_one_way_switches(generated) -> None:
    plan = json.loads((generated["strict"] / "plan.json").read_text())
    assert any(w.startswith("sysctl-unprivileged-bpf: one-way") for w in plan["warnings"])


def test_plan_detects_edited_files(generated, tmp_path, run_harden) -> None:
    import shutil

    d = tmp_path / "copy"
    shutil.copytree(generated["balanced"], d)
    with (d / "docker" / "run-flags.txt").open("a") as f:
        f.write("--privileged\n")
    proc = run_harden("validate", str(d), "--no-audit-load", "--no-selinux-link")
    assert proc.returncode == 1 and "differs from the plan" in proc.stdout


def test_tailoring_from_a_real_scan_recommends_only_what_is_lacking() -> None:
    scanned = posture.from_scan(FIXTURES / "scan-vm.json")
    gen = generate.build(Context("balanced", scanned, tailored=True))
    rec = gen.recommended
    assert "sysctl-kptr-restrict" in rec and "sysctl-bpf-jit-harden" in rec
    assert "sysctl-unprivileged-bpf" not in rec and "sysctl-dmesg-restrict" not in rec
    assert "sysctl-ptrace-scope" not in rec  # absent on the scanned kernel
    paths = {a.path for a in gen.artifacts}
    assert "apparmor/ecap-audit" in paths  # ecap's own exception always kept
    assert "kubernetes/kyverno-clusterpolicy.yaml" in paths
    full = generate.build(Context("balanced", scanned, tailored=False)).recommended
    assert "sysctl-unprivileged-bpf" in full


def test_generate_from_scan_cli(tmp_path, run_harden) -> None:
    out = tmp_path / "o"
    proc = run_harden("generate", "--from", str(FIXTURES / "scan-vm.json"), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "tailored to scan:" in proc.stdout
    plan = json.loads((out / "plan.json").read_text())
    assert plan["tailored"] is True and plan["host"]["hostname"] == "vm"
    proc = run_harden("validate", str(out), "--no-audit-load", "--json")
    assert proc.returncode == 0, proc.stdout
    # the SELinux modules compile here; linking them is for the scanned host
    te = {r["path"]: r for r in json.loads(proc.stdout)["results"]}["selinux/ecap_audit.te"]
    assert te["ok"] and any("plan is for the scanned host" in d for d in te["details"])


def test_bad_scan_inputs_exit_2_with_one_line(tmp_path, run_harden) -> None:
    other = tmp_path / "other.json"
    other.write_text('{"schema": "ecap.session/1"}')
    notjson = tmp_path / "bad.json"
    notjson.write_text("{nope")
    for path, words in ((other, "expected 'ecap.scan/2'"), (notjson, "is not JSON"),
                        (tmp_path / "missing.json", "not found")):  # fmt: skip
        out = tmp_path / f"out-{path.stem}"
        proc = run_harden("generate", "--from", str(path), "--out", str(out))
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and words in proc.stderr
        assert not out.exists()


def test_usage_errors(tmp_path, run_harden) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    for args in (("generate", "--out", str(f)), ("validate", str(tmp_path / "nope")),
                 ("validate", str(tmp_path)), ("generate", "--profile", "paranoid", "--out", "x"),
                 ("apparmor", "--part", "app")):  # fmt: skip
        proc = run_harden(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.count("\n") == 1, proc.stderr


def test_hostile_scan_strings_are_escaped(tmp_path, run_harden) -> None:
    scan = tmp_path / "s.json"
    scan.write_text(json.dumps({"schema": "ecap.scan/1",
                                "host": {"hostname": "\x1b]0;pwned\x07", "kernel": "6.1"},
                                "posture": {"sysctl": {}}, "findings": []}))  # fmt: skip
    out = tmp_path / "o"
    proc = run_harden("generate", "--from", str(scan), "--out", str(out))
    assert proc.returncode == 0
    assert "\x1b" not in proc.stdout + proc.stderr
    plan = json.loads((out / "plan.json").read_text())
    assert plan["host"]["hostname"] == "\x1b]0;pwned\x07"  # JSON keeps it, escaped by json


def test_single_artifact_commands(tmp_path, run_harden) -> None:
    for cmd in ("sysctl", "apparmor", "selinux", "seccomp", "docker", "kubernetes", "auditd"):
        proc = run_harden(cmd, "--profile", "strict")
        assert proc.returncode == 0 and proc.stdout, cmd
    out = tmp_path / "seccomp.json"
    assert run_harden("seccomp", "--out", str(out)).returncode == 0
    assert json.loads(out.read_text())["defaultAction"] == "SCMP_ACT_ERRNO"
    app = run_harden("apparmor", "--part", "app", "--app", "/usr/bin/node").stdout
    assert "profile ecap-app-node /usr/bin/node" in app


def test_multi_file_kinds_write_a_directory(tmp_path, run_harden) -> None:
    proc = run_harden("apparmor", "--out", f"{tmp_path}/aa/")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "aa" / "abstractions" / "ecap-deny-tracing").is_file()
    assert (tmp_path / "aa" / "ecap-audit").is_file()
    assert run_harden("kubernetes", "--out", f"{tmp_path}/k8s/").returncode == 0
    assert (tmp_path / "k8s" / "kyverno-clusterpolicy.yaml").is_file()
    proc = run_harden("sysctl", "--out", str(tmp_path / "aa"))
    assert proc.returncode == 2 and "is a directory" in proc.stderr


def test_regenerating_replaces_the_previous_set(tmp_path, run_harden) -> None:
    out = tmp_path / "o"
    assert run_harden("generate", "--out", str(out), "--app", "/usr/bin/curl").returncode == 0
    assert (out / "apparmor" / "ecap-app-curl").exists()
    assert run_harden("generate", "--out", str(out)).returncode == 0
    assert not (out / "apparmor" / "ecap-app-curl").exists()  # stale profile removed
    assert run_harden("validate", str(out), "--no-audit-load", "--no-selinux-link").returncode == 0


def test_refuses_a_foreign_non_empty_directory(tmp_path, run_harden) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    proc = run_harden("generate", "--out", str(tmp_path))
    assert proc.returncode == 2 and "holds no ecap-harden plan" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


@pytest.mark.parametrize(
    "doc,where",
    [
        ({"schema": "ecap.scan/1", "host": "x"}, "host"),
        ({"schema": "ecap.scan/2", "posture": []}, "posture"),
        ({"schema": "ecap.scan/2", "findings": {"a": 1}}, "findings"),
        ({"schema": "ecap.scan/2", "findings": "x"}, "findings"),
        ({"schema": "ecap.scan/2", "findings": [{"id": "a", "severity": "low",
                                                  "remediation": [1]}]}, "findings/0/remediation/0"),
    ],
)  # fmt: skip
def test_wrongly_typed_scans_are_refused(tmp_path, doc, where) -> None:
    scan = tmp_path / "s.json"
    scan.write_text(json.dumps(doc))
    with pytest.raises(UsageError, match=f"{where}: "):
        posture.from_scan(scan)


def test_unknown_controls_in_a_scan_are_ignored(tmp_path) -> None:
    scan = tmp_path / "s.json"
    finding = {"id": "a", "severity": "low", "remediation": ["x-unknown", "seccomp-deny-bpf"]}
    scan.write_text(json.dumps({"schema": "ecap.scan/1", "findings": [finding]}))
    assert posture.from_scan(scan).finding_controls == {"seccomp-deny-bpf"}


def test_wrong_shaped_files_fail_validation(tmp_path, run_harden) -> None:
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "compose.yaml").write_text("services: [1, 2]\n")
    (tmp_path / "plan.json").write_text('{"schema": "ecap.harden-plan/1", "files": [{"x": 1}]}')
    proc = run_harden("validate", str(tmp_path), "--json")
    assert proc.returncode == 1
    results = {r["path"]: r for r in json.loads(proc.stdout)["results"]}
    assert not results["docker/compose.yaml"]["ok"] and not results["plan.json"]["ok"]


def test_plan_report_renders_controls_and_escapes_host_strings(tmp_path, run_harden) -> None:
    scan = tmp_path / "s.json"
    scan.write_text(json.dumps({"schema": "ecap.scan/1",
                                "host": {"hostname": "<script>alert(1)</script>", "kernel": "6"},
                                "posture": {"sysctl": {}}, "findings": []}))  # fmt: skip
    out = tmp_path / "o"
    assert run_harden("generate", "--from", str(scan), "--profile", "strict",
                      "--out", str(out)).returncode == 0  # fmt: skip
    html = tmp_path / "plan.html"
    proc = run_harden("report", str(out), "--html", str(html))
    assert proc.returncode == 0, proc.stderr
    text = html.read_text()
    assert "<script>alert(1)</script>" not in text and "&lt;script&gt;" in text
    for cid in ALL_CONTROL_IDS:
        assert cid in text
    assert "ecap-deny-tracing" in text  # generated files inline
    missing = run_harden("report", str(tmp_path / "none"), "--html", str(tmp_path / "x.html"))
    assert missing.returncode == 2 and not (tmp_path / "x.html").exists()
