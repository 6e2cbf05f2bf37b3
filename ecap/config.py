"""Where ecap keeps its state, overridable per invocation or by environment.

Defaults follow DESIGN.md: trusted public keys in ``/etc/ecap/trusted-keys``, the
journal in ``/var/lib/ecap/journal.jsonl`` and live sessions under ``/run/ecap``.
Tests and the demo point these elsewhere so that they never touch the host's.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_TRUST_DIR = Path("/etc/ecap/trusted-keys")
DEFAULT_JOURNAL = Path("/var/lib/ecap/journal.jsonl")
DEFAULT_RUN_DIR = Path("/run/ecap")


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


def single_use_dir(journal: Path) -> Path:
    """Markers of consumed single-use tokens, kept beside the journal."""
    return journal.parent / "used-tokens"
