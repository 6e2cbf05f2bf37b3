"""Linux capability sets decoded from /proc/PID/status.

Preflight and the detector both ask "can this process load BPF / attach uprobes /
read other processes?". The honest answer is the effective capability set, not
whether the UID is 0: a root process in a container may lack CAP_BPF, and a
non-root process may hold it.
"""

from __future__ import annotations

from ecap import procfs

# Numbers from include/uapi/linux/capability.h.
CAPABILITY_NUMBERS: dict[str, int] = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_DAC_READ_SEARCH": 2,
    "CAP_FOWNER": 3,
    "CAP_FSETID": 4,
    "CAP_KILL": 5,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
    "CAP_SETPCAP": 8,
    "CAP_LINUX_IMMUTABLE": 9,
    "CAP_NET_BIND_SERVICE": 10,
    "CAP_NET_BROADCAST": 11,
    "CAP_NET_ADMIN": 12,
    "CAP_NET_RAW": 13,
    "CAP_IPC_LOCK": 14,
    "CAP_IPC_OWNER": 15,
    "CAP_SYS_MODULE": 16,
    "CAP_SYS_RAWIO": 17,
    "CAP_SYS_CHROOT": 18,
    "CAP_SYS_PTRACE": 19,
    "CAP_SYS_PACCT": 20,
    "CAP_SYS_ADMIN": 21,
    "CAP_SYS_BOOT": 22,
    "CAP_SYS_NICE": 23,
    "CAP_SYS_RESOURCE": 24,
    "CAP_SYS_TIME": 25,
    "CAP_SYS_TTY_CONFIG": 26,
    "CAP_MKNOD": 27,
    "CAP_LEASE": 28,
    "CAP_AUDIT_WRITE": 29,
    "CAP_AUDIT_CONTROL": 30,
    "CAP_SETFCAP": 31,
    "CAP_MAC_OVERRIDE": 32,
    "CAP_MAC_ADMIN": 33,
    "CAP_SYSLOG": 34,
    "CAP_WAKE_ALARM": 35,
    "CAP_BLOCK_SUSPEND": 36,
    "CAP_AUDIT_READ": 37,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
    "CAP_CHECKPOINT_RESTORE": 40,
}
_NAMES = {v: k for k, v in CAPABILITY_NUMBERS.items()}

# The capabilities that matter for eBPF plaintext capture, in report order.
SNIFFER_RELEVANT = ("CAP_BPF", "CAP_PERFMON", "CAP_SYS_ADMIN", "CAP_SYS_PTRACE", "CAP_NET_ADMIN")


def decode(mask: int | str) -> set[str]:
    """Names of the capabilities set in a bitmask (hex string as in status, or int)."""
    value = int(mask, 16) if isinstance(mask, str) else mask
    return {_NAMES.get(bit, f"CAP_{bit}") for bit in range(64) if value >> bit & 1}


def effective(pid: int | str = "self") -> set[str]:
    """Effective capabilities of PID (default: this process)."""
    if pid == "self":
        text = procfs.PROC.joinpath("self", "status").read_text()
        line = next(ln for ln in text.splitlines() if ln.startswith("CapEff:"))
        return decode(line.split()[1])
    return decode(procfs.status(int(pid))["CapEff"])
