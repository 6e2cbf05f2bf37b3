"""Ed25519 signing keys, their fingerprints, and the trust directory.

A key's fingerprint (the token's ``kid``) is the SHA-256 of its raw 32-byte public
key, in hex. Trusted public keys live in the trust directory as ``<kid>.pub``;
lookups go by fingerprint only — a ``kid`` is validated as 64 hex digits before
it is ever joined to a path, and the loaded key's own fingerprint must equal it.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ecap import fsutil
from ecap.authz.claims import SHA256_RE
from ecap.errors import AuthorizationRefused, UsageError
from ecap.fsutil import write_private_atomic

KID_RE = SHA256_RE
"""A kid is the SHA-256 fingerprint of a public key."""


def fingerprint(public_key: Ed25519PublicKey) -> str:
    """SHA-256 (hex) of the raw public key: the ``kid`` of tokens it signs."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(raw)
    return digest.finalize().hex()


def generate(
    prefix: str | os.PathLike[str], *, passphrase: bytes | None = None
) -> tuple[Path, Path, str]:
    """Write PREFIX.key (PKCS#8 PEM, 0600, encrypted if a passphrase is given) and PREFIX.pub.

    Refuses to overwrite an existing private key: losing a signing key silently is
    worse than an error.
    """
    key_path = Path(f"{prefix}.key")
    pub_path = Path(f"{prefix}.pub")
    if key_path.exists():
        raise UsageError(f"{key_path} already exists", hint="choose another --out prefix")
    private = Ed25519PrivateKey.generate()
    encryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    write_private_atomic(key_path, pem)
    public = private.public_key()
    write_private_atomic(pub_path, public_pem(public), mode=0o644)
    return key_path, pub_path, fingerprint(public)


def public_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_private(
    path: str | os.PathLike[str], passphrase: bytes | None = None
) -> Ed25519PrivateKey:
    """Load an Ed25519 private key; one-line errors for the usual mistakes."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read signing key {path}: {exc.strerror}") from exc
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError as exc:
        hint = "set ECAP_KEY_PASSPHRASE or use --passphrase-file" if not passphrase else None
        raise UsageError(f"signing key {path}: {exc}", hint=hint) from exc
    except ValueError as exc:
        raise UsageError(f"signing key {path} is not a valid PEM private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError(f"signing key {path} is not an Ed25519 key", hint="make one with keygen")
    return key


def load_public(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """Load an Ed25519 public key from PEM."""
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path} is not a readable PEM public key ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise UsageError(f"{path} is not an Ed25519 public key")
    return key


def trusted_key(trust_dir: Path, kid: object) -> Ed25519PublicKey:
    """The trusted public key whose fingerprint is ``kid`` (fail closed otherwise)."""
    if not isinstance(kid, str) or not KID_RE.match(kid):
        raise AuthorizationRefused(
            "token kid is not a key fingerprint (64 hex digits)",
            hint="the token was not made by 'ecap-audit authorize'",
        )
    path = trust_dir / f"{kid}.pub"
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except FileNotFoundError as exc:
        raise AuthorizationRefused(
            f"token signed by unknown key {kid[:16]}… (not in {trust_dir})",
            hint="install the signer's public key with 'ecap-audit trust PUBKEY'",
        ) from exc
    except (OSError, ValueError) as exc:
        raise AuthorizationRefused(f"trusted key file {path} is unreadable ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey) or fingerprint(key) != kid:
        raise AuthorizationRefused(
            f"trusted key file {path.name} does not hold the key its name claims",
            hint="remove it and re-add the key with 'ecap-audit trust'",
        )
    return key


def install_trusted(public_path: str | os.PathLike[str], trust_dir: Path) -> tuple[Path, str]:
    """Copy a public key into the trust directory under its fingerprint."""
    key = load_public(public_path)
    kid = fingerprint(key)
    with fsutil.dir_fd(trust_dir, create=True, mode=0o755, what="trust directory") as directory:
        fsutil.write_private_atomic_at(directory, f"{kid}.pub", public_pem(key), mode=0o644)
    dest = trust_dir / f"{kid}.pub"
    return dest, kid


def read_passphrase(passphrase_file: str | None) -> bytes | None:
    """Passphrase from a file (first line) or ECAP_KEY_PASSPHRASE; None when neither."""
    if passphrase_file:
        try:
            return Path(passphrase_file).read_bytes().splitlines()[0]
        except (OSError, IndexError) as exc:
            raise UsageError(f"cannot read passphrase from {passphrase_file}") from exc
    env = os.environ.get("ECAP_KEY_PASSPHRASE")
    return env.encode() if env else None
