"""SELinux: the capture domain and the assertion module, built and linked with the real tools.

SELinux is not enabled in this kernel. Debian's reference policy is installed
(``selinux-policy-default``) and its development files (``selinux-policy-dev``), so
the modules are compiled with the refpolicy Makefile (checkmodule), linked with every
installed module by secilc (as ``semodule -i`` would, neverallow rules checked), and
the resulting binary policy is read back with setools to see what ``ecap_audit_t``
may actually do. One link costs ~10 s: the module fixture links once, the strict
validation once; the other tests compile only (``--no-selinux-link``).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import setools

from ecap import selinux as sel
from ecap.harden import check, generate, posture, selinux, selinux_build
from ecap.harden.artifact import Context
from tests.conftest import ecap_cmd

DEBIAN_POLICY = Path("/etc/selinux/default/policy/policy.33")
DEBIAN_PACKAGE = (
    "2:2.20221101-9"  # selinux-policy-default of Debian 12, whose numbers the README quotes
)


@pytest.fixture(scope="module")
def live() -> posture.Posture:
    return posture.live()


@pytest.fixture(scope="module")
def linked(tmp_path_factory, live) -> Path:
    """The balanced modules of this host, compiled and linked with the installed policy."""
    d = tmp_path_factory.mktemp("selinux")
    for art in selinux.render(Context("balanced", live)):
        (d / Path(art.path).name).write_text(art.content)
    pps = []
    for name in ("ecap_audit", "ecap_bpf_assert"):
        res, pp = selinux_build.compile_module(d / f"{name}.te", d / "pp")
        assert res.ok and pp is not None, res.message
        pps.append(pp)
    binary = d / "linked.33"
    res = selinux_build.link(pps, output=binary)
    assert res.ok, res.message
    assert "every neverallow rule holds" in res.message
    return binary


def _rules(policy: setools.SELinuxPolicy, source: str) -> dict[str, dict[str, set[str]]]:
    """tclass → target → permissions of every allow rule whose source is ``source``."""
    out: dict[str, dict[str, set[str]]] = {}
    query = setools.TERuleQuery(policy, ruletype=["allow"], source=source, source_indirect=True)
    for rule in query.results():
        perms = out.setdefault(str(rule.tclass), {}).setdefault(str(rule.target), set())
        perms.update(rule.perms)
    return out


def test_capture_domain_holds_exactly_what_capture_needs(linked) -> None:
    policy = setools.SELinuxPolicy(str(linked))
    rules = _rules(policy, sel.ECAP_DOMAIN)
    self_ = sel.ECAP_DOMAIN
    # the capabilities: bpf, perfmon, sys_ptrace (+ audit_write for the journal mirror)
    assert rules["capability2"] == {self_: {"bpf", "perfmon"}}
    assert set().union(*rules["capability"].values()) == {"sys_ptrace", "audit_write"}
    assert rules["bpf"] == {self_: {"map_create", "map_read", "map_write", "prog_load", "prog_run"}}
    assert "perf_event" not in rules  # uprobes are BPF links: no perf event is opened
    # no network: it creates no socket but its own audit netlink and unix ones (the
    # tcp "recvfrom" rules every domain has are labelled-networking peer checks)
    created = {
        c for c, t in rules.items() if c.endswith("_socket") and "create" in t.get(self_, ())
    }
    assert created <= {"netlink_audit_socket", "unix_stream_socket", "unix_dgram_socket"}, created
    assert "nlmsg_relay" in rules["netlink_audit_socket"][self_]
    for tclass in ("tcp_socket", "udp_socket", "rawip_socket", "packet_socket", "sctp_socket"):
        perms = set().union(*rules.get(tclass, {}).values())
        assert not perms & {"create", "connect", "name_connect", "name_bind"}, tclass
    # read-only on targets: never ptrace, never write another domain's /proc files (mem)
    domains = {str(t) for t in policy.lookup_typeattr("domain").expand()} - {self_}
    assert all("ptrace" not in p for p in rules.get("process", {}).values())
    assert rules["file"]["domain"] >= {"read", "open"}
    for tclass in ("file", "lnk_file", "dir"):
        for target, perms in rules.get(tclass, {}).items():
            expanded = {str(t) for t in policy.lookup_type_or_attr(target).expand()}
            if expanded & domains:
                assert not perms & {"write", "append", "create", "setattr"}, (tclass, target)
    assert "read" in rules["lnk_file"]["domain"]
    # its own files and what it reads
    assert {"read", "open"} <= rules["file"]["ecap_conf_t"]
    assert "write" not in rules["file"]["ecap_conf_t"]
    assert {"create", "write", "lock"} <= rules["file"]["ecap_var_lib_t"]
    assert {"create", "write"} <= rules["file"]["ecap_runtime_t"]
    assert "execute" in rules["file"]["bin_t"] and "read" in rules["file"]["lib_t"]
    # administrators enter the domain through ecap-audit's executable
    trans = setools.TERuleQuery(policy, ruletype=["type_transition"], target="ecap_audit_exec_t")
    entered = {(str(r.source), str(r.tclass), str(r.default)) for r in trans.results()}
    assert entered == {(shell, "process", self_) for shell in ("unconfined_t", "sysadm_t")}
    # and the exposure analysis sees the new domain as able to capture, confined
    exposure = sel.analyse(linked)
    assert self_ in exposure.can_capture() and self_ not in exposure.unconfined


def test_validate_links_and_shows_secilc_refusing_what_strict_forbids(live, tmp_path, run_harden):
    """``validate`` links the strict modules with the installed policy: secilc refuses
    the grants Debian's policy makes to the systemd user managers, and a rogue module
    that gives httpd_t what a sniffer needs, in its own words."""
    d = tmp_path / "strict"
    generate.write(generate.build(Context("strict", live)), d)
    (d / "selinux" / "rogue_sniffer.te").write_text(
        "policy_module(rogue_sniffer, 1.0.0)\n"
        "gen_require(`\n\ttype httpd_t;\n')\n"
        "allow httpd_t self:bpf prog_load;\n"
        "allow httpd_t self:capability2 { bpf perfmon };\n"
    )
    proc = run_harden("validate", str(d), "--no-audit-load", "--json")
    assert proc.returncode == 1
    results = json.loads(proc.stdout)["results"]
    (link,) = [r for r in results if not r["ok"]]
    assert (link["path"], link["validator"]) == ("selinux", "secilc")
    compiled = {r["path"] for r in results if r["validator"] == "checkmodule" and r["ok"]}
    assert compiled == {
        f"selinux/{m}.te" for m in ("ecap_audit", "ecap_bpf_assert", "rogue_sniffer")
    }
    msg = link["message"]
    assert msg.startswith("neverallow check failed at ecap_bpf_assert.cil:")
    assert "(allow httpd_t self (bpf (prog_load)))" in msg
    assert "(allow httpd_t self (capability2 (perfmon bpf)))" in msg
    assert "systemd_user_session_type" in msg  # Debian's grant, by the attribute it uses
    assert "tmp" not in msg.split("ecap_bpf_assert.cil")[0]  # temporary paths stripped
    assert proc.stderr.count("\n") == 1 and "selinux: neverallow check failed" in proc.stderr


def test_compile_errors_are_the_tools_own(tmp_path, run_harden) -> None:
    d = tmp_path / "selinux"
    d.mkdir()
    (d / "broken.te").write_text(
        "policy_module(broken, 1.0.0)\ntype broken_t;\nallow broken_t self:bpf { prog_lod };\n"
    )
    (d / "noiface.te").write_text("policy_module(noiface, 1.0.0)\nno_such_interface(x)\n")
    proc = run_harden("validate", str(tmp_path), "--json")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    results = {r["path"]: r for r in json.loads(proc.stdout)["results"]}
    assert (
        "permission prog_lod is not defined for class bpf"
        in results["selinux/broken.te"]["message"]
    )
    assert "syntax error" in results["selinux/noiface.te"]["message"]
    assert "selinux" not in results  # nothing is linked when a module does not build


def test_assertion_tolerates_by_profile_and_allow_list(live) -> None:
    e = live.selinux.exposure
    assert e is not None
    balanced = selinux.tolerated(Context("balanced", live))
    strict = selinux.tolerated(Context("strict", live, selinux_allow=("sshd_t",)))
    base = ["ecap_audit_t", "kernel_t", "init_t", "unconfined_domain_type"]
    assert [t.name for t in strict] == [*base, "sshd_t"]
    frozen = {t.name: t.keys for t in balanced[len(base) :]}
    assert frozen == {d: ("bpf prog_load",) for d in e.beyond()["bpf prog_load"]}
    text = selinux.assertion_text(Context("strict", live), strict)
    assert (
        "neverallow ~{ ecap_audit_t kernel_t init_t unconfined_domain_type sshd_t } *:bpf prog_load;"
        in text
    )
    assert "attribute unconfined_domain_type;" in text
    for bad in ("no-such", "nonexistent_type_t"):
        with pytest.raises(Exception, match="--selinux-allow"):
            selinux.tolerated(Context("strict", live, selinux_allow=(bad,)))


def test_check_reports_the_reference_policy_domains(live) -> None:
    """The exposure check agrees with setools' own sesearch on the installed policy."""
    e = live.selinux.exposure
    assert live.selinux.policy == str(DEBIAN_POLICY) and not live.selinux.enabled
    out = subprocess.run(["sesearch", "-A", "-c", "bpf", "-p", "prog_load", str(DEBIAN_POLICY)],
                         capture_output=True, text=True, timeout=120).stdout  # fmt: skip
    sources = {line.split()[1] for line in out.splitlines() if line.startswith("allow ")}
    expanded = set()
    policy = setools.SELinuxPolicy(str(DEBIAN_POLICY))
    for name in sources:
        expanded |= {str(t) for t in policy.lookup_type_or_attr(name).expand()}
    assert set(e.holders("bpf prog_load")) == expanded
    assert {"unconfined_t", "init_t", "user_systemd_t"} <= expanded
    by = {r.control: r for r in check.evaluate(live, "balanced")}
    r = by["selinux-confine-bpf"]
    assert r.status == "fail" and "not enabled in this kernel" in r.detail
    assert any(
        line.startswith("bpf prog_load: ") and "user_systemd_t" in line for line in r.evidence
    )
    strict = {x.control: x for x in check.evaluate(live, "strict")}["selinux-confine-bpf"]
    assert "bpf prog_load held by" in strict.detail and "user_systemd_t" in strict.detail
    version = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "selinux-policy-default"],
                             capture_output=True, text=True).stdout  # fmt: skip
    if version == DEBIAN_PACKAGE:  # the numbers the README quotes
        counts = {k: len(e.holders(k)) for k in sel.ASSERTED_KEYS}
        assert counts == {"bpf prog_load": 29, "perf_event open": 24, "capability2 bpf": 24,
                          "capability2 perfmon": 24}  # fmt: skip
        assert (e.domain_count, len(e.unconfined), len(e.holders("capability sys_admin"))) == (
            674, 24, 108)  # fmt: skip
        assert len(e.can_capture()) == 24 and set(e.can_capture()) == set(e.unconfined)


def test_check_cli_lists_the_domains(run_harden) -> None:
    proc = run_harden("check", "--json")
    (r,) = [x for x in json.loads(proc.stdout)["results"] if x["control"] == "selinux-confine-bpf"]
    assert r["status"] == "fail" and r["current"].startswith(f"{DEBIAN_POLICY} (not enabled); ")
    assert any("user_systemd_t" in line for line in r["evidence"])
    assert "ecap_audit module: not installed" in r["evidence"]


def test_tailoring_from_a_scan_with_the_policy(tmp_path, run_harden) -> None:
    """ecap-detect records the policy's exposure; generate --from uses it like live."""
    scan = tmp_path / "scan.json"
    proc = subprocess.run(
        [ecap_cmd("ecap-detect"), "scan", "--selinux-policy", str(DEBIAN_POLICY),
         "--json", str(scan), "--fail-on", "critical", "--walk", "procfs"],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode in (0, 1), proc.stderr
    doc = json.loads(scan.read_text())
    recorded = doc["posture"]["selinux"]
    assert recorded["policy"] == str(DEBIAN_POLICY) and recorded["exposure"]["domains"] > 0
    scanned = posture.from_scan(scan)
    gen = generate.build(Context("balanced", scanned, tailored=True))
    assert "selinux-confine-bpf" in gen.recommended  # the scanned host does not enforce it
    (assertion,) = [a for a in gen.artifacts if a.path == "selinux/ecap_bpf_assert.te"]
    assert (
        "user_systemd_t" in assertion.content
        and "granted by the installed policy" in assertion.content
    )
    # the same host enforcing with nothing beyond the tolerated set: already met
    recorded.update(enabled=True, enforcing=True)
    scan.write_text(json.dumps(doc))
    met = generate.build(Context("balanced", posture.from_scan(scan), tailored=True))
    assert "selinux-confine-bpf" not in met.recommended
    assert {"selinux/ecap_audit.te", "selinux/ecap_audit.fc"} <= {a.path for a in met.artifacts}
    assert "selinux/ecap_bpf_assert.te" not in {a.path for a in met.artifacts}


def test_bad_inputs_exit_2_with_one_line(tmp_path, run_harden) -> None:
    bogus = tmp_path / "policy.33"
    bogus.write_text("not a policy")
    proc = subprocess.run([ecap_cmd("ecap-detect"), "scan", "--selinux-policy", str(bogus)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    for allow in ("bad-name", "no_such_type_t"):
        out = tmp_path / f"o-{allow}"
        proc = run_harden("generate", "--out", str(out), "--selinux-allow", allow)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert "--selinux-allow" in proc.stderr and not out.exists()


def test_selinux_command_writes_the_modules(tmp_path, run_harden) -> None:
    proc = run_harden("selinux", "--profile", "strict", "--selinux-allow", "sshd_t",
                      "--out", f"{tmp_path}/se/")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in (tmp_path / "se").iterdir())
    assert names == ["ecap_audit.fc", "ecap_audit.if", "ecap_audit.te", "ecap_bpf_assert.te"]
    assert "sshd_t" in (tmp_path / "se" / "ecap_bpf_assert.te").read_text()
    assert "WARNING: the analysed SELinux policy grants bpf prog_load" in proc.stderr


def test_plan_and_report_carry_the_selinux_control(live, tmp_path) -> None:
    from ecap.reports.plan import render_plan_report

    plan = generate.build(Context("balanced", live)).plan
    assert plan["selinux_policy"] == str(DEBIAN_POLICY)
    (c,) = [c for c in plan["controls"] if c["id"] == "selinux-confine-bpf"]
    assert c["stops"] == {
        "unprivileged_user": "yes",
        "container_root": "yes",
        "host_root": "partial",
    }
    assert "Unconfined root" in c["blocks"] and "NOT stopped" in c["blocks"]
    assert c["files"] == ["selinux/ecap_audit.te", "selinux/ecap_audit.if",
                          "selinux/ecap_audit.fc", "selinux/ecap_bpf_assert.te"]  # fmt: skip
    assert any("user_systemd_t" in e for e in c["evidence"])
    page = render_plan_report(plan, tmp_path / "plan.html").read_text()
    assert "selinux-confine-bpf" in page and "neverallow ~{" in page and "evidence (" in page
    assert str(DEBIAN_POLICY) in page
