"""Capture requests: the facts only the target host knows, ready to be signed.

``ecap-audit request`` runs on the host where the processes live and records, for
each PID, its start time, executable path and SHA-256, plus the host name and
machine-id. The authorizer signs exactly these facts (``authorize``) without ever
touching the host, so a token can only ever match those very processes.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from ecap import host, procfs
from ecap.authz import claims
from ecap.errors import UsageError
from ecap.text import printable

SCHEMA = "ecap.request/1"


def known_modules() -> tuple[str, ...]:
    """Capture modules this build can run (the module registry); tokens may name only these."""
    from ecap.capture import modules as registry

    return registry.names()


def known_modes() -> tuple[str, ...]:
    """Output modes this build can write (one per output sink)."""
    from ecap.capture import sinks

    return sinks.modes()


def default_modes() -> tuple[str, ...]:
    """What a request asks for when it names no mode: every mode but those that must
    be asked for by name (keylog, pcapng: keys decrypt a connection for anyone who
    recorded it)."""
    from ecap.capture import sinks

    return sinks.default_modes()


def describe_target(pid: int) -> dict[str, Any]:
    """PID, start time, executable (path, device, inode, SHA-256) of one live process."""
    try:
        identity = procfs.exe_identity(pid)
        return {
            "pid": pid,
            "start_time": procfs.start_time(pid),
            "exe": procfs.exe(pid),
            "sha256": procfs.exe_sha256(pid),
            "exe_dev": identity[0] if identity else None,
            "exe_ino": identity[1] if identity else None,
            "comm": procfs.comm(pid),
        }
    except procfs.ProcessGone as exc:
        raise UsageError(f"PID {pid} is not running", hint="check the PID with ps") from exc


def validate_choices(values: list[str], allowed: tuple[str, ...], what: str) -> list[str]:
    for value in values:
        if value not in allowed:
            raise UsageError(
                f"unknown {what} {printable(str(value))!r}",
                hint=f"choose from {', '.join(allowed)}",
            )
    return sorted(set(values))


def with_selected(modules: list[str], pids: list[int]) -> list[str]:
    """``modules`` and, for a module that captures through others (``auto``), the
    ones it selects for these processes now: the request names each, so the
    authorizer sees — and may strike — every library that will be hooked."""
    from ecap.capture import modules as registry

    out = list(modules)
    for name in modules:
        if registry.get(name).select is not None:
            out += [m.name for m in registry.plan_modules(registry.plan(name, list(pids)))]
    return sorted(set(out))


def build(
    pids: list[int], *, modules: list[str], modes: list[str] | None, reason: str,
    descendants: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """A request document for live PIDs on this host (``descendants``: ask that the
    processes they fork be covered too)."""
    if not pids:
        raise UsageError("at least one --pid is required")
    if not reason.strip():
        raise UsageError("--reason must say why the capture is needed")
    doc = {
        "schema": SCHEMA,
        "created_at": int(time.time()),
        "host": {"hostname": host.hostname(), "machine_id": host.machine_id()},
        "targets": [describe_target(pid) for pid in dict.fromkeys(pids)],
        "modules": with_selected(validate_choices(modules, known_modules(), "module"), pids),
        "modes": validate_choices(modes or list(default_modes()), known_modes(), "output mode"),
        "reason": reason.strip(),
        **({"descendants": True} if descendants else {}),
    }
    return validate(doc, "the request for this host")


def validate(doc: Any, source: str) -> dict[str, Any]:
    """Check every field's shape (see :mod:`ecap.authz.claims`); exit 2 naming the field."""
    try:
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
            raise claims.ClaimError(f"it is not an ecap request (schema {SCHEMA})")
        claims.host(doc.get("host"), "host")
        claims.targets(doc.get("targets"), "targets")
        for i, t in enumerate(doc["targets"]):
            claims.comm(t.get("comm"), f"targets[{i}].comm")
        claims.names(doc.get("modules"), "modules")
        claims.names(doc.get("modes"), "modes")
        claims.text(doc.get("reason"), "reason", limit=claims.MAX_REASON)
        claims.flag(doc.get("descendants", False), "descendants")
    except claims.ClaimError as exc:
        raise UsageError(
            f"{source}: {exc}", hint="make the request with 'ecap-audit request' on the target host"
        ) from exc
    validate_choices(doc["modules"], known_modules(), "module")
    validate_choices(doc["modes"], known_modes(), "output mode")
    return doc


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a request file (it comes from another host: check it)."""
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as exc:
        raise UsageError(f"cannot read request {path}: {exc.strerror}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"request {path} is not JSON ({exc})") from exc
    return validate(doc, f"request {path}")
