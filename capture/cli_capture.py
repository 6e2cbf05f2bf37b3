"""``ecap-audit capture MODULE``: arguments and the order of operations.

The order is the security property: arguments are validated (exit 2), the
environment is checked (exit 4), the authorization gate decides (exit 3) — and
only then is anything resolved in the target or loaded into the kernel. The lead's
``capture/cli.py`` registers the subcommand by calling :func:`add_arguments` and
:func:`handle`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ecap.capture.probes import CHUNK, DEFAULT_MAX_CALL_BYTES, DEFAULT_RING_MB, MAX_MAX_CALL_BYTES
from ecap.errors import UsageError

MODULES = ("tls",)
FORMATS = ("text", "jsonl")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("module", metavar="MODULE", help="what to capture: tls (OpenSSL API)")
    parser.add_argument(
        "--pid",
        type=int,
        action="append",
        required=True,
        help="process to capture (repeatable; each must be in the token)",
    )
    parser.add_argument("--token", required=True, help="authorization token file ('-' reads stdin)")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="text",
        help="text (readable) or jsonl (the session record; see SCHEMA.md)",
    )
    parser.add_argument("--output", help="write here (created 0600) instead of stdout")
    parser.add_argument(
        "--force", action="store_true", help="replace --output if it exists (default: refuse)"
    )
    parser.add_argument("--hex", action="store_true", help="show payloads as hex dumps")
    parser.add_argument(
        "--duration",
        type=float,
        help="stop after this many seconds (default: until targets exit, "
        "the token expires, or Ctrl-C)",
    )
    parser.add_argument("--libssl", help="hook this libssl (path as the process sees it)")
    parser.add_argument(
        "--ring-size",
        type=int,
        default=DEFAULT_RING_MB,
        metavar="MIB",
        help=f"ring buffer size in MiB, a power of two (default {DEFAULT_RING_MB})",
    )
    parser.add_argument(
        "--max-call-bytes",
        type=int,
        default=DEFAULT_MAX_CALL_BYTES,
        metavar="N",
        help=f"bytes captured per SSL call, a multiple of {CHUNK} up to "
        f"{MAX_MAX_CALL_BYTES}; the rest is counted as truncated "
        f"(default {DEFAULT_MAX_CALL_BYTES})",
    )
    parser.add_argument("--quiet", action="store_true", help="no status lines on stderr")


def _validate(args: argparse.Namespace) -> list[int]:
    if args.module not in MODULES:
        raise UsageError(
            f"unknown capture module {args.module!r}", hint=f"available: {', '.join(MODULES)}"
        )
    pids = list(dict.fromkeys(args.pid or []))
    if not pids:
        raise UsageError("--pid is required", hint="name each process to capture")
    bad = [p for p in pids if p <= 0]
    if bad:
        raise UsageError(f"invalid --pid {bad[0]}", hint="give a positive process id")
    if args.duration is not None and not args.duration > 0:
        raise UsageError(f"invalid --duration {args.duration}", hint="give seconds > 0")
    ring = args.ring_size
    if ring < 1 or ring > 1024 or ring & (ring - 1):
        raise UsageError(
            f"invalid --ring-size {ring}", hint="a power of two between 1 and 1024 (MiB)"
        )
    mcb = args.max_call_bytes
    if mcb < CHUNK or mcb > MAX_MAX_CALL_BYTES or mcb % CHUNK:
        raise UsageError(
            f"invalid --max-call-bytes {mcb}",
            hint=f"a multiple of {CHUNK} between {CHUNK} and {MAX_MAX_CALL_BYTES}",
        )
    if args.output:
        parent = Path(args.output).absolute().parent
        if not parent.is_dir():
            raise UsageError(
                f"output directory {parent} does not exist",
                hint="create it or choose another --output",
            )
        if os.path.lexists(args.output) and not args.force:
            raise UsageError(
                f"output file {args.output} already exists",
                hint="choose a new --output or pass --force to replace it",
            )
    return pids


def handle(args: argparse.Namespace) -> int:
    """Validate, preflight, authorize, then capture. Returns the exit code."""
    pids = _validate(args)
    from ecap.capture.cli import read_token

    token = read_token(args.token)
    if not token:
        raise UsageError("the token file is empty", hint="pass the file 'authorize' wrote")

    from ecap.capture.doctor import preflight

    preflight()

    from ecap.sessions import prepare_run_dir

    prepare_run_dir()  # its owner and mode are checked before anything is authorized

    from ecap.authz.gate import authorize_capture
    from ecap.journal import Journal

    journal = Journal(Path(args.journal) if getattr(args, "journal", None) else None)
    trust = Path(args.trust_dir) if getattr(args, "trust_dir", None) else None
    grant = authorize_capture(
        token, pids=pids, module=args.module, mode=args.format, trust_dir=trust, journal=journal
    )

    from ecap.capture.engine import CaptureOptions, run_capture

    options = CaptureOptions(
        module=args.module,
        fmt=args.format,
        output=Path(args.output) if args.output else None,
        hex=args.hex,
        duration=args.duration,
        libssl=args.libssl,
        ring_mb=args.ring_size,
        max_call_bytes=args.max_call_bytes,
        quiet=args.quiet,
        replace_output=args.force,
    )
    run_capture(grant, pids, options, journal=journal)
    return 0
