"""What a generator returns: files, the controls they implement, and notes.

Every generator (sysctl, AppArmor, seccomp, containers, Kubernetes, auditd) takes a
:class:`Context` and returns :class:`Artifact` objects, so ``generate`` writes them,
the single-artifact subcommands print them, and the plan embeds them inline, all
without knowing which generator made what.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .posture import Posture


@dataclass(frozen=True)
class Context:
    """The inputs every generator shares."""

    profile: str
    """``balanced`` or ``strict``."""
    posture: Posture
    tailored: bool = False
    """True with ``--from SCAN.json``: recommend only what the host lacks."""
    apps: tuple[str, ...] = ()
    """Executables that get a per-application AppArmor profile."""
    selinux_allow: tuple[str, ...] = ()
    """Domains the SELinux assertion module tolerates besides ecap's defaults."""


@dataclass(frozen=True)
class Artifact:
    """One generated file."""

    path: str
    """Relative to the output directory, e.g. ``sysctl/99-ecap-hardening.conf``."""
    content: str
    kind: str
    """sysctl, apparmor, apparmor-abstraction, selinux, seccomp, docker, compose, markdown,
    kubernetes, kyverno, auditd, text: tells ``validate`` which checker to run."""
    controls: tuple[str, ...]
    """Control ids this file implements."""
    notes: tuple[str, ...] = field(default=())
    """Things left out or to watch for (absent keys, rule-set exclusions...)."""
