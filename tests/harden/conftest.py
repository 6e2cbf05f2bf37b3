"""Fixtures for ecap-harden tests: the CLI runner and a generated policy directory."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ecap_cmd

FIXTURES = Path(__file__).parent / "fixtures"


def harden(*args: str, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    """Run the installed ``ecap-harden`` console script."""
    return subprocess.run(
        [ecap_cmd("ecap-harden"), *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def run_harden() -> Callable[..., subprocess.CompletedProcess[str]]:
    return harden


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``generate`` run once per module for each profile (with one per-app profile)."""
    out = {}
    for profile in ("balanced", "strict"):
        d = tmp_path_factory.mktemp(f"policies-{profile}")
        proc = harden("generate", "--profile", profile, "--out", str(d), "--app", "/usr/bin/curl")
        assert proc.returncode == 0, proc.stderr
        out[profile] = d
    return out
