"""Authorization tokens: JWTs signed with Ed25519 that scope one capture.

Claims (DESIGN.md "What a token is"):

``iss``          who issued it (the authorizing authority)
``sub``          the operator who will run the capture
``reason``       why (copied into every journal entry)
``jti``          unique id (revocation, single use, journal correlation)
``iat/nbf/exp``  issue time, validity window
``host``         ``{"hostname", "machine_id"}`` of the one host it is valid on
``scope``        ``{"targets": [{"pid", "start_time", "exe", "sha256", "exe_dev",
                 "exe_ino"}], "modules", "modes", "single_use", "descendants"}``
                 (``descendants``: the processes the targets fork are covered too;
                 absent means false)

Every claim's shape is checked by :mod:`ecap.authz.claims` before signing and
again when a token is verified.

The header's ``kid`` is the signing key's fingerprint; ``alg`` is always EdDSA.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ecap.authz import claims
from ecap.authz.keys import fingerprint
from ecap.authz.request import validate as validate_request
from ecap.errors import UsageError

ALGORITHM = "EdDSA"
MAX_LIFETIME_SECONDS = 24 * 3600
"""Longest validity (exp - nbf) a token may have; enforced on issue and verify."""
CLOCK_SKEW_SECONDS = 60
"""Tolerated clock difference between authorizer and host."""
MAX_TOKEN_BYTES = 16 * 1024
"""Anything larger is refused before parsing (a token is a few hundred bytes)."""

_DURATION_RE = re.compile(r"^(\d+)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """``90s``, ``30m``, ``2h``, ``1d`` or plain seconds → seconds."""
    m = _DURATION_RE.match(text.strip())
    if not m or int(m.group(1)) == 0:
        raise UsageError(f"invalid duration {text!r}", hint="use e.g. 30m, 2h or 1d")
    return int(m.group(1)) * _UNITS[m.group(2)]


@dataclass(frozen=True)
class Target:
    """One process the token authorizes: PID bound to its start time and executable."""

    pid: int
    start_time: int
    exe: str | None = None
    sha256: str | None = None
    exe_dev: int | None = None
    """Device and inode of the executable when the request was made (/proc/PID/exe)."""
    exe_ino: int | None = None


@dataclass(frozen=True)
class Grant:
    """A verified authorization (only ever built from a verified token)."""

    token: str
    jti: str
    kid: str
    issuer: str
    operator: str
    reason: str
    issued_at: float
    not_before: float
    expires_at: float
    hostname: str
    machine_id: str | None
    targets: tuple[Target, ...]
    modules: tuple[str, ...]
    modes: tuple[str, ...]
    single_use: bool
    descendants: bool = False
    """The targets' descendants (processes they fork while captured) are covered."""

    @property
    def pids(self) -> tuple[int, ...]:
        return tuple(t.pid for t in self.targets)

    def target_for(self, pid: int) -> Target | None:
        return next((t for t in self.targets if t.pid == pid), None)

    def summary(self) -> dict[str, Any]:
        """Claims as plain data for printing and journalling (no token text)."""
        return {
            "jti": self.jti,
            "kid": self.kid,
            "issuer": self.issuer,
            "operator": self.operator,
            "reason": self.reason,
            "issued_at": self.issued_at,
            "not_before": self.not_before,
            "expires_at": self.expires_at,
            "hostname": self.hostname,
            "machine_id": self.machine_id,
            "targets": [t.__dict__ for t in self.targets],
            "modules": list(self.modules),
            "modes": list(self.modes),
            "single_use": self.single_use,
            "descendants": self.descendants,
        }


def grant_from_claims(token: str, kid: str, decoded: dict[str, Any]) -> Grant:
    """Build a Grant from decoded, signature-checked claims.

    Every claim's shape is checked (:class:`~ecap.authz.claims.ClaimError`, a
    ValueError, names the bad field): a signature says who wrote the claims, not
    that they are sane.
    """
    scope = claims.object_(decoded.get("scope"), "scope")
    hostinfo = claims.host(decoded.get("host"))
    return Grant(
        token=token,
        jti=claims.jti(decoded.get("jti")),
        kid=kid,
        issuer=claims.text(decoded.get("iss"), "iss"),
        operator=claims.text(decoded.get("sub"), "sub"),
        reason=claims.text(
            decoded.get("reason", ""), "reason", required=False, limit=claims.MAX_REASON
        ),
        issued_at=claims.timestamp(decoded.get("iat"), "iat"),
        not_before=claims.timestamp(decoded.get("nbf"), "nbf"),
        expires_at=claims.timestamp(decoded.get("exp"), "exp"),
        hostname=hostinfo["hostname"],
        machine_id=hostinfo["machine_id"],
        targets=tuple(Target(**t) for t in claims.targets(scope.get("targets"), "scope.targets")),
        modules=tuple(claims.names(scope.get("modules"), "scope.modules")),
        modes=tuple(claims.names(scope.get("modes"), "scope.modes")),
        single_use=claims.flag(scope.get("single_use", False), "scope.single_use"),
        descendants=claims.flag(scope.get("descendants", False), "scope.descendants"),
    )


def issue(
    request: dict[str, Any],
    key: Ed25519PrivateKey,
    *,
    operator: str,
    reason: str,
    ttl_seconds: int,
    issuer: str,
    modules: list[str] | None = None,
    modes: list[str] | None = None,
    single_use: bool = False,
    descendants: bool = False,
    max_lifetime: int = MAX_LIFETIME_SECONDS,
    now: float | None = None,
) -> str:
    """Sign a token for the facts in ``request``; may narrow modules/modes, never widen.

    ``descendants`` grants the targets' descendants; only when the request asked
    for them (a token may narrow a request, never widen it).
    """
    if not operator.strip():
        raise UsageError("--operator must name the person who will run the capture")
    if not reason.strip():
        raise UsageError("--reason must say why the capture is authorized")
    try:
        claims.text(operator.strip(), "--operator")
        claims.text(reason.strip(), "--reason", limit=claims.MAX_REASON)
        claims.text(issuer, "--issuer")
    except claims.ClaimError as exc:
        raise UsageError(str(exc), hint="use printable text") from exc
    request = validate_request(request, "the request")
    if ttl_seconds > max_lifetime:
        raise UsageError(
            f"--ttl {ttl_seconds}s exceeds the maximum token lifetime of {max_lifetime}s",
            hint="authorize a shorter window and renew it if needed",
        )
    granted_modules = _narrow(request["modules"], modules, "module")
    granted_modes = _narrow(request["modes"], modes, "mode")
    if descendants and not request.get("descendants", False):
        raise UsageError(
            "--with-descendants was not requested",
            hint="a token may only narrow the request: make the request with --with-descendants",
        )
    issued = int(now if now is not None else time.time())
    payload = {
        "iss": issuer,
        "sub": operator.strip(),
        "reason": reason.strip(),
        "request_reason": request.get("reason", ""),
        "jti": uuid.uuid4().hex,
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl_seconds,
        "host": dict(request["host"]),
        "scope": {
            "targets": [
                {k: v for k, v in claims.target(t, "target").items() if v is not None}
                for t in request["targets"]
            ],
            "modules": granted_modules,
            "modes": granted_modes,
            "single_use": single_use,
            **({"descendants": True} if descendants else {}),
        },
    }
    headers = {"kid": fingerprint(key.public_key()), "typ": "JWT"}
    return jwt.encode(payload, key, algorithm=ALGORITHM, headers=headers)


def _narrow(requested: list[str], chosen: list[str] | None, what: str) -> list[str]:
    if not chosen:
        return sorted(requested)
    extra = set(chosen) - set(requested)
    if extra:
        raise UsageError(
            f"{what} {', '.join(sorted(extra))} was not requested",
            hint=f"a token may only narrow the request's {what}s",
        )
    return sorted(set(chosen))
