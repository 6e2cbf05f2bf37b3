"""Command line of ecap-harden (placeholder until its issue lands)."""

from __future__ import annotations

from ecap.cli import Parser, run


def build_parser() -> Parser:
    return Parser(prog="ecap-harden", description=__doc__)


def _main(argv: list[str] | None) -> int:
    build_parser().parse_args(argv)
    return 0


def main(argv: list[str] | None = None) -> None:
    run(_main, argv)
