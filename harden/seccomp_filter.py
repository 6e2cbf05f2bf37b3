"""Turn an OCI/Docker seccomp profile into a real libseccomp filter and try it.

Parsing the JSON proves nothing about what a container would be allowed to do.
This module builds the filter the way a runtime does (capability-gated blocks
evaluated for a given capability set, arguments compared, names unknown to
libseccomp skipped), loads it in a forked child, and has the child call the
syscalls: the refused ones must fail with EPERM and ordinary ones must work. The
parent makes the same calls unfiltered, so an EPERM that the kernel itself would
have returned cannot pass for the filter's.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
from dataclasses import dataclass
from typing import Any

from ecap.caps import CAPABILITY_NUMBERS
from ecap.host import kernel_version_tuple

ALL_CAPS = frozenset(CAPABILITY_NUMBERS)
"""Every capability: what the most privileged container could be given."""

_OPS = {
    "SCMP_CMP_NE": "NE",
    "SCMP_CMP_LT": "LT",
    "SCMP_CMP_LE": "LE",
    "SCMP_CMP_EQ": "EQ",
    "SCMP_CMP_GE": "GE",
    "SCMP_CMP_GT": "GT",
    "SCMP_CMP_MASKED_EQ": "MASKED_EQ",
}


class ProfileError(ValueError):
    """The profile cannot be turned into a filter (bad action, operator, conflict)."""


@dataclass(frozen=True)
class Built:
    """A compiled filter and what was left out of it."""

    filter: Any
    """``seccomp.SyscallFilter``."""
    unknown: tuple[str, ...]
    """Names libseccomp does not know (a runtime skips them the same way)."""


def _seccomp() -> Any:
    import seccomp  # Debian python3-seccomp, through the venv's system site-packages

    return seccomp


def _action(sc: Any, name: str, errno_ret: int | None) -> Any:
    if name == "SCMP_ACT_ALLOW":
        return sc.ALLOW
    if name == "SCMP_ACT_ERRNO":
        return sc.ERRNO(errno.EPERM if errno_ret is None else errno_ret)
    if name in ("SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD"):
        return sc.KILL
    if name == "SCMP_ACT_KILL_PROCESS":
        return sc.KILL_PROCESS
    if name == "SCMP_ACT_LOG":
        return sc.LOG
    if name == "SCMP_ACT_TRAP":
        return sc.TRAP
    raise ProfileError(f"unsupported seccomp action {name!r}")


# uname machine → the architecture names runtimes use in includes/excludes.arches
_RUNTIME_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "s390x": "s390x", "ppc64le": "ppc64le",
                 "riscv64": "riscv64", "i686": "386", "armv7l": "arm"}  # fmt: skip


def _applies(rule: dict[str, Any], caps: frozenset[str], kernel: tuple[int, int]) -> bool:
    """Whether a runtime would use this rule for a container with ``caps`` here."""
    inc = rule.get("includes") or {}
    exc = rule.get("excludes") or {}
    arch = _RUNTIME_ARCH.get(os.uname().machine, os.uname().machine)
    if inc.get("arches") and arch not in inc["arches"]:
        return False
    if exc.get("arches") and arch in exc["arches"]:
        return False
    if inc.get("caps") and not set(inc["caps"]) <= caps:
        return False
    if exc.get("caps") and set(exc["caps"]) & caps:
        return False
    if inc.get("minKernel"):
        major, minor = (int(x) for x in str(inc["minKernel"]).split(".")[:2])
        if kernel < (major, minor):
            return False
    return not exc.get("minKernel") or kernel < tuple(
        int(x) for x in str(exc["minKernel"]).split(".")[:2]
    )


def build(doc: dict[str, Any], *, caps: frozenset[str] = ALL_CAPS) -> Built:
    """A libseccomp filter for this host's architecture as a runtime would build it.

    ``caps`` is the container's capability set; the default (every capability)
    shows what the profile allows to the most privileged container.
    """
    sc = _seccomp()
    unknown: list[str] = []
    try:
        default_key = _key(doc.get("defaultAction"), doc.get("defaultErrnoRet"))
        flt = sc.SyscallFilter(_action(sc, *default_key))
        _add_arches(sc, flt, doc)
        _add_rules(sc, flt, doc, default_key, caps, unknown)
    except ProfileError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ProfileError(f"malformed profile: {type(exc).__name__}: {exc}") from None
    return Built(flt, tuple(unknown))


def _key(action: Any, errno_ret: Any) -> tuple[str, int | None]:
    """(action, errno) with the runtime's default errno (EPERM) filled in."""
    name = str(action)
    if name == "SCMP_ACT_ERRNO":
        return name, errno.EPERM if errno_ret is None else int(errno_ret)
    return name, None


def _add_arches(sc: Any, flt: Any, doc: dict[str, Any]) -> None:
    """The sub-architectures ``archMap`` lists for this machine (x86 and x32 on x86_64)."""
    native = sc.system_arch()
    for entry in doc.get("archMap") or []:
        main = getattr(sc.Arch, str(entry.get("architecture", "")).removeprefix("SCMP_ARCH_"), -1)
        if main != native:
            continue
        for sub in entry.get("subArchitectures") or []:
            arch = getattr(sc.Arch, str(sub).removeprefix("SCMP_ARCH_"), None)
            if arch is not None:
                flt.add_arch(arch)


def _add_rules(
    sc: Any,
    flt: Any,
    doc: dict[str, Any],
    default_key: tuple[str, int | None],
    caps: frozenset[str],
    unknown: list[str],
) -> None:
    kernel = kernel_version_tuple()
    for rule in doc.get("syscalls") or []:
        if not _applies(rule, caps, kernel):
            continue
        key = _key(rule.get("action"), rule.get("errnoRet"))
        if key == default_key:
            # Same outcome as the default action: libseccomp refuses such rules and
            # runtimes (runc, crun) skip them, so the syscall gets the default.
            continue
        action = _action(sc, *key)
        args = []
        for a in rule.get("args") or []:
            op = _OPS.get(str(a.get("op")))
            if op is None:
                raise ProfileError(f"unsupported seccomp operator {a.get('op')!r}")
            args.append(
                sc.Arg(int(a["index"]), getattr(sc, op), int(a["value"]), int(a.get("valueTwo", 0)))
            )
        for name in rule.get("names") or []:
            try:
                sc.resolve_syscall(sc.Arch.NATIVE, name)
            except (ValueError, RuntimeError):
                unknown.append(name)
                continue
            try:
                flt.add_rule(action, name, *args)
            except RuntimeError as exc:
                raise ProfileError(f"libseccomp refused the rule for {name!r}: {exc}") from None


# ----------------------------------------------------------------- probing


def _nr(name: str) -> int:
    sc = _seccomp()
    return int(sc.resolve_syscall(sc.Arch.NATIVE, name))


def probe_calls() -> dict[str, tuple[int, tuple[int, ...]]]:
    """Syscall name → (number, arguments) that are harmless with or without a filter.

    Each call is made so that the kernel itself fails it with something other than
    EPERM when we are root (a NULL attribute → EFAULT/EINVAL, a PID that cannot exist
    → ESRCH), so EPERM can only come from the filter.
    """
    return {
        "bpf": (_nr("bpf"), (0, 0, 0)),  # BPF_MAP_CREATE with a NULL attr
        "perf_event_open": (_nr("perf_event_open"), (0, 0, 0xFFFFFFFF, 0xFFFFFFFF, 0)),
        "ptrace": (_nr("ptrace"), (2, 0x7FFFFFFF, 0, 0)),  # PEEKDATA on a PID that is free
        "process_vm_readv": (_nr("process_vm_readv"), (0x7FFFFFFF, 0, 0, 0, 0, 0)),
        "process_vm_writev": (_nr("process_vm_writev"), (0x7FFFFFFF, 0, 0, 0, 0, 0)),
    }


def _call(libc: Any, nr: int, args: tuple[int, ...]) -> int:
    """errno of a raw syscall (0 when it succeeded)."""
    ctypes.set_errno(0)
    rc = libc.syscall(ctypes.c_long(nr), *(ctypes.c_long(a) for a in args))
    return ctypes.get_errno() if rc == -1 else 0


def _ordinary_ok() -> dict[str, bool]:
    """What every container process does: pid, files, pipes, time, memory, children."""
    out = {"getpid": os.getpid() > 0, "uname": bool(os.uname().sysname)}
    with open("/proc/self/status", "rb") as f:
        out["openat+read"] = f.read(4) == b"Name"
    r, w = os.pipe()
    os.write(w, b"x")
    out["pipe+write"] = os.read(r, 1) == b"x"
    os.close(r)
    os.close(w)
    import mmap
    import time

    out["clock_gettime"] = time.time() > 0
    m = mmap.mmap(-1, 4096)
    m[:2] = b"ok"
    out["mmap"] = m[:2] == b"ok"
    m.close()
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    out["fork+wait"] = os.waitpid(pid, 0)[1] >> 8 == 7
    return out


@dataclass(frozen=True)
class ProbeResult:
    """What a process under the filter saw."""

    refused: dict[str, str]
    """Syscall → errno name in the filtered child (``EPERM`` expected)."""
    unfiltered: dict[str, str]
    """The same calls in the parent, without the filter (never EPERM as root)."""
    ordinary: dict[str, bool]
    """Ordinary operations in the filtered child → worked."""
    unknown: tuple[str, ...]
    error: str | None = None

    def ok(self, expect_refused: tuple[str, ...]) -> bool:
        return (
            self.error is None
            and all(self.refused.get(n) == "EPERM" for n in expect_refused)
            and all(self.unfiltered.get(n) != "EPERM" for n in expect_refused)
            and bool(self.ordinary)
            and all(self.ordinary.values())
        )


def probe(doc: dict[str, Any], *, caps: frozenset[str] = ALL_CAPS) -> ProbeResult:
    """Load the profile's filter in a forked child and record what the syscalls return."""
    built = build(doc, caps=caps)
    libc = ctypes.CDLL(None, use_errno=True)
    calls = probe_calls()
    unfiltered = {n: errno.errorcode.get(_call(libc, nr, a), "OK") for n, (nr, a) in calls.items()}
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into the caller's stack
        code = 0
        try:
            os.close(r)
            built.filter.load()
            refused = {
                n: errno.errorcode.get(_call(libc, nr, a), "OK") for n, (nr, a) in calls.items()
            }
            payload = {"refused": refused, "ordinary": _ordinary_ok()}
        except BaseException as exc:  # report anything, including a filter that kills Python
            payload = {"error": f"{type(exc).__name__}: {exc}"}
            code = 1
        try:
            os.write(w, json.dumps(payload).encode())
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    try:
        data = json.loads(b"".join(chunks) or b"{}")
    except json.JSONDecodeError:
        data = {}
    error = data.get("error")
    if not data:
        error = f"filtered child died (wait status {status:#x}) before reporting"
    return ProbeResult(
        refused=data.get("refused", {}),
        unfiltered=unfiltered,
        ordinary=data.get("ordinary", {}),
        unknown=built.unknown,
        error=error,
    )
