"""The scan document as JSON (``--json FILE|-``): the contract others read.

``json.dumps`` escapes control characters in every host-derived string, so a
process named ``\\x1b]0;pwned\\x07`` is inert in the file. Files are written
atomically and 0600 (they list processes, users and command lines).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ecap.fsutil import write_private_atomic


def dumps(doc: dict) -> str:
    return json.dumps(doc, indent=2, sort_keys=False, ensure_ascii=False) + "\n"


def write(doc: dict, target: str) -> None:
    """Write to a file, or to stdout when ``target`` is ``-``."""
    text = dumps(doc)
    if target == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        write_private_atomic(Path(target), text)
