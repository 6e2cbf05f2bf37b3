"""The output-sink registry: every module in this package that defines ``SINK``.

Adding an output mode is adding a file here (see ``interface.py``); the CLI's
``--format`` choices, the token vocabulary and the module×mode check follow.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil

from ecap.capture.sinks.interface import Sink
from ecap.errors import UsageError


@functools.cache
def registry() -> dict[str, Sink]:
    """Sink name → sink, in name order."""
    found: dict[str, Sink] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name == "interface":
            continue
        sink = getattr(importlib.import_module(f"{__name__}.{info.name}"), "SINK", None)
        if isinstance(sink, Sink):
            found[sink.name] = sink
    return dict(sorted(found.items()))


def names() -> tuple[str, ...]:
    return tuple(registry())


def modes() -> tuple[str, ...]:
    """Token output modes, one per sink (what ``authorize --mode`` may grant)."""
    return tuple(sorted({s.token_mode for s in registry().values()}))


def get(name: str) -> Sink:
    try:
        return registry()[name]
    except KeyError:
        raise UsageError(
            f"unknown output format {name!r}", hint=f"available: {', '.join(names())}"
        ) from None
