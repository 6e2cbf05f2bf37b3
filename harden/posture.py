"""The host facts the hardener works from: read live, or taken from a scan.

``generate`` and ``check`` compare a posture against a profile. A posture comes
either from this host (``ecap.host`` readers, ``auditctl -l``) or from the JSON that
``ecap-detect scan --json`` wrote, possibly on another machine of a fleet. A scan
only carries sysctls, SELinux state and findings; every other fact is then ``None``
(unknown), and unknown is never mistaken for "already hardened".
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ecap import host
from ecap import selinux as sel
from ecap.remediation import ALL_CONTROL_IDS

from . import auditrules
from .controls import sysctl_controls


@dataclass(frozen=True)
class Posture:
    """What is known about a host's eBPF exposure (None = not known)."""

    source: str
    """``live`` or ``scan:PATH``."""
    hostname: str
    kernel: str
    sysctl: dict[str, str | None]
    """Key → current value; None when the kernel has no such key; missing key: unknown."""
    lockdown: str | None = None
    apparmor_enabled: bool | None = None
    debugfs_mounts: tuple[str, ...] | None = None
    tracefs_modes: tuple[tuple[str, int], ...] | None = None
    """(mount point, permission bits of its root directory)."""
    audit_rules: tuple[str, ...] | None = None
    """Loaded audit rules as ``auditctl -l`` prints them; None when unknown."""
    audit_enabled: bool | None = None
    audit_exclusions: tuple[auditrules.Exclusion, ...] = ()
    finding_controls: frozenset[str] = field(default_factory=frozenset)
    """Control ids that the scan's findings recommend."""
    selinux: sel.State | None = None
    """SELinux state and the policy's BPF exposure; None when unknown."""

    @property
    def live(self) -> bool:
        return self.source == "live"


def _sysctl_keys() -> list[str]:
    return [c.sysctl for c in sysctl_controls() if c.sysctl]


def _apparmor_enabled() -> bool:
    try:
        return Path("/sys/module/apparmor/parameters/enabled").read_text().strip() == "Y"
    except OSError:
        return False


def _mode(path: str) -> int:
    try:
        return stat.S_IMODE(Path(path).stat().st_mode)
    except OSError:
        return -1


def live(*, selinux: bool = True) -> Posture:
    """This host, now; ``selinux=False`` skips analysing the SELinux policy (~1 s)."""
    rules = auditrules.live_rules()
    return Posture(
        source="live",
        hostname=host.hostname(),
        kernel=host.kernel_release(),
        sysctl={k: host.read_sysctl(k) for k in _sysctl_keys()},
        lockdown=host.lockdown_mode(),
        apparmor_enabled=_apparmor_enabled(),
        debugfs_mounts=tuple(host.mountpoints_of("debugfs")),
        tracefs_modes=tuple((mp, _mode(mp)) for mp in host.mountpoints_of("tracefs")),
        audit_rules=tuple(rules) if rules is not None else None,
        audit_enabled=auditrules.enabled(),
        audit_exclusions=tuple(auditrules.tracing_exclusions(rules)),
        selinux=sel.read_state(analyse_policy=selinux),
    )


def from_scan(path: Path) -> Posture:
    """The posture recorded in an ``ecap-detect scan --json`` file.

    Raises UsageError (exit 2) for an unreadable file, bad JSON or another schema.
    """
    from ecap.detect import document

    data: Any = document.load(path)
    hostinfo = data.get("host") if isinstance(data.get("host"), dict) else {}
    posture = data.get("posture") if isinstance(data.get("posture"), dict) else {}
    raw = posture.get("sysctl") if isinstance(posture.get("sysctl"), dict) else {}
    sysctl: dict[str, str | None] = {}
    for key in _sysctl_keys():
        if key in raw:  # a key the scan did not report stays unknown (left out)
            value = raw[key]
            sysctl[key] = None if value is None else str(value).strip()
    wanted: set[str] = set()
    findings = data.get("findings")
    for finding in findings if isinstance(findings, list) else []:
        ids = finding.get("remediation") if isinstance(finding, dict) else None
        for cid in ids if isinstance(ids, list) else []:
            if isinstance(cid, str) and cid in ALL_CONTROL_IDS:
                wanted.add(cid)
    return Posture(
        source=f"scan:{path}",
        hostname=str(hostinfo.get("hostname", "?")),
        kernel=str(hostinfo.get("kernel", "?")),
        sysctl=sysctl,
        finding_controls=frozenset(wanted),
        selinux=sel.State.from_json(posture.get("selinux")),
    )
