"""Packaging: every subpackage is declared, console scripts are installed."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAPPED = {
    "ecap": "ecap",
    "ecap.capture": "capture",
    "ecap.detect": "detect",
    "ecap.harden": "harden",
    "ecap.reports": "reports",
    "ecap.bpf": "bpf",
    "ecap.policies": "policies",
}


def test_every_package_directory_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == MAPPED
    declared = set(config["packages"])
    found = set()
    for name, directory in MAPPED.items():
        for init in (ROOT / directory).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / directory)
            found.add(".".join([name, *rel.parts]) if rel.parts else name)
    assert found <= declared, f"add to pyproject packages: {sorted(found - declared)}"


def test_console_scripts_run(ecap_env):
    for tool in ("ecap-audit", "ecap-detect", "ecap-harden"):
        r = ecap_env.run(tool, "--help")
        assert r.returncode == 0 and "usage:" in r.stdout


def test_usage_errors_are_one_line_exit_2(ecap_env):
    r = ecap_env.run("ecap-audit", "verify")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "--token" in r.stderr
