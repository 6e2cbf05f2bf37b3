"""Facts about this host that the gate, preflight, detector and hardener read.

Each reader returns ``None`` rather than raising when the fact is not exposed
(securityfs not mounted, sysctl absent on this kernel): "unknown" is itself a
finding for the detector and a failed check for preflight.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

MACHINE_ID_PATHS = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))


def hostname() -> str:
    """The host name tokens are bound to (``socket.gethostname()``)."""
    return socket.gethostname()


def machine_id() -> str | None:
    """systemd machine-id: stable across reboots and distinct per installation."""
    for path in MACHINE_ID_PATHS:
        try:
            value = path.read_text().strip()
        except OSError:
            continue
        if value:
            return value
    return None


def kernel_release() -> str:
    """``uname -r``."""
    return os.uname().release


def kernel_version_tuple(release: str | None = None) -> tuple[int, int]:
    """(major, minor) of a kernel release string such as ``6.18.44-fc``."""
    rel = release or kernel_release()
    parts = rel.split("-", 1)[0].split(".")
    return int(parts[0]), int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def has_btf() -> bool:
    """Kernel BTF is exposed (needed by CO-RE tools, and by our func-name lookup)."""
    return Path("/sys/kernel/btf/vmlinux").exists()


def sysctl_path(key: str) -> Path:
    """``kernel.perf_event_paranoid`` → ``/proc/sys/kernel/perf_event_paranoid``."""
    return Path("/proc/sys") / key.replace(".", "/")


def read_sysctl(key: str) -> str | None:
    """Current value of a sysctl, or None when this kernel has no such key."""
    try:
        return sysctl_path(key).read_text().strip()
    except (FileNotFoundError, PermissionError):
        return None


def lockdown_mode() -> str | None:
    """Active kernel lockdown mode (none / integrity / confidentiality), or None.

    The file shows all modes with the active one in brackets; it only exists when
    securityfs is mounted and the lockdown LSM is built in.
    """
    try:
        text = Path("/sys/kernel/security/lockdown").read_text()
    except OSError:
        return None
    for word in text.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    return None


def mounts() -> list[tuple[str, str, str]]:
    """(source, mountpoint, fstype) from /proc/self/mounts, octal escapes decoded."""
    out = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3:
            out.append((_unescape(parts[0]), _unescape(parts[1]), parts[2]))
    return out


def _unescape(field: str) -> str:
    """Undo the kernel's ``\\040``-style escaping of spaces and friends in mount fields."""
    return field.encode().decode("unicode_escape") if "\\" in field else field


def mountpoints_of(fstype: str) -> list[str]:
    """Mount points of one filesystem type in this mount namespace."""
    return [mp for _, mp, fs in mounts() if fs == fstype]


def tracefs_root() -> Path | None:
    """Where tracefs is mounted (``/sys/kernel/tracing`` or debugfs's ``tracing``)."""
    for candidate in mountpoints_of("tracefs"):
        return Path(candidate)
    for debugfs in mountpoints_of("debugfs"):
        path = Path(debugfs) / "tracing"
        if (path / "uprobe_events").exists():
            return path
    return None


def uprobe_pmu_type() -> int | None:
    """perf PMU type number of the ``uprobe`` event source, None if absent."""
    try:
        return int(Path("/sys/bus/event_source/devices/uprobe/type").read_text())
    except (OSError, ValueError):
        return None


def query_tool(
    tool: str, *args: str, timeout: float = 10
) -> subprocess.CompletedProcess[str] | None:
    """Run a read-only query of an installed tool (``auditctl -s``, ``apparmor_parser
    --version``); None when the tool is absent or does not answer in time.

    Host checks report "unknown" for a missing answer rather than failing or guessing,
    so callers only have to handle None.
    """
    exe = shutil.which(tool)
    if exe is None:
        return None
    try:
        return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
