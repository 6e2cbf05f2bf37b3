"""AppArmor: the deny-tracing abstraction, per-application profiles, ecap's own profile.

The shipped policy text lives in ``policies/apparmor/`` (written for parser 3.x);
this module adapts its header lines to the ``apparmor_parser`` installed here and
generates per-application profiles that include the abstraction. Per-application
profiles deliberately allow everything else the application did: their only job is
to take away eBPF, perf, ptrace and the tracing filesystems, so they can be applied
to an unknown workload without breaking it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import ecap.policies
from ecap import host
from ecap.errors import UsageError
from ecap.remediation import APPARMOR_DENY_TRACING
from ecap.text import printable

from .artifact import Artifact, Context
from .controls import AA_ABSTRACTION, AA_SELF

ABI_DIR = Path("/etc/apparmor.d/abi")
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._+/-]+$")


def policy_dir() -> Path:
    """Where the shipped profiles are (``ecap.policies``, i.e. ``policies/apparmor``)."""
    return Path(ecap.policies.__file__).resolve().parent / "apparmor"


@dataclass(frozen=True)
class Syntax:
    """What the installed parser understands, chosen from its version."""

    parser_version: tuple[int, ...] | None
    """None when apparmor_parser is not installed (3.0 syntax is assumed)."""
    abi: str | None
    """``abi/3.0`` when the parser knows ABI lines and the ABI file exists."""
    modern_include: bool
    """``include`` (3.x) rather than ``#include`` (2.x), and ``include if exists``."""
    bpf_caps: bool
    """Parser knows ``capability bpf`` and ``perfmon`` (added in 3.0)."""


def parser_version() -> tuple[int, ...] | None:
    """Version of the installed ``apparmor_parser``, or None when it is absent."""
    out = host.query_tool("apparmor_parser", "--version")
    if out is None:
        return None
    m = re.search(r"version (\d+(?:\.\d+)*)", out.stdout + out.stderr)
    return tuple(int(x) for x in m.group(1).split(".")) if m else None


def _installed_abis() -> list[tuple[int, int]]:
    """ABI versions shipped with the parser (``/etc/apparmor.d/abi/3.0``, ``4.0``...)."""
    out = []
    try:
        for entry in ABI_DIR.iterdir():
            m = re.fullmatch(r"(\d+)\.(\d+)", entry.name)
            if m:
                out.append((int(m.group(1)), int(m.group(2))))
    except OSError:
        pass
    return sorted(out)


def syntax_for(version: tuple[int, ...] | None) -> Syntax:
    """The syntax to write for a parser version (None: not installed → 3.0).

    The ABI line pins the policy to the newest ABI the parser ships that is not newer
    than the parser itself, so a profile means the same on a newer kernel.
    """
    modern = version is None or version >= (3, 0)
    abi = None
    if modern:
        usable = [a for a in _installed_abis() if version is None or a <= tuple(version[:2])]
        if usable:
            abi = f"abi/{usable[-1][0]}.{usable[-1][1]}"
        elif version is None:
            abi = "abi/3.0"
    return Syntax(version, abi, modern, modern)


def adapt(text: str, syntax: Syntax) -> str:
    """Rewrite the 3.x header lines of shipped policy text for ``syntax``."""
    out = []
    for line in text.splitlines():
        stripped = line.strip()
        indent = line[: len(line) - len(line.lstrip())]
        if stripped.startswith("abi <"):
            if syntax.abi is None:
                out.append(f"{indent}# (no ABI line: parser {_ver(syntax)} predates ABI rules)")
                continue
            line = f"{indent}abi <{syntax.abi}>,"
        elif not syntax.modern_include and stripped.startswith("include if exists "):
            # 2.x has no optional include, and a missing local file fails the load.
            target = stripped[len("include if exists ") :]
            out.append(f"{indent}# {target}: parser {_ver(syntax)} has no 'include if exists';")
            out.append(f"{indent}# add site-specific rules here instead.")
            continue
        elif not syntax.modern_include and stripped.startswith("include "):
            line = f"{indent}#{stripped}"
        elif not syntax.bpf_caps and re.match(r"(deny )?capability (bpf|perfmon),", stripped):
            out.append(f"{indent}# {stripped}  (parser {_ver(syntax)} predates this capability;")
            out.append(f"{indent}#  sys_admin, denied here too, covers it on such kernels)")
            continue
        out.append(line)
    return "\n".join(out) + "\n"


def _ver(syntax: Syntax) -> str:
    return ".".join(map(str, syntax.parser_version)) if syntax.parser_version else "?"


def header_comment(syntax: Syntax) -> str:
    if syntax.parser_version is None:
        return "# Written for AppArmor parser 3.x (apparmor_parser not installed here).\n"
    return f"# Written for the installed AppArmor parser {_ver(syntax)}.\n"


def profile_name(exe: str) -> str:
    """``/usr/bin/node`` → ``ecap-app-node`` (AppArmor-safe characters only)."""
    base = re.sub(r"[^A-Za-z0-9._-]", "_", Path(exe).name) or "app"
    return f"ecap-app-{base}"


CONTAINER_PROFILE = "ecap-app-container"


def app_profile(exe: str | None, syntax: Syntax) -> str:
    """A profile for ``exe`` that allows what it did before except eBPF/perf/ptrace/tracing.

    ``exe=None`` makes the attachment-less ``ecap-app-container`` profile that
    container runtimes apply by name (``--security-opt apparmor=...``). Raises
    UsageError for a relative path or one with characters AppArmor treats as
    globbing or syntax (the profile would match something else than intended).
    """
    if exe is not None and (
        not _SAFE_PATH.match(exe) or "//" in exe or "/.." in exe or exe.endswith("/")
    ):
        raise UsageError(
            f"cannot make an AppArmor profile for {printable(exe)!r}",
            hint="give an absolute executable path of letters, digits, '._+-/' only",
        )
    name = profile_name(exe) if exe else CONTAINER_PROFILE
    attach = f" {exe}" if exe else ""
    what = exe or "containers (apply with --security-opt apparmor=" + name + ")"
    text = f"""# {name} — AppArmor profile generated by ecap-harden for {what}.
#
# Allows everything the application did before (capability, network, file, signal,
# unix, dbus) except what abstractions/ecap-deny-tracing denies: eBPF, perf events,
# ptrace of others and the tracing filesystems. Deny rules win over these allows.
# Install: /etc/apparmor.d/{name}; tighten further in /etc/apparmor.d/local/{name}.

abi <abi/3.0>,

include <tunables/global>

profile {name}{attach} flags=(attach_disconnected,mediate_deleted) {{
  include <abstractions/base>
  include <abstractions/ecap-deny-tracing>

  capability,
  network,
  file,
  signal,
  unix,
  dbus,

  include if exists <local/{name}>
}}
"""
    return adapt(text, syntax)


def render(ctx: Context, syntax: Syntax | None = None) -> list[Artifact]:
    """The abstraction, ecap-audit's own profile, and one profile per ``ctx.apps``."""
    syntax = syntax or syntax_for(parser_version())
    src = policy_dir()
    head = header_comment(syntax)
    out = [
        Artifact(
            AA_ABSTRACTION,
            head + adapt((src / "abstractions" / "ecap-deny-tracing").read_text(), syntax),
            "apparmor-abstraction",
            (APPARMOR_DENY_TRACING,),
        ),
        Artifact(
            AA_SELF,
            head + adapt((src / "ecap-audit").read_text(), syntax),
            "apparmor",
            (APPARMOR_DENY_TRACING,),
            notes=(
                "ecap-audit keeps its own exception: its profile grants bpf/perfmon and "
                "read-only ptrace for authorized capture",
            ),
        ),
    ]
    out.append(
        Artifact(
            f"apparmor/{CONTAINER_PROFILE}",
            head + app_profile(None, syntax),
            "apparmor",
            (APPARMOR_DENY_TRACING,),
        )
    )
    for exe in ctx.apps:
        out.append(
            Artifact(
                f"apparmor/{profile_name(exe)}",
                head + app_profile(exe, syntax),
                "apparmor",
                (APPARMOR_DENY_TRACING,),
            )
        )
    return out
