"""auditd rules that record every BPF load, perf event and tracing-interface write.

Audit rules are detective, not preventive: they stop nobody, but they make a root
sniffer leave a trail (``bpf``/``perf_event_open`` with the caller's pid, exe and
loginuid) that survives on a remote log server. The rules cover both syscall ABIs
(b64 and b32), because a 32-bit binary on a 64-bit kernel bypasses b64-only rules.
Watches on paths this host does not have are written as comments with a note:
``auditctl`` refuses a watch whose parent directory is missing.
"""

from __future__ import annotations

from pathlib import Path

from ecap.remediation import AUDITD_BPF_SYSCALLS, AUDITD_TRACING_WATCHES

from .artifact import Artifact, Context
from .controls import AUDIT_FILE

SYSCALLS = ("bpf", "perf_event_open")
ARCHES = ("b64", "b32")
KEY_BPF = "ecap-bpf"
KEY_TRACING = "ecap-tracing"
KEY_BPFFS = "ecap-bpffs"
KEY_SYSCTL = "ecap-sysctl"
BPF_SYSCTLS = (
    "kernel/unprivileged_bpf_disabled",
    "net/core/bpf_jit_enable",
    "net/core/bpf_jit_harden",
    "net/core/bpf_jit_kallsyms",
    "kernel/perf_event_paranoid",
    "kernel/kptr_restrict",
)


def _tracefs_dirs(ctx: Context) -> list[str]:
    """Where tracefs is (or would be) reachable on the host the rules are for."""
    dirs = ["/sys/kernel/tracing"]
    if ctx.posture.debugfs_mounts:
        dirs += [f"{mp}/tracing" for mp in ctx.posture.debugfs_mounts]
    for mp, _mode in ctx.posture.tracefs_modes or ():
        if mp not in dirs:
            dirs.append(mp)
    return dirs


def _watch(path: str, key: str, ctx: Context, why: str, notes: list[str]) -> list[str]:
    """A watch line, or a commented one with a note when the path is absent here."""
    line = f"-w {path} -p wa -k {key}"
    if ctx.posture.live and not Path(path).exists():
        note = f"{path}: absent on this host ({why}); watch written commented out"
        notes.append(note)
        return [f"## {note}", f"# {line}"]
    return [line]


def render(ctx: Context) -> Artifact:
    """The rules file for /etc/audit/rules.d/ (load with augenrules --load)."""
    notes: list[str] = []
    lines = [
        "## ecap-harden auditd rules — install as /etc/audit/rules.d/60-ecap-bpf.rules and",
        "## load with 'augenrules --load'. Detective only: they record, they do not block.",
        "## Search with: ausearch -k ecap-bpf / ecap-tracing / ecap-bpffs / ecap-sysctl",
        "",
    ]
    for ex in ctx.posture.audit_exclusions:
        warning = (
            f"WARNING: {ex.where} excludes {ex.fstype} ({ex.rule}); the tracing watches "
            "below record nothing until that rule is removed"
        )
        notes.append(warning)
        lines.append(f"## {warning}")
    if ctx.posture.audit_exclusions:
        lines.append("")
    lines.append("## Every BPF program/map/link operation and every perf event (uprobes too),")
    lines.append("## for 64-bit and 32-bit callers alike.")
    for name in SYSCALLS:
        for arch in ARCHES:
            lines.append(f"-a always,exit -F arch={arch} -S {name} -F key={KEY_BPF}")
    lines.append("")
    lines.append("## Dynamic probe creation through tracefs (uprobe_events, kprobe_events).")
    for d in _tracefs_dirs(ctx):
        lines += _watch(f"{d}/uprobe_events", KEY_TRACING, ctx, "tracefs not mounted", notes)
        lines += _watch(
            f"{d}/kprobe_events", KEY_TRACING, ctx, "kernel without kprobe events", notes
        )
    lines.append("")
    lines.append("## Pinned BPF programs and maps.")
    lines += _watch("/sys/fs/bpf", KEY_BPFFS, ctx, "bpffs not mounted", notes)
    lines.append("")
    lines.append("## The BPF sysctls, at run time and in the files applied at boot.")
    for rel in BPF_SYSCTLS:
        lines += _watch(f"/proc/sys/{rel}", KEY_SYSCTL, ctx, "key absent on this kernel", notes)
    lines.append(f"-w /etc/sysctl.conf -p wa -k {KEY_SYSCTL}")
    lines.append(f"-w /etc/sysctl.d -p wa -k {KEY_SYSCTL}")
    return Artifact(
        AUDIT_FILE,
        "\n".join(lines) + "\n",
        "auditd",
        (AUDITD_BPF_SYSCALLS, AUDITD_TRACING_WATCHES),
        notes=tuple(notes),
    )
