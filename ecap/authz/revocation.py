"""The revocation list: a signed file of revoked token ids and key ids.

It lives at ``<trust dir>/revoked.jwt`` and is itself a JWT signed by a trusted
key, so whoever can drop a file beside the keys cannot un-revoke a token by
editing it. A list that is present but does not verify refuses everything (fail
closed): a broken list must be fixed, not ignored.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ecap import config
from ecap.authz import claims, keys
from ecap.errors import AuthorizationRefused, UsageError
from ecap.fsutil import write_private_atomic

TYPE = "ecap-revocation"


@dataclass(frozen=True)
class Revocations:
    jtis: frozenset[str] = frozenset()
    kids: frozenset[str] = frozenset()


def load(trust_dir: Path) -> Revocations:
    """The verified revocation list, empty when none exists."""
    path = config.revocation_path(trust_dir)
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return Revocations()
    except OSError as exc:
        raise AuthorizationRefused(f"cannot read revocation list {path}: {exc.strerror}") from exc
    try:
        header = jwt.get_unverified_header(text)
        key = keys.trusted_key(trust_dir, header.get("kid"))
        listed = jwt.decode(text, key, algorithms=["EdDSA"], options={"require": ["iat"]})
    except (jwt.PyJWTError, AuthorizationRefused) as exc:
        raise AuthorizationRefused(
            f"revocation list {path} does not verify ({exc}); refusing all tokens",
            hint="re-create it with 'ecap-audit revoke'",
        ) from exc
    if listed.get("typ") != TYPE:
        raise AuthorizationRefused(f"{path} is not an ecap revocation list; refusing all tokens")
    return Revocations(
        frozenset(map(str, listed.get("jtis", []))), frozenset(map(str, listed.get("kids", [])))
    )


def revoke(
    trust_dir: Path, key: Ed25519PrivateKey, *, jtis: list[str], kids: list[str]
) -> tuple[Path, Revocations]:
    """Add token ids / key ids to the list and re-sign it with ``key``."""
    if not jtis and not kids:
        raise UsageError("nothing to revoke", hint="give --jti and/or --kid")
    for kid in kids:
        if not keys.KID_RE.match(kid):
            raise UsageError("a --kid is not a key fingerprint (64 lowercase hex digits)")
    for jti in jtis:
        if not claims.JTI_RE.match(jti):
            raise UsageError("a --jti is not a token id (32 lowercase hex digits)")
    current = load(trust_dir)
    updated = Revocations(current.jtis | set(jtis), current.kids | set(kids))
    payload = {
        "typ": TYPE,
        "iat": int(time.time()),
        "jtis": sorted(updated.jtis),
        "kids": sorted(updated.kids),
    }
    token = jwt.encode(
        payload, key, algorithm="EdDSA", headers={"kid": keys.fingerprint(key.public_key())}
    )
    path = write_private_atomic(config.revocation_path(trust_dir), token + "\n", mode=0o644)
    return path, updated
