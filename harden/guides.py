"""Controls that are a procedure rather than a policy file: lockdown, mounts, response.

They still get a generated file so that the plan and the output directory list one
place per control, and so an operator reading ``DIR/`` finds every step.
"""

from __future__ import annotations

from ecap.remediation import KERNEL_LOCKDOWN, MOUNTS_TRACEFS_DEBUGFS, RESPOND_ROGUE_SNIFFER

from .artifact import Artifact, Context
from .controls import KERNEL_FILE, MOUNTS_FILE, RESPONSE_FILE


def lockdown(ctx: Context) -> Artifact:
    current = ctx.posture.lockdown if ctx.posture.live else "unknown (not read from this host)"
    mode = "confidentiality" if ctx.profile == "strict" else "integrity"
    text = f"""# Kernel lockdown ({ctx.profile}: {mode}) — current mode on this host: {current or "not available"}
#
# What it blocks: bpf_probe_write_user, /dev/mem and kernel-memory writes, unsigned
# modules; 'confidentiality' also refuses BPF reads of kernel memory. It does NOT stop
# uprobes reading user memory: combine it with the seccomp/AppArmor/capability controls.
# One-way: lockdown can be raised at run time but only lowered by rebooting.
#
# 1. Add to the kernel command line (Debian: /etc/default/grub GRUB_CMDLINE_LINUX):
lockdown={mode}
# 2. update-grub && reboot
# 3. Check: cat /sys/kernel/security/lockdown   (securityfs must be mounted)
"""
    missing = ctx.posture.live and not ctx.posture.lockdown
    notes = ("lockdown LSM or securityfs not available on this host",) if missing else ()
    return Artifact(KERNEL_FILE, text, "text", (KERNEL_LOCKDOWN,), notes)


def mounts(ctx: Context) -> Artifact:
    text = """# tracefs/debugfs exposure (ecap-harden)
#
# debugfs exposes tracing and far more; production hosts should not mount it:
#   systemctl mask sys-kernel-debug.mount && umount /sys/kernel/debug
# tracefs is needed by ecap-audit/bcc for tracepoint ids; keep it root-only.
# /etc/fstab line (mode 0700: only root can create uprobe/kprobe events):
tracefs /sys/kernel/tracing tracefs mode=0700,nosuid,nodev,noexec 0 0
# bpffs: only mount where pinned objects are needed; watch it with auditd (ecap-bpffs).
"""
    return Artifact(MOUNTS_FILE, text, "text", (MOUNTS_TRACEFS_DEBUGFS,))


def response(ctx: Context) -> Artifact:
    text = """# Responding to a rogue eBPF sniffer (ecap-detect finding)

1. Preserve evidence before touching anything:
   `ecap-detect scan --json evidence.json`, `bpftool prog show --json`,
   `bpftool link show --json`, `bpftool perf show --json`, and the owner process's
   `/proc/PID/{cmdline,exe,maps,status}`.
2. Confirm it is not an authorized capture: `ecap-audit journal show` lists every
   granted session; an authorized one has a journal `capture.start` for its PID.
3. Stop it: kill the owner process (its perf-event fds close and the uprobes detach);
   remove pinned objects it left in bpffs (`rm /sys/fs/bpf/...`), and delete any
   uprobe it created in tracefs (`echo '-:NAME' >> /sys/kernel/tracing/uprobe_events`).
4. Rotate what it could read: TLS session keys are per-connection, but credentials,
   tokens and cookies sent while it ran must be considered disclosed.
5. Close the door: apply the controls of this plan (seccomp, AppArmor, capability
   drops, sysctls) and the auditd rules so the next attempt is refused and recorded.
"""
    return Artifact(RESPONSE_FILE, text, "markdown", (RESPOND_ROGUE_SNIFFER,))
