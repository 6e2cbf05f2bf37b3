"""Preflight: can this process capture on this host, and if not, what to fix.

``ecap-audit doctor`` prints every check, including a trial: it loads the real
capture programs and attaches them to itself, so "ready to capture" means capture
works with exactly this process's privileges. ``capture`` runs the same checks
but the trial (nothing is attached before the gate) and stops with exit 4 and the
first required failure's message. Each check is a pure
function of its inputs (with the live value as default) so tests can force each
failure and see its exact message.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ecap import caps, host
from ecap.errors import EnvironmentNotReady

CAP_BPF_KERNEL = (5, 8)
"""CAP_BPF and CAP_PERFMON exist from here on; before, everything needed CAP_SYS_ADMIN."""
MIN_KERNEL = (6, 6)
"""uprobe_multi links (how capture attaches: the one uprobe path open to CAP_BPF +
CAP_PERFMON since perf's uprobe PMU requires CAP_SYS_ADMIN) arrived in 6.6."""


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
        f"Linux {release}" + ("" if ok else " is older than 6.6"),
        "" if ok else "run on Linux 6.6 or newer (uprobe_multi links, ring buffers, bpf_loop)",
    )


def check_btf(path: str = "/sys/kernel/btf/vmlinux") -> CheckResult:
    ok = Path(path).exists()
    return CheckResult(
        "btf",
        ok,
        True,
        f"{path} present" if ok else f"{path} missing (no kernel BTF)",
        ""
        if ok
        else "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (the programs are "
        "relocated against it at load time)",
    )


def check_programs_built(objects: tuple[str, ...] | None = None) -> CheckResult:
    """The capture programs ship prebuilt (``make setup``): no compiler at run time."""
    from ecap.capture import modules
    from ecap.ebpf import loader

    wanted = objects or tuple(sorted({m.bpf_object for m in modules.registry().values()
                                      if m.bpf_object}))  # fmt: skip
    bad = []
    for name in wanted:
        try:
            loader.read_image(name)
        except loader.LoadError as exc:
            bad.append(exc.message)
    if bad:
        return CheckResult(
            "programs",
            False,
            True,
            "; ".join(bad),
            "run 'make setup' (it compiles bpf/*.bpf.c into loaders)",
        )
    return CheckResult("programs", True, True, f"built: {', '.join(wanted)}")


_TRIVIAL = bytes.fromhex("b7000000000000009500000000000000")  # r0 = 0; exit
_PROG_TYPE_KPROBE = 2


def _load_trivial_program() -> None:
    """BPF_PROG_LOAD of two instructions as a uprobe-type program, then close it."""
    import ctypes
    import os
    import struct

    from ecap.ebpf import syscall as sc

    code = ctypes.create_string_buffer(_TRIVIAL, len(_TRIVIAL))
    license_ = ctypes.create_string_buffer(b"GPL")
    attr = sc.attr(128)
    struct.pack_into("<IIQQ", attr, 0, _PROG_TYPE_KPROBE, 2, ctypes.addressof(code),
                     ctypes.addressof(license_))  # fmt: skip
    os.close(sc.bpf(sc.PROG_LOAD, attr))


def check_bpf_load(loader: Callable[[], None] = _load_trivial_program) -> CheckResult:
    try:
        loader()
    except Exception as exc:
        first = " ".join(str(exc).split())[:200]
        return CheckResult(
            "bpf-load",
            False,
            True,
            f"loading a trivial program failed ({first})",
            "this process needs CAP_BPF and CAP_PERFMON (or root), and BPF must not be "
            "disabled by a security module",
        )
    return CheckResult("bpf-load", True, True, "loaded a trivial uprobe-type program")


def _trial_capture(module_name: str = "tls") -> str:
    """Load the module's real programs and attach them to this very process: a uprobe
    on a libc function and the raw tracepoints, then detach. What capture does."""
    import os

    from ecap import procfs
    from ecap.capture import modules
    from ecap.capture.kernel import KernelSide
    from ecap.ebpf import attach
    from ecap.elf import open_elf

    module = modules.get(module_name)
    if module.select is not None:  # auto: the first module it may capture through
        first = modules.bpf_objects(module_name)[0]
        module = next(m for m in modules.registry().values() if m.bpf_object == first)
    libc = next(p for p in procfs.mapped_files(os.getpid()) if "/libc.so" in p)
    offset = open_elf(libc).find_functions(("getpid",))["getpid"].file_offset
    kernel = KernelSide(module, ring_mb=1)
    try:
        kernel.attach_tracepoints()
        program = next(h.program for h in module.hooks)
        kernel.attachments.append(
            attach.uprobe_multi(kernel.obj.prog_fd(program), libc, [offset], [0], os.getpid(),
                                retprobe=False, what="getpid (doctor's own)")
        )  # fmt: skip
        return f"loaded {module.bpf_object}, attached a uprobe and {len(kernel.attachments) - 1} raw tracepoints to itself"
    finally:
        kernel.close()


def check_attach(trial: Callable[[], str] = _trial_capture) -> CheckResult:
    try:
        detail = trial()
    except Exception as exc:
        first = " ".join(str(exc).split())[:240]
        return CheckResult(
            "attach",
            False,
            True,
            f"loading and attaching the capture programs failed ({first})",
            "grant CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE (or run as root); see the README's "
            "'Least privilege' section",
        )
    return CheckResult("attach", True, True, detail)


def _open_packet_socket() -> list[str]:
    """Open (and close) the packet tap's kind of socket; the interfaces it would see."""
    import socket

    socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0).close()
    return [name for _index, name in socket.if_nameindex()]


def check_packet_capture(opener: Callable[[], list[str]] = _open_packet_socket,
                         *, required: bool = False) -> CheckResult:  # fmt: skip
    """keylog and pcapng read the connections' packets from an AF_PACKET socket
    (CAP_NET_RAW) behind a BPF filter: can this process open one, on which
    interfaces? Required only when the output needs packets."""
    try:
        interfaces = opener()
    except OSError as exc:
        return CheckResult(
            "packet-capture",
            False,
            required,
            f"cannot open a packet socket ({exc.strerror or exc}): --format keylog and pcapng "
            "cannot work here (text, jsonl, raw and pcapng --plaintext can)",
            "grant CAP_NET_RAW as well (or run as root)",
        )
    if not interfaces:
        return CheckResult("packet-capture", False, required, "no network interface here",
                           "keylog and pcapng need the interface the connections use")  # fmt: skip
    return CheckResult(
        "packet-capture",
        True,
        required,
        f"packet socket (CAP_NET_RAW) on every interface: {', '.join(interfaces)}; "
        "keylog and pcapng can work",
    )


def check_modes(packets: CheckResult) -> CheckResult:
    """Which output modes work here: the ones needing the packet tap only if it opens."""
    from ecap.capture import sinks

    ready, blocked = [], []
    for sink in sinks.every().values():
        label = "pcapng --plaintext" if sink.name == "pcapng-plaintext" else sink.name
        (blocked if sink.needs_keys and not packets.ok else ready).append(label)
    detail = f"ready: {', '.join(ready)}"
    if blocked:
        detail += f"; not here: {', '.join(blocked)} (no packet capture)"
    return CheckResult("modes", True, False, detail)


def check_tracefs(root: Path | bool | None = False) -> CheckResult:
    """Not needed by capture (raw tracepoints and PMU uprobes bypass it): informational."""
    found = host.tracefs_root() if root is False else root
    if found:
        return CheckResult("tracefs", True, False, f"mounted at {found} (not needed by capture)")
    return CheckResult("tracefs", True, False, "not mounted (not needed by capture)")


def check_capabilities(
    effective: set[str] | None = None, release: str | None = None
) -> CheckResult:
    have = caps.effective() if effective is None else effective
    version = host.kernel_version_tuple(release)
    if version >= CAP_BPF_KERNEL:
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


def run_checks(
    *, trial: bool = True, module: str = "tls", packets: bool = False
) -> list[CheckResult]:
    """All checks against the live host, in the order doctor prints them.

    ``trial`` also loads the module's real programs and attaches them to this
    process (``doctor`` does; ``capture``'s preflight does not, because nothing
    may be attached before the gate has decided).
    """
    from ecap.capture import modules

    # doctor reports on every capture object; a capture needs its module's only.
    results = [
        check_kernel(),
        check_btf(),
        check_programs_built(None if trial else modules.bpf_objects(module)),
        check_capabilities(),
        check_bpf_load(),
    ]
    if trial:
        ready = all(r.ok for r in results if r.required)
        results.append(
            check_attach(lambda: _trial_capture(module))
            if ready
            else CheckResult("attach", False, True, "skipped: a check above failed", "")
        )
    tap = check_packet_capture(required=packets)
    results += [tap, check_modes(tap), check_tracefs(), check_lockdown(), check_unprivileged_bpf()]
    return results


def failures(results: list[CheckResult]) -> list[CheckResult]:
    return [r for r in results if r.required and not r.ok]


def preflight(module: str = "tls", *, packets: bool = False) -> list[CheckResult]:
    """Raise EnvironmentNotReady (exit 4) with the first required failure.

    The same checks as ``doctor`` except the trial attach (see :func:`run_checks`);
    ``packets``: the output needs the packet tap (keylog, pcapng), so being able to
    open a packet socket is required.
    """
    results = run_checks(trial=False, module=module, packets=packets)
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
