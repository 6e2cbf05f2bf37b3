"""host posture (+ optional scan) → controls → generated files → plan.

Without a scan, ``generate`` writes the whole profile for this host (keys the
kernel lacks left out with a note). With ``--from SCAN.json`` it tailors: a control
is recommended only when the scanned host does not already meet it (or a finding
asks for it); what is unknown from the scan is recommended, never assumed. ecap's
own authorized-capture exception (the ``ecap-audit`` AppArmor profile, the
``ecap_audit`` SELinux module, the Kyverno exclude) is always kept, so hardening
never locks out the security team.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ecap.errors import UsageError
from ecap.fsutil import write_private_atomic
from ecap.text import json_safe_str, printable

from . import apparmor, auditd, containers, guides, kubernetes, seccomp, selinux, sysctl
from .artifact import Artifact, Context
from .check import Result, evaluate
from .controls import AA_SELF, CATALOGUE, PROFILES, SE_MODULE_FILES

PLAN_SCHEMA = "ecap.harden-plan/1"
PLAN_FILE = "plan.json"
KEPT_ALWAYS = frozenset({
    AA_SELF, *SE_MODULE_FILES, "kubernetes/kyverno-clusterpolicy.yaml",
    "kubernetes/capture-pod.yaml",
})  # fmt: skip


@dataclass(frozen=True)
class Generated:
    """Everything ``generate`` produced, before or after writing."""

    context: Context
    artifacts: tuple[Artifact, ...]
    results: tuple[Result, ...]
    recommended: frozenset[str]
    plan: dict[str, Any]


def artifacts(ctx: Context, syntax: apparmor.Syntax | None = None) -> list[Artifact]:
    """Every file of the profile for this context (before tailoring)."""
    return [
        sysctl.render(ctx),
        *apparmor.render(ctx, syntax),
        *selinux.render(ctx),
        seccomp.render(ctx),
        *containers.render(ctx),
        *kubernetes.render(ctx),
        auditd.render(ctx),
        guides.lockdown(ctx),
        guides.mounts(ctx),
        guides.response(ctx),
    ]


def _recommended(ctx: Context, results: list[Result]) -> frozenset[str]:
    """Control ids the plan recommends (see module docstring)."""
    out = set()
    for r in results:
        if r.status == "not-in-profile" or r.status == "absent":
            continue
        if not ctx.tailored or r.status != "pass" or r.control in ctx.posture.finding_controls:
            out.add(r.control)
    return frozenset(out)


def build(ctx: Context, syntax: apparmor.Syntax | None = None) -> Generated:
    """Decide, render and plan, without touching the file system."""
    if ctx.profile not in PROFILES:
        raise UsageError(
            f"unknown profile {printable(ctx.profile)!r}", hint="use balanced or strict"
        )
    syntax = syntax or apparmor.syntax_for(apparmor.parser_version())
    results = evaluate(ctx.posture, ctx.profile)
    wanted = _recommended(ctx, results)
    kept = []
    for a in artifacts(ctx, syntax):
        if a.path in KEPT_ALWAYS or any(c in wanted for c in a.controls):
            kept.append(a)
    plan = _plan(ctx, syntax, results, wanted, kept)
    return Generated(ctx, tuple(kept), tuple(results), wanted, plan)


def write(gen: Generated, out_dir: Path) -> list[Path]:
    """Write the files and plan.json under ``out_dir`` (0600 files, 0700 directory)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {printable(str(out_dir))} exists and is not a directory")
    stale = _previous_files(out_dir) - {a.path for a in gen.artifacts}
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for rel in sorted(stale):  # files of an earlier plan that this one no longer has
        (out_dir / rel).unlink(missing_ok=True)
    written = []
    for a in gen.artifacts:
        written.append(write_private_atomic(out_dir / a.path, a.content))
    plan_text = json.dumps(gen.plan, indent=2, ensure_ascii=False) + "\n"
    written.append(write_private_atomic(out_dir / PLAN_FILE, plan_text))
    return written


def _previous_files(out_dir: Path) -> set[str]:
    """Files an earlier ``generate`` wrote into ``out_dir`` (per its plan.json).

    A non-empty directory without a plan is refused: mixing policy files into an
    unrelated directory would make ``validate`` judge files ecap did not write.
    """
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return set()
    plan_path = out_dir / PLAN_FILE
    try:
        plan = json.loads(plan_path.read_text())
    except (OSError, ValueError):
        plan = None
    if not isinstance(plan, dict) or plan.get("schema") != PLAN_SCHEMA:
        raise UsageError(
            f"--out {printable(str(out_dir))} is not empty and holds no ecap-harden plan",
            hint="give a new or empty directory, or one an earlier 'generate' wrote",
        )
    out = set()
    for f in plan.get("files") or []:
        rel = str(f.get("path", "")) if isinstance(f, dict) else ""
        # only plain relative paths inside the directory, never '..' or absolute ones
        if rel and not rel.startswith("/") and ".." not in Path(rel).parts:
            out.add(rel)
    return out


def _plan(
    ctx: Context,
    syntax: apparmor.Syntax,
    results: list[Result],
    wanted: frozenset[str],
    kept: list[Artifact],
) -> dict[str, Any]:
    by_control: dict[str, list[str]] = {}
    for a in kept:
        for cid in a.controls:
            by_control.setdefault(cid, []).append(a.path)
    controls = []
    warnings = []
    for c, r in zip(CATALOGUE, results, strict=True):
        setting = c.settings.get(ctx.profile)
        recommended = c.id in wanted
        if recommended and c.locks(ctx.profile):
            warnings.append(f"{c.id}: one-way until reboot — {c.one_way_note}")
        controls.append(
            {
                **c.describe(),
                "locks_in_this_profile": c.locks(ctx.profile),
                "recommended_value": setting.recommended if setting else None,
                "accepted_values": list(setting.accepted) if setting else [],
                "current": _s(r.current),
                "status": r.status,
                "expected": r.expected,
                "detail": _s(r.detail),
                "evidence": [_s(e) for e in r.evidence],
                "recommended": recommended,
                "files": by_control.get(c.id, []),
            }
        )
    notes = [_s(n) for a in kept for n in a.notes]
    warnings += [_s(n) for a in kept for n in a.notes if n.startswith("WARNING")]
    return {
        "schema": PLAN_SCHEMA,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "profile": ctx.profile,
        "tailored": ctx.tailored,
        "source": _s(ctx.posture.source),
        "host": {"hostname": _s(ctx.posture.hostname), "kernel": _s(ctx.posture.kernel)},
        "apparmor_parser": ".".join(map(str, syntax.parser_version))
        if syntax.parser_version
        else None,
        "selinux_policy": _s(ctx.posture.selinux.policy) if ctx.posture.selinux else None,
        "controls": controls,
        "exceptions": [
            {
                "what": "ecap-audit's own least-privilege AppArmor profile (bpf, perfmon, "
                "read-only ptrace) for authorized capture",
                "file": AA_SELF,
            },
            {
                "what": "ecap-audit's own SELinux domain ecap_audit_t (bpf, perfmon, read-only "
                "ptrace, no network) for authorized capture, tolerated by the assertion module",
                "file": SE_MODULE_FILES[0],
            },
            {
                "what": f"Kyverno exclude for ecap-audit pods in namespace "
                f"{kubernetes.CAPTURE_NAMESPACE}",
                "file": "kubernetes/kyverno-clusterpolicy.yaml",
            },
            {
                "what": "the authorized capture pod itself (BPF, PERFMON, SYS_PTRACE, hostPID "
                "under the ecap-audit AppArmor profile)",
                "file": "kubernetes/capture-pod.yaml",
            },
            {
                "what": f"compose service '{containers.CAPTURE_SERVICE}': the only one allowed "
                "capture capabilities and host PIDs",
                "file": "docker/compose.yaml",
            },
        ],
        "warnings": warnings,
        "notes": notes,
        "files": [
            {
                "path": a.path,
                "kind": a.kind,
                "controls": list(a.controls),
                "sha256": hashlib.sha256(a.content.encode()).hexdigest(),
                "notes": [_s(n) for n in a.notes],
                "content": _s(a.content),
            }
            for a in kept
        ],
    }


def _s(value: str | None) -> str | None:
    return None if value is None else json_safe_str(value)
