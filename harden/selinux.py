"""SELinux: ecap-audit's own confined domain, and an assertion module of neverallow rules.

Two policy modules, in refpolicy's module language (``.te``/``.if``/``.fc``), which
Debian's ``selinux-policy-dev`` and Fedora's ``selinux-policy-devel`` both build:

- ``ecap_audit`` (shipped in ``policies/selinux/``): the domain ``ecap_audit_t`` that
  ``ecap-audit`` enters, with exactly the BPF, perf-event, ptrace-read and file
  permissions a capture needs.
- ``ecap_bpf_assert`` (generated): ``neverallow`` rules that make building the
  policy fail when any domain outside a tolerated set may load BPF programs
  (``bpf prog_load``), open perf events (``perf_event open``) or use CAP_BPF or
  CAP_PERFMON (``capability2 bpf perfmon``). neverallow rules are not part of the
  kernel policy: they are checked whenever the policy is linked, so a later module
  that grants these to, say, ``httpd_t`` no longer links.

Which domains are tolerated is the one decision in here. Always: ``ecap_audit_t``;
the kernel and PID 1 (systemd loads cgroup BPF programs); every unconfined domain
(``unconfined_domain_type``: SELinux does not confine them — the threat model says
so); and the domains the operator names (``--selinux-allow``). ``balanced`` adds
whatever the analysed policy grants today, listed by name with the permission, so
the module builds now and freezes the set; ``strict`` does not, and then fails to
build until those grants are removed or named.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import ecap.policies
from ecap import selinux as sel
from ecap.errors import UsageError
from ecap.remediation import SELINUX_CONFINE_BPF
from ecap.text import printable

from .artifact import Artifact, Context
from .controls import SE_ASSERT, SE_MODULE_FILES

ASSERT_MODULE = Path(SE_ASSERT).stem


def policy_dir() -> Path:
    """Where the shipped module sources are (``policies/selinux``)."""
    return Path(ecap.policies.__file__).resolve().parent / "selinux"


@dataclass(frozen=True)
class Tolerated:
    """A domain (or attribute) the assertion leaves alone, and why."""

    name: str
    why: str
    keys: tuple[str, ...] = sel.ASSERTED_KEYS
    """Which asserted permissions it is tolerated for."""


def check_names(names: tuple[str, ...], exposure: sel.Exposure | None) -> None:
    """UsageError (exit 2) for a name that is not an identifier, or not in the policy."""
    for name in names:
        if not sel.valid_name(name):
            raise UsageError(
                f"--selinux-allow {printable(name)!r} is not an SELinux type name",
                hint="give a type or attribute such as container_runtime_t",
            )
        known = exposure.types | exposure.attributes if exposure is not None else frozenset()
        if known and name not in known:
            raise UsageError(
                f"--selinux-allow {name}: no such type or attribute in {exposure.policy}",
                hint="list the policy's types with 'seinfo -t'",
            )


def tolerated(ctx: Context) -> list[Tolerated]:
    """The tolerated set for this context (see module docstring), in file order."""
    state = ctx.posture.selinux
    exposure = state.exposure if state else None
    check_names(ctx.selinux_allow, exposure)
    out = [
        Tolerated(sel.ECAP_DOMAIN, "ecap-audit's own domain (module ecap_audit)"),
        Tolerated("kernel_t", "the kernel's own threads"),
        Tolerated("init_t", "PID 1 (systemd loads cgroup BPF programs)"),
    ]
    if exposure is None or exposure.has_unconfined_attribute:
        out.append(
            Tolerated(
                sel.UNCONFINED_ATTRIBUTE,
                "unconfined domains, which SELinux does not confine (see the README)",
            )
        )
    seen = {t.name for t in out} | set(exposure.unconfined if exposure else ())
    for name in ctx.selinux_allow:
        if name not in seen:
            out.append(Tolerated(name, "named by the operator (--selinux-allow)"))
            seen.add(name)
    if ctx.profile == "balanced" and exposure is not None:
        granted: dict[str, list[str]] = {}
        for k in sel.ASSERTED_KEYS:
            for domain in exposure.holders(k):
                if domain not in seen:
                    granted.setdefault(domain, []).append(k)
        for domain, keys in sorted(granted.items()):
            out.append(
                Tolerated(
                    domain,
                    f"granted by the installed policy today ({', '.join(keys)}); 'strict' drops it",
                    tuple(keys),
                )
            )
    return out


def assertion_text(ctx: Context, allowed: list[Tolerated]) -> str:
    """The ``ecap_bpf_assert.te`` module for the tolerated set ``allowed``."""
    state = ctx.posture.selinux
    exposure = state.exposure if state else None
    basis = (
        f"the policy analysed on {ctx.posture.hostname}: {exposure.policy}"
        if exposure
        else "no analysed policy (names assumed from refpolicy)"
    )
    width = max(len(t.name) for t in allowed)
    why = "\n".join(f"#   {t.name:{width}}  {t.why}" for t in allowed)
    attrs = exposure.attributes if exposure is not None and exposure.attributes else set()
    attrs = {sel.UNCONFINED_ATTRIBUTE, *attrs}
    types = sorted({t.name for t in allowed if t.name not in attrs})
    attrs = sorted({t.name for t in allowed if t.name in attrs})
    require = [f"\ttype {', '.join(types)};"] + [f"\tattribute {a};" for a in attrs]
    rules = []
    for tclass, perm in sel.ASSERTED:
        k = sel.key(tclass, perm)
        names = " ".join(t.name for t in allowed if k in t.keys)
        rules.append(f"neverallow ~{{ {names} }} *:{tclass} {perm};")
    text = f"""policy_module({ASSERT_MODULE}, 1.0.0)

# {ASSERT_MODULE} — assertion module generated by ecap-harden (profile {ctx.profile}).
#
# neverallow rules only: linking a policy that contains this module fails if any
# domain other than those tolerated below may load BPF programs (bpf prog_load),
# open perf events (perf_event open) or use CAP_BPF/CAP_PERFMON (capability2 bpf,
# perfmon). It grants nothing and changes nothing at run time.
#
# Written for {basis}.
# Tolerated, and why:
{why}
#
# Check it against the installed policy: ecap-harden validate DIR (links every
# installed module with this one using secilc, as semodule would).
# Install after ecap_audit.pp: semodule -i {ASSERT_MODULE}.pp. semodule checks
# neverallow rules only with expand-check=1 in /etc/selinux/semanage.conf (Debian 12
# ships 0); with it, a later module granting these is refused at install.

gen_require(`
{chr(10).join(require)}
')

{chr(10).join(rules)}
"""
    return text


def render(ctx: Context) -> list[Artifact]:
    """ecap-audit's domain module (three files) and the assertion module."""
    src = policy_dir()
    out = [
        Artifact(
            path,
            (src / Path(path).name).read_text(),
            "selinux",
            (SELINUX_CONFINE_BPF,),
            notes=(
                "ecap-audit keeps its own exception: the ecap_audit_t domain grants "
                "bpf/perfmon and read-only ptrace for authorized capture",
            )
            if path.endswith(".te")
            else (),
        )
        for path in SE_MODULE_FILES
    ]
    allowed = tolerated(ctx)
    notes = []
    state = ctx.posture.selinux
    exposure = state.exposure if state else None
    if exposure is not None and ctx.profile == "strict":
        beyond = exposure.beyond(ctx.selinux_allow)
        if beyond:
            granted = "; ".join(f"{k}: {', '.join(v)}" for k, v in beyond.items())
            notes.append(
                f"WARNING: the analysed SELinux policy grants {granted} — the strict "
                "assertion module will not link until those rules are removed or the "
                "domains are named with --selinux-allow"
            )
    if exposure is None:
        notes.append(
            "the SELinux assertion was written without an analysed policy: only ecap_audit_t, "
            "kernel_t, init_t and unconfined domains are tolerated"
        )
    out.append(
        Artifact(
            SE_ASSERT, assertion_text(ctx, allowed), "selinux", (SELINUX_CONFINE_BPF,), tuple(notes)
        )
    )
    return out
