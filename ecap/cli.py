"""What the three CLIs share: one-line errors and the exit-code contract.

Each CLI builds its parser with :class:`Parser` and wraps its entry point in
:func:`run`, so argument errors, :class:`ecap.errors.Error` and Ctrl-C all end
with one line on stderr and the documented exit code.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import NoReturn

from ecap.errors import Error, ExitCode
from ecap.text import printable


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line and exit 2 (usage error)."""

    def error(self, message: str) -> NoReturn:
        self.exit(
            ExitCode.USAGE,
            f"{self.prog}: error: {printable(message)}; see '{self.prog} --help'\n",
        )


def run(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> NoReturn:
    """Call ``main(argv)`` and exit with its code; turn ecap errors into one line."""
    prog = _prog_name()
    try:
        code = main(argv)
    except Error as exc:
        print(f"{prog}: error: {printable(exc.one_line())}", file=sys.stderr)
        code = int(exc.exit_code)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        code = 130
    except BrokenPipeError:
        code = 0
    except Exception as exc:  # a bug: still one line and a documented code
        if os.environ.get("ECAP_DEBUG") == "1":
            raise
        print(
            f"{prog}: error: internal error ({type(exc).__name__}: {printable(str(exc))[:300]}); "
            "rerun with ECAP_DEBUG=1 for the traceback and report it",
            file=sys.stderr,
        )
        code = int(ExitCode.NOT_READY)
    sys.exit(code)


def _prog_name() -> str:
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "ecap"
