"""Host posture: the settings that decide how easy plaintext sniffing is here.

Each weak setting becomes a finding carrying the control id (from
:mod:`ecap.remediation`) that ``ecap-harden`` generates the fix for. Unknown is
reported as unknown (``None``), never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass

from ecap import host, remediation
from ecap import selinux as sel
from ecap.detect import audit_rules

SYSCTLS = (
    "kernel.unprivileged_bpf_disabled",
    "kernel.perf_event_paranoid",
    "kernel.kptr_restrict",
    "kernel.yama.ptrace_scope",
    "net.core.bpf_jit_harden",
    "kernel.dmesg_restrict",
    "kernel.kexec_load_disabled",
    "kernel.bpf_stats_enabled",
)


@dataclass(frozen=True)
class PostureIssue:
    """One weak setting: becomes a finding."""

    key: str
    severity: str
    title: str
    why: str
    remediation: tuple[str, ...]
    value: object


def collect(selinux: sel.State | None = None) -> dict:
    """The ``posture`` object of the scan document.

    ``selinux`` is the state the caller already read; by default the loaded policy is
    analysed when SELinux is enabled (an installed, inactive one is only named).
    """
    mounts = host.mounts()
    by_type: dict[str, list[str]] = {}
    for _src, mp, fstype in mounts:
        if fstype in ("debugfs", "tracefs", "bpf", "securityfs"):
            by_type.setdefault(fstype, []).append(mp)
    return {
        "sysctl": {key: host.read_sysctl(key) for key in SYSCTLS},
        "lockdown": host.lockdown_mode(),
        "btf": host.has_btf(),
        "uprobe_pmu": host.uprobe_pmu_type() is not None,
        "mounts": {
            "debugfs": by_type.get("debugfs", []),
            "tracefs": by_type.get("tracefs", []),
            "bpffs": by_type.get("bpf", []),
            "securityfs": by_type.get("securityfs", []),
        },
        "audit": audit_rules.audit_state(),
        "selinux": (selinux or sel.read_state(analyse_policy=None)).to_json(),
    }


def _int(value: object) -> int | None:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


def issues(posture: dict) -> list[PostureIssue]:
    """Weak settings in a posture object (works on a recorded scan too)."""
    s = posture.get("sysctl", {})
    out: list[PostureIssue] = []
    v = _int(s.get("kernel.unprivileged_bpf_disabled"))
    if v == 0:
        out.append(
            PostureIssue(
                "kernel.unprivileged_bpf_disabled",
                "high",
                "Unprivileged users may load BPF programs",
                "any local user can load socket filters and probe the BPF verifier for bugs",
                (remediation.SYSCTL_UNPRIVILEGED_BPF,),
                v,
            )
        )
    v = _int(s.get("kernel.perf_event_paranoid"))
    if v is not None and v < 2:
        out.append(
            PostureIssue(
                "kernel.perf_event_paranoid",
                "medium",
                f"perf_event_paranoid is {v}",
                "unprivileged perf events expose kernel profiling to every user",
                (remediation.SYSCTL_PERF_EVENT_PARANOID,),
                v,
            )
        )
    v = _int(s.get("kernel.kptr_restrict"))
    if v == 0:
        out.append(
            PostureIssue(
                "kernel.kptr_restrict",
                "low",
                "Kernel pointers are visible",
                "kernel addresses help exploit BPF and perf bugs",
                (remediation.SYSCTL_KPTR_RESTRICT,),
                v,
            )
        )
    raw = s.get("kernel.yama.ptrace_scope")
    v = _int(raw)
    if raw is None or v == 0:
        out.append(
            PostureIssue(
                "kernel.yama.ptrace_scope",
                "low",
                "ptrace is unrestricted" if v == 0 else "Yama ptrace restrictions are absent",
                "any process may read the memory of same-user processes (keys, plaintext)",
                (remediation.SYSCTL_PTRACE_SCOPE,),
                raw,
            )
        )
    v = _int(s.get("net.core.bpf_jit_harden"))
    if v == 0:
        out.append(
            PostureIssue(
                "net.core.bpf_jit_harden",
                "low",
                "BPF JIT hardening is off",
                "constant blinding makes JIT-spraying attacks with BPF programs harder",
                (remediation.SYSCTL_BPF_JIT_HARDEN,),
                v,
            )
        )
    v = _int(s.get("kernel.dmesg_restrict"))
    if v == 0:
        out.append(
            PostureIssue(
                "kernel.dmesg_restrict",
                "low",
                "Kernel log readable by all users",
                "the kernel log leaks addresses and BPF verifier output",
                (remediation.SYSCTL_DMESG_RESTRICT,),
                v,
            )
        )
    lock = posture.get("lockdown")
    if lock in (None, "none"):
        out.append(
            PostureIssue(
                "lockdown",
                "low",
                "Kernel lockdown is not active" if lock else "Kernel lockdown unknown",
                "with lockdown=confidentiality, bpf_probe_read of kernel memory and kprobe "
                "writes are refused even to root",
                (remediation.KERNEL_LOCKDOWN,),
                lock,
            )
        )
    mounts = posture.get("mounts", {})
    if mounts.get("debugfs") or mounts.get("tracefs"):
        out.append(
            PostureIssue(
                "mounts",
                "low",
                "tracefs/debugfs are mounted",
                "uprobe_events on tracefs lets root hook any function without a BPF loader",
                (remediation.MOUNTS_TRACEFS_DEBUGFS,),
                {"debugfs": mounts.get("debugfs"), "tracefs": mounts.get("tracefs")},
            )
        )
    audit = posture.get("audit", {})
    if not (audit.get("enabled") and audit.get("rules_bpf") and audit.get("rules_perf_event_open")):
        out.append(
            PostureIssue(
                "audit",
                "medium",
                "bpf() and perf_event_open() are not audited",
                "without audit records a sniffer that ran and exited leaves no trace",
                (remediation.AUDITD_BPF_SYSCALLS,),
                audit,
            )
        )
    if not audit.get("rules_tracefs_watch"):
        out.append(
            PostureIssue(
                "audit.tracefs",
                "low",
                "Writes to uprobe_events are not watched",
                "legacy uprobes created through tracefs leave no audit record",
                (remediation.AUDITD_TRACING_WATCHES,),
                audit.get("rules_tracefs_watch"),
            )
        )
    out += _selinux_issues(sel.State.from_json(posture.get("selinux")))
    return out


def _selinux_issues(state: sel.State | None) -> list[PostureIssue]:
    """Where SELinux runs (or its policy was analysed): permissive mode, and confined
    domains the policy lets capture. Hosts without SELinux get no issue: AppArmor
    and the other controls cover them."""
    if state is None or not (state.enabled or state.exposure):
        return []
    out = []
    if state.enabled and state.enforcing is False:
        out.append(
            PostureIssue(
                "selinux.enforcing",
                "medium",
                "SELinux is permissive",
                "denials are logged but nothing is blocked, BPF and perf events included",
                (remediation.SELINUX_CONFINE_BPF,),
                state.enforcing,
            )
        )
    exposure = state.exposure
    if exposure is not None:
        able = [d for d in exposure.can_capture() if d not in exposure.tolerated()]
        if able:
            out.append(
                PostureIssue(
                    "selinux.can_capture",
                    "medium",
                    f"SELinux lets {len(able)} confined domain(s) load BPF probes",
                    "a compromised process in these domains may capture plaintext with "
                    "eBPF uprobes, root or not",
                    (remediation.SELINUX_CONFINE_BPF,),
                    able,
                )
            )
    return out
