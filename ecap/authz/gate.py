"""The authorization gate every capture passes before anything touches the kernel.

It verifies the token (signature, time, lifetime, revocation, host), checks that
each requested PID is in scope with the same start time and executable, that the
module and output mode are granted, consumes a single-use token, and journals the
decision either way — refusals included, so an auditor also sees what was tried.
Single-use state belongs to the host, not to whichever journal this run writes.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ecap import config, fsutil
from ecap.authz import claims
from ecap.authz.policy import (
    AllOf,
    Allowed,
    Context,
    ExecutableMatches,
    PidsInScope,
    token_checks,
)
from ecap.authz.token import Grant
from ecap.errors import AuthorizationRefused, EnvironmentNotReady
from ecap.journal import Journal
from ecap.text import printable


def authorize_capture(
    token: str,
    *,
    pids: Sequence[int],
    module: str,
    mode: str,
    trust_dir: Path | None = None,
    journal: Journal | None = None,
    through: Sequence[str] = (),
) -> Grant:
    """Grant or refuse a capture of ``pids`` with ``module`` writing ``mode``.

    ``through``: the modules ``module`` captures with (``auto``'s choice for these
    processes); the token must grant each of them too, and a refusal names the
    first one it does not.

    No grant leaves the gate unjournaled: when ``gate.granted`` cannot be written
    (a full disk) the capture fails with exit 4 and a single-use token is given
    back, since it was never used.
    """
    journal = journal or Journal()
    ctx = Context(token=token, trust_dir=config.trust_dir(trust_dir))
    request: dict = {"pids": list(pids), "module": module, "mode": mode}
    if through:
        request["modules"] = list(through)
    spent: SpentToken | None = None
    try:
        policy = AllOf(
            *token_checks(check_host=True),
            PidsInScope(pids),
            ExecutableMatches(pids),
            Allowed("module", module),
            *(Allowed("module", name) for name in through),
            Allowed("mode", mode),
        )
        policy.verify(ctx)
        grant = ctx.require_grant()
        if grant.single_use:
            spent = consume_single_use(grant)
    except AuthorizationRefused as refusal:
        known = ctx.grant.summary() if ctx.grant else {}
        try:
            journal.append(
                "gate.refused",
                reason=refusal.message,
                jti=known.get("jti"),
                operator=known.get("operator"),
                **request,
            )
        except EnvironmentNotReady as exc:
            raise EnvironmentNotReady(
                f"{exc.message} (the gate refused: {refusal.message})", hint=exc.hint
            ) from refusal
        raise
    extra = {"single_use_dir_override": str(spent.directory)} if spent and spent.unsafe else {}
    try:
        journal.append(
            "gate.granted",
            jti=grant.jti,
            operator=grant.operator,
            reason=grant.reason,
            issuer=grant.issuer,
            expires_at=grant.expires_at,
            **request,
            **extra,
        )
    except BaseException:
        if spent is not None:
            spent.give_back()
        raise
    return grant


@dataclass(frozen=True)
class SpentToken:
    """The marker that makes a single-use token spent (removable until journaled)."""

    directory: Path
    jti: str
    unsafe: bool
    """The location came from ``ECAP_UNSAFE_SINGLE_USE_DIR``, not the host's."""

    def give_back(self) -> None:
        """Remove the marker: the grant it belonged to was never recorded."""
        with contextlib.suppress(OSError), fsutil.dir_fd(self.directory) as fd:
            os.unlink(self.jti, dir_fd=fd)


def consume_single_use(grant: Grant) -> SpentToken:
    """Mark a single-use token as spent on this host; a second use is refused.

    The marker lives in the host's fixed single-use directory (root's, 0700, never
    reached through a link), whatever journal this capture writes to. It is
    created with O_EXCL, so two captures racing with the same token cannot both win.
    """
    claims.jti(grant.jti)  # joined to a path below: its shape is checked again here
    unsafe = config.unsafe_single_use_override() is not None
    directory = config.single_use_dir()
    if unsafe:
        print(
            f"ecap-audit: WARNING: single-use tokens are tracked in {printable(str(directory))} "
            f"({config.UNSAFE_SINGLE_USE_ENV}), not in the host's {config.DEFAULT_SINGLE_USE_DIR}: "
            "a token spent here is new again elsewhere; for tests and demos only",
            file=sys.stderr,
            flush=True,
        )
    with fsutil.dir_fd(
        directory, create=True, private=True, what="single-use state directory"
    ) as fd:
        try:
            marker = fsutil.create_new_at(fd, grant.jti)
        except FileExistsError as exc:
            raise AuthorizationRefused(
                f"single-use token {grant.jti} has already been used",
                hint="request a new authorization",
            ) from exc
        os.close(marker)
    return SpentToken(directory, grant.jti, unsafe)
