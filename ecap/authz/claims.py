"""The shape of every claim, checked where it is parsed: one definition each.

A request comes from another host, a token from whoever holds a trusted key (or
an older tool); neither is trusted to be well formed because it is signed. So
``request`` (building and loading), ``authorize`` (before signing) and token
verification all pass their claims through these functions: a SHA-256 is 64
lowercase hex digits, a host name is a host name, a PID is a PID. A failure is a
:class:`ClaimError` naming the field and what it should be — never echoing the
value, which may be a terminal escape sequence.

Free text chosen by the authorizer (operator, reason, issuer) must be printable.
Facts a target chooses itself (its executable's file name, its comm) are only
bounded: refusing them would let a process make itself impossible to authorize,
so they are escaped wherever they are shown instead.
"""

from __future__ import annotations

import math
import re
from typing import Any

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
"""A SHA-256 in hex: executable hashes, and key fingerprints (``kid``)."""
JTI_RE = re.compile(r"^[0-9a-f]{32}$")
"""Token ids are ``uuid4().hex``; they become file names of single-use markers."""
MACHINE_ID_RE = re.compile(r"^[0-9a-f]{32}$")
"""systemd machine-id(5): 32 lowercase hex digits."""
HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_-]{1,63})*$"
)
"""RFC 1123 labels (underscores tolerated, as real hosts use them)."""
NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
"""Module and output-mode names."""
PID_MAX = 1 << 22
"""PID_MAX_LIMIT on 64-bit Linux: no PID is larger."""
U64 = 1 << 64
MAX_TEXT = 1024
MAX_REASON = 4096
MAX_PATH = 4096
MAX_TARGETS = 256
MAX_NAMES = 32


class ClaimError(ValueError):
    """A claim of the wrong shape (the message names the field, not the value)."""


def _integer(value: Any, field: str, low: int, high: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value < high:
        raise ClaimError(f"{field} is not {what}")
    return value


def pid(value: Any, field: str = "pid") -> int:
    return _integer(value, field, 1, PID_MAX + 1, f"a process id (1..{PID_MAX})")


def start_time(value: Any, field: str = "start_time") -> int:
    return _integer(value, field, 0, U64, "a start time in clock ticks (an integer >= 0)")


def device_or_inode(value: Any, field: str) -> int | None:
    if value is None:
        return None
    return _integer(value, field, 0, U64, "a device or inode number (an integer >= 0)")


def _matching(value: Any, field: str, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise ClaimError(f"{field} is not {what}")
    return value


def sha256(value: Any, field: str = "sha256") -> str:
    return _matching(value, field, SHA256_RE, "a SHA-256 (64 lowercase hex digits)")


def jti(value: Any, field: str = "jti") -> str:
    return _matching(value, field, JTI_RE, "a token id (32 lowercase hex digits)")


def hostname(value: Any, field: str = "hostname") -> str:
    return _matching(value, field, HOSTNAME_RE, "a host name (RFC 1123 labels)")


def machine_id(value: Any, field: str = "machine_id") -> str | None:
    if value is None:  # hosts without /etc/machine-id bind by name only
        return None
    return _matching(value, field, MACHINE_ID_RE, "a machine-id (32 lowercase hex digits)")


def name(value: Any, field: str) -> str:
    return _matching(value, field, NAME_RE, "a module or mode name ([a-z][a-z0-9_-]*)")


def names(value: Any, field: str) -> list[str]:
    if not isinstance(value, list) or len(value) > MAX_NAMES:
        raise ClaimError(f"{field} is not a list of at most {MAX_NAMES} names")
    return [name(v, f"{field}[{i}]") for i, v in enumerate(value)]


def text(value: Any, field: str, *, required: bool = True, limit: int = MAX_TEXT) -> str:
    """Authorizer-chosen text: printable (no control or bidi characters), bounded."""
    if not isinstance(value, str) or len(value) > limit or not value.isprintable():
        raise ClaimError(f"{field} is not printable text of at most {limit} characters")
    if required and not value.strip():
        raise ClaimError(f"{field} is empty")
    return value


def exe_path(value: Any, field: str = "exe") -> str | None:
    """A target's executable as /proc shows it: absolute, no NUL, bounded (may be None)."""
    if value is None:
        return None
    if (
        not isinstance(value, str)
        or not value.startswith("/")
        or "\0" in value
        or len(value) > MAX_PATH
    ):
        raise ClaimError(f"{field} is not an absolute path")
    return value


def comm(value: Any, field: str = "comm") -> str | None:
    """A process's own name (its choice: bounded, escaped where shown)."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 64:
        raise ClaimError(f"{field} is not a process name")
    return value


def timestamp(value: Any, field: str) -> float:
    """A JWT NumericDate: seconds since the epoch, finite, not a boolean."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value < 1 << 40
    ):
        raise ClaimError(f"{field} is not a time in seconds since the epoch")
    return float(value)


def flag(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise ClaimError(f"{field} is not true or false")
    return value


def object_(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ClaimError(f"{field} is not an object")
    return value


TARGET_KEYS = ("pid", "start_time", "exe", "sha256", "exe_dev", "exe_ino")
"""What a token says about each target process (``comm`` stays in the request)."""


def target(value: Any, field: str) -> dict[str, Any]:
    """One target: PID and start time required; executable facts when known."""
    t = object_(value, field)
    out = {
        "pid": pid(t.get("pid"), f"{field}.pid"),
        "start_time": start_time(t.get("start_time"), f"{field}.start_time"),
        "exe": exe_path(t.get("exe"), f"{field}.exe"),
        "sha256": None if t.get("sha256") is None else sha256(t["sha256"], f"{field}.sha256"),
        "exe_dev": device_or_inode(t.get("exe_dev"), f"{field}.exe_dev"),
        "exe_ino": device_or_inode(t.get("exe_ino"), f"{field}.exe_ino"),
    }
    if (out["exe_dev"] is None) != (out["exe_ino"] is None):
        raise ClaimError(f"{field} has only one of exe_dev and exe_ino")
    return out


def targets(value: Any, field: str = "targets") -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value or len(value) > MAX_TARGETS:
        raise ClaimError(f"{field} is not a list of 1 to {MAX_TARGETS} targets")
    out = [target(v, f"{field}[{i}]") for i, v in enumerate(value)]
    if len({t["pid"] for t in out}) != len(out):
        raise ClaimError(f"{field} names a PID twice")
    return out


def host(value: Any, field: str = "host") -> dict[str, Any]:
    h = object_(value, field)
    return {
        "hostname": hostname(h.get("hostname"), f"{field}.hostname"),
        "machine_id": machine_id(h.get("machine_id"), f"{field}.machine_id"),
    }
