"""SELinux facts that the detector and the hardener share: state, and who may use BPF.

SELinux controls eBPF capture with its own object classes: ``bpf`` (``prog_load``,
``map_create``...), ``perf_event`` (``open``, ``kernel``...) and ``capability2``
(``bpf``, ``perfmon``). Which domains hold them is decided by the *linked binary
policy*, where attributes such as ``unconfined_domain_type`` and conditional rules
are resolved, so the analysis reads that binary with the setools library (Debian's
``python3-setools``) instead of grepping policy sources. It works offline on an
installed policy file, which is how it is tested here (SELinux is not enabled in
these kernels; ``selinux-policy-default`` installs ``policy.33``).

One subtlety drives what "may capture" means: the kernel accepts CAP_SYS_ADMIN in
place of CAP_BPF and CAP_PERFMON (``bpf_capable()``, ``perfmon_capable()`` try the
narrow capability first, then CAP_SYS_ADMIN), so ``capability sys_admin`` is read
too. ``bpf { prog_load }`` and ``perf_event { open }`` have no such fallback: they
are the gates the assertion module closes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ecap import host

CONFIG = Path("/etc/selinux/config")
POLICY_ROOT = Path("/etc/selinux")

ECAP_DOMAIN = "ecap_audit_t"
"""The domain ecap-harden's module gives the authorized capture."""
UNCONFINED_ATTRIBUTE = "unconfined_domain_type"
"""refpolicy's attribute of unconfined domains (Debian and Fedora alike): SELinux does
not confine them, so it cannot stop root that runs in one."""
SYSTEM_DOMAINS = ("kernel_t", "init_t")
"""The kernel and PID 1 (systemd loads cgroup BPF programs): tolerated everywhere
(harden/selinux.py says why for each in the assertion module)."""

ASSERTED: tuple[tuple[str, str], ...] = (
    ("bpf", "prog_load"),
    ("perf_event", "open"),
    ("capability2", "bpf"),
    ("capability2", "perfmon"),
)
"""(class, permission) pairs the assertion module forbids and the exposure check lists."""
SYS_ADMIN = ("capability", "sys_admin")
"""Read as well: the kernel accepts it in place of CAP_BPF and CAP_PERFMON."""

AVC_CLASSES: dict[str, frozenset[str] | None] = {
    "bpf": None,
    "perf_event": None,
    "capability2": frozenset({"bpf", "perfmon"}),
}
"""AVC denials the detector reports: every ``bpf`` and ``perf_event`` permission, and
``capability2`` only for ``bpf`` and ``perfmon`` (None: every permission of the class)."""


def key(tclass: str, perm: str) -> str:
    """``"bpf prog_load"``: how a (class, permission) pair is named in data and text."""
    return f"{tclass} {perm}"


ASSERTED_KEYS = tuple(key(c, p) for c, p in ASSERTED)
SYS_ADMIN_KEY = key(*SYS_ADMIN)


class PolicyError(Exception):
    """The policy could not be read or analysed (message says why and what to do)."""


@dataclass(frozen=True)
class Exposure:
    """Which domains of one binary policy hold the BPF/perf permissions."""

    policy: str
    """Path of the analysed binary policy."""
    domain_count: int
    """Types carrying the ``domain`` attribute (how many processes types exist at all)."""
    grants: dict[str, tuple[str, ...]]
    """``"bpf prog_load"`` (and the other ASSERTED keys, and ``capability sys_admin``)
    → sorted domains allowed it, attributes expanded, conditional rules included."""
    unconfined: tuple[str, ...]
    """Members of ``unconfined_domain_type``; empty when the policy has no such attribute."""
    permissive: tuple[str, ...]
    """Permissive domains: nothing is enforced for them, whatever the rules say."""
    conditional: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Key → ``"domain if boolean-expression"`` for grants that depend on a boolean."""
    has_unconfined_attribute: bool = True
    types: frozenset[str] = field(default_factory=frozenset, compare=False)
    """Every type of the policy (live analysis only; empty when read from a scan)."""
    attributes: frozenset[str] = field(default_factory=frozenset, compare=False)
    """Every type attribute of the policy (live analysis only)."""

    def holders(self, pair_key: str) -> tuple[str, ...]:
        return self.grants.get(pair_key, ())

    def can_capture(self) -> tuple[str, ...]:
        """Domains allowed everything a uprobe capture needs (or permissive ones).

        ``bpf prog_load`` plus CAP_BPF and CAP_PERFMON or CAP_SYS_ADMIN, which the
        kernel accepts for both. ``perf_event open`` is not required: a uprobe_multi
        link (Linux 6.6+) attaches a uprobe through bpf(2) alone — it is how ecap's
        own capture attaches — so denying perf events does not stop a capture.
        """
        g = {k: set(v) for k, v in self.grants.items()}
        admin = g.get(SYS_ADMIN_KEY, set())
        able = (
            g.get(key("bpf", "prog_load"), set())
            & (g.get(key("capability2", "bpf"), set()) | admin)
            & (g.get(key("capability2", "perfmon"), set()) | admin)
        )
        return tuple(sorted(able | set(self.permissive)))

    def tolerated(self, extra: Iterable[str] = ()) -> set[str]:
        """Domains expected to hold these permissions: ecap's, the system's, unconfined
        ones (SELinux does not confine them) and ``extra`` (an operator's allow-list)."""
        return {ECAP_DOMAIN, *SYSTEM_DOMAINS, *self.unconfined, *extra}

    def beyond(self, extra: Iterable[str] = ()) -> dict[str, tuple[str, ...]]:
        """For each ASSERTED key, the holders outside :meth:`tolerated` (empty keys left out)."""
        ok = self.tolerated(extra)
        out = {}
        for k in ASSERTED_KEYS:
            rest = tuple(d for d in self.holders(k) if d not in ok)
            if rest:
                out[k] = rest
        return out

    def summary(self) -> str:
        """One line: how many domains hold each permission, and who could capture."""
        parts = [f"{k}: {len(self.holders(k))}" for k in ASSERTED_KEYS]
        able = self.can_capture()
        confined = [d for d in able if d not in self.tolerated()]
        parts.append(
            f"able to capture: {len(able)} ({len(confined)} outside unconfined/system domains)"
        )
        return f"{self.domain_count} domains; " + ", ".join(parts)

    def evidence(self) -> list[str]:
        """Per permission: the holders, unconfined ones counted rather than listed."""
        unconf = set(self.unconfined)
        lines = []
        for k in ASSERTED_KEYS:
            held = self.holders(k)
            others = [d for d in held if d not in unconf]
            lines.append(
                f"{k}: {len(held)} domains, {len(held) - len(others)} of them unconfined; "
                f"others: {', '.join(others) or 'none'}"
            )
        admin = self.holders(SYS_ADMIN_KEY)
        lines.append(
            f"{SYS_ADMIN_KEY}: {len(admin)} domains (the kernel accepts it for CAP_BPF and "
            "CAP_PERFMON; harmless without bpf prog_load)"
        )
        able = self.can_capture()
        lines.append(
            "able to capture (prog_load, perf_event open, CAP_BPF+CAP_PERFMON or SYS_ADMIN): "
            f"{len(able)} domains; not unconfined: "
            f"{', '.join(d for d in able if d not in unconf) or 'none'}"
        )
        if self.permissive:
            lines.append(f"permissive domains (nothing enforced): {', '.join(self.permissive)}")
        for k, conds in sorted(self.conditional.items()):
            if k in ASSERTED_KEYS:
                lines.append(f"{k} by boolean: {'; '.join(conds)}")
        return lines

    def to_json(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "domains": self.domain_count,
            "grants": {k: list(v) for k, v in self.grants.items()},
            "unconfined": list(self.unconfined),
            "has_unconfined_attribute": self.has_unconfined_attribute,
            "permissive": list(self.permissive),
            "conditional": {k: list(v) for k, v in self.conditional.items()},
            "can_capture": list(self.can_capture()),
        }

    @classmethod
    def from_json(cls, data: object) -> Exposure | None:
        """Read :meth:`to_json` output from a scan; None for anything malformed."""
        if not isinstance(data, dict) or not isinstance(data.get("grants"), dict):
            return None

        def names(value: object) -> tuple[str, ...]:
            items = value if isinstance(value, list) else []
            return tuple(sorted(str(v) for v in items if isinstance(v, str) and _NAME.match(v)))

        grants = {str(k): names(v) for k, v in data["grants"].items()}
        conditional = data.get("conditional") if isinstance(data.get("conditional"), dict) else {}
        domains = data.get("domains")
        return cls(
            policy=str(data.get("policy") or "?"),
            domain_count=domains if isinstance(domains, int) else 0,
            grants=grants,
            unconfined=names(data.get("unconfined")),
            permissive=names(data.get("permissive")),
            conditional={
                str(k): tuple(str(c) for c in v)
                for k, v in conditional.items()
                if isinstance(v, list)
            },
            has_unconfined_attribute=bool(data.get("has_unconfined_attribute", True)),
        )


_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def valid_name(name: str) -> bool:
    """A plausible SELinux type or attribute identifier."""
    return bool(_NAME.match(name))


@dataclass(frozen=True)
class State:
    """Whether SELinux runs here, which policy applies, and its BPF exposure."""

    enabled: bool
    """selinuxfs is mounted: the kernel runs SELinux."""
    enforcing: bool | None
    """None when not enabled."""
    policy: str | None
    """The loaded policy (enabled) or the installed one; None when there is none."""
    exposure: Exposure | None = None
    note: str | None = None
    """Why ``exposure`` is None (not analysed, setools missing, unreadable policy)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "enforcing": self.enforcing,
            "policy": self.policy,
            "exposure": self.exposure.to_json() if self.exposure else None,
            "note": self.note,
        }

    @classmethod
    def from_json(cls, data: object) -> State | None:
        """A scan's ``posture.selinux``; None when absent or not an object."""
        if not isinstance(data, dict):
            return None
        enforcing = data.get("enforcing")
        policy = data.get("policy")
        note = data.get("note")
        return cls(
            enabled=data.get("enabled") is True,
            enforcing=enforcing if isinstance(enforcing, bool) else None,
            policy=policy if isinstance(policy, str) else None,
            exposure=Exposure.from_json(data.get("exposure")),
            note=note if isinstance(note, str) else None,
        )


def selinuxfs() -> Path | None:
    """Where selinuxfs is mounted (SELinux enabled in this kernel), else None."""
    mounts = host.mountpoints_of("selinuxfs")
    return Path(mounts[0]) if mounts else None


def policy_type() -> str | None:
    """``SELINUXTYPE`` of /etc/selinux/config (``default`` on Debian, ``targeted`` on Fedora)."""
    try:
        text = CONFIG.read_text()
    except OSError:
        return None
    m = re.search(r"(?m)^\s*SELINUXTYPE\s*=\s*([A-Za-z0-9_.-]+)\s*$", text)
    return m.group(1) if m else None


def installed_policy() -> Path | None:
    """The newest ``policy.N`` of the configured policy type, as the loader would pick it."""
    ptype = policy_type()
    if ptype is None:
        return None
    best: tuple[int, Path] | None = None
    try:
        for entry in (POLICY_ROOT / ptype / "policy").iterdir():
            m = re.fullmatch(r"policy\.(\d+)", entry.name)
            if m and entry.is_file() and (best is None or int(m.group(1)) > best[0]):
                best = (int(m.group(1)), entry)
    except OSError:
        return None
    return best[1] if best else None


def analyse(path: Path) -> Exposure:
    """Read ``path`` (a binary policy) with setools; PolicyError when that cannot be done.

    One pass over the type-enforcement rules (a setools query per permission would
    walk the ~130,000 rules of a reference policy each time).
    """
    try:
        import setools
    except ImportError:
        raise PolicyError("the setools library is missing (apt install python3-setools)") from None
    try:
        pol = setools.SELinuxPolicy(str(path))
    except (OSError, setools.exception.InvalidPolicy) as exc:
        raise PolicyError(f"cannot read SELinux policy {path}: {exc}") from None
    wanted: dict[str, set[str]] = {}
    for tclass, perm in (*ASSERTED, SYS_ADMIN):
        wanted.setdefault(tclass, set()).add(perm)
    grants: dict[str, set[str]] = {}
    conditional: dict[str, set[str]] = {}
    allow = setools.TERuletype.allow
    for rule in pol.terules():
        if rule.ruletype != allow:
            continue
        perms = wanted.get(str(rule.tclass))
        if not perms:
            continue
        hit = perms.intersection(rule.perms)
        if not hit:
            continue
        try:
            expr = f"{rule.conditional} is {str(rule.conditional_block).lower()}"
        except setools.exception.RuleNotConditional:
            expr = None
        for t in rule.source.expand():
            for perm in hit:
                k = key(str(rule.tclass), perm)
                grants.setdefault(k, set()).add(str(t))
                if expr:
                    conditional.setdefault(k, set()).add(f"{t} if {expr}")
    try:
        unconfined = {str(t) for t in pol.lookup_typeattr(UNCONFINED_ATTRIBUTE).expand()}
        has_attr = True
    except setools.exception.InvalidType:
        unconfined, has_attr = set(), False
    try:
        domain_count = len(list(pol.lookup_typeattr("domain").expand()))
    except setools.exception.InvalidType:
        domain_count = 0
    types = list(pol.types())
    return Exposure(
        policy=str(path),
        domain_count=domain_count,
        grants={k: tuple(sorted(v)) for k, v in sorted(grants.items())},
        unconfined=tuple(sorted(unconfined)),
        permissive=tuple(sorted(str(t) for t in types if t.ispermissive)),
        conditional={k: tuple(sorted(v)) for k, v in sorted(conditional.items())},
        has_unconfined_attribute=has_attr,
        types=frozenset(str(t) for t in types),
        attributes=frozenset(str(a) for a in pol.typeattributes()),
    )


def read_state(*, analyse_policy: bool | None = True, policy: Path | None = None) -> State:
    """This host's SELinux state, with the policy's exposure when asked for.

    ``analyse_policy``: True always, None only when SELinux is enabled (a scan on a
    host that merely has a policy installed does not pay the ~1 s), False never.
    ``policy`` names the binary to analyse (always analysed), e.g. an installed but
    inactive one. Errors become ``note``: the caller reports unknown, never a pass.
    """
    fs = selinuxfs()
    enforcing = None
    if fs is not None:
        try:
            enforcing = (fs / "enforce").read_text().strip() == "1"
        except OSError:
            enforcing = None
        current: Path | None = fs / "policy"
    else:
        current = installed_policy()
    enabled = fs is not None
    target = policy or current
    if target is None:
        return State(False, None, None, None, "no SELinux policy installed")
    wanted = policy is not None or analyse_policy or (analyse_policy is None and enabled)
    if not wanted:
        why = "SELinux is not enabled" if not enabled else "not asked for"
        return State(enabled, enforcing, str(target), None, f"policy not analysed ({why})")
    try:
        exposure = analyse(target)
    except PolicyError as exc:
        return State(enabled, enforcing, str(target), None, str(exc))
    return State(enabled, enforcing, str(target), exposure, None)
