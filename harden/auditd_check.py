"""Validate an auditd rules file with the real tools: ausyscall and auditctl.

``ausyscall`` must resolve every ``-S`` name for the rule's ABI (a typo silently
becomes a rule that never fires on one ABI). ``load_and_remove`` loads each rule
into the running kernel with ``auditctl`` and deletes exactly the rules it added
afterwards, leaving rules that were already there untouched, so the check can run
on a live host.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field

from . import auditrules

# audit's arch names for ausyscall, per machine and ABI
_AUSYSCALL_ARCH = {
    ("x86_64", "b64"): "x86_64",
    ("x86_64", "b32"): "i386",
    ("aarch64", "b64"): "aarch64",
    ("aarch64", "b32"): "arm",
    ("ppc64le", "b64"): "ppc64le",
    ("s390x", "b64"): "s390x",
    ("s390x", "b32"): "s390",
}


def rules(text: str) -> list[str]:
    """The active rule lines of a rules file (comments and blanks dropped)."""
    return [
        ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")
    ]


def syscall_names(rule: str) -> tuple[str | None, list[str]]:
    """(``b64``/``b32``/None, syscall names) named by a rule."""
    m = re.search(r"arch=(b64|b32)", rule)
    names: list[str] = []
    for group in re.findall(r"-S\s+(\S+)", rule):
        names.extend(group.split(","))
    return (m.group(1) if m else None), names


@dataclass(frozen=True)
class Resolution:
    """ausyscall's verdict on one name for one ABI."""

    arch: str
    name: str
    number: int | None
    message: str = ""


def resolve(text: str) -> list[Resolution]:
    """Run ``ausyscall ARCH NAME`` for every syscall of every rule."""
    exe = shutil.which("ausyscall")
    machine = os.uname().machine
    out = []
    for rule in rules(text):
        abi, names = syscall_names(rule)
        arch = _AUSYSCALL_ARCH.get((machine, abi or "b64"), machine)
        for name in names:
            if exe is None:
                out.append(Resolution(arch, name, None, "ausyscall not installed"))
                continue
            proc = subprocess.run([exe, arch, name, "--exact"], capture_output=True, text=True)
            num = proc.stdout.strip().split()[-1] if proc.stdout.strip() else ""
            if proc.returncode == 0 and num.isdigit():
                out.append(Resolution(arch, name, int(num)))
            else:
                msg = (proc.stderr or proc.stdout).strip() or f"exit {proc.returncode}"
                out.append(Resolution(arch, name, None, msg))
    return out


@dataclass(frozen=True)
class LoadResult:
    """What loading the rules into the kernel did."""

    loaded: tuple[str, ...]
    """Rules this run added (and removed again)."""
    preexisting: tuple[str, ...]
    """Rules the kernel already had; accepted, left in place."""
    errors: tuple[tuple[str, str], ...]
    """(rule, auditctl's message) for rules the kernel refused."""
    leftover: tuple[str, ...] = field(default=())
    """Rules this run could not remove again (should be empty)."""
    listed: int = 0
    """How many of the added rules ``auditctl -l`` showed while they were loaded."""

    @property
    def ok(self) -> bool:
        return not self.errors and not self.leftover and self.listed == len(self.loaded)


def normalize(rule: str) -> str:
    """A rule as ``auditctl -l`` prints it (``-k K`` on syscall rules → ``-F key=K``)."""
    text = " ".join(rule.split())
    if text.startswith(("-a ", "-A ")):
        text = re.sub(r" -k (\S+)", r" -F key=\1", text)
        text = "-a " + text[3:]
    return text


def _auditctl(args: list[str]) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("auditctl") or "auditctl"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=30)


def _removal(rule_args: list[str]) -> list[str]:
    """The auditctl arguments that delete the rule added with ``rule_args``."""
    flag, *rest = rule_args
    return [{"-a": "-d", "-A": "-d", "-w": "-W"}[flag], *rest]


def load_and_remove(text: str) -> LoadResult:
    """Load each rule with auditctl, then delete the ones this call added."""
    before = auditrules.live_rules()
    if before is None:
        return LoadResult((), (), (("*", "auditctl missing or the audit subsystem refused -l"),))
    loaded: list[tuple[str, list[str]]] = []
    pre: list[str] = []
    errors: list[tuple[str, str]] = []
    listed = 0
    try:
        for rule in rules(text):
            args = shlex.split(rule)
            if args[0] not in ("-a", "-A", "-w"):
                continue  # control lines (-b, -f, -e) change global state: not ours to set
            proc = _auditctl(args)
            message = (proc.stderr + proc.stdout).strip()
            if proc.returncode == 0:
                loaded.append((rule, args))
            elif "exists" in message.lower():
                pre.append(rule)
            else:
                errors.append((rule, message.splitlines()[-1] if message else "refused"))
        during = {normalize(r) for r in auditrules.live_rules() or []}
        listed = sum(normalize(rule) in during for rule, _ in loaded)
    finally:
        leftover = []
        for rule, args in reversed(loaded):
            if _auditctl(_removal(args)).returncode != 0:
                leftover.append(rule)
    return LoadResult(
        tuple(r for r, _ in loaded), tuple(pre), tuple(errors), tuple(leftover), listed
    )
