"""Printers for ecap-harden, each a JSON/plain pair.

Host-derived strings (values, paths, rule text, tool messages) go through
``ecap.text.printable`` for the terminal and ``json_safe_str`` for JSON, so a hostile
mount point or rule comment cannot drive the analyst's terminal.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, TextIO

from ecap.text import json_safe_str, printable

from .check import Result
from .controls import CATALOGUE
from .validate import Validation

CHECK_SCHEMA = "ecap.harden-check/1"
VALIDATE_SCHEMA = "ecap.harden-validate/1"


def _s(v: str | None) -> str | None:
    return None if v is None else json_safe_str(v)


def catalogue_text() -> str:
    """The controls catalogue as shown by ``--help`` and ``controls``."""
    lines = [
        "controls (stops: U=unprivileged user, C=container root, H=host root;",
        "          Y=yes p=partial -=no; 1w = one-way until reboot):",
    ]
    mark = {"yes": "Y", "partial": "p", "no": "-"}
    for c in CATALOGUE:
        s = c.stops
        stops = f"U{mark[s.unprivileged_user]} C{mark[s.container_root]} H{mark[s.host_root]}"
        lines.append(f"  {c.id:28} {stops}{' 1w' if c.one_way else '   '}  {c.title}")
    return "\n".join(lines)


def controls_json() -> dict[str, Any]:
    return {
        "schema": "ecap.harden-controls/1",
        "controls": [
            {
                **c.describe(),
                "profiles": {
                    p: {"recommended": s.recommended, "accepted": list(s.accepted)}
                    for p, s in c.settings.items()
                },
                "files": list(c.artifacts),
            }
            for c in CATALOGUE
        ],
    }


def controls_plain(out: TextIO) -> None:
    for c in CATALOGUE:
        s = c.stops
        print(f"{c.id} — {c.title}", file=out)
        print(f"  blocks:       {c.blocks}", file=out)
        print(
            f"  stops:        unprivileged user: {s.unprivileged_user}; container root: "
            f"{s.container_root}; host root: {s.host_root}",
            file=out,
        )
        print(f"  side effects: {c.side_effects}", file=out)
        if c.one_way:
            print(f"  one-way:      {c.one_way_note}", file=out)
        for p, st in c.settings.items():
            print(
                f"  {p + ':':13} {c.sysctl} = {st.recommended} "
                f"(accepted: {', '.join(st.accepted)})",
                file=out,
            )
        if c.baselines:
            print(f"  baselines:    {'; '.join(c.baselines)}", file=out)
        print(f"  files:        {', '.join(c.artifacts)}", file=out)


def check_json(results: list[Result], profile: str, hostname: str, out: TextIO) -> None:
    counts = Counter(r.status for r in results)
    doc = {
        "schema": CHECK_SCHEMA,
        "profile": profile,
        "host": _s(hostname),
        "results": [
            {
                "control": r.control,
                "status": r.status,
                "current": _s(r.current),
                "expected": _s(r.expected),
                "detail": _s(r.detail),
                "evidence": [_s(e) for e in r.evidence],
            }
            for r in results
        ],
        "summary": dict(sorted(counts.items())),
    }
    json.dump(doc, out, indent=2, ensure_ascii=False)
    out.write("\n")


def check_plain(results: list[Result], profile: str, hostname: str, out: TextIO) -> None:
    print(f"ecap-harden check — profile {profile} on {printable(hostname)}", file=out)
    for r in results:
        current = "?" if r.current is None else printable(r.current)
        line = f"  {r.status.upper():15} {r.control:28} current: {current}"
        print(line, file=out)
        if r.status != "pass" and r.detail:
            print(f"  {'':15} {'':28} {printable(r.detail)}", file=out)
        for line in r.evidence:
            print(f"  {'':15} {'':28} · {printable(line)}", file=out)
    counts = Counter(r.status for r in results)
    print("summary: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), file=out)


def validate_json(results: list[Validation], directory: str, out: TextIO) -> None:
    doc = {
        "schema": VALIDATE_SCHEMA,
        "directory": _s(directory),
        "results": [
            {
                "path": _s(v.path),
                "validator": v.validator,
                "ok": v.ok,
                "message": _s(v.message),
                "details": [_s(d) for d in v.details],
            }
            for v in results
        ],
        "ok": all(v.ok for v in results),
    }
    json.dump(doc, out, indent=2, ensure_ascii=False)
    out.write("\n")


def validate_plain(results: list[Validation], directory: str, out: TextIO) -> None:
    print(f"ecap-harden validate {printable(directory)}", file=out)
    for v in results:
        print(
            f"  {'PASS' if v.ok else 'FAIL'}  {printable(v.path):45} [{v.validator}] "
            f"{printable(v.message)}",
            file=out,
        )
    bad = sum(not v.ok for v in results)
    print(f"summary: {len(results) - bad} passed, {bad} failed", file=out)
