"""ecap-harden: generate, tailor, check and validate policies that close eBPF capture exposure.

Commands:
  generate [--from SCAN.json] [--profile P] --out DIR   write every policy file + plan.json
  sysctl|apparmor|selinux|seccomp|docker|kubernetes|auditd  print (or --out) one of them
  validate DIR                                           run the real validators on DIR
  check [--json]                                         live host vs profile (exit 1 on fail)
  controls [--json]                                      the controls catalogue
  report DIR|plan.json --html OUT                        the plan as an HTML report
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ecap.cli import Parser, run
from ecap.errors import FindingsAboveThreshold, UsageError
from ecap.fsutil import write_private_atomic
from ecap.text import printable

from . import check, generate, kinds, output, posture, selinux, validate
from .artifact import Artifact, Context
from .controls import PROFILES

SINGLE = kinds.KINDS


def build_parser() -> Parser:
    p = Parser(
        prog="ecap-harden",
        description=__doc__,
        epilog=output.catalogue_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    g = sub.add_parser("generate", help="write the policy set and plan.json into DIR")
    g.add_argument(
        "--from",
        dest="scan",
        type=Path,
        metavar="SCAN.json",
        help="tailor to the host of an 'ecap-detect scan --json' file",
    )
    g.add_argument("--profile", choices=PROFILES, default="balanced")
    g.add_argument("--out", type=Path, required=True, metavar="DIR")
    g.add_argument(
        "--app",
        action="append",
        default=[],
        metavar="EXE",
        help="also write a per-application AppArmor profile for EXE (repeatable)",
    )
    g.add_argument(
        "--selinux-allow", action="append", default=[], metavar="DOMAIN",
        help="an SELinux domain (type or attribute) the assertion module tolerates (repeatable)",
    )  # fmt: skip

    for name in SINGLE:
        s = sub.add_parser(name, help=f"print the {name} policy (or write it with --out)")
        s.add_argument("--profile", choices=PROFILES, default="balanced")
        s.add_argument(
            "--out",
            metavar="FILE",
            help="write here instead of stdout"
            + (
                "; a directory (or a path ending in /) gets every file"
                if name in kinds.MULTI_FILE
                else ""
            ),
        )
        if name == "apparmor":
            s.add_argument(
                "--part",
                choices=kinds.APPARMOR_PARTS,
                default="abstraction",
                help="which AppArmor file (default abstraction)",
            )
            s.add_argument("--app", metavar="EXE", help="executable for --part app")
        if name == "selinux":
            s.add_argument(
                "--selinux-allow", action="append", default=[], metavar="DOMAIN",
                help="a domain (type or attribute) the assertion module tolerates (repeatable)",
            )  # fmt: skip

    v = sub.add_parser("validate", help="validate a generated directory with the real tools")
    v.add_argument("dir", type=Path, metavar="DIR")
    v.add_argument("--json", action="store_true")
    v.add_argument(
        "--no-audit-load",
        action="store_true",
        help="do not load the audit rules into the kernel (ausyscall only)",
    )
    v.add_argument(
        "--no-selinux-link",
        action="store_true",
        help="compile the SELinux modules but do not link them with the installed policy",
    )

    c = sub.add_parser("check", help="compare this host to a profile (exit 1 on failures)")
    c.add_argument("--profile", choices=PROFILES, default="balanced")
    c.add_argument("--json", action="store_true")

    k = sub.add_parser("controls", help="show the controls catalogue")
    k.add_argument("--json", action="store_true")

    r = sub.add_parser("report", help="render a generated plan as a self-contained HTML report")
    r.add_argument("plan", type=Path, metavar="DIR|plan.json")
    r.add_argument("--html", type=Path, required=True, metavar="OUT.html")
    r.add_argument("--json", type=Path, metavar="FILE", help="also write the report's JSON twin")
    return p  # fmt: skip


def _emit(text: str, out: Path | None) -> None:
    if out is None:
        sys.stdout.write(text)
    else:
        if out.is_dir():
            raise UsageError(f"--out {printable(str(out))} is a directory", hint="give a file name")
        write_private_atomic(out, text)
        print(f"wrote {printable(str(out))}", file=sys.stderr)


def _write_dir(arts: list[Artifact], out: Path) -> None:
    """Write several files of one kind under DIR, keeping their layout below the kind."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {printable(str(out))} is a file", hint="give a directory")
    for a in arts:
        target = out / Path(*Path(a.path).parts[1:])
        write_private_atomic(target, a.content)
        print(f"wrote {printable(str(target))}", file=sys.stderr)


def _single(args: argparse.Namespace) -> int:
    """One policy kind on stdout, or in --out FILE (multi-file kinds: also --out DIR/)."""
    name = args.command
    apps = (args.app,) if getattr(args, "app", None) else ()
    ctx = Context(
        profile=args.profile,
        posture=posture.live(selinux=name == "selinux"),
        apps=apps,
        selinux_allow=tuple(getattr(args, "selinux_allow", ())),
    )
    # Path() drops a trailing slash, so "a directory" is decided on the raw string.
    to_dir = bool(args.out) and (args.out.endswith("/") or Path(args.out).is_dir())
    part = getattr(args, "part", None)
    if to_dir and name in kinds.MULTI_FILE:
        arts = kinds.artifacts(name, ctx)
        _write_dir(arts, Path(args.out))
    else:
        arts = kinds.artifacts(name, ctx, part=part)
        _emit(kinds.as_text(name, arts), Path(args.out) if args.out else None)
    for note in (n for a in arts for n in a.notes):
        print(f"note: {printable(note)}", file=sys.stderr)
    return 0


def _generate(args: argparse.Namespace) -> int:
    selinux.check_names(tuple(args.selinux_allow), None)  # syntax first: before the analysis
    if args.scan is not None:
        post, tailored = posture.from_scan(args.scan), True
    else:
        post, tailored = posture.live(), False
    ctx = Context(args.profile, post, tailored=tailored, apps=tuple(args.app),
                  selinux_allow=tuple(args.selinux_allow))  # fmt: skip
    gen = generate.build(ctx)
    written = generate.write(gen, args.out)
    print(f"ecap-harden: profile {args.profile}, "
          f"{'tailored to ' + printable(post.source) if tailored else 'full set'}; "
          f"{len(gen.recommended)} controls recommended, {len(written)} files in "
          f"{printable(str(args.out))}")  # fmt: skip
    for a in gen.artifacts:
        print(f"  {a.path:45} {', '.join(a.controls)}")
    for w in gen.plan["warnings"]:
        print(f"warning: {printable(w)}")
    for n in gen.plan["notes"]:
        if not n.startswith("WARNING"):
            print(f"note: {printable(n)}")
    print(f"next: ecap-harden validate {printable(str(args.out))}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    results = validate.validate_dir(
        args.dir, load_audit=not args.no_audit_load, link_selinux=not args.no_selinux_link
    )
    if args.json:
        output.validate_json(results, str(args.dir), sys.stdout)
    else:
        output.validate_plain(results, str(args.dir), sys.stdout)
    bad = [v for v in results if not v.ok]
    if bad:
        sys.stdout.flush()
        raise FindingsAboveThreshold(
            f"{len(bad)} of {len(results)} files failed validation (first: {bad[0].path}: "
            f"{bad[0].message})",
            hint="fix the files or regenerate them with 'ecap-harden generate'",
        )
    return 0


def _check(args: argparse.Namespace) -> int:
    post = posture.live()
    results = check.evaluate(post, args.profile)
    if args.json:
        output.check_json(results, args.profile, post.hostname, sys.stdout)
    else:
        output.check_plain(results, args.profile, post.hostname, sys.stdout)
    failed = check.failures(results)
    if failed:
        sys.stdout.flush()
        raise FindingsAboveThreshold(
            f"{len(failed)} controls fail the {args.profile} profile: "
            + ", ".join(r.control for r in failed),
            hint="apply the files from 'ecap-harden generate --out DIR'",
        )
    return 0


def _controls(args: argparse.Namespace) -> int:
    if args.json:
        json.dump(output.controls_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        output.controls_plain(sys.stdout)
    return 0


def _report(args: argparse.Namespace) -> int:
    """The hardening-plan page is the reports package's; this only hands it the plan."""
    from ecap.reports import plan as plan_report

    doc = plan_report.load_plan(args.plan)
    out = plan_report.render_plan_report(doc, args.html, args.json)
    print(f"wrote {printable(str(out))}")
    return 0


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in SINGLE:
        return _single(args)
    return {
        "generate": _generate,
        "validate": _validate,
        "check": _check,
        "controls": _controls,
        "report": _report,
    }[args.command](args)


def main(argv: list[str] | None = None) -> None:
    run(_main, argv)
