"""``capture auto``: every TLS stack a process uses, in one session.

A process can map several TLS libraries: node with its static OpenSSL and a
GnuTLS plug-in, a Go binary with cgo OpenSSL, a Python service with ``ssl`` and a
library loaded through ``ctypes``. ``auto`` asks every TLS module of the registry
whether it applies to each authorized process (:meth:`CaptureModule.applies`: its
``applies_to``, or whether it finds its library) and captures with all that do.
A module added later (``gotls``) is asked too: nothing here names one.

The token must grant ``auto`` *and* every module it chooses: the gate refuses,
naming the first one missing, before anything is loaded or attached. ``request
--module auto`` records those modules in the request, so the authorizer sees (and
may strike) each library that will be hooked.
"""

from __future__ import annotations

from typing import Any

from ecap.capture.events import CONNECTION, DATA, HANDSHAKE
from ecap.capture.modules.interface import CaptureModule, HookTarget


def select(pid: int) -> tuple[str, ...]:
    """The TLS modules that apply to process ``pid``, in name order."""
    from ecap import procfs
    from ecap.capture import modules
    from ecap.errors import UsageError

    chosen = tuple(m.name for m in modules.registry().values() if m.applies(pid))
    if not chosen:
        tls = [m.name for m in modules.registry().values() if m.classification == "tls"
               and m.select is None]  # fmt: skip
        raise UsageError(
            f"process {pid} ({procfs.comm(pid)!r}) uses no TLS library that ecap captures "
            f"(looked for: {', '.join(tls)})",
            hint="check /proc/PID/maps; a library loaded later is not seen at the start",
        )
    return chosen


def _resolve(pid: int, options: dict[str, Any]) -> HookTarget:
    from ecap.errors import UsageError

    raise UsageError(
        "the auto module captures through the modules it selects",
        hint="resolve each of select(pid) instead",
    )


MODULE = CaptureModule(
    name="auto",
    summary="every TLS stack each process uses (the modules above that apply), in one session",
    classification="tls",
    bpf_object="",
    hooks=(),
    emits=frozenset({DATA, HANDSHAKE, CONNECTION}),
    identity="the selected module's connection object",
    resolve=_resolve,
    select=select,
)
