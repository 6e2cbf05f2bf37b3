"""Reading the host's audit rules: what is loaded, and what the installed set excludes.

``check`` needs the live rule list (``auditctl -l``) to say whether BPF syscalls and
tracing interfaces are audited; the generator needs the installed rule files to warn
when they drop tracefs/debugfs events (auditd's sample ``23-ignore-filesystems.rules``
does exactly that, silently blinding the tracing watches).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ecap import host

RULES_DIRS = (Path("/etc/audit/rules.d"),)
RULES_FILES = (Path("/etc/audit/audit.rules"),)
_EXCLUDE_FS = re.compile(r"-F\s+fstype=(tracefs|debugfs)\b")


@dataclass(frozen=True)
class Exclusion:
    """An installed or loaded rule that suppresses events on a tracing filesystem."""

    where: str
    """File path (and line number) or ``loaded`` for the kernel's live list."""
    fstype: str
    rule: str


def live_rules() -> list[str] | None:
    """Rules loaded in the kernel, one per line as ``auditctl -l`` prints them.

    None when auditctl is missing or the audit subsystem cannot be queried, so that
    callers report "unknown" instead of "no rules".
    """
    proc = host.query_tool("auditctl", "-l")
    if proc is None or proc.returncode != 0:
        return None
    lines = [ln.strip() for ln in proc.stdout.splitlines() if ln.strip()]
    return [] if lines == ["No rules"] else lines


def enabled() -> bool | None:
    """Whether the kernel audit subsystem is enabled (``auditctl -s``); None if unknown.

    Loaded rules produce no syscall records while ``enabled`` is 0, so a rule set
    alone does not make the audit controls pass.
    """
    proc = host.query_tool("auditctl", "-s")
    if proc is None:
        return None
    m = re.search(r"^enabled\s+(\d+)", proc.stdout, re.M)
    return None if m is None else m.group(1) != "0"


def installed_rule_lines() -> list[tuple[str, str]]:
    """(``file:line``, rule) for every rule in the files auditd loads at boot."""
    files: list[Path] = []
    for d in RULES_DIRS:
        if d.is_dir():
            files.extend(sorted(d.glob("*.rules")))
    files.extend(p for p in RULES_FILES if p.is_file())
    out = []
    for f in files:
        try:
            text = f.read_text(errors="replace")
        except OSError:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if line and not line.startswith("#"):
                out.append((f"{f}:{n}", line))
    return out


def tracing_exclusions(live: list[str] | None = None) -> list[Exclusion]:
    """Rules (installed or loaded) that exclude tracefs/debugfs events."""
    found = []
    for where, rule in installed_rule_lines():
        m = _EXCLUDE_FS.search(rule)
        if m and "never" in rule:
            found.append(Exclusion(where, m.group(1), rule))
    for rule in live if live is not None else (live_rules() or []):
        m = _EXCLUDE_FS.search(rule)
        if m and "never" in rule:
            found.append(Exclusion("loaded", m.group(1), rule))
    return found


def audits_syscall(rules: list[str], name: str, arch: str) -> bool:
    """Whether some loaded ``always,exit`` rule for ``arch`` (b64/b32) covers ``name``."""
    for rule in rules:
        if not rule.startswith("-a always,exit") or f"arch={arch}" not in rule:
            continue
        m = re.search(r"-S\s+(\S+)", rule)
        if m and (name in m.group(1).split(",") or m.group(1) == "all"):
            return True
        # auditctl -l prints several -S options for multi-syscall rules
        if name in re.findall(r"-S\s+(\S+)", rule):
            return True
    return False


def watches_path(rules: list[str], path: str) -> bool:
    """Whether a loaded watch (``-w PATH``) or ``dir=`` rule covers ``path``."""
    for rule in rules:
        m = re.match(r"-w\s+(\S+)", rule)
        if m and (path == m.group(1) or path.startswith(m.group(1).rstrip("/") + "/")):
            return True
        m = re.search(r"-F\s+(?:dir|path)=(\S+)", rule)
        if m and (path == m.group(1) or path.startswith(m.group(1).rstrip("/") + "/")):
            return True
    return False
