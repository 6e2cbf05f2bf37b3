"""The severity rules: capability and reach first, the function's name second.

Pure functions over a hook's *reach* (:func:`ecap.detect.classify.reach`) and its
program's *capabilities* (:mod:`ecap.detect.capabilities`), so the whole rule
table is tested without a kernel and documented in one place
(``detect/SCHEMA.md``, "Severity rules"):

=====================================================  ===========
unauthorized hook                                       severity
=====================================================  ===========
program can write user memory or override returns       critical (tampering)
sniffer (reads user memory + channel to user space) at
  a plaintext function, or anywhere in a TLS/crypto lib   critical
  libc I/O functions, data-carrying syscall tracepoints   high (plaintext only
                                                           where not encrypted)
  any other uprobe                                        high
  any other kprobe                                        medium
program can send signals                                high
not a sniffer (counts, filters) at a plaintext reach    medium
not a sniffer elsewhere                                 low
capabilities unknown (degraded scan, hidden addresses)  by name, as before:
  plaintext function critical, crypto library high,
  other uprobe / I/O / syscall data medium, kprobe low
tracefs probe (no BPF program): enabled on a plaintext  critical / medium when
  function, else by reach                                disabled
hooked path now a symlink, missing, unreadable, or
  another inode than the kernel holds                   at least high
=====================================================  ===========

Tracepoints with no data reach and no tampering produce no finding (a capture's
``sys_enter_connect`` helper is inventory, not news).
"""

from __future__ import annotations

from dataclasses import dataclass

from ecap.detect import capabilities as capmod
from ecap.detect.classify import (
    CRYPTO,
    FULL_PLAINTEXT_REACH,
    PARTIAL_PLAINTEXT_REACH,
    PLAINTEXT_CLASSES,
)
from ecap.detect.document import RANK

SNIFFER = "sniffer"
TAMPERING = "tampering"
SIGNALS = "signals"
COUNTER = "counter"
UNKNOWN = "unknown"
LEGACY = "tracefs"


def worse(a: str, b: str) -> str:
    return a if RANK[a] >= RANK[b] else b


@dataclass(frozen=True)
class HookVerdict:
    """How bad one hook is, and what it is."""

    severity: str
    kind: str
    """``sniffer``, ``tampering``, ``signals``, ``counter``, ``unknown`` (capabilities
    not known: judged by name) or ``tracefs`` (no BPF program)."""
    plaintext: bool
    """Plaintext passes where it hooks and the program can (or may) take it."""
    report: bool = True
    """False: inventory only (tracepoints with no data reach)."""


def judge_hook(
    *,
    reach: str,
    probe_type: str,
    caps: tuple[str, ...] | None,
    has_program: bool,
    enabled: bool = True,
    path_problem: bool = False,
) -> HookVerdict:
    """One unauthorized hook's severity (see the module table)."""
    verdict = _judge(reach, probe_type, caps, has_program, enabled)
    if path_problem and verdict.report:
        return HookVerdict(worse(verdict.severity, "high"), verdict.kind, verdict.plaintext)
    return verdict


def _judge(
    reach: str, probe_type: str, caps: tuple[str, ...] | None, has_program: bool, enabled: bool
) -> HookVerdict:
    tracepoint = probe_type in ("tracepoint", "raw_tracepoint")
    kprobe = probe_type in ("kprobe", "kretprobe")
    data_reach = reach in FULL_PLAINTEXT_REACH or reach in PARTIAL_PLAINTEXT_REACH
    if not has_program:  # a tracefs event: ftrace records what its fetch-args say
        if reach in PLAINTEXT_CLASSES:
            return HookVerdict("critical" if enabled else "medium", LEGACY, enabled)
        if reach == CRYPTO:
            return HookVerdict("high" if enabled else "medium", LEGACY, enabled)
        return HookVerdict("low" if kprobe else "medium", LEGACY, False)
    if capmod.tampers(caps):
        return HookVerdict("critical", TAMPERING, data_reach)
    sniffer = capmod.is_sniffer(caps)
    if sniffer is None:
        if tracepoint and not data_reach:
            return HookVerdict("info", UNKNOWN, False, report=False)
        if reach in PLAINTEXT_CLASSES:
            return HookVerdict("critical", UNKNOWN, True)
        if reach == CRYPTO:
            return HookVerdict("high", UNKNOWN, True)
        if data_reach:
            return HookVerdict("medium", UNKNOWN, True)
        return HookVerdict("low" if kprobe else "medium", UNKNOWN, False)
    if sniffer:
        if reach in FULL_PLAINTEXT_REACH:
            return HookVerdict("critical", SNIFFER, True)
        if reach in PARTIAL_PLAINTEXT_REACH:
            return HookVerdict("high", SNIFFER, True)
        if tracepoint:
            return HookVerdict("info", SNIFFER, False, report=False)
        return HookVerdict("medium" if kprobe else "high", SNIFFER, False)
    if capmod.SEND_SIGNAL in (caps or ()):
        return HookVerdict("high", SIGNALS, False)
    if tracepoint:
        return HookVerdict("info", COUNTER, False, report=False)
    if reach in FULL_PLAINTEXT_REACH:
        return HookVerdict("medium", COUNTER, False)
    return HookVerdict("low", COUNTER, False)


def dormant_program(caps: tuple[str, ...] | None) -> tuple[str, str]:
    """(severity, kind) of a program nothing attaches that a pin keeps loaded."""
    if capmod.tampers(caps):
        return "critical", TAMPERING
    if capmod.is_sniffer(caps) or capmod.is_packet_tap(caps):
        return "high", SNIFFER
    if caps is None:
        return "medium", UNKNOWN
    return "low", COUNTER


def unheld_program(caps: tuple[str, ...] | None) -> str:
    """A loaded tracing program with no holder, pin or link the scan can see."""
    return "critical" if capmod.tampers(caps) else "high"
