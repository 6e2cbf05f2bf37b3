"""Remediation for a finding: the control's catalogue entry and its exact snippet.

Findings name hardening controls by id (:mod:`ecap.remediation`); ``ecap-harden``
owns what each control is and the files that implement it. The report shows the
snippet ecap-harden itself generates — for a sysctl the very block of its sysctl
file, for anything else the generated file(s) of that control — so what the
auditor copies is what ``ecap-harden generate --from SCAN.json`` writes. Generation
runs once per report, for the posture recorded in the scan (keys the scanned
kernel lacks are left out, exactly as ecap-harden does).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

PROFILE = "balanced"
MAX_SNIPPET_CHARS = 20_000
"""A longer generated file is cut in the report (the full file comes from ecap-harden)."""

_COMMANDS = {
    "sysctl": "ecap-harden sysctl --out /etc/sysctl.d/99-ecap-hardening.conf && sysctl --system",
    "auditd": "ecap-harden auditd --out /etc/audit/rules.d/60-ecap-bpf.rules && augenrules --load",
    "apparmor": "ecap-harden apparmor --out DIR",
    "selinux": "ecap-harden selinux --out DIR/ (then make -f /usr/share/selinux/devel/Makefile)",
    "seccomp": "ecap-harden seccomp --out ecap-seccomp.json",
    "container": "ecap-harden docker --out DIR",
    "kubernetes": "ecap-harden kubernetes --out DIR",
}


class Remedies:
    """Looks up controls and their generated snippets; caches one generation."""

    def __init__(
        self, *, profile: str = PROFILE, snippets: bool = True, scan: dict[str, Any] | None = None
    ) -> None:
        self.profile = profile
        self.snippets = snippets
        self.scan = scan
        self._artifacts: list[Any] | None = None
        self._catalogue: dict[str, Any] | None = None

    def _controls(self) -> dict[str, Any]:
        if self._catalogue is None:
            try:
                from ecap.harden import controls

                self._catalogue = dict(controls.BY_ID)
            except ImportError:  # harden not installed: ids and titles only
                self._catalogue = {}
        return self._catalogue

    def _generated(self) -> list[Any]:
        if self._artifacts is None:
            self._artifacts = _generate_all(self.profile, self.scan)
        return self._artifacts

    def describe(self, control_id: str) -> dict[str, Any]:
        """What the report shows for one control id (unknown ids are kept, flagged)."""
        control = self._controls().get(control_id)
        if control is None:
            return {
                "id": control_id,
                "title": "unknown control",
                "known": False,
                "snippets": [],
                "command": None,
            }
        out: dict[str, Any] = {
            "id": control.id,
            "title": control.title,
            "known": True,
            "kind": control.kind,
            "blocks": control.blocks,
            "stops": control.stops.as_dict(),
            "side_effects": control.side_effects,
            "one_way": control.one_way,
            "one_way_note": control.one_way_note,
            "command": _COMMANDS.get(control.kind)
            or f"ecap-harden generate --profile {self.profile} --out DIR",
            "snippets": [],
        }
        if self.snippets:
            out["snippets"] = self._snippets(control)
        return out

    def _snippets(self, control: Any) -> list[dict[str, str]]:
        found = []
        for art in self._generated():
            if control.id not in art.controls:
                continue
            text = art.content
            if control.kind == "sysctl":
                text = _sysctl_block(text, control.id) or text
            if len(text) > MAX_SNIPPET_CHARS:
                text = (
                    text[:MAX_SNIPPET_CHARS]
                    + "\n… (cut; generate the full file with ecap-harden)\n"
                )
            found.append({"path": art.path, "text": text})
        return found


def _sysctl_block(content: str, control_id: str) -> str | None:
    """The paragraph of ecap-harden's sysctl file that implements ``control_id``."""
    for block in content.split("\n\n"):
        if f"[{control_id}]" in block:
            return block.strip() + "\n"
    return None


def _posture(scan: dict[str, Any] | None) -> Any:
    """ecap-harden's view of the scanned host, read the way ``generate --from`` reads it.

    ``posture.from_scan`` takes a file, so the document is handed to it through a
    private temporary file rather than re-implementing its parsing here.
    """
    from ecap.harden import posture

    if scan is None:
        return posture.Posture(source="report", hostname="HOST", kernel="KERNEL", sysctl={})
    with tempfile.TemporaryDirectory(prefix="ecap-report-") as tmp:
        path = Path(tmp) / "scan.json"
        path.write_text(json.dumps(scan, ensure_ascii=True))
        return posture.from_scan(path)


def _generate_all(profile: str, scan: dict[str, Any] | None) -> list[Any]:
    """Every artifact ecap-harden generates for ``profile`` (empty if it cannot)."""
    try:
        from ecap.harden import generate
        from ecap.harden.artifact import Context
    except ImportError:
        return []
    try:
        return list(generate.artifacts(Context(profile=profile, posture=_posture(scan))))
    except Exception:  # a broken generator shows ids and titles, not a failed report
        return []
