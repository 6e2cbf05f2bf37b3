"""The authorization gate every capture passes before anything touches the kernel.

It verifies the token (signature, time, lifetime, revocation, host), checks that
each requested PID is in scope with the same start time and executable, that the
module and output mode are granted, consumes a single-use token, and journals the
decision either way — refusals included, so an auditor also sees what was tried.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from ecap import config
from ecap.authz.policy import (
    AllOf,
    Allowed,
    Context,
    ExecutableMatches,
    PidsInScope,
    token_checks,
)
from ecap.authz.token import Grant
from ecap.errors import AuthorizationRefused
from ecap.journal import Journal

_JTI_RE = re.compile(r"^[0-9a-f]{32}$")


def authorize_capture(
    token: str,
    *,
    pids: Sequence[int],
    module: str,
    mode: str,
    trust_dir: Path | None = None,
    journal: Journal | None = None,
) -> Grant:
    """Grant or refuse a capture of ``pids`` with ``module`` writing ``mode``."""
    journal = journal or Journal()
    ctx = Context(token=token, trust_dir=config.trust_dir(trust_dir))
    request = {"pids": list(pids), "module": module, "mode": mode}
    try:
        policy = AllOf(
            *token_checks(check_host=True),
            PidsInScope(pids),
            ExecutableMatches(pids),
            Allowed("module", module),
            Allowed("mode", mode),
        )
        policy.verify(ctx)
        grant = ctx.require_grant()
        if grant.single_use:
            consume_single_use(grant, journal.path)
    except AuthorizationRefused as refusal:
        known = ctx.grant.summary() if ctx.grant else {}
        journal.append(
            "gate.refused",
            reason=refusal.message,
            jti=known.get("jti"),
            operator=known.get("operator"),
            **request,
        )
        raise
    journal.append(
        "gate.granted",
        jti=grant.jti,
        operator=grant.operator,
        reason=grant.reason,
        issuer=grant.issuer,
        expires_at=grant.expires_at,
        **request,
    )
    return grant


def consume_single_use(grant: Grant, journal_path: Path) -> None:
    """Mark a single-use token as spent; a second use is refused.

    The marker is created with O_EXCL, so two captures racing with the same token
    cannot both win.
    """
    if not _JTI_RE.match(grant.jti):
        raise AuthorizationRefused("single-use token has a malformed jti")
    directory = config.single_use_dir(journal_path)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(directory / grant.jti, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise AuthorizationRefused(
            f"single-use token {grant.jti} has already been used",
            hint="request a new authorization",
        ) from exc
    os.close(fd)
