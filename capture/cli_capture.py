"""``ecap-audit capture MODULE``: arguments and the order of operations.

The order is the security property: arguments are validated (exit 2), the
environment is checked (exit 4), the targets are held (pidfds), the
authorization gate decides (exit 3) — and only then is anything resolved in the
target or loaded into the kernel. (``auto`` reads the targets' maps before the
gate, to show it the modules it will use: the gate must grant each.) Modules and output formats come from their
registries (:mod:`ecap.capture.modules`, :mod:`ecap.capture.sinks`); a module
may add options of its own (``--libssl`` belongs to ``tls``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ecap.capture import modules, sinks
from ecap.capture.events import RECORDS
from ecap.capture.kernel import DEFAULT_MAX_CALL_BYTES, DEFAULT_RING_MB
from ecap.capture.modules.interface import CaptureModule
from ecap.capture.sinks.interface import Sink
from ecap.errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    choices = "; ".join(f"{m.name}: {m.summary}" for m in modules.registry().values())
    parser.add_argument("module", metavar="MODULE", help=f"what to capture — {choices}")
    parser.add_argument(
        "--pid",
        type=int,
        action="append",
        required=True,
        help="process to capture (repeatable; each must be in the token)",
    )
    parser.add_argument("--token", required=True, help="authorization token file ('-' reads stdin)")
    formats = "; ".join(f"{s.name}: {s.summary}" for s in sinks.registry().values())
    parser.add_argument(
        "--format",
        choices=sinks.names(),
        default="text",
        help=f"output format (default text) — {formats}",
    )
    for flag, formats in sinks.flags().items():
        variants = [dict(sinks.get(f).variants)[flag] for f in formats]
        parser.add_argument(
            f"--{flag}",
            action="store_true",
            help="; ".join(
                f"with --format {f}: {v.summary}" for f, v in zip(formats, variants, strict=True)
            ),
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
        help="bytes captured per library call, a multiple of the 16 KiB "
        "chunk up to 1 MiB; the rest is counted as truncated "
        f"(default {DEFAULT_MAX_CALL_BYTES})",
    )
    parser.add_argument("--quiet", action="store_true", help="no status lines on stderr")
    for module in modules.registry().values():
        module.add_arguments(parser)


def module_options(args: argparse.Namespace, chosen: str) -> dict[str, object]:
    """The chosen module's own options; another module's option is a usage error."""
    mine: dict[str, object] = {}
    for module in modules.registry().values():
        for opt in module.options:
            value = getattr(args, opt.dest, None)
            if module.name == chosen:
                mine[opt.dest] = value
            elif value is not None:
                raise UsageError(
                    f"{opt.flag} applies to the {module.name} module only",
                    hint=f"drop it, or capture with '{module.name}'",
                )
    return mine


def chosen_sink(args: argparse.Namespace) -> Sink:
    """The sink ``--format`` and its variant flags (``--plaintext``) name."""
    chosen = frozenset(f for f in sinks.flags() if getattr(args, f, False))
    return sinks.get(args.format, chosen)


def feeds(module: CaptureModule, sink: Sink) -> bool:
    """Can this module's sessions produce what the sink writes?"""
    if sink.needs_keys:
        return module.secrets is not None
    return RECORDS in sink.consumes or bool(module.emits & sink.consumes)


def check_pair(module: CaptureModule, sink: Sink) -> None:
    """Refuse (exit 2) a module×format pair that cannot work, saying why."""
    if feeds(module, sink):
        return
    fits = ", ".join(s.name for s in sinks.registry().values() if feeds(module, s))
    if sink.needs_keys:
        raise UsageError(
            f"--format {sink.name} needs TLS secrets, and the {module.name} module cannot give "
            f"them: {module.no_secrets}",
            hint="capture its plaintext with --format pcapng --plaintext, text or jsonl",
        )
    raise UsageError(
        f"the {module.name} module produces nothing the {sink.name} format writes",
        hint=f"choose one of: {fits}",
    )


def _validate(args: argparse.Namespace) -> list[int]:
    module = modules.get(args.module)
    sink = chosen_sink(args)
    check_pair(module, sink)
    pids = list(dict.fromkeys(args.pid or []))
    if not pids:
        raise UsageError("--pid is required", hint="name each process to capture")
    bad = [p for p in pids if p <= 0]
    if bad:
        raise UsageError(f"invalid --pid {bad[0]}", hint="give a positive process id")
    if args.duration is not None and not args.duration > 0:
        raise UsageError(f"invalid --duration {args.duration}", hint="give seconds > 0")
    from ecap.capture import abi
    from ecap.capture.kernel import check_limits

    for bpf_object in modules.bpf_objects(module.name):
        limits = abi.of(bpf_object)
        check_limits(args.ring_size, args.max_call_bytes, limits.CHUNK, limits.MAX_CALL_BYTES)
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
        if sink.record_beside:
            from ecap.capture.engine import session_record_path

            record = session_record_path(Path(args.output))
            if os.path.lexists(record) and not args.force:
                raise UsageError(
                    f"the session record {record} already exists",
                    hint="choose a new --output or pass --force to replace both",
                )
    return pids


def handle(args: argparse.Namespace) -> int:
    """Validate, preflight, hold, authorize, then capture. Returns the exit code."""
    pids = _validate(args)
    options_for_module = module_options(args, args.module)
    from ecap.capture.cli import read_token

    token = read_token(args.token)
    if not token:
        raise UsageError("the token file is empty", hint="pass the file 'authorize' wrote")

    from ecap.capture.doctor import preflight

    sink = chosen_sink(args)
    preflight(args.module, packets=sink.needs_keys)

    from ecap.sessions import prepare_run_dir

    prepare_run_dir()  # its owner and mode are checked before anything is authorized

    from ecap.authz.gate import authorize_capture
    from ecap.capture.hold import TargetHold
    from ecap.journal import Journal

    journal = Journal(Path(args.journal) if getattr(args, "journal", None) else None)
    trust = Path(args.trust_dir) if getattr(args, "trust_dir", None) else None
    from ecap.capture.engine import check_raw_plan

    hold = TargetHold.take(pids)
    try:
        # Which modules hook, read from /proc and the mapped files only: `auto`'s
        # choice is shown to the gate, which must grant each one.
        plan = modules.plan(args.module, pids)
        check_raw_plan(plan, args.format)
        chosen = [m.name for m in modules.plan_modules(plan)]
        grant = authorize_capture(token, pids=pids, module=args.module, mode=sink.token_mode,
                                  trust_dir=trust, journal=journal,
                                  through=chosen if chosen != [args.module] else ())  # fmt: skip
    except BaseException:
        hold.close()
        raise

    from ecap.capture.engine import CaptureOptions, run_capture

    options = CaptureOptions(
        module=args.module, fmt=sink.name,
        output=Path(args.output) if args.output else None, hex=args.hex,
        duration=args.duration, module_options=options_for_module, ring_mb=args.ring_size,
        max_call_bytes=args.max_call_bytes, quiet=args.quiet, replace_output=args.force,
    )  # fmt: skip
    run_capture(grant, pids, options, journal=journal, hold=hold, plan=plan)
    return 0
