"""Token verification without use: is this a valid authorization for this host?

Used by ``ecap-audit verify`` and by the detector when it decides whether a live
capture is authorized. It never consumes a single-use token.
"""

from __future__ import annotations

from pathlib import Path

from ecap import config
from ecap.authz.policy import AllOf, Context, token_checks
from ecap.authz.token import MAX_LIFETIME_SECONDS, Grant


def verify_token(
    token: str,
    *,
    trust_dir: Path | None = None,
    check_host: bool = True,
    now: float | None = None,
    max_lifetime: int = MAX_LIFETIME_SECONDS,
) -> Grant:
    """The verified :class:`Grant`, or :class:`AuthorizationRefused` with the reason."""
    ctx = Context(token=token, trust_dir=config.trust_dir(trust_dir), max_lifetime=max_lifetime)
    if now is not None:
        ctx.now = now
    AllOf(*token_checks(check_host=check_host)).verify(ctx)
    return ctx.require_grant()
