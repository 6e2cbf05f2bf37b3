"""The seccomp profile as libseccomp builds it: a child gets EPERM from bpf/perf_event_open."""

from __future__ import annotations

import copy
import json

from ecap.harden import seccomp, seccomp_filter

NO_CAPS: frozenset[str] = frozenset()


def test_docker_format_and_runtime_default_shape(generated) -> None:
    doc = json.loads((generated["balanced"] / "seccomp" / "ecap-seccomp.json").read_text())
    assert doc["defaultAction"] == "SCMP_ACT_ERRNO" and doc["defaultErrnoRet"] == 1
    assert doc["archMap"][0]["architecture"] == "SCMP_ARCH_X86_64"
    for rule in doc["syscalls"]:
        assert rule["names"] and rule["action"].startswith("SCMP_ACT_")
    gated = [r for r in doc["syscalls"] if r.get("includes", {}).get("caps")]
    assert {c for r in gated for c in r["includes"]["caps"]} >= {"CAP_SYS_ADMIN", "CAP_SYS_PTRACE"}
    # bpf and perf_event_open are in no allow rule, capability-gated or not.
    for rule in doc["syscalls"]:
        if rule["action"] == "SCMP_ACT_ALLOW":
            assert not {"bpf", "perf_event_open"} & set(rule["names"]), rule


def test_child_under_balanced_filter_gets_eperm_even_with_all_capabilities() -> None:
    res = seccomp_filter.probe(seccomp.profile("balanced"))
    assert res.error is None
    assert res.refused["bpf"] == "EPERM" and res.refused["perf_event_open"] == "EPERM"
    # Without the filter the same calls fail for other reasons: EPERM is the filter's.
    assert res.unfiltered["bpf"] != "EPERM" and res.unfiltered["perf_event_open"] != "EPERM"
    assert res.ordinary and all(res.ordinary.values()), res.ordinary
    # balanced keeps the runtime default's ptrace allowance
    assert res.refused["ptrace"] != "EPERM"


def test_strict_also_refuses_ptrace_and_process_vm() -> None:
    res = seccomp_filter.probe(seccomp.profile("strict"), caps=NO_CAPS)
    assert res.error is None
    for name in ("bpf", "perf_event_open", "ptrace", "process_vm_readv", "process_vm_writev"):
        assert res.refused[name] == "EPERM", name
    assert all(res.ordinary.values())


def test_a_runtime_default_style_cap_gate_would_let_bpf_through() -> None:
    """The check is not vacuous: the Docker default's CAP_BPF gate is detected."""
    doc = copy.deepcopy(seccomp.profile("balanced"))
    doc["syscalls"] = [r for r in doc["syscalls"] if "bpf" not in r["names"]]
    doc["syscalls"].append({"names": ["bpf", "perf_event_open"], "action": "SCMP_ACT_ALLOW",
                            "includes": {"caps": ["CAP_BPF"]}})  # fmt: skip
    res = seccomp_filter.probe(doc)
    assert res.refused["bpf"] != "EPERM"
    assert not res.ok(("bpf", "perf_event_open"))
    # ... and without CAP_BPF the same profile refuses again
    assert seccomp_filter.probe(doc, caps=NO_CAPS).refused["bpf"] == "EPERM"


def test_validate_fails_on_a_profile_that_allows_bpf(generated, tmp_path, run_harden) -> None:
    d = tmp_path / "out"
    (d / "seccomp").mkdir(parents=True)
    doc = json.loads((generated["balanced"] / "seccomp" / "ecap-seccomp.json").read_text())
    doc["syscalls"][1]["names"].append("bpf")  # the plain allow list
    doc["syscalls"][0]["names"].remove("bpf")
    doc["syscalls"][0]["names"].append("bpf_placeholder_never_called")
    (d / "seccomp" / "ecap-seccomp.json").write_text(json.dumps(doc))
    proc = run_harden("validate", str(d))
    assert proc.returncode == 1
    assert "FAIL" in proc.stdout and "seccomp" in proc.stderr


def test_real_tools_under_the_filter() -> None:
    """bpftool is refused under the filter (and works without it); a shell still works."""
    import shutil
    import subprocess

    bpftool = shutil.which("bpftool")
    assert bpftool, "bpftool is installed by make setup"
    built = seccomp_filter.build(seccomp.profile("balanced"))
    free = subprocess.run([bpftool, "prog", "show"], capture_output=True, text=True, timeout=60)
    assert free.returncode == 0, free.stderr
    jailed = subprocess.run([bpftool, "prog", "show"], capture_output=True, text=True,
                            timeout=60, preexec_fn=built.filter.load)  # fmt: skip
    assert jailed.returncode != 0 and "Operation not permitted" in jailed.stderr
    shell = subprocess.run(["sh", "-c", "echo ok; ls / >/dev/null && cat /proc/self/comm"],
                           capture_output=True, text=True, timeout=60,
                           preexec_fn=built.filter.load)  # fmt: skip
    assert shell.returncode == 0 and shell.stdout.split() == ["ok", "cat"]


def test_malformed_profiles_are_reported_not_crashed_on(tmp_path, run_harden) -> None:
    import pytest

    for doc in ({"defaultAction": "SCMP_ACT_BOGUS", "syscalls": []},
                {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"action": "SCMP_ACT_ALLOW",
                 "names": ["personality"], "args": [{"op": "SCMP_CMP_EQ"}]}]},
                {"defaultAction": "SCMP_ACT_ERRNO", "archMap": ["x"], "syscalls": []}):  # fmt: skip
        with pytest.raises(seccomp_filter.ProfileError):
            seccomp_filter.build(doc)
    d = tmp_path / "o" / "seccomp"
    d.mkdir(parents=True)
    (d / "p.json").write_text("[1, 2]")
    proc = run_harden("validate", str(tmp_path / "o"))
    assert proc.returncode == 1 and "not a Docker profile" in proc.stdout


def test_capability_gates_work_like_the_runtime_default() -> None:
    """Namespaces need CAP_SYS_ADMIN under the profile; bpf never comes back."""
    import shutil
    import subprocess

    unshare = shutil.which("unshare")
    assert unshare
    doc = seccomp.profile("balanced")
    for caps, works in ((NO_CAPS, False), (seccomp_filter.ALL_CAPS, True)):
        flt = seccomp_filter.build(doc, caps=caps).filter
        proc = subprocess.run([unshare, "-U", "-r", "true"], capture_output=True, text=True,
                              timeout=60, preexec_fn=flt.load)  # fmt: skip
        assert (proc.returncode == 0) is works, (caps and "all caps", proc.stderr)
