"""Compare a host posture to a profile: pass/fail per control.

Statuses:
  pass            the host meets the profile for this control
  fail            it does not (``ecap-harden check`` exits 1)
  absent          the sysctl does not exist on this kernel (cannot be set; not a failure)
  unknown         the posture does not say (a scan from another host); never a pass
  advisory        worth doing, but not required by this profile (not a failure)
  not-applicable  nothing on this host for the control to protect (no container runtime)
  manual          cannot be checked from the host (cluster policy, incident response)
  not-in-profile  the profile does not apply this control
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ecap import selinux as sel

from .auditd import SYSCALLS
from .auditrules import audits_syscall, watches_path
from .controls import CATALOGUE, Control
from .posture import Posture
from .seccomp import DENY_ALWAYS, denied_names

FAILING = frozenset({"fail"})
ABSTRACTION_INSTALLED = Path("/etc/apparmor.d/abstractions/ecap-deny-tracing")
DOCKER_SOCKET = Path("/var/run/docker.sock")
DOCKER_DAEMON_JSON = Path("/etc/docker/daemon.json")
CONTAINER_RUNTIME_MARKERS = (
    DOCKER_SOCKET,
    Path("/run/containerd/containerd.sock"),
    Path("/run/crio/crio.sock"),
)


@dataclass(frozen=True)
class Result:
    """The verdict on one control."""

    control: str
    status: str
    current: str | None
    """What the host has (value, mode, rule summary), None when not known."""
    expected: str
    """What the profile wants, in words."""
    detail: str = ""
    evidence: tuple[str, ...] = ()
    """Supporting facts, one per line (the SELinux domains that hold each permission)."""


def _sysctl(c: Control, p: Posture, profile: str) -> Result:
    key = c.sysctl or ""
    if profile not in c.settings:
        return Result(c.id, "not-in-profile", p.sysctl.get(key), "not required", "strict only")
    setting = c.settings[profile]
    expected = f"{key} in {{{', '.join(setting.accepted)}}}"
    if key not in p.sysctl:
        return Result(c.id, "unknown", None, expected, "not reported by the scan")
    value = p.sysctl[key]
    if value is None:
        return Result(c.id, "absent", None, expected, "key does not exist on this kernel")
    status = "pass" if value in setting.accepted else "fail"
    detail = "" if status == "pass" else f"set {key}={setting.recommended}"
    return Result(c.id, status, value, expected, detail)


def _lockdown(c: Control, p: Posture, profile: str) -> Result:
    expected = "integrity or confidentiality"
    if not p.live:
        return Result(c.id, "unknown", None, expected, "not reported by the scan")
    current = p.lockdown
    if current in ("integrity", "confidentiality"):
        return Result(c.id, "pass", current, expected)
    status = "fail" if profile == "strict" else "advisory"
    why = "lockdown LSM or securityfs not available" if current is None else "lockdown=none"
    return Result(c.id, status, current, expected, f"{why}; see kernel/lockdown.txt")


def _mounts(c: Control, p: Posture, profile: str) -> Result:
    expected = "debugfs not mounted; tracefs mode 0700"
    if p.debugfs_mounts is None or p.tracefs_modes is None:
        return Result(c.id, "unknown", None, expected, "not reported by the scan")
    problems = [f"debugfs mounted on {mp}" for mp in p.debugfs_mounts]
    problems += [f"tracefs {mp} mode {m:o}" for mp, m in p.tracefs_modes if m < 0 or m & 0o077]
    current = ", ".join(
        [f"debugfs at {mp}" for mp in p.debugfs_mounts]
        + [f"tracefs at {mp} mode {m:o}" for mp, m in p.tracefs_modes]
    )
    return Result(
        c.id, "fail" if problems else "pass", current or "neither mounted", expected,
        "; ".join(problems),
    )  # fmt: skip


def _audit_syscalls(c: Control, p: Posture, profile: str) -> Result:
    expected = "bpf and perf_event_open audited for b64 and b32, audit enabled"
    if p.audit_rules is None:
        why = "not reported by the scan" if not p.live else "auditctl missing or refused"
        return Result(c.id, "unknown" if not p.live else "fail", None, expected, why)
    missing = [
        f"{n}/{a}"
        for n in SYSCALLS
        for a in ("b64", "b32")
        if not audits_syscall(list(p.audit_rules), n, a)
    ]
    problems = [f"no rule for {', '.join(missing)}"] if missing else []
    if p.audit_enabled is False:
        problems.append("audit subsystem disabled (auditctl -e 1)")
    current = f"{len(p.audit_rules)} rules loaded, enabled={p.audit_enabled}"
    return Result(c.id, "fail" if problems else "pass", current, expected, "; ".join(problems))


def _audit_watches(c: Control, p: Posture, profile: str) -> Result:
    expected = "watch on tracefs uprobe_events; no tracefs/debugfs exclusion"
    if p.audit_rules is None:
        why = "not reported by the scan" if not p.live else "auditctl missing or refused"
        return Result(c.id, "unknown" if not p.live else "fail", None, expected, why)
    problems = []
    for mp, _mode in p.tracefs_modes or ():
        if not watches_path(list(p.audit_rules), f"{mp}/uprobe_events"):
            problems.append(f"no watch on {mp}/uprobe_events")
    problems += [f"{e.where} excludes {e.fstype}" for e in p.audit_exclusions]
    current = f"{len(p.audit_rules)} rules loaded"
    return Result(c.id, "fail" if problems else "pass", current, expected, "; ".join(problems))


def _apparmor(c: Control, p: Posture, profile: str) -> Result:
    expected = "AppArmor enabled and abstractions/ecap-deny-tracing installed"
    if p.apparmor_enabled is None:
        return Result(c.id, "unknown", None, expected, "not reported by the scan")
    problems = []
    if not p.apparmor_enabled:
        problems.append("AppArmor is not enabled in this kernel")
    if not ABSTRACTION_INSTALLED.exists():
        problems.append(f"{ABSTRACTION_INSTALLED} not installed")
    current = f"enabled={p.apparmor_enabled}, abstraction={ABSTRACTION_INSTALLED.exists()}"
    return Result(c.id, "fail" if problems else "pass", current, expected, "; ".join(problems))


def _selinux(c: Control, p: Posture, profile: str) -> Result:
    """SELinux enforcing, and no domain beyond the tolerated set holding BPF/perf rights.

    ``balanced`` fails only for confined domains able to capture (all of prog_load,
    perf_event open and the capabilities); ``strict`` for any asserted permission.
    Permissive domains fail both: nothing is enforced for them.
    """
    expected = (
        "SELinux enforcing; no confined domain may load BPF programs, open perf events or "
        "hold CAP_BPF/CAP_PERFMON"
    )
    s = p.selinux
    if s is None:
        return Result(c.id, "unknown", None, expected, "not reported by the scan")
    if not s.enabled and s.policy is None:
        return Result(c.id, "not-applicable", "no SELinux policy installed", expected)
    mode = "not enabled" if not s.enabled else ("enforcing" if s.enforcing else "permissive")
    problems = []
    if not s.enabled:
        problems.append("SELinux is not enabled in this kernel: the policy is not enforced")
    elif not s.enforcing:
        problems.append("SELinux is permissive: denials are logged, nothing is blocked")
    e = s.exposure
    if e is None:
        status = "fail" if p.live else "unknown"
        return Result(
            c.id,
            status,
            f"{s.policy} ({mode})",
            expected,
            "; ".join([*problems, s.note or "policy not analysed"]),
        )
    tolerated = e.tolerated()
    if profile == "strict":
        problems += [f"{k} held by {', '.join(v)}" for k, v in e.beyond().items()]
    else:
        able = [d for d in e.can_capture() if d not in tolerated]
        if able:
            problems.append(f"confined domains able to capture: {', '.join(able)}")
    loose = [d for d in e.permissive if d not in tolerated]
    if loose:
        problems.append(f"permissive domains: {', '.join(loose)}")
    if not e.types:
        ecap = "not known from a scan"
    else:
        ecap = "installed" if sel.ECAP_DOMAIN in e.types else "not installed"
    current = f"{e.policy} ({mode}); {e.summary()}"
    evidence = (*e.evidence(), f"ecap_audit module: {ecap}")
    return Result(
        c.id, "fail" if problems else "pass", current, expected, "; ".join(problems), evidence
    )


def _runtime(c: Control, p: Posture, profile: str) -> Result:
    expected = "containers run with ecap's seccomp profile and dropped capabilities"
    if not p.live:
        return Result(c.id, "unknown", None, expected, "not reported by the scan")
    present = [str(m) for m in CONTAINER_RUNTIME_MARKERS if m.exists()]
    if not present:
        return Result(c.id, "not-applicable", "no container runtime socket", expected)
    return Result(
        c.id, "manual", f"runtime at {', '.join(present)}", expected,
        "review 'docker inspect' / runtime config for the flags in docker/run-flags.txt",
    )  # fmt: skip


def _docker_default_seccomp(c: Control, p: Posture, profile: str) -> Result:
    """Docker's daemon-wide default seccomp profile must refuse bpf/perf_event_open.

    Per-container ``--security-opt`` cannot be seen from the host files, but the
    daemon default (``seccomp-profile`` in daemon.json) applies to every container
    that does not choose another, so it is what a host check can vouch for.
    """
    base = _runtime(c, p, profile)
    if base.status != "manual" or not DOCKER_SOCKET.exists():
        return base
    expected = f"{DOCKER_DAEMON_JSON} seccomp-profile refusing bpf and perf_event_open"
    try:
        daemon = json.loads(DOCKER_DAEMON_JSON.read_text())
        path = Path(str(daemon["seccomp-profile"]))
        doc = json.loads(path.read_text())
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return Result(c.id, "fail", "runtime default profile (allows bpf with CAP_BPF)",
                      expected, f"no usable seccomp-profile in {DOCKER_DAEMON_JSON}: {exc!r}")  # fmt: skip
    allowed = {
        n for r in doc.get("syscalls") or [] if r.get("action") == "SCMP_ACT_ALLOW"
        for n in r.get("names") or []
    }  # fmt: skip
    leaks = [n for n in DENY_ALWAYS if n not in denied_names(doc) or n in allowed]
    status = "fail" if leaks else "pass"
    detail = f"{path} allows {', '.join(leaks)}" if leaks else ""
    return Result(c.id, status, str(path), expected, detail)


def _manual(c: Control, p: Posture, profile: str) -> Result:
    if c.id in p.finding_controls:
        return Result(c.id, "fail", "recommended by a scan finding", "act on the finding")
    return Result(c.id, "manual", None, "see the generated file", "not checkable from the host")


_CHECKS = {
    "sysctl": _sysctl,
    "kernel": _lockdown,
    "mounts": _mounts,
    "apparmor": _apparmor,
    "selinux": _selinux,
    "seccomp": _docker_default_seccomp,
    "container": _runtime,
    "kubernetes": _manual,
    "response": _manual,
}


def evaluate(posture: Posture, profile: str) -> list[Result]:
    """One result per catalogue control, in catalogue order."""
    out = []
    for c in CATALOGUE:
        if c.kind == "auditd":
            fn = _audit_syscalls if c.id.endswith("syscalls") else _audit_watches
        else:
            fn = _CHECKS[c.kind]
        out.append(fn(c, posture, profile))
    return out


def failures(results: list[Result]) -> list[Result]:
    return [r for r in results if r.status in FAILING]
