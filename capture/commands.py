"""Handlers of ecap-audit's subcommands: parse nothing, decide nothing, print.

Each ``cmd_X(args)`` turns parsed arguments into calls of library functions in
``ecap.authz``, ``ecap.journal`` and ``ecap.capture`` and prints their results;
the decisions themselves live in those libraries where tests call them directly.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ecap import config, host
from ecap.authz import keys, request, revocation, token
from ecap.authz.policy import Allowed, Context, PidsInScope
from ecap.authz.verify import verify_token
from ecap.capture import doctor
from ecap.errors import EnvironmentNotReady, UsageError
from ecap.fsutil import write_private_atomic
from ecap.journal import TORN_TAIL, Journal, unfinished_sessions, verify_file
from ecap.text import for_rich, printable


def _console() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def cmd_doctor(args: argparse.Namespace) -> int:
    results = doctor.run_checks()
    bad = doctor.failures(results)
    if args.json:
        print(json.dumps(doctor.as_json(results), indent=2))
        return 4 if bad else 0
    console = _console()
    for r in results:
        mark = "[green]ok  [/]" if r.ok else ("[red]FAIL[/]" if r.required else "[yellow]warn[/]")
        console.print(f"{mark} {r.name:<16} {for_rich(r.detail)}")
        if not r.ok and r.fix:
            console.print(f"     {'':<16} fix: {for_rich(r.fix)}")
    if bad:
        raise EnvironmentNotReady(bad[0].message())
    console.print("ready to capture")
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    passphrase = keys.read_passphrase(args.passphrase_file) if args.passphrase_file else None
    key_path, pub_path, kid = keys.generate(args.out, passphrase=passphrase)
    print(f"private key  {key_path} (0600{', encrypted' if passphrase else ''})")
    print(f"public key   {pub_path}")
    print(f"fingerprint  {kid}")
    if args.trust:
        dest, _ = keys.install_trusted(pub_path, config.trust_dir(args.trust_dir))
        print(f"trusted as   {dest}")
    return 0


def cmd_trust(args: argparse.Namespace) -> int:
    dest, kid = keys.install_trusted(args.pubkey, config.trust_dir(args.trust_dir))
    print(f"trusted {kid} as {dest}")
    return 0


def _write_or_print(doc: str, out: str | None, what: str) -> None:
    if out:
        write_private_atomic(out, doc if doc.endswith("\n") else doc + "\n")
        print(f"{what} written to {out}", file=sys.stderr)
    else:
        print(doc)


def cmd_request(args: argparse.Namespace) -> int:
    doc = request.build(args.pid, modules=args.module, modes=args.mode, reason=args.reason,
                        descendants=args.with_descendants)  # fmt: skip
    _write_or_print(json.dumps(doc, indent=2), args.out, "request")
    return 0


def cmd_authorize(args: argparse.Namespace) -> int:
    if args.this_host == bool(args.request):
        raise UsageError("give either REQUEST.json or --this-host --pid PID")
    if args.this_host:
        if not args.pid:
            raise UsageError("--this-host needs at least one --pid")
        if not args.module:
            raise UsageError("--this-host needs --module (e.g. --module tls)")
        req = request.build(args.pid, modules=args.module, modes=args.mode, reason=args.reason,
                            descendants=args.with_descendants)  # fmt: skip
    else:
        req = request.load(args.request)
    key = keys.load_private(args.key, keys.read_passphrase(args.passphrase_file))
    ttl = token.parse_duration(args.ttl)
    jwt_text = token.issue(
        req,
        key,
        operator=args.operator,
        reason=args.reason,
        ttl_seconds=ttl,
        issuer=args.issuer or f"authorizer@{host.hostname()}",
        # --this-host: the request was built from --module (auto's choice added);
        # with a request file, --module narrows what it asks for.
        modules=None if args.this_host else args.module,
        modes=args.mode,
        single_use=args.single_use,
        descendants=args.with_descendants,
    )
    _write_or_print(jwt_text, args.out, "token")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from ecap.capture.cli import read_token

    text = read_token(args.token)
    grant = verify_token(text, trust_dir=config.trust_dir(args.trust_dir))
    ctx = Context(token=text, trust_dir=config.trust_dir(args.trust_dir), grant=grant)
    if args.pid:
        PidsInScope(args.pid).verify(ctx)
    if args.module:
        Allowed("module", args.module).verify(ctx)
    if args.mode:
        Allowed("mode", args.mode).verify(ctx)
    if args.json:
        print(json.dumps({"schema": "ecap.verify/1", "valid": True, **grant.summary()}, indent=2))
        return 0
    _print_grant(grant.summary())
    return 0


def _print_grant(s: dict[str, Any]) -> None:
    """The verified claims, every one escaped: a signature does not make text safe."""
    console = _console()
    console.print("[green]token verifies[/]")
    rows = [
        ("token id", s["jti"]),
        ("signed by", s["kid"]),
        ("issuer", s["issuer"]),
        ("operator", s["operator"]),
        ("reason", s["reason"]),
        ("host", f"{s['hostname']} ({s['machine_id']})"),
        ("valid", f"{_when(s['not_before'])} → {_when(s['expires_at'])}"),
        ("modules", ", ".join(s["modules"])),
        ("output modes", ", ".join(s["modes"])),
        ("single use", "yes" if s["single_use"] else "no"),
        ("descendants", "covered" if s.get("descendants") else "not covered"),
    ]
    for label, value in rows:
        console.print(f"  {label:<13} {for_rich(str(value))}")
    for t in s["targets"]:
        line = (
            f"pid {t['pid']} start {t['start_time']} {t.get('exe') or '?'} "
            f"sha256 {(t.get('sha256') or '?')[:16]}…"
        )
        console.print(f"  {'target':<13} {for_rich(line)}")


def cmd_revoke(args: argparse.Namespace) -> int:
    key = keys.load_private(args.key, keys.read_passphrase(args.passphrase_file))
    path, revoked = revocation.revoke(
        config.trust_dir(args.trust_dir), key, jtis=args.jti, kids=args.kid
    )
    print(f"{path}: {len(revoked.jtis)} token(s) and {len(revoked.kids)} key(s) revoked")
    return 0


def _warn_unfinished(entries: list[dict]) -> list[dict]:
    """Print one warning line per capture that started and never stopped (stderr)."""
    unfinished = unfinished_sessions(entries)
    for u in unfinished:
        state = "still running" if u["running"] else "not running: killed before it could stop"
        print(
            f"warning: capture session {printable(str(u['session_id']))} started at "
            f"{printable(str(u['ts']))[:19]} (seq {u['seq']}, pid {u['pid']}) has no "
            f"capture.stop; its process is {state}",
            file=sys.stderr,
        )
    return unfinished


def cmd_journal(args: argparse.Namespace) -> int:
    path = config.journal_path(args.journal)
    if args.action == "repair":
        return _repair_journal(path, args.json)
    status = verify_file(path)
    if args.action == "verify":
        unfinished = _warn_unfinished(Journal(path).read()) if status.ok else []
        if args.json:
            print(
                json.dumps(
                    {
                        "schema": "ecap.journal-verify/1",
                        **status.__dict__,
                        "unfinished_sessions": unfinished,
                    },
                    indent=2,
                )
            )
        elif status.ok:
            print(f"{path}: {status.entries} entries, chain intact (head {status.head[:16]}…)")
        if not status.ok:
            raise UsageError(
                f"journal {path} is broken at line {status.bad_line}: {status.problem}",
                hint=_broken_hint(status.problem),
            )
        return 0
    entries = Journal(path).read()
    _warn_unfinished(entries)
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    table = Table(title=f"{printable(str(path))} — {status.entries} verified entries")
    for col in ("seq", "time", "event", "operator", "pids", "detail"):
        table.add_column(col)
    for e in entries:
        detail = e.get("reason") or e.get("stop_reason") or ""
        table.add_row(
            str(e.get("seq")),
            str(e.get("ts", ""))[:19],
            for_rich(str(e.get("event"))),
            for_rich(str(e.get("operator") or "")),
            for_rich(",".join(str(p) for p in e.get("pids") or [])),
            for_rich(str(detail)),
        )
    _console().print(table)
    if not status.ok:
        raise UsageError(
            f"journal broken at line {status.bad_line}: {status.problem}",
            hint=_broken_hint(status.problem),
        )
    return 0


def _broken_hint(problem: str | None) -> str:
    if problem == TORN_TAIL:
        return "the last write was cut short: 'ecap-audit journal repair' recovers it"
    return "preserve the file as evidence and compare with the audit log"


def _repair_journal(path: Path, as_json: bool) -> int:
    result = Journal(path).repair()
    if as_json:
        doc = {"schema": "ecap.journal-repair/1", **result.__dict__}
        print(json.dumps(doc, indent=2, default=str))
    elif result.action == "none":
        print(f"{printable(str(path))}: nothing to repair ({result.entries} entries, chain intact)")
    elif result.action == "completed":
        print(
            f"{printable(str(path))}: completed the newline of the last entry; journaled as "
            f"entry {result.entries}"
        )
    else:
        print(
            f"{printable(str(path))}: removed an incomplete last entry ({result.removed_bytes} "
            f"bytes, kept in {printable(str(result.evidence))}); journaled as entry {result.entries}"
        )
    return 0


def cmd_capture(args: argparse.Namespace) -> int:
    from ecap.capture import cli_capture

    return cli_capture.handle(args)


def cmd_replay(args: argparse.Namespace) -> int:

    from ecap.capture.replay import render_session

    render_session(
        Path(args.session), sys.stdout.buffer, fmt=args.format, hex_mode=args.hex,
        colour=sys.stdout.isatty() and args.format == "text",
    )  # fmt: skip
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ecap.reports import session as session_report

    return session_report.cli_render(args)
