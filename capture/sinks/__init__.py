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


def every() -> dict[str, Sink]:
    """Every sink by name, variants included (``pcapng-plaintext``)."""
    out = dict(registry())
    for sink in registry().values():
        out.update({variant.name: variant for _flag, variant in sink.variants})
    return out


def flags() -> dict[str, list[str]]:
    """Variant flag → the formats that take it (``plaintext`` → ``[pcapng]``)."""
    out: dict[str, list[str]] = {}
    for sink in registry().values():
        for flag, _variant in sink.variants:
            out.setdefault(flag, []).append(sink.name)
    return out


def modes() -> tuple[str, ...]:
    """Token output modes, one per sink (what ``authorize --mode`` may grant)."""
    return tuple(sorted({s.token_mode for s in every().values()}))


def default_modes() -> tuple[str, ...]:
    """The modes a request asks for when it names none: all but the explicit ones."""
    explicit = {s.token_mode for s in every().values() if s.explicit}
    return tuple(m for m in modes() if m not in explicit)


def get(name: str, chosen_flags: frozenset[str] = frozenset()) -> Sink:
    """The sink for ``--format name`` with these variant flags (exit 2 when a flag
    does not apply to the format)."""
    try:
        sink = registry()[name]
    except KeyError:
        raise UsageError(
            f"unknown output format {name!r}", hint=f"available: {', '.join(names())}"
        ) from None
    variants = dict(sink.variants)
    for flag in sorted(chosen_flags):
        if flag not in variants:
            takers = flags().get(flag, [])
            raise UsageError(
                f"--{flag} does not apply to --format {name}",
                hint=f"use it with --format {' or '.join(takers)}" if takers else "drop it",
            )
    if len(chosen_flags) > 1:
        raise UsageError(f"choose one of {', '.join('--' + f for f in sorted(chosen_flags))}")
    return variants[next(iter(chosen_flags))] if chosen_flags else sink


def by_name(name: str) -> Sink | None:
    """The sink a session header's ``format`` names (variants included), or None."""
    return every().get(name)
