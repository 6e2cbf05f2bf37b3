"""The verification policy: one small check per rule, composed with :class:`AllOf`.

Each check's ``verify(ctx)`` either returns or raises
:class:`~ecap.errors.AuthorizationRefused` with the precise reason, so the gate,
``ecap-audit verify`` and the detector all report the same words. Checks run in
order and later ones rely on what earlier ones established (the signature before
anything reads claims).
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import jwt

from ecap import host, procfs
from ecap.authz import keys, revocation
from ecap.authz.token import (
    ALGORITHM,
    CLOCK_SKEW_SECONDS,
    MAX_LIFETIME_SECONDS,
    MAX_TOKEN_BYTES,
    Grant,
    Target,
    grant_from_claims,
)
from ecap.errors import AuthorizationRefused

_JWT_SHAPE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@dataclass
class Context:
    """What the checks share: inputs, and facts established by earlier checks."""

    token: str
    trust_dir: Path
    now: float = field(default_factory=time.time)
    max_lifetime: int = MAX_LIFETIME_SECONDS
    header: dict[str, Any] = field(default_factory=dict)
    grant: Grant | None = None

    def require_grant(self) -> Grant:
        if self.grant is None:  # a programming error: composition order is wrong
            raise AuthorizationRefused("internal: claims checked before the signature")
        return self.grant


class Check(Protocol):
    def verify(self, ctx: Context) -> None: ...


class WellFormed:
    """Size cap, three base64url parts, a JSON header — before any crypto."""

    def verify(self, ctx: Context) -> None:
        token = ctx.token.strip()
        if len(token.encode()) > MAX_TOKEN_BYTES:
            raise AuthorizationRefused(
                f"token is larger than {MAX_TOKEN_BYTES} bytes", hint="use the token file as issued"
            )
        if not _JWT_SHAPE.match(token):
            raise AuthorizationRefused(
                "token is not a well-formed JWT (truncated or not a token)",
                hint="pass the file written by 'ecap-audit authorize'",
            )
        try:
            head = token.split(".", 1)[0]
            header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
        except (ValueError, UnicodeDecodeError) as exc:
            raise AuthorizationRefused("token header is not valid base64url JSON") from exc
        if not isinstance(header, dict):
            raise AuthorizationRefused("token header is not a JSON object")
        ctx.token = token
        ctx.header = header


class PinnedAlgorithm:
    """Only EdDSA: refuses ``none``, HMAC with a public key as secret, RSA..."""

    def verify(self, ctx: Context) -> None:
        alg = ctx.header.get("alg")
        if alg != ALGORITHM:
            raise AuthorizationRefused(
                f"token algorithm {alg!r} is not allowed (only {ALGORITHM})",
                hint="tokens must be made by 'ecap-audit authorize'",
            )


_REQUIRED = ["iss", "sub", "jti", "iat", "nbf", "exp", "host", "scope"]


class TrustedSignature:
    """kid → trusted key (by fingerprint), then the EdDSA signature over the token."""

    def verify(self, ctx: Context) -> None:
        kid = ctx.header.get("kid")
        key = keys.trusted_key(ctx.trust_dir, kid)
        try:
            claims = jwt.decode(
                ctx.token,
                key,
                algorithms=[ALGORITHM],
                options={
                    "require": _REQUIRED,
                    "verify_exp": False,  # checked by TimeWindow against ctx.now
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": False,
                },
            )
        except jwt.InvalidSignatureError as exc:
            raise AuthorizationRefused(
                "token signature does not verify (altered, or signed by another key)"
            ) from exc
        except jwt.MissingRequiredClaimError as exc:
            raise AuthorizationRefused(f"token lacks the required claim {exc.claim!r}") from exc
        except jwt.PyJWTError as exc:
            raise AuthorizationRefused(f"token rejected: {exc}") from exc
        try:
            ctx.grant = grant_from_claims(ctx.token, str(kid), claims)
        except (KeyError, TypeError, ValueError) as exc:
            raise AuthorizationRefused(f"token claims are malformed ({exc})") from exc


class TimeWindow:
    """nbf ≤ now < exp, with a bounded clock skew."""

    def __init__(self, skew: int = CLOCK_SKEW_SECONDS) -> None:
        self.skew = skew

    def verify(self, ctx: Context) -> None:
        g = ctx.require_grant()
        if ctx.now >= g.expires_at + self.skew:
            raise AuthorizationRefused(
                f"token expired at {iso(g.expires_at)}", hint="request a new authorization"
            )
        if ctx.now < g.not_before - self.skew:
            raise AuthorizationRefused(
                f"token is not valid before {iso(g.not_before)}",
                hint="check the clocks of this host and the authorizer",
            )


class LifetimeCap:
    """A token may not live longer than the cap, whatever its signer chose."""

    def verify(self, ctx: Context) -> None:
        g = ctx.require_grant()
        lifetime = g.expires_at - min(g.not_before, g.issued_at)
        if lifetime > ctx.max_lifetime:
            raise AuthorizationRefused(
                f"token lifetime {int(lifetime)}s exceeds the maximum of {ctx.max_lifetime}s",
                hint="authorize a shorter window",
            )


class NotRevoked:
    """The signed revocation list (if any) names neither this token nor its key."""

    def verify(self, ctx: Context) -> None:
        g = ctx.require_grant()
        revoked = revocation.load(ctx.trust_dir)
        if g.jti in revoked.jtis:
            raise AuthorizationRefused(f"token {g.jti} has been revoked")
        if g.kid in revoked.kids:
            raise AuthorizationRefused(f"the key that signed this token ({g.kid[:16]}…) is revoked")


class HostBinding:
    """The token names this host: host name and machine-id both match."""

    def verify(self, ctx: Context) -> None:
        g = ctx.require_grant()
        here = host.hostname()
        if g.hostname != here:
            raise AuthorizationRefused(
                f"token is for host {g.hostname!r}, this is {here!r}",
                hint="request an authorization on this host",
            )
        mid = host.machine_id()
        if g.machine_id != mid:
            raise AuthorizationRefused(
                "token machine-id does not match this host's /etc/machine-id",
                hint="request an authorization on this host",
            )


class PidsInScope:
    """Every requested PID is a target of the token, alive, with the same start time."""

    def __init__(self, pids: Sequence[int]) -> None:
        if not pids:
            raise AuthorizationRefused("no PID given", hint="name the target with --pid")
        self.pids = list(dict.fromkeys(pids))

    def verify(self, ctx: Context) -> None:
        g = ctx.require_grant()
        for pid in self.pids:
            target = g.target_for(pid)
            if target is None:
                in_scope = ", ".join(str(p) for p in g.pids)
                raise AuthorizationRefused(
                    f"PID {pid} is not in the token's scope (authorized: {in_scope})"
                )
            try:
                started = procfs.start_time(pid)
            except procfs.ProcessGone as exc:
                raise AuthorizationRefused(f"PID {pid} is not running") from exc
            if started != target.start_time:
                raise AuthorizationRefused(
                    f"PID {pid} is a different process (start time {started}, token has "
                    f"{target.start_time}): the PID was reused",
                    hint="request a new authorization for the current process",
                )


def executable_problem(pid: int, target: Target) -> str | None:
    """Why PID does not run the executable its token target names, or None when it does.

    The start time survives exec(), so PID + start time alone cannot tell the
    process that was authorized from the program it exec'd since. The token's
    device/inode (when present) must be the file /proc/PID/exe names now, and its
    SHA-256 (when present) that file's hash. Raises ProcessGone for an exited PID.
    """
    if target.exe_ino is not None and procfs.exe_identity(pid) != (
        target.exe_dev,
        target.exe_ino,
    ):
        return (
            f"PID {pid} now runs another executable file than the token names "
            "(device/inode of /proc/PID/exe differ): it exec'd something else"
        )
    if target.sha256 and procfs.exe_sha256(pid) != target.sha256:
        return (
            f"PID {pid} runs an executable whose SHA-256 differs from the token's "
            "(it exec'd something else, or the binary is not the one authorized)"
        )
    return None


class TargetsInScope:
    """Recorded targets (PID and start time) are all in the token's scope.

    For claims made after the fact — a session file, a capture record — rather
    than a capture about to start: a target that has exited since is fine
    (``live=False`` skips the liveness question entirely), but a live PID with
    another start time is a recycled PID, and one that runs another executable
    than the token names exec'd something else: neither is the authorized process.
    """

    def __init__(self, targets: Sequence[tuple[int, int | None]], *, live: bool = True) -> None:
        if not targets:
            raise AuthorizationRefused("no target recorded")
        self.targets = list(targets)
        self.live = live

    def verify(self, ctx: Context) -> None:
        g = ctx.require_grant()
        for pid, start_time in self.targets:
            scoped = g.target_for(pid)
            if scoped is None or (start_time is not None and start_time != scoped.start_time):
                raise AuthorizationRefused(f"target pid {pid} is not in the token's scope")
            if not self.live:
                continue
            try:
                if procfs.start_time(pid) != scoped.start_time:
                    raise AuthorizationRefused(f"target pid {pid} was recycled")
                problem = executable_problem(pid, scoped)
            except procfs.ProcessGone:
                continue  # exited; a capture may still be attached (judged by its programs)
            if problem:
                raise AuthorizationRefused(problem)


class ExecutableMatches:
    """When the token pins the executable, the running binary must be that one."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = list(dict.fromkeys(pids))

    def verify(self, ctx: Context) -> None:
        g = ctx.require_grant()
        for pid in self.pids:
            target = g.target_for(pid)
            if target is None:
                continue
            try:
                problem = executable_problem(pid, target)
            except procfs.ProcessGone as exc:
                raise AuthorizationRefused(f"PID {pid} is not running") from exc
            if problem:
                raise AuthorizationRefused(problem)


class Allowed:
    """A module (or output mode) is among those the token grants."""

    def __init__(self, what: str, value: str) -> None:
        self.what = what
        self.value = value

    def verify(self, ctx: Context) -> None:
        g = ctx.require_grant()
        granted = g.modules if self.what == "module" else g.modes
        if self.value not in granted:
            raise AuthorizationRefused(
                f"{self.what} {self.value!r} is not allowed by the token "
                f"(allowed: {', '.join(granted) or 'none'})"
            )


class AllOf:
    """Run checks in order; the first failure refuses. Empty compositions are misuse."""

    def __init__(self, *checks: Check) -> None:
        if not checks:
            raise ValueError("an empty policy would accept anything")
        self.checks = checks

    def verify(self, ctx: Context) -> None:
        for check in self.checks:
            check.verify(ctx)


def token_checks(*, check_host: bool = True, check_time: bool = True) -> list[Check]:
    """What makes a token valid on this host, independent of what it is used for.

    ``check_time=False`` leaves :class:`TimeWindow` out, for callers that judge the
    window themselves at several instants (a genuine token that has expired is
    "expired", not "forged") without verifying the signature again for each.
    """
    checks: list[Check] = [
        WellFormed(),
        PinnedAlgorithm(),
        TrustedSignature(),
        *([TimeWindow()] if check_time else []),
        LifetimeCap(),
        NotRevoked(),
    ]
    if check_host:
        checks.append(HostBinding())
    return checks
