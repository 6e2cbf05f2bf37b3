"""Build SELinux policy modules with the real toolchain, and link them with the installed policy.

SELinux is not enabled in these kernels, so, as for AppArmor, validation compiles and
links without loading anything:

- **compile**: the refpolicy module Makefile of ``selinux-policy-dev`` (m4 with the
  installed policy's interface headers, then ``checkmodule`` and
  ``semodule_package``) turns ``NAME.te``/``.if``/``.fc`` into ``NAME.pp``. An unknown
  interface, type or permission is the tool's own error.
- **link**: what ``semodule -i`` does with libsemanage 3.x, without touching the
  policy store: every enabled module of the installed store (CIL) and the new
  modules, converted to CIL by the store's own ``pp`` converter, compiled together by
  ``secilc``, which checks every ``neverallow`` rule of every module.
"""

from __future__ import annotations

import bz2
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ecap import selinux as sel

DEVEL_MAKEFILE = Path("/usr/share/selinux/devel/Makefile")
PP_TO_CIL = Path("/usr/libexec/selinux/hll/pp")
STORE_ROOT = Path("/var/lib/selinux")
_MODULE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_CHATTER = re.compile(r"^(Compiling |Creating |rm tmp/|make: \*\*\* )")


@dataclass(frozen=True)
class ToolResult:
    """A tool's verdict: ok, its message on one line, and its full output."""

    ok: bool
    message: str
    lines: tuple[str, ...] = ()


def _output(proc: subprocess.CompletedProcess[str], strip: str = "") -> list[str]:
    text = (proc.stdout or "") + (proc.stderr or "")
    if strip:
        text = text.replace(strip, "")
    return [ln.rstrip() for ln in text.splitlines() if ln.strip() and not _CHATTER.match(ln)]


def compile_module(te: Path, out_dir: Path) -> tuple[ToolResult, Path | None]:
    """``NAME.pp`` in ``out_dir`` from ``te`` and the ``.if``/``.fc`` beside it."""
    name = te.stem
    if not _MODULE_NAME.match(name):
        return ToolResult(False, f"{name!r} is not a valid policy module name"), None
    make = shutil.which("make")
    if make is None or not DEVEL_MAKEFILE.is_file():
        return ToolResult(
            False, "the SELinux module Makefile is missing (apt install selinux-policy-dev make)"
        ), None
    # A fresh directory per module: the Makefile treats every subdirectory as a layer.
    with tempfile.TemporaryDirectory(prefix="ecap-se-") as tmp:
        for suffix in (".te", ".if", ".fc"):
            src = te.with_suffix(suffix)
            if src.is_file():
                shutil.copyfile(src, Path(tmp) / f"{name}{suffix}")
        try:
            proc = subprocess.run(
                [make, "-f", str(DEVEL_MAKEFILE), f"{name}.pp"],
                cwd=tmp,
                capture_output=True,
                text=True,
                timeout=180,
            )
        except subprocess.TimeoutExpired:
            return ToolResult(False, "the module build did not finish in 180 s"), None
        lines = _output(proc, strip=f"{tmp}/")
        built = Path(tmp) / f"{name}.pp"
        if proc.returncode != 0 or not built.is_file():
            message = " ".join(ln.strip() for ln in lines) or "checkmodule failed"
            return ToolResult(False, message, tuple(lines)), None
        out_dir.mkdir(parents=True, exist_ok=True)
        pp = out_dir / f"{name}.pp"
        shutil.copyfile(built, pp)
    warnings = f" ({len(lines)} warning(s))" if lines else ""
    return ToolResult(
        True, f"compiled by checkmodule (refpolicy module Makefile){warnings}", tuple(lines)
    ), pp


def store_dir() -> Path | None:
    """The active module store of the configured policy type, when installed."""
    ptype = sel.policy_type()
    path = STORE_ROOT / ptype / "active" / "modules" if ptype else None
    return path if path is not None and path.is_dir() else None


def store_modules(exclude: set[str]) -> dict[str, Path]:
    """Name → CIL file of every enabled module, highest priority winning, minus ``exclude``."""
    root = store_dir()
    if root is None:
        return {}
    disabled = root / "disabled"
    chosen: dict[str, tuple[int, Path]] = {}
    for prio in root.iterdir():
        if not prio.name.isdigit() or not prio.is_dir():
            continue
        for mod in prio.iterdir():
            cil = mod / "cil"
            if mod.name in exclude or (disabled / mod.name).exists() or not cil.is_file():
                continue
            if mod.name not in chosen or int(prio.name) > chosen[mod.name][0]:
                chosen[mod.name] = (int(prio.name), cil)
    return {name: path for name, (_, path) in sorted(chosen.items())}


def _expand(src: Path, dst: Path) -> None:
    data = src.read_bytes()
    dst.write_bytes(bz2.decompress(data) if data[:3] == b"BZh" else data)


def link(pps: list[Path], *, output: Path | None = None) -> ToolResult:
    """Link ``pps`` with the installed policy by secilc (neverallow rules checked).

    ``output`` keeps the resulting binary policy (tests analyse it with setools).
    Modules of the store with the same names as ``pps`` are replaced, as
    ``semodule -i`` replaces them.
    """
    secilc = shutil.which("secilc")
    if secilc is None:
        return ToolResult(False, "secilc is not installed (apt install secilc)")
    if not PP_TO_CIL.is_file():
        return ToolResult(False, f"{PP_TO_CIL} is missing (apt install policycoreutils)")
    modules = store_modules({pp.stem for pp in pps})
    if not modules:
        return ToolResult(
            False,
            "no installed SELinux policy store to link with under "
            f"{STORE_ROOT} (apt install selinux-policy-default)",
        )
    with tempfile.TemporaryDirectory(prefix="ecap-se-link-") as tmp:
        work = Path(tmp)
        cils = [work / f"{name}.cil" for name in modules]
        with ThreadPoolExecutor(max_workers=4) as pool:  # bz2 releases the GIL
            list(pool.map(_expand, modules.values(), cils))
        for pp in pps:
            cil = work / f"{pp.stem}.cil"
            conv = subprocess.run(
                [str(PP_TO_CIL), str(pp), str(cil)], capture_output=True, text=True, timeout=60
            )
            if conv.returncode != 0:
                lines = _output(conv, strip=f"{tmp}/")
                return ToolResult(
                    False, " ".join(lines) or f"cannot convert {pp.name} to CIL", tuple(lines)
                )
            cils.append(cil)
        binary = output or work / "policy.bin"
        try:
            proc = subprocess.run(
                [secilc, "-o", str(binary), "-f", str(work / "file_contexts"), *map(str, cils)],
                capture_output=True,
                text=True,
                timeout=300,
            )
        except subprocess.TimeoutExpired:
            return ToolResult(False, "secilc did not finish in 300 s")
        lines = _output(proc, strip=f"{tmp}/")
    if proc.returncode != 0:
        return ToolResult(
            False, " ".join(ln.strip() for ln in lines) or "secilc failed", tuple(lines)
        )
    return ToolResult(
        True,
        f"linked with the {len(modules)} modules of the installed policy by secilc; "
        "every neverallow rule holds",
        tuple(lines),
    )
