"""The capture-module registry: every module in this package that defines ``MODULE``.

Adding a module is adding a file here (and its BPF source under ``bpf/``); the
``capture MODULE`` choices, the token's module vocabulary and the detector's list
of plaintext functions follow. Module files import nothing heavy at import time,
so the detector and the authorization code can read the declarations cheaply.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil

from ecap.capture.modules.interface import CaptureModule
from ecap.errors import UsageError

Plan = list[tuple[int, CaptureModule]]
"""(pid, module) pairs a session captures with, in order."""


@functools.cache
def registry() -> dict[str, CaptureModule]:
    """Module name → module, in name order."""
    found: dict[str, CaptureModule] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name == "interface" or info.name.startswith("_"):
            continue
        module = getattr(importlib.import_module(f"{__name__}.{info.name}"), "MODULE", None)
        if isinstance(module, CaptureModule):
            found[module.name] = module
    return dict(sorted(found.items()))


def names() -> tuple[str, ...]:
    return tuple(registry())


def get(name: str) -> CaptureModule:
    try:
        return registry()[name]
    except KeyError:
        raise UsageError(
            f"unknown capture module {name!r}", hint=f"available: {', '.join(names())}"
        ) from None


def plaintext_functions() -> dict[str, str]:
    """Function name → classification (``tls``...) for every module's plaintext hooks."""
    out: dict[str, str] = {}
    for module in registry().values():
        for function in module.plaintext_functions():
            out.setdefault(function, module.classification)
    return out


def plan(name: str, pids: list[int]) -> Plan:
    """What a capture of ``pids`` with module ``name`` hooks: each PID with that
    module, or, for a module that captures through others (``auto``), with each one
    it selects for that PID. Reads only /proc and the files the processes map."""
    from ecap import procfs

    module = get(name)
    if module.select is None:
        return [(pid, module) for pid in pids]
    out: Plan = []
    for pid in pids:
        try:
            chosen = module.select(pid)
        except procfs.ProcessGone as exc:
            raise UsageError(
                f"process {pid} exited before the capture started",
                hint="request a new token for the running process",
            ) from exc
        out += [(pid, get(n)) for n in chosen]
    return out


def plan_modules(plan: Plan) -> list[CaptureModule]:
    """The distinct modules of a plan, in first-use order."""
    return list({m.name: m for _pid, m in plan}.values())


def bpf_objects(name: str) -> tuple[str, ...]:
    """The BPF objects a capture with module ``name`` may load (for a selecting
    module: those of every module it may select)."""
    module = get(name)
    if module.select is None:
        return (module.bpf_object,)
    return tuple(sorted({m.bpf_object for m in registry().values()
                         if m.select is None and m.classification == module.classification}))  # fmt: skip
