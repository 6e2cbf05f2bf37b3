"""Preflight: passes on this machine; each check's failure says what to fix; a
process without the capabilities gets exit 4 from doctor."""

from __future__ import annotations

import json
import subprocess

import pytest

from ecap.capture import doctor
from ecap.errors import EnvironmentNotReady


def test_doctor_passes_here(ecap_env):
    r = ecap_env.run("ecap-audit", "doctor", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report["ok"]
    names = {c["name"]: c for c in report["checks"]}
    assert {
        "kernel",
        "btf",
        "programs",
        "bpf-load",
        "attach",
        "capabilities",
        "lockdown",
        "unprivileged-bpf",
    } <= set(names)
    assert names["bpf-load"]["ok"] and names["capabilities"]["ok"]
    assert "attached a uprobe" in names["attach"]["detail"]
    # as root the packet tap opens: every output mode can work here
    assert names["packet-capture"]["ok"] and "lo" in names["packet-capture"]["detail"]
    assert "keylog and pcapng can work" in names["packet-capture"]["detail"]
    assert (
        names["modes"]["detail"].startswith("ready: ")
        and "not here" not in names["modes"]["detail"]
    )
    assert "pcapng --plaintext" in names["modes"]["detail"]


def _no_packet_socket() -> list[str]:
    raise PermissionError(1, "Operation not permitted")


def _broken_loader() -> None:
    raise PermissionError(1, "Operation not permitted")


def _broken_trial() -> str:
    raise Exception("cannot open a uprobe on getpid: Permission denied")


@pytest.mark.parametrize(
    ("result", "detail", "fix"),
    [
        (lambda: doctor.check_kernel("6.1.0-17-amd64"), "older than 6.6", "Linux 6.6 or newer"),
        (
            lambda: doctor.check_btf("/nonexistent/vmlinux"),
            "no kernel BTF",
            "CONFIG_DEBUG_INFO_BTF",
        ),
        (
            lambda: doctor.check_programs_built(("no_such_object",)),
            "no_such_object.loader not built",
            "make setup",
        ),
        (
            lambda: doctor.check_bpf_load(_broken_loader),
            "loading a trivial program failed",
            "CAP_BPF and CAP_PERFMON",
        ),
        (
            lambda: doctor.check_attach(_broken_trial),
            "attaching the capture programs failed",
            "CAP_SYS_PTRACE",
        ),
        (
            lambda: doctor.check_capabilities({"CAP_SYS_PTRACE"}, "6.1.0"),
            "missing CAP_BPF, CAP_PERFMON",
            "run as root, or grant CAP_BPF",
        ),
        (
            lambda: doctor.check_capabilities({"CAP_BPF", "CAP_PERFMON"}, "6.1.0"),
            "missing CAP_SYS_PTRACE",
            "CAP_SYS_PTRACE",
        ),
        (
            lambda: doctor.check_capabilities(
                {"CAP_BPF", "CAP_PERFMON", "CAP_SYS_PTRACE"}, "5.4.0"
            ),
            "missing CAP_SYS_ADMIN",
            "CAP_SYS_ADMIN",
        ),
        (
            lambda: doctor.check_lockdown("confidentiality"),
            "lockdown=confidentiality",
            "lockdown=integrity",
        ),
        (
            lambda: doctor.check_packet_capture(_no_packet_socket, required=True),
            "cannot open a packet socket (Operation not permitted)",
            "CAP_NET_RAW",
        ),
        (
            lambda: doctor.check_unprivileged_bpf("0"),
            "unprivileged users may load BPF",
            "unprivileged_bpf_disabled=2",
        ),
    ],
)
def test_each_failure_names_the_fix(result, detail, fix):
    r = result()
    assert not r.ok
    assert detail in r.detail and fix in r.fix
    assert r.message().startswith(f"{r.name}: ") and "\n" not in r.message()


def test_preflight_raises_first_required_failure(monkeypatch):
    real = doctor.check_btf
    monkeypatch.setattr(doctor, "check_btf", lambda: real("/nonexistent/vmlinux"))
    with pytest.raises(
        EnvironmentNotReady, match=r"btf: .* fix: use a kernel built with CONFIG_DEBUG_INFO_BTF"
    ) as exc:
        doctor.preflight()
    assert exc.value.exit_code == 4


def test_doctor_without_capabilities_exits_4(ecap_env):
    # Drop the BPF-related capabilities from the bounding set, then exec doctor.
    r = subprocess.run(
        [
            "capsh",
            "--drop=cap_bpf,cap_perfmon,cap_sys_admin,cap_sys_ptrace",
            "--",
            "-c",
            "exec ecap-audit doctor",
        ],
        env=ecap_env.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 4, r.stdout + r.stderr
    assert "FAIL capabilities" in r.stdout
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ecap-audit: error: capabilities:")


def test_capture_runs_the_same_preflight_and_exits_4(ecap_env, sleeper):
    token = ecap_env.write_token(ecap_env.authorize([sleeper.pid]))
    drop = "--drop=cap_bpf,cap_perfmon,cap_sys_admin,cap_sys_ptrace"
    doctor_run = subprocess.run(
        ["capsh", drop, "--", "-c", "exec ecap-audit doctor"],
        env=ecap_env.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    capture_run = subprocess.run(
        [
            "capsh",
            drop,
            "--",
            "-c",
            f"exec ecap-audit capture tls --pid {sleeper.pid} --token {token}",
        ],
        env=ecap_env.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert capture_run.returncode == 4, capture_run.stderr
    # the same one-line message as doctor's, and the gate never ran (nothing journalled)
    assert capture_run.stderr.strip().splitlines()[-1] == doctor_run.stderr.strip().splitlines()[-1]
    assert not ecap_env.journal.exists()
