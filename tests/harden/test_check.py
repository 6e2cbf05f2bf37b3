"""``check`` reports this machine's real values and exits 1 exactly when a control fails."""

from __future__ import annotations

import json

from ecap.harden import check, posture
from ecap.harden.controls import BY_ID
from ecap.host import read_sysctl


def test_check_json_reports_the_real_sysctl_values(run_harden) -> None:
    proc = run_harden("check", "--json")
    doc = json.loads(proc.stdout)
    assert doc["schema"] == "ecap.harden-check/1"
    results = {r["control"]: r for r in doc["results"]}
    assert set(results) == set(BY_ID)
    for cid, r in results.items():
        c = BY_ID[cid]
        if c.kind != "sysctl":
            continue
        value = read_sysctl(c.sysctl)
        assert r["current"] == value, cid
        if "balanced" not in c.settings:
            assert r["status"] == "not-in-profile"
        elif value is None:
            assert r["status"] == "absent"
        else:
            accepted = c.settings["balanced"].accepted
            assert r["status"] == ("pass" if value in accepted else "fail"), cid
    failing = [r for r in doc["results"] if r["status"] == "fail"]
    assert proc.returncode == (1 if failing else 0)
    if failing:
        assert proc.stderr.count("\n") == 1 and failing[0]["control"] in proc.stderr


def test_check_plain_lists_every_control(run_harden) -> None:
    proc = run_harden("check", "--profile", "strict")
    for cid in BY_ID:
        assert cid in proc.stdout
    assert "summary:" in proc.stdout
    assert "· perf_event open: " in proc.stdout  # the SELinux domains, one line each


def test_audit_checks_follow_the_live_rule_set() -> None:
    p = posture.live()
    by = {r.control: r for r in check.evaluate(p, "balanced")}
    rules = list(p.audit_rules or ())
    has_bpf = any("bpf" in r and "b32" in r for r in rules)
    if not (has_bpf and p.audit_enabled):
        assert by["auditd-bpf-syscalls"].status == "fail"


def test_mounts_check_reads_the_real_tracefs_mode() -> None:
    p = posture.live()
    r = {x.control: x for x in check.evaluate(p, "balanced")}["mounts-tracefs-debugfs"]
    for mp, mode in p.tracefs_modes or ():
        assert f"tracefs at {mp} mode {mode:o}" in (r.current or "")
    if p.debugfs_mounts:
        assert r.status == "fail"


def test_scan_posture_is_never_a_pass_where_unknown(tmp_path) -> None:
    scan = tmp_path / "s.json"
    scan.write_text(json.dumps({"schema": "ecap.scan/1", "host": {}, "posture": {},
                                "findings": [{"id": "x", "severity": "critical", "remediation": ["respond-rogue-sniffer"]}]}))  # fmt: skip
    results = {r.control: r.status for r in check.evaluate(posture.from_scan(scan), "balanced")}
    assert results["sysctl-kptr-restrict"] == "unknown"
    assert results["apparmor-deny-tracing"] == "unknown"
    assert results["respond-rogue-sniffer"] == "fail"


def test_docker_default_seccomp_profile_is_checked(tmp_path, monkeypatch) -> None:
    import copy

    from ecap.harden import seccomp

    sock = tmp_path / "docker.sock"
    sock.write_text("")
    daemon = tmp_path / "daemon.json"
    monkeypatch.setattr(check, "DOCKER_SOCKET", sock)
    monkeypatch.setattr(check, "CONTAINER_RUNTIME_MARKERS", (sock,))
    monkeypatch.setattr(check, "DOCKER_DAEMON_JSON", daemon)
    live = posture.live()

    def status() -> check.Result:
        return {r.control: r for r in check.evaluate(live, "balanced")}["seccomp-deny-bpf"]

    assert status().status == "fail"  # no daemon.json: runtime default allows bpf with caps
    ours = tmp_path / "ecap-seccomp.json"
    ours.write_text(json.dumps(seccomp.profile("balanced")))
    daemon.write_text(json.dumps({"seccomp-profile": str(ours)}))
    assert status().status == "pass"
    leaky = copy.deepcopy(seccomp.profile("balanced"))
    leaky["syscalls"].append({"names": ["bpf"], "action": "SCMP_ACT_ALLOW",
                              "includes": {"caps": ["CAP_BPF"]}})  # fmt: skip
    ours.write_text(json.dumps(leaky))
    r = status()
    assert r.status == "fail" and "allows bpf" in r.detail
    monkeypatch.setattr(check, "CONTAINER_RUNTIME_MARKERS", ())
    assert status().status == "not-applicable"
