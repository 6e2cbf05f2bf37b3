"""One error hierarchy, one exit code per kind of failure.

The CLIs catch :class:`Error` in one place (:func:`ecap.cli.run`) and print its
message as a single line, so every failure a user sees says what was wrong and
what to do, and scripts can branch on the exit code (DESIGN.md "Exit codes").
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes shared by ecap-audit, ecap-detect and ecap-harden."""

    OK = 0
    FINDINGS = 1
    """Findings at or above ``--fail-on``, or ``check`` failures."""
    USAGE = 2
    """Bad arguments or unreadable/invalid input files."""
    REFUSED = 3
    """The authorization gate refused the request."""
    NOT_READY = 4
    """The environment lacks something capture or detection needs (preflight)."""


class Error(Exception):
    """Base of every error ecap reports to a user; the message is one line."""

    exit_code: ExitCode = ExitCode.USAGE

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.one_line()

    def one_line(self) -> str:
        """The message and, when known, what to do about it — on one line."""
        text = self.message if not self.hint else f"{self.message}; {self.hint}"
        return " ".join(text.split())


class UsageError(Error):
    """Invalid arguments or input (exit 2)."""

    exit_code = ExitCode.USAGE


class AuthorizationRefused(Error):
    """The gate refused: bad token, out of scope, revoked, expired... (exit 3)."""

    exit_code = ExitCode.REFUSED


class EnvironmentNotReady(Error):
    """A preflight requirement is missing (exit 4)."""

    exit_code = ExitCode.NOT_READY


class FindingsAboveThreshold(Error):
    """Scan findings or check failures at or above the threshold (exit 1)."""

    exit_code = ExitCode.FINDINGS
