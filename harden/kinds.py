"""One policy kind at a time: what ``ecap-harden sysctl|apparmor|...`` prints.

``generate`` writes every kind into a directory; the single-kind commands (and the
report's remediation snippets) want the files of one kind, or one stream that holds
them all (a multi-document YAML for Kubernetes, one text for Docker).
"""

from __future__ import annotations

from ecap.errors import UsageError

from . import apparmor, auditd, containers, kubernetes, seccomp, selinux, sysctl
from .artifact import Artifact, Context

KINDS = ("sysctl", "apparmor", "selinux", "seccomp", "docker", "kubernetes", "auditd")
MULTI_FILE = ("apparmor", "selinux", "docker", "kubernetes")
APPARMOR_PARTS = ("abstraction", "ecap-audit", "container", "app")


def artifacts(kind: str, ctx: Context, *, part: str | None = None) -> list[Artifact]:
    """The files of ``kind``; for AppArmor, only ``part`` when given (``app`` needs ctx.apps)."""
    if kind == "sysctl":
        return [sysctl.render(ctx)]
    if kind == "seccomp":
        return [seccomp.render(ctx)]
    if kind == "auditd":
        return [auditd.render(ctx)]
    if kind == "docker":
        return containers.render(ctx)
    if kind == "kubernetes":
        return kubernetes.render(ctx)
    if kind == "selinux":
        return selinux.render(ctx)
    if kind != "apparmor":
        raise UsageError(f"unknown policy kind {kind!r}", hint=f"use one of {', '.join(KINDS)}")
    every = apparmor.render(ctx)
    if part is None:
        return every
    if part == "app" and not ctx.apps:
        raise UsageError("--part app needs --app EXE", hint="e.g. --app /usr/bin/node")
    return [every[APPARMOR_PARTS.index(part)]]


def as_text(kind: str, arts: list[Artifact]) -> str:
    """All files of one kind as one stream (stdout or a single --out FILE)."""
    if kind == "kubernetes":
        return "---\n".join(a.content for a in arts)
    if len(arts) == 1:
        return arts[0].content
    return "\n".join(
        a.content if a.kind == "markdown" else f"# ---- {a.path}\n{a.content}" for a in arts
    )
