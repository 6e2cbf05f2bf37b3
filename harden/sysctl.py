"""The ``/etc/sysctl.d/`` file: one commented line per BPF-relevant sysctl.

Each setting says what it blocks and what it costs, so an administrator reading
the file on a host years later knows why it is there. Keys this kernel does not
have are left out with a note rather than written: ``sysctl --system`` would log
an error for each at every boot, and a reader might believe they took effect.
"""

from __future__ import annotations

from .artifact import Artifact, Context
from .controls import SYSCTL_FILE, Control, sysctl_controls


def _status(ctx: Context, control: Control) -> str:
    """``absent``, ``unknown``, ``satisfied`` or ``needed`` for this host."""
    key = control.sysctl or ""
    if key not in ctx.posture.sysctl:
        return "unknown"
    current = ctx.posture.sysctl[key]
    if current is None:
        return "absent"
    if current in control.settings[ctx.profile].accepted:
        return "satisfied"
    return "needed"


def render(ctx: Context) -> Artifact:
    """The sysctl.d file for ``ctx.profile`` (tailored to the host when asked)."""
    lines = [
        f"# ecap-harden sysctl profile '{ctx.profile}' — install as /etc/sysctl.d/"
        "99-ecap-hardening.conf",
        "# and apply with 'sysctl --system'. These stop UNPRIVILEGED users only; root in a",
        "# container needs seccomp/AppArmor/capability drops (see the other files).",
        f"# Generated for {ctx.posture.hostname} (kernel {ctx.posture.kernel}).",
        "",
    ]
    notes: list[str] = []
    implemented: list[str] = []
    for control in sysctl_controls():
        key = control.sysctl or ""
        if ctx.profile not in control.settings:
            lines.append(f"# {key}: not part of the '{ctx.profile}' profile (see 'strict').")
            lines.append("")
            continue
        setting = control.settings[ctx.profile]
        status = _status(ctx, control)
        if status == "absent":
            note = f"{key}: absent on this kernel ({ctx.posture.kernel}); left out"
            notes.append(note)
            lines += [f"# {note}.", ""]
            continue
        if status == "satisfied" and ctx.tailored:
            current = ctx.posture.sysctl[key]
            note = f"{key}: already {current} on the host (accepted); not needed"
            notes.append(note)
            lines += [f"# {note}.", ""]
            continue
        lines.append(f"# Blocks: {control.blocks}")
        lines.append(f"# Side effect: {control.side_effects}")
        if control.locks(ctx.profile):
            lines.append(f"# ONE-WAY: {control.one_way_note}")
        elif control.one_way:
            lines.append(f"# Note: {control.one_way_note}")
        lines.append(f"# Accepted by baselines: {', '.join(setting.accepted)} [{control.id}]")
        lines.append(f"{key} = {setting.recommended}")
        lines.append("")
        implemented.append(control.id)
    return Artifact(
        path=SYSCTL_FILE,
        content="\n".join(lines).rstrip() + "\n",
        kind="sysctl",
        controls=tuple(implemented),
        notes=tuple(notes),
    )


def parse(text: str) -> dict[str, str]:
    """Key → value of a sysctl.d file (comments and blank lines ignored)."""
    out = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, value = line.lstrip("-").partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out
