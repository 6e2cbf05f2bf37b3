"""Preflight: can this process capture on this host, and if not, what to fix.

``ecap-audit doctor`` prints every check; ``capture`` runs the same checks and
stops with exit 4 and the first required failure's message. Each check is a pure
function of its inputs (with the live value as default) so tests can force each
failure and see its exact message.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ecap import caps, host
from ecap.errors import EnvironmentNotReady

MIN_KERNEL = (5, 8)
"""Ring buffers (BPF_MAP_TYPE_RINGBUF) and CAP_BPF/CAP_PERFMON arrived in 5.8."""


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    required: bool
    """A failed required check stops capture (exit 4); others are warnings."""
    detail: str
    fix: str = ""

    def message(self) -> str:
        return f"{self.name}: {self.detail}" + (f"; fix: {self.fix}" if self.fix else "")


def check_kernel(release: str | None = None) -> CheckResult:
    release = release or host.kernel_release()
    version = host.kernel_version_tuple(release)
    ok = version >= MIN_KERNEL
    return CheckResult(
        "kernel",
        ok,
        True,
        f"Linux {release}" + ("" if ok else " is older than 5.8"),
        "" if ok else "run on Linux 5.8 or newer (ring buffers, CAP_BPF)",
    )


def check_btf(path: str = "/sys/kernel/btf/vmlinux") -> CheckResult:
    ok = Path(path).exists()
    return CheckResult(
        "btf",
        ok,
        False,
        f"{path} present" if ok else f"{path} missing (no kernel BTF)",
        "" if ok else "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (detector names degrade)",
    )


def check_bcc_import(importer: Callable[[str], Any] = importlib.import_module) -> CheckResult:
    try:
        mod = importer("bcc")
    except Exception as exc:  # ImportError, or a broken libbcc raising OSError
        return CheckResult(
            "bcc",
            False,
            True,
            f"cannot import bcc ({exc})",
            "apt-get install python3-bpfcc and use a venv made with --system-site-packages "
            "(make setup does both)",
        )
    version = getattr(mod, "__version__", "?")
    return CheckResult("bcc", True, True, f"bcc {version} imports")


_TRIVIAL_PROGRAM = b"int ecap_doctor_probe(void *ctx) { return 0; }"


def _load_trivial_program() -> None:
    from bcc import BPF

    bpf = BPF(text=_TRIVIAL_PROGRAM)
    try:
        bpf.load_func(b"ecap_doctor_probe", BPF.KPROBE)  # uprobe programs have this type
    finally:
        bpf.cleanup()


def check_bcc_load(loader: Callable[[], None] = _load_trivial_program) -> CheckResult:
    try:
        with contextlib.redirect_stderr(None):
            loader()
    except Exception as exc:
        first = " ".join(str(exc).split())[:200]
        return CheckResult(
            "bpf-load",
            False,
            True,
            f"compiling and loading a trivial program failed ({first})",
            "make sure /lib/modules/$(uname -r)/build has kernel headers (make setup links "
            "Debian's linux-headers-amd64) and that this process has CAP_BPF and CAP_PERFMON",
        )
    return CheckResult("bpf-load", True, True, "compiled and loaded a trivial uprobe-type program")


def check_tracefs(root: Path | bool | None = False) -> CheckResult:
    found = host.tracefs_root() if root is False else root
    if found:
        return CheckResult("tracefs", True, True, f"mounted at {found}")
    return CheckResult(
        "tracefs",
        False,
        True,
        "tracefs is not mounted (syscall tracepoints unavailable)",
        "mount -t tracefs tracefs /sys/kernel/tracing",
    )


def check_uprobe_pmu(pmu_type: int | bool | None = False) -> CheckResult:
    value = host.uprobe_pmu_type() if pmu_type is False else pmu_type
    if value:
        return CheckResult("uprobe-pmu", True, True, f"perf PMU 'uprobe' present (type {value})")
    return CheckResult(
        "uprobe-pmu",
        False,
        True,
        "/sys/bus/event_source/devices/uprobe is missing",
        "use a kernel with CONFIG_UPROBES and CONFIG_UPROBE_EVENTS",
    )


def check_capabilities(
    effective: set[str] | None = None, release: str | None = None
) -> CheckResult:
    have = caps.effective() if effective is None else effective
    version = host.kernel_version_tuple(release)
    if version >= MIN_KERNEL:
        bpf_ok = "CAP_SYS_ADMIN" in have or {"CAP_BPF", "CAP_PERFMON"} <= have
        needed = ["CAP_BPF", "CAP_PERFMON", "CAP_SYS_PTRACE"]
    else:
        bpf_ok = "CAP_SYS_ADMIN" in have
        needed = ["CAP_SYS_ADMIN", "CAP_SYS_PTRACE"]
    missing = [c for c in needed if c not in have]
    ok = bpf_ok and "CAP_SYS_PTRACE" in have
    shown = ", ".join(c for c in caps.SNIFFER_RELEVANT if c in have) or "none of them"
    if ok:
        return CheckResult("capabilities", True, True, f"effective: {shown}")
    return CheckResult(
        "capabilities",
        False,
        True,
        f"missing {', '.join(missing)} (effective: {shown})",
        "run as root, or grant " + ", ".join(needed) + " (e.g. setcap or systemd "
        "AmbientCapabilities=)",
    )


def check_lockdown(mode: str | bool | None = False) -> CheckResult:
    value = host.lockdown_mode() if mode is False else mode
    if value == "confidentiality":
        return CheckResult(
            "lockdown",
            False,
            False,
            "kernel lockdown=confidentiality: BPF programs may not read kernel memory",
            "capture reads only user memory and may still work; boot with lockdown=integrity "
            "if program loading fails",
        )
    detail = f"lockdown={value}" if value else "lockdown not reported (securityfs not mounted)"
    return CheckResult("lockdown", True, False, detail)


def check_unprivileged_bpf(value: str | bool | None = False) -> CheckResult:
    current = host.read_sysctl("kernel.unprivileged_bpf_disabled") if value is False else value
    if current == "0":
        return CheckResult(
            "unprivileged-bpf",
            False,
            False,
            "kernel.unprivileged_bpf_disabled=0: unprivileged users may load BPF programs",
            "sysctl -w kernel.unprivileged_bpf_disabled=2 (see 'ecap-harden sysctl')",
        )
    return CheckResult(
        "unprivileged-bpf", True, False, f"kernel.unprivileged_bpf_disabled={current}"
    )


def run_checks() -> list[CheckResult]:
    """All checks against the live host, in the order doctor prints them."""
    results = [check_kernel(), check_btf(), check_bcc_import()]
    results.append(
        check_bcc_load()
        if results[-1].ok
        else CheckResult("bpf-load", False, True, "skipped: bcc does not import", results[-1].fix)
    )
    results += [
        check_tracefs(),
        check_uprobe_pmu(),
        check_capabilities(),
        check_lockdown(),
        check_unprivileged_bpf(),
    ]
    return results


def failures(results: list[CheckResult]) -> list[CheckResult]:
    return [r for r in results if r.required and not r.ok]


def preflight() -> list[CheckResult]:
    """Raise EnvironmentNotReady (exit 4) with the first required failure."""
    results = run_checks()
    bad = failures(results)
    if bad:
        raise EnvironmentNotReady(bad[0].message())
    return results


def as_json(results: list[CheckResult]) -> dict[str, Any]:
    return {
        "schema": "ecap.doctor/1",
        "ok": not failures(results),
        "checks": [asdict(r) for r in results],
    }
