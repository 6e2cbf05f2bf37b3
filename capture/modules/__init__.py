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
