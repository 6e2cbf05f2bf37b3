"""Where ecap keeps its state, overridable per invocation or by environment.

Defaults follow DESIGN.md: trusted public keys in ``/etc/ecap/trusted-keys``, the
journal in ``/var/lib/ecap/journal.jsonl``, live sessions under ``/run/ecap`` and
spent single-use tokens in ``/var/lib/ecap/used-tokens``. Tests and the demo point
these elsewhere so that they never touch the host's; a journal other than the
host's is named in every entry it gets, and the single-use location moves only
through a variable named unsafe.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_TRUST_DIR = Path("/etc/ecap/trusted-keys")
DEFAULT_JOURNAL = Path("/var/lib/ecap/journal.jsonl")
DEFAULT_RUN_DIR = Path("/run/ecap")
DEFAULT_SINGLE_USE_DIR = Path("/var/lib/ecap/used-tokens")
UNSAFE_SINGLE_USE_ENV = "ECAP_UNSAFE_SINGLE_USE_DIR"
"""Moves the single-use state away from the host's: for tests and demos only."""


def trust_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Directory of trusted public keys (``--trust-dir`` > ``ECAP_TRUST_DIR`` > default)."""
    return Path(explicit or os.environ.get("ECAP_TRUST_DIR") or DEFAULT_TRUST_DIR)


def journal_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The hash-chained journal (``--journal`` > ``ECAP_JOURNAL`` > default)."""
    return Path(explicit or os.environ.get("ECAP_JOURNAL") or DEFAULT_JOURNAL)


def run_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where live capture sessions register themselves (``ECAP_RUN_DIR``)."""
    return Path(explicit or os.environ.get("ECAP_RUN_DIR") or DEFAULT_RUN_DIR)


def sessions_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """``$ECAP_RUN_DIR/sessions``: one JSON file per running capture."""
    return run_dir(explicit) / "sessions"


def revocation_path(trust: Path) -> Path:
    """The signed revocation list lives beside the trusted keys it governs."""
    return trust / "revoked.jwt"


def is_host_journal(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is the host's journal (the default), not an override."""
    return os.path.realpath(path) == os.path.realpath(DEFAULT_JOURNAL)


def single_use_dir() -> Path:
    """Markers of consumed single-use tokens: one fixed place per host.

    Not derived from the journal path: ``ECAP_JOURNAL`` is an ordinary setting,
    and moving it must not make a spent token new again. Only
    ``ECAP_UNSAFE_SINGLE_USE_DIR`` moves it (tests and the demo), and every use of
    that override is announced and journaled.
    """
    return Path(unsafe_single_use_override() or DEFAULT_SINGLE_USE_DIR)


def unsafe_single_use_override() -> str | None:
    """The ``ECAP_UNSAFE_SINGLE_USE_DIR`` override, or None (production)."""
    return os.environ.get(UNSAFE_SINGLE_USE_ENV) or None
