"""``ecap-harden validate DIR``: run the real validators on a generated directory.

Each file kind goes to the tool that will eventually consume it: AppArmor profiles
to ``apparmor_parser -Q -K`` (parse and compile, no kernel load), SELinux modules to
the refpolicy module Makefile (``checkmodule``) and then, all together with the
installed policy, to ``secilc`` (link, neverallow rules checked), seccomp profiles
to libseccomp and a filtered child process, audit rules to ``ausyscall`` and
``auditctl`` (loaded and removed again), Kubernetes manifests to the offline
Kubernetes schema, the Kyverno policy to ecap's structural check, sysctl files to
``/proc/sys``. Anything that cannot be validated here is reported as such, never as
a pass.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ecap import host
from ecap.errors import UsageError
from ecap.text import printable

from . import auditd_check, containers, kyverno_check, seccomp_filter, selinux_build, sysctl
from .generate import PLAN_FILE, PLAN_SCHEMA
from .kubernetes import DENIED_CAPS
from .seccomp import DENY_ALWAYS, denied_names


@dataclass(frozen=True)
class Validation:
    """One validator's verdict on one file."""

    path: str
    """Relative to the validated directory."""
    validator: str
    ok: bool
    message: str
    details: tuple[str, ...] = field(default=())


# ----------------------------------------------------------------- AppArmor


def _parser_message(stderr: str) -> str:
    """The parser's own error lines, without the 'cache disabled' chatter."""
    lines = [ln for ln in stderr.splitlines() if ln.strip() and "Cache read/write" not in ln]
    return " ".join(lines) or "apparmor_parser failed without a message"


def apparmor_compile(profile: Path, include_dirs: list[Path]) -> tuple[bool, str]:
    """``apparmor_parser -Q -K`` on one file; (ok, parser message)."""
    exe = shutil.which("apparmor_parser")
    if exe is None:
        return False, "apparmor_parser not installed (apt install apparmor)"
    cmd = [exe, "-Q", "-K"]
    for d in include_dirs:
        cmd += ["-I", str(d)]
    proc = subprocess.run([*cmd, str(profile)], capture_output=True, text=True, timeout=120)
    if proc.returncode == 0:
        return True, "compiled by apparmor_parser -Q -K"
    return False, _parser_message(proc.stderr + proc.stdout)


def _apparmor(root: Path, path: Path) -> Validation:
    rel = str(path.relative_to(root))
    incs = [root / "apparmor"]
    if path.parent.name == "abstractions":
        # An abstraction is not a profile: compile it inside a throwaway one.
        # A copy under a name we chose keeps odd characters of DIR out of the include.
        with tempfile.TemporaryDirectory(prefix="ecap-aa-") as tmp:
            shutil.copyfile(path, Path(tmp) / "abstraction")
            wrapper = Path(tmp) / "ecap-validate-abstraction"
            wrapper.write_text(
                f'profile ecap-validate-abstraction {{\n  include "{tmp}/abstraction"\n}}\n'
            )
            ok, msg = apparmor_compile(wrapper, incs)
    else:
        ok, msg = apparmor_compile(path, incs)
    return Validation(rel, "apparmor_parser", ok, msg)


# ----------------------------------------------------------------- SELinux


def _selinux(root: Path, link: bool) -> list[Validation]:
    """Compile every module of DIR/selinux, then link them all with the installed policy.

    The ``.if`` and ``.fc`` files are part of the module of the same name. The link
    is one result for the directory: the modules depend on each other (the
    assertion names ``ecap_audit_t``), as they will when installed. A plan made from
    another host's scan is not linked here: this host's policy is not that host's.
    """
    out: list[Validation] = []
    pps = []
    source = _plan_source(root)
    skipped: tuple[str, ...] = ()
    if not link:
        skipped = ("not linked with the installed policy (--no-selinux-link)",)
    elif source.startswith("scan:"):
        link = False
        skipped = (
            "not linked: the plan is for the scanned host, whose policy is not this "
            "host's; run 'ecap-harden validate' there",
        )
    with tempfile.TemporaryDirectory(prefix="ecap-se-pp-") as tmp:
        for te in sorted((root / "selinux").glob("*.te")):
            res, pp = selinux_build.compile_module(te, Path(tmp))
            rel = str(te.relative_to(root))
            out.append(Validation(rel, "checkmodule", res.ok, res.message, res.lines + skipped))
            if pp is not None:
                pps.append(pp)
        if link and out and len(pps) == len(out):
            res = selinux_build.link(pps)
            out.append(Validation("selinux", "secilc", res.ok, res.message, res.lines))
    return out


def _plan_source(root: Path) -> str:
    """``source`` of DIR/plan.json (``live`` or ``scan:PATH``); empty when unreadable."""
    try:
        plan = json.loads((root / PLAN_FILE).read_text())
    except (OSError, ValueError):
        return ""
    source = plan.get("source") if isinstance(plan, dict) else None
    return source if isinstance(source, str) else ""


# ----------------------------------------------------------------- seccomp


def _seccomp(root: Path, path: Path) -> Validation:
    rel = str(path.relative_to(root))
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return Validation(rel, "libseccomp", False, f"not JSON: {exc}")
    for key in ("defaultAction", "syscalls"):
        if not isinstance(doc, dict) or key not in doc:
            return Validation(rel, "libseccomp", False, f"missing {key!r} (not a Docker profile)")
    # bpf and perf_event_open always (the control's point), plus whatever else the
    # profile promises to refuse explicitly (strict: ptrace, process_vm_readv/writev).
    promised = denied_names(doc) | set(DENY_ALWAYS)
    expected = tuple(n for n in seccomp_filter.probe_calls() if n in promised)
    try:
        res = seccomp_filter.probe(doc)
    except seccomp_filter.ProfileError as exc:
        return Validation(rel, "libseccomp", False, str(exc))
    details = (
        f"filtered child (all capabilities): {res.refused}",
        f"unfiltered parent: {res.unfiltered}",
        f"ordinary syscalls: {res.ordinary}",
    )
    if res.unknown:
        details += (f"names unknown to libseccomp (skipped): {', '.join(res.unknown)}",)
    ok = res.ok(expected)
    if ok:
        msg = f"{', '.join(expected)} → EPERM under the filter; ordinary syscalls work"
    elif res.error:
        msg = f"filtered child failed: {res.error}"
    elif not res.ordinary or not all(res.ordinary.values()):
        broken = [k for k, v in res.ordinary.items() if not v] or ["(none ran)"]
        msg = f"ordinary operations fail under the filter: {', '.join(broken)}"
    else:
        leaked = [n for n in expected if res.refused.get(n) != "EPERM"]
        msg = f"not refused under the filter (all capabilities): {', '.join(leaked) or '?'}"
    return Validation(rel, "libseccomp", ok, msg, details)


# ----------------------------------------------------------------- auditd


def _auditd(root: Path, path: Path, load: bool) -> Validation:
    rel = str(path.relative_to(root))
    text = path.read_text()
    bad = [r for r in auditd_check.resolve(text) if r.number is None]
    details = []
    if bad:
        return Validation(
            rel, "ausyscall", False,
            "; ".join(f"{r.name} ({r.arch}): {r.message}" for r in bad),
        )  # fmt: skip
    details.append("ausyscall resolved every syscall name")
    if not load:
        return Validation(rel, "ausyscall", True, details[0], ("auditctl load skipped",))
    res = auditd_check.load_and_remove(text)
    details.append(f"auditctl loaded {len(res.loaded)} rules and removed them again")
    if res.preexisting:
        details.append(f"{len(res.preexisting)} already loaded (left in place)")
    if not res.ok:
        problems = [f"{r}: {m}" for r, m in res.errors]
        problems += [f"could not remove {r}" for r in res.leftover]
        if res.listed != len(res.loaded):
            problems.append(f"auditctl -l showed {res.listed} of the {len(res.loaded)} added")
        return Validation(rel, "auditctl", False, "; ".join(problems), tuple(details))
    return Validation(rel, "auditctl", True, details[1], tuple(details))


# ----------------------------------------------------------------- sysctl


def _sysctl(root: Path, path: Path) -> Validation:
    rel = str(path.relative_to(root))
    values = sysctl.parse(path.read_text())
    problems, details = [], []
    for key, value in values.items():
        current = host.read_sysctl(key)
        if current is None:
            problems.append(f"{key} does not exist under /proc/sys on this kernel")
        elif not value.lstrip("-").isdigit():
            problems.append(f"{key} = {value!r} is not an integer")
        else:
            details.append(f"{key}: exists, current {current}, file sets {value}")
    if not values:
        problems.append("no settings")
    ok = not problems
    msg = f"{len(values)} keys exist under /proc/sys" if ok else "; ".join(problems)
    return Validation(rel, "/proc/sys", ok, msg, tuple(details))


# ----------------------------------------------------------------- YAML


def _kubernetes_validate(doc: dict[str, Any]) -> str | None:
    """Error text from the offline Kubernetes schema, None when valid."""
    import kubernetes_validate

    version = kubernetes_validate.latest_version()
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in getattr(exc, "path", ()) or ()) or "(document)"
        name = f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
        return f"{name} at {where}: {exc.message} (Kubernetes {version} schema)"
    except kubernetes_validate.SchemaNotFoundError:
        return (
            f"{doc.get('apiVersion')} {doc.get('kind')} is not in the Kubernetes {version} schema"
        )
    return None


def _yaml(root: Path, path: Path) -> Validation:
    rel = str(path.relative_to(root))
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as exc:
        return Validation(rel, "yaml", False, f"YAML does not parse: {printable(str(exc))}")
    if not docs:
        return Validation(rel, "yaml", False, "no YAML documents")
    problems, details = [], []
    validators = set()
    for doc in docs:
        if not isinstance(doc, dict):
            problems.append("a document is not a mapping")
            continue
        api = str(doc.get("apiVersion", ""))
        if api.startswith("kyverno.io/"):
            validators.add("ecap kyverno structure check")
            problems += kyverno_check.problems(doc, required_caps=DENIED_CAPS)
            details.append(
                "Kyverno CRDs are not in the Kubernetes schema: checked by ecap's own "
                "structural rules (fields, enums, denied settings, exception), not by Kyverno"
            )
        elif api and doc.get("kind"):
            try:
                err = _kubernetes_validate(doc)
            except ImportError:
                problems.append("kubernetes-validate not installed (pip install ecap[test])")
                continue
            validators.add("kubernetes-validate (strict, offline)")
            if err:
                problems.append(err)
            else:
                details.append(f"{doc['kind']}/{doc.get('metadata', {}).get('name')}: valid")
        elif "services" in doc:
            validators.add("compose structure")
            problems += containers.compose_problems(doc)
        else:
            validators.add("yaml")
    ok = not problems
    msg = f"{len(docs)} document(s) valid" if ok else "; ".join(problems)
    return Validation(rel, " + ".join(sorted(validators)) or "yaml", ok, msg, tuple(details))


# ----------------------------------------------------------------- plan


def _plan(root: Path, path: Path) -> Validation:
    rel = str(path.relative_to(root))
    try:
        plan = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return Validation(rel, "plan", False, f"not JSON: {exc}")
    if plan.get("schema") != PLAN_SCHEMA:
        return Validation(
            rel, "plan", False, f"schema is {plan.get('schema')!r}, not {PLAN_SCHEMA}"
        )
    problems = []
    for f in plan.get("files", []):
        target = root / f["path"]
        if not target.is_file():
            problems.append(f"{f['path']} listed in the plan is missing")
        elif hashlib.sha256(target.read_bytes()).hexdigest() != f.get("sha256"):
            problems.append(f"{f['path']} differs from the plan (edited after generation?)")
    ok = not problems
    msg = f"{len(plan.get('files', []))} files match the plan" if ok else "; ".join(problems)
    return Validation(rel, "plan", ok, msg)


# ----------------------------------------------------------------- driver


def _route(root: Path, path: Path, load_audit: bool) -> Callable[[], Validation] | None:
    rel = path.relative_to(root)
    top = rel.parts[0] if len(rel.parts) > 1 else ""
    if top == "apparmor":
        return lambda: _apparmor(root, path)
    if top == "selinux":
        return None  # compiled and linked per directory, see _selinux
    if path.suffix == ".json" and top == "seccomp":
        return lambda: _seccomp(root, path)
    if path.suffix == ".rules":
        return lambda: _auditd(root, path, load_audit)
    if path.suffix == ".conf" and top == "sysctl":
        return lambda: _sysctl(root, path)
    if path.suffix in (".yaml", ".yml"):
        return lambda: _yaml(root, path)
    if path.name == PLAN_FILE and path.parent == root:
        return lambda: _plan(root, path)
    return None


def validate_dir(
    root: Path, *, load_audit: bool = True, link_selinux: bool = True
) -> list[Validation]:
    """Validate every recognised file under ``root`` (UsageError if there is none)."""
    if not root.is_dir():
        raise UsageError(
            f"{printable(str(root))} is not a directory",
            hint="pass the --out directory of 'ecap-harden generate'",
        )
    out = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        fn = _route(root, path, load_audit)
        if fn is None:
            continue
        rel = str(path.relative_to(root))
        try:
            out.append(fn())
        except (OSError, UnicodeDecodeError) as exc:
            out.append(Validation(rel, "read", False, f"cannot read: {exc}"))
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            # A file of the right name but the wrong shape fails; it never passes.
            out.append(Validation(rel, "structure", False, f"unexpected content: {exc!r}"))
    if (root / "selinux").is_dir():
        out += _selinux(root, link_selinux)
    if not out:
        raise UsageError(
            f"nothing to validate in {printable(str(root))}",
            hint="pass the --out directory of 'ecap-harden generate'",
        )
    return out
