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
from ecap.errors import UsageError

SCHEMA = "ecap.request/1"


def known_modules() -> tuple[str, ...]:
    """Capture modules this build can run (the module registry); tokens may name only these."""
    from ecap.capture import modules as registry

    return registry.names()


def known_modes() -> tuple[str, ...]:
    """Output modes this build can write (one per output sink)."""
    from ecap.capture import sinks

    return sinks.modes()


def describe_target(pid: int) -> dict[str, Any]:
    """PID, start time, exe path and SHA-256 of one live process."""
    try:
        return {
            "pid": pid,
            "start_time": procfs.start_time(pid),
            "exe": procfs.exe(pid),
            "sha256": procfs.exe_sha256(pid),
            "comm": procfs.comm(pid),
        }
    except procfs.ProcessGone as exc:
        raise UsageError(f"PID {pid} is not running", hint="check the PID with ps") from exc


def validate_choices(values: list[str], allowed: tuple[str, ...], what: str) -> list[str]:
    for value in values:
        if value not in allowed:
            raise UsageError(f"unknown {what} {value!r}", hint=f"choose from {', '.join(allowed)}")
    return sorted(set(values))


def build(
    pids: list[int], *, modules: list[str], modes: list[str] | None, reason: str
) -> dict[str, Any]:
    """A request document for live PIDs on this host."""
    if not pids:
        raise UsageError("at least one --pid is required")
    if not reason.strip():
        raise UsageError("--reason must say why the capture is needed")
    return {
        "schema": SCHEMA,
        "created_at": int(time.time()),
        "host": {"hostname": host.hostname(), "machine_id": host.machine_id()},
        "targets": [describe_target(pid) for pid in dict.fromkeys(pids)],
        "modules": validate_choices(modules, known_modules(), "module"),
        "modes": validate_choices(modes or list(known_modes()), known_modes(), "output mode"),
        "reason": reason.strip(),
    }


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a request file (it comes from another host: check it)."""
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as exc:
        raise UsageError(f"cannot read request {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise UsageError(f"request {path} is not JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise UsageError(f"{path} is not an ecap request (schema {SCHEMA})")
    try:
        hostinfo = doc["host"]
        if not isinstance(hostinfo.get("hostname"), str) or not hostinfo.get("hostname"):
            raise KeyError("host.hostname")
        targets = doc["targets"]
        if not targets:
            raise KeyError("targets")
        for t in targets:
            if not isinstance(t["pid"], int) or not isinstance(t["start_time"], int):
                raise KeyError("targets[].pid/start_time")
        validate_choices(doc["modules"], known_modules(), "module")
        validate_choices(doc["modes"], known_modes(), "output mode")
    except (KeyError, TypeError, AttributeError) as exc:
        raise UsageError(f"request {path} is missing or has an invalid field: {exc}") from exc
    return doc
