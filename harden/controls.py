"""The controls catalogue: what each hardening control blocks, and against whom.

Most published advice against eBPF plaintext sniffers (``unprivileged_bpf_disabled``,
``perf_event_paranoid``) only stops *unprivileged* users; root walks past it. The
catalogue therefore records, for every control, which attacker it actually stops
(unprivileged user / root in a container / root on the host), what it costs, whether
it can be undone without a reboot, and which values reputable baselines accept, so
that the plan and ``check`` can be honest about what a "pass" is worth.

The ids are those of :mod:`ecap.remediation`, which ``ecap-detect`` attaches to its
findings; a test checks the catalogue covers every one of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ecap import remediation as rid

PROFILES: tuple[str, ...] = ("balanced", "strict")
"""``balanced`` avoids one-way switches and breakage; ``strict`` accepts both."""

YES, PARTIAL, NO = "yes", "partial", "no"


@dataclass(frozen=True)
class Stops:
    """Which attacker a control stops from capturing plaintext with eBPF/ptrace.

    ``partial`` means it removes a step or an information source an attacker of that
    kind would use, or stops them only in some configurations; defence-in-depth
    settings that do not prevent a capture at all say ``no`` everywhere.
    """

    unprivileged_user: str
    """``yes``/``partial``/``no`` for a local user without capabilities."""
    container_root: str
    """... for root inside a container (namespaced, capabilities as granted)."""
    host_root: str
    """... for root on the host (all capabilities, init namespaces)."""

    def as_dict(self) -> dict[str, str]:
        return {
            "unprivileged_user": self.unprivileged_user,
            "container_root": self.container_root,
            "host_root": self.host_root,
        }


@dataclass(frozen=True)
class Setting:
    """A profile's wanted value for a sysctl and the values it accepts as passing."""

    recommended: str
    """The value written to the generated sysctl file."""
    accepted: tuple[str, ...]
    """Values ``check`` treats as passing for this profile."""


@dataclass(frozen=True)
class Control:
    """One hardening control (see module docstring)."""

    id: str
    """Stable id from :mod:`ecap.remediation` (detect findings refer to it)."""
    title: str
    kind: str
    """sysctl, kernel, mounts, auditd, apparmor, selinux, seccomp, container, kubernetes,
    response."""
    blocks: str
    """What an attacker can no longer do once the control is in place."""
    stops: Stops
    side_effects: str
    """What breaks or changes for legitimate users."""
    one_way: bool
    """True when, once applied, it cannot be relaxed until the next reboot."""
    one_way_note: str = ""
    locking_values: tuple[str, ...] = ()
    """For sysctls: the values that lock the setting until reboot."""
    sysctl: str | None = None
    """The sysctl key for ``kind == "sysctl"``."""
    settings: dict[str, Setting] = field(default_factory=dict)
    """Per profile (balanced/strict); a profile missing here does not apply the control."""
    baselines: tuple[str, ...] = ()
    """What reputable baselines say, as short citations."""
    artifacts: tuple[str, ...] = ()
    """Generated files (relative to the output directory) that implement the control."""

    def in_profile(self, profile: str) -> bool:
        """Whether ``profile`` applies this control (non-sysctl controls: always)."""
        return self.kind != "sysctl" or profile in self.settings

    def locks(self, profile: str) -> bool:
        """Whether applying this control in ``profile`` is one-way until reboot."""
        if self.kind != "sysctl":
            return self.one_way
        setting = self.settings.get(profile)
        return setting is not None and setting.recommended in self.locking_values

    def describe(self) -> dict[str, Any]:
        """The catalogue entry as plain data, shared by ``controls --json`` and plan.json."""
        return {
            "id": self.id,
            "title": self.title,
            "kind": self.kind,
            "blocks": self.blocks,
            "stops": self.stops.as_dict(),
            "side_effects": self.side_effects,
            "one_way": self.one_way,
            "one_way_note": self.one_way_note or None,
            "sysctl": self.sysctl,
            "baselines": list(self.baselines),
        }


SYSCTL_FILE = "sysctl/99-ecap-hardening.conf"
AUDIT_FILE = "auditd/60-ecap-bpf.rules"
AA_ABSTRACTION = "apparmor/abstractions/ecap-deny-tracing"
AA_SELF = "apparmor/ecap-audit"
SE_MODULE_FILES = ("selinux/ecap_audit.te", "selinux/ecap_audit.if", "selinux/ecap_audit.fc")
SE_ASSERT = "selinux/ecap_bpf_assert.te"
SECCOMP_FILE = "seccomp/ecap-seccomp.json"
DOCKER_FILES = ("docker/run-flags.txt", "docker/compose.yaml", "docker/dangerous-settings.md")
K8S_FILES = (
    "kubernetes/namespace.yaml",
    "kubernetes/pod.yaml",
    "kubernetes/capture-pod.yaml",
    "kubernetes/kyverno-clusterpolicy.yaml",
)
KERNEL_FILE = "kernel/lockdown.txt"
MOUNTS_FILE = "mounts/tracefs-debugfs.txt"
RESPONSE_FILE = "response/rogue-sniffer.md"


def _sysctl(
    cid: str,
    key: str,
    title: str,
    blocks: str,
    stops: Stops,
    side_effects: str,
    settings: dict[str, Setting],
    baselines: tuple[str, ...],
    one_way: bool = False,
    one_way_note: str = "",
    locking_values: tuple[str, ...] = (),
) -> Control:
    return Control(
        id=cid,
        title=title,
        kind="sysctl",
        blocks=blocks,
        stops=stops,
        side_effects=side_effects,
        one_way=one_way,
        one_way_note=one_way_note,
        locking_values=locking_values,
        sysctl=key,
        settings=settings,
        baselines=baselines,
        artifacts=(SYSCTL_FILE,),
    )


CATALOGUE: tuple[Control, ...] = (
    _sysctl(
        rid.SYSCTL_UNPRIVILEGED_BPF,
        "kernel.unprivileged_bpf_disabled",
        "Refuse bpf(2) to unprivileged users",
        "Loading BPF programs and creating maps without CAP_BPF/CAP_SYS_ADMIN.",
        Stops(YES, NO, NO),
        "Unprivileged BPF users (some sandboxes, rootless tools) lose bpf(2).",
        {"balanced": Setting("2", ("1", "2")), "strict": Setting("1", ("1",))},
        ("KSPP: 1", "DISA STIG (RHEL 8/9): 1", "kernel default on most distributions: 2"),
        one_way=True,
        one_way_note="Value 1 is locked until reboot; 2 can be changed back by root.",
        locking_values=("1",),
    ),
    _sysctl(
        rid.SYSCTL_BPF_JIT_HARDEN,
        "net.core.bpf_jit_harden",
        "Harden the BPF JIT for every user",
        "JIT spraying: constants of every BPF program are blinded, privileged ones included "
        "(defence in depth against BPF-based kernel exploits; it does not stop a capture).",
        Stops(NO, NO, NO),
        "Slightly slower JIT-compiled BPF; bpftool shows blinded constants.",
        {"balanced": Setting("2", ("2",)), "strict": Setting("2", ("2",))},
        ("KSPP: 2", "DISA STIG (RHEL 8/9): 2"),
    ),
    _sysctl(
        rid.SYSCTL_PERF_EVENT_PARANOID,
        "kernel.perf_event_paranoid",
        "Restrict perf_event_open(2)",
        "Unprivileged perf events, including uprobe perf events and kernel profiling.",
        Stops(YES, NO, NO),
        "Unprivileged `perf` profiling stops working; CAP_PERFMON holders are unaffected.",
        {"balanced": Setting("2", ("2", "3")), "strict": Setting("3", ("2", "3"))},
        ("KSPP: 3 (distribution patch; upstream treats >2 as 2)", "DISA STIG (RHEL 8/9): 2"),
    ),
    _sysctl(
        rid.SYSCTL_KPTR_RESTRICT,
        "kernel.kptr_restrict",
        "Hide kernel pointers",
        "Reading kernel addresses from /proc/kallsyms and friends (kernel exploits, aiming "
        "kernel probes); uprobe capture of user space does not need them.",
        Stops(PARTIAL, PARTIAL, NO),
        "Kernel addresses show as zeros for everyone (2) or non-CAP_SYSLOG users (1).",
        {"balanced": Setting("2", ("1", "2")), "strict": Setting("2", ("2",))},
        ("KSPP: 2", "DISA STIG (RHEL 8/9): 1"),
    ),
    _sysctl(
        rid.SYSCTL_PTRACE_SCOPE,
        "kernel.yama.ptrace_scope",
        "Restrict ptrace (Yama)",
        "Attaching to other processes with ptrace to read TLS plaintext or keys from memory.",
        Stops(YES, PARTIAL, PARTIAL),
        "1: debuggers only attach to descendants; 2: only CAP_SYS_PTRACE; 3: nobody.",
        {"balanced": Setting("1", ("1", "2", "3")), "strict": Setting("2", ("2", "3"))},
        ("CIS: 1", "DISA STIG: 1", "KSPP: 3"),
        one_way=True,
        one_way_note="Value 3 is locked until reboot; 1 and 2 can be changed back.",
        locking_values=("3",),
    ),
    _sysctl(
        rid.SYSCTL_DMESG_RESTRICT,
        "kernel.dmesg_restrict",
        "Restrict the kernel log",
        "Unprivileged reads of the kernel log (addresses, BPF verifier and probe messages); "
        "an information leak, not a capture path.",
        Stops(PARTIAL, NO, NO),
        "Unprivileged users cannot run dmesg.",
        {"balanced": Setting("1", ("1",)), "strict": Setting("1", ("1",))},
        ("KSPP: 1", "DISA STIG (RHEL 8/9): 1"),
    ),
    _sysctl(
        rid.SYSCTL_KEXEC_LOAD_DISABLED,
        "kernel.kexec_load_disabled",
        "Disable kexec",
        "Booting a replacement kernel without lockdown or LSMs via kexec_load(2).",
        Stops(NO, PARTIAL, PARTIAL),
        "kexec reboots and loading a kdump crash kernel after this point are impossible.",
        {"strict": Setting("1", ("1",))},
        ("KSPP: 1", "DISA STIG (RHEL 8/9): 1"),
        one_way=True,
        one_way_note="Locked until reboot once set to 1; load any kdump kernel first.",
        locking_values=("1",),
    ),
    Control(
        id=rid.KERNEL_LOCKDOWN,
        title="Kernel lockdown (integrity)",
        kind="kernel",
        blocks=(
            "bpf_probe_write_user, kernel-memory writes and unsigned modules; confidentiality "
            "mode also kernel-memory reads by BPF. It does NOT block uprobes reading user memory."
        ),
        stops=Stops(NO, PARTIAL, PARTIAL),
        side_effects="Unsigned modules, /dev/mem, hibernation and some BPF helpers refused.",
        one_way=True,
        one_way_note="Can only be raised at run time; lowering needs a reboot.",
        baselines=("KSPP: lockdown=confidentiality or integrity (Secure Boot platforms)",),
        artifacts=(KERNEL_FILE,),
    ),
    Control(
        id=rid.MOUNTS_TRACEFS_DEBUGFS,
        title="No debugfs; tracefs root-only",
        kind="mounts",
        blocks="Creating uprobe/kprobe events and reading trace buffers through tracefs/debugfs.",
        stops=Stops(YES, PARTIAL, NO),
        side_effects=(
            "Tools that expect /sys/kernel/debug lose it; ecap-audit and bcc keep tracefs "
            "(mounted mode 0700)."
        ),
        one_way=False,
        baselines=("KSPP: do not mount debugfs in production",),
        artifacts=(MOUNTS_FILE,),
    ),
    Control(
        id=rid.AUDITD_BPF_SYSCALLS,
        title="Audit bpf(2) and perf_event_open(2)",
        kind="auditd",
        blocks="Nothing (detective): records every BPF load and perf event, root included.",
        stops=Stops(NO, NO, NO),
        side_effects="Audit volume on hosts that run BPF tooling often.",
        one_way=False,
        baselines=("CIS/STIG require auditing privileged syscalls; these add the BPF ones",),
        artifacts=(AUDIT_FILE,),
    ),
    Control(
        id=rid.AUDITD_TRACING_WATCHES,
        title="Audit tracing interfaces",
        kind="auditd",
        blocks=(
            "Nothing (detective): records writes to uprobe_events/kprobe_events, bpffs pins "
            "and the BPF sysctls."
        ),
        stops=Stops(NO, NO, NO),
        side_effects="None unless those files are written often.",
        one_way=False,
        artifacts=(AUDIT_FILE,),
    ),
    Control(
        id=rid.APPARMOR_DENY_TRACING,
        title="AppArmor: deny BPF, perf, ptrace and tracing filesystems",
        kind="apparmor",
        blocks=(
            "Confined applications (and root inside them) using CAP_BPF/PERFMON/SYS_ADMIN/"
            "SYS_PTRACE, ptrace of others, and tracefs/debugfs/bpffs."
        ),
        stops=Stops(YES, YES, PARTIAL),
        side_effects="Needs AppArmor enabled; a confined app cannot debug or trace others.",
        one_way=False,
        baselines=("Docker/containerd docker-default AppArmor profile denies similar paths",),
        artifacts=(AA_ABSTRACTION, AA_SELF),
    ),
    Control(
        id=rid.SELINUX_CONFINE_BPF,
        title="SELinux: no confined domain may use BPF or perf events",
        kind="selinux",
        blocks=(
            "Processes in confined domains — services, containers (container_t), confined "
            "users, root among them — loading BPF programs, opening perf events or using "
            "CAP_BPF/CAP_PERFMON; a neverallow assertion makes any policy module granting "
            "them fail to link. Unconfined root (unconfined_t and every unconfined_domain_type "
            "domain) is NOT stopped. ecap-audit runs in its own confined domain."
        ),
        stops=Stops(YES, YES, PARTIAL),
        side_effects=(
            "Needs SELinux enforcing; BPF tooling must run unconfined or in a domain named "
            "in the allow-list; the assertion is checked at install only with expand-check=1."
        ),
        one_way=False,
        baselines=(
            "refpolicy/Fedora: bpf and perf_event classes, capability2 bpf/perfmon "
            "(kernel 5.8+ SELinux controls)",
        ),
        artifacts=(*SE_MODULE_FILES, SE_ASSERT),
    ),
    Control(
        id=rid.SECCOMP_DENY_BPF,
        title="seccomp: refuse bpf and perf_event_open in containers",
        kind="seccomp",
        blocks=(
            "bpf(2) and perf_event_open(2) from containers even when CAP_BPF, CAP_PERFMON or "
            "CAP_SYS_ADMIN is added (strict: also ptrace and process_vm_readv/writev)."
        ),
        stops=Stops(YES, YES, NO),
        side_effects="eBPF/perf tooling cannot run inside containers using the profile.",
        one_way=False,
        baselines=("Docker/OCI runtime default profile shape; only capability gates differ",),
        artifacts=(SECCOMP_FILE,),
    ),
    Control(
        id=rid.CONTAINER_CAPABILITIES,
        title="Containers: drop capabilities, no privileged, no host PID",
        kind="container",
        blocks="Root in a container getting CAP_BPF/PERFMON/SYS_ADMIN/SYS_PTRACE or host PIDs.",
        stops=Stops(YES, YES, NO),
        side_effects="Workloads that need a capability must add it back explicitly.",
        one_way=False,
        baselines=("CIS Docker Benchmark 5.3, 5.4, 5.15, 5.25",),
        artifacts=DOCKER_FILES,
    ),
    Control(
        id=rid.KUBERNETES_POD_SECURITY,
        title="Kubernetes: restricted Pod Security and a Kyverno guard",
        kind="kubernetes",
        blocks="Pods asking for privileged, hostPID or the capture capabilities.",
        stops=Stops(YES, YES, NO),
        side_effects="Pods not meeting 'restricted' are rejected outside the exempt namespace.",
        one_way=False,
        baselines=("Kubernetes Pod Security Standards: restricted",),
        artifacts=K8S_FILES,
    ),
    Control(
        id=rid.RESPOND_ROGUE_SNIFFER,
        title="Respond to a rogue sniffer",
        kind="response",
        blocks="A running unauthorized capture (after detection).",
        stops=Stops(YES, YES, YES),
        side_effects="Killing the owner stops its capture; collect evidence first.",
        one_way=False,
        artifacts=(RESPONSE_FILE,),
    ),
)

BY_ID: dict[str, Control] = {c.id: c for c in CATALOGUE}


def get(control_id: str) -> Control:
    """The control with this id (KeyError for an unknown id)."""
    return BY_ID[control_id]


def sysctl_controls() -> tuple[Control, ...]:
    """The controls implemented by the generated sysctl file, in file order."""
    return tuple(c for c in CATALOGUE if c.kind == "sysctl")
