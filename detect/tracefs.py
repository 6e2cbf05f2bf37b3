"""Probes created through tracefs: ``uprobe_events`` and ``kprobe_events``.

This is the legacy path (perf ``-x``, bpftrace on old kernels, hand-written
``echo 'p:…' > uprobe_events``), and the only one most public guidance checks.
Each line names the target; whether it is live is in ``events/G/E/enable`` (or a
perf/BPF user holding it, which the fd walk reports separately).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from pathlib import Path

from ecap import host
from ecap.detect.model import Probe

_LINE = re.compile(
    r"^(?P<kind>[pr])(?P<maxact>\d*):(?P<group>[^/\s]+)/(?P<event>\S+)\s+(?P<target>\S+)(?P<args>.*)$"
)
_UPROBE_TARGET = re.compile(r"^(?P<path>.+):(?P<offset>0x[0-9a-fA-F]+|\d+)(?:\((?P<ref>[^)]*)\))?$")


@dataclass(frozen=True)
class TracefsEvent:
    """One parsed line of uprobe_events or kprobe_events."""

    type: str
    group: str
    event: str
    target: str
    offset: int
    args: str


def parse_events(text: str, *, uprobe: bool) -> list[TracefsEvent]:
    """Parse the text of uprobe_events (uprobe=True) or kprobe_events."""
    out = []
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if not m:
            continue
        ret = m["kind"] == "r"
        target, offset = m["target"], 0
        if uprobe:
            t = _UPROBE_TARGET.match(target)
            if t:
                target, offset = t["path"], int(t["offset"], 0)
            ptype = "uretprobe" if ret else "uprobe"
        else:
            sym, plus, off = target.partition("+")
            if plus:
                with contextlib.suppress(ValueError):
                    target, offset = sym, int(off, 0)
            ptype = "kretprobe" if ret else "kprobe"
        out.append(TracefsEvent(ptype, m["group"], m["event"], target, offset, m["args"].strip()))
    return out


def _enabled(root: Path, ev: TracefsEvent) -> bool | None:
    try:
        return (root / "events" / ev.group / ev.event / "enable").read_text().strip() != "0"
    except OSError:
        return None


def list_probes(root: Path | None = None) -> tuple[list[Probe], str | None]:
    """Probes defined in tracefs, and a limitation note when tracefs is unavailable."""
    root = root or host.tracefs_root()
    if root is None:
        return [], "tracefs is not mounted: legacy uprobe_events/kprobe_events not read"
    probes: list[Probe] = []
    for fname, is_uprobe in (("uprobe_events", True), ("kprobe_events", False)):
        try:
            text = (root / fname).read_text(errors="surrogateescape")
        except FileNotFoundError:
            continue
        except OSError as exc:
            return probes, f"cannot read {root / fname}: {exc.strerror}"
        for ev in parse_events(text, uprobe=is_uprobe):
            probes.append(
                Probe(
                    source="tracefs",
                    type=ev.type,
                    target=ev.target,
                    offset=ev.offset,
                    event=f"{ev.group}/{ev.event}",
                    enabled=_enabled(root, ev),
                )
            )
    return probes, None
