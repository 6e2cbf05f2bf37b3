"""Identifiers of hardening controls: the vocabulary detect and harden share.

``ecap-detect`` attaches these ids to findings ("this weak setting is fixed by
control X"); ``ecap-harden`` owns the catalogue that describes each one (what it
blocks, threat model, side effects, generated snippet). Keeping only the ids here
lets the detector name a fix without importing the hardener, and a test checks
that the catalogue covers every id.
"""

from __future__ import annotations

SYSCTL_UNPRIVILEGED_BPF = "sysctl-unprivileged-bpf"
SYSCTL_PERF_EVENT_PARANOID = "sysctl-perf-event-paranoid"
SYSCTL_KPTR_RESTRICT = "sysctl-kptr-restrict"
SYSCTL_PTRACE_SCOPE = "sysctl-ptrace-scope"
SYSCTL_BPF_JIT_HARDEN = "sysctl-bpf-jit-harden"
SYSCTL_DMESG_RESTRICT = "sysctl-dmesg-restrict"
SYSCTL_KEXEC_LOAD_DISABLED = "sysctl-kexec-load-disabled"
KERNEL_LOCKDOWN = "kernel-lockdown"
MOUNTS_TRACEFS_DEBUGFS = "mounts-tracefs-debugfs"
AUDITD_BPF_SYSCALLS = "auditd-bpf-syscalls"
AUDITD_TRACING_WATCHES = "auditd-tracing-watches"
APPARMOR_DENY_TRACING = "apparmor-deny-tracing"
SELINUX_CONFINE_BPF = "selinux-confine-bpf"
SECCOMP_DENY_BPF = "seccomp-deny-bpf"
CONTAINER_CAPABILITIES = "container-capabilities"
KUBERNETES_POD_SECURITY = "kubernetes-pod-security"
RESPOND_ROGUE_SNIFFER = "respond-rogue-sniffer"

ALL_CONTROL_IDS: tuple[str, ...] = (
    SYSCTL_UNPRIVILEGED_BPF,
    SYSCTL_PERF_EVENT_PARANOID,
    SYSCTL_KPTR_RESTRICT,
    SYSCTL_PTRACE_SCOPE,
    SYSCTL_BPF_JIT_HARDEN,
    SYSCTL_DMESG_RESTRICT,
    SYSCTL_KEXEC_LOAD_DISABLED,
    KERNEL_LOCKDOWN,
    MOUNTS_TRACEFS_DEBUGFS,
    AUDITD_BPF_SYSCALLS,
    AUDITD_TRACING_WATCHES,
    APPARMOR_DENY_TRACING,
    SELINUX_CONFINE_BPF,
    SECCOMP_DENY_BPF,
    CONTAINER_CAPABILITIES,
    KUBERNETES_POD_SECURITY,
    RESPOND_ROGUE_SNIFFER,
)
