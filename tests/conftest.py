"""Fixtures shared by every test area.

``ecap_env`` gives a test its own trust directory (with a fresh signing key),
journal, run directory and single-use state, exported through ECAP_* variables
so that both library calls and ``ecap-audit`` subprocesses use them and never
the host's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ecap.authz import keys, request, token

VENV_BIN = Path(sys.executable).parent


def ecap_cmd(tool: str) -> str:
    """Path of an installed console script (ecap-audit, ecap-detect, ecap-harden)."""
    path = VENV_BIN / tool
    assert path.exists(), f"{tool} is not installed in {VENV_BIN}; run make setup"
    return str(path)


@dataclass
class EcapEnv:
    root: Path
    trust_dir: Path
    journal: Path
    run_dir: Path
    single_use_dir: Path
    key_prefix: Path
    kid: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def key_path(self) -> Path:
        return Path(f"{self.key_prefix}.key")

    def authorize(
        self,
        pids: Sequence[int],
        *,
        modules: Sequence[str] = ("tls",),
        modes: Sequence[str] = ("text", "jsonl"),
        ttl: str = "1h",
        single_use: bool = False,
        descendants: bool = False,
        operator: str = "test-operator",
        reason: str = "pytest",
        now: float | None = None,
        max_lifetime: int = token.MAX_LIFETIME_SECONDS,
        grant_modules: Sequence[str] | None = None,
    ) -> str:
        """A token for live PIDs on this host, signed with this env's trusted key
        (``grant_modules``: the authorizer narrows the request's modules to these)."""
        req = request.build(list(pids), modules=list(modules), modes=list(modes), reason=reason,
                            descendants=descendants)  # fmt: skip
        return token.issue(
            req,
            keys.load_private(self.key_path),
            operator=operator,
            reason=reason,
            ttl_seconds=token.parse_duration(ttl),
            issuer="pytest",
            single_use=single_use,
            descendants=descendants,
            now=now,
            max_lifetime=max_lifetime,
            modules=list(grant_modules) if grant_modules else None,
        )

    def write_token(self, text: str, name: str = "token.jwt") -> Path:
        path = self.root / name
        path.write_text(text)
        path.chmod(0o600)
        return path

    def run(self, tool: str, *args: str, **kwargs) -> subprocess.CompletedProcess[str]:
        """Run an ecap console script with this env (or ``env=``); output captured as text."""
        kwargs.setdefault("timeout", 120)
        kwargs.setdefault("env", self.env)
        return subprocess.run([ecap_cmd(tool), *args], capture_output=True, text=True, **kwargs)


@pytest.fixture
def ecap_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[EcapEnv]:
    root = tmp_path / "ecap"
    root.mkdir(mode=0o700)
    trust_dir = root / "trusted-keys"
    journal = root / "journal.jsonl"
    run_dir = root / "run"
    single_use_dir = root / "used-tokens"
    prefix = root / "signer"
    _, pub, kid = keys.generate(prefix)
    keys.install_trusted(pub, trust_dir)
    env = {
        **os.environ,
        "ECAP_TRUST_DIR": str(trust_dir),
        "ECAP_JOURNAL": str(journal),
        "ECAP_RUN_DIR": str(run_dir),
        "ECAP_UNSAFE_SINGLE_USE_DIR": str(single_use_dir),
        "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
    }
    for name in ("ECAP_TRUST_DIR", "ECAP_JOURNAL", "ECAP_RUN_DIR", "ECAP_UNSAFE_SINGLE_USE_DIR"):
        monkeypatch.setenv(name, env[name])
    yield EcapEnv(root, trust_dir, journal, run_dir, single_use_dir, prefix, kid, env)


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A live, harmless process to authorize (killed after the test)."""
    proc = subprocess.Popen(["sleep", "600"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def go_tls_binaries() -> tuple[Path, Path]:
    """(with .symtab, stripped) builds of a small Go crypto/tls client."""
    from tests.go_programs import build_go_tls_client

    return build_go_tls_client()


@pytest.fixture(scope="session")
def gotls_clients() -> dict[str, Path]:
    """The gotls test client built plain, stripped, PIE and stripped PIE (cached)."""
    from tests.go_programs import build_gotls_clients

    return build_gotls_clients()
