"""Command line of ecap-detect: ``scan`` and ``report`` (thin: the work is in scan.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ecap.cli import Parser, run
from ecap.detect import render_json
from ecap.detect.document import RANK, SCHEMA, SEVERITIES
from ecap.detect.scan import WALKS, ScanOptions, run_scan
from ecap.errors import Error, FindingsAboveThreshold, UsageError


def build_parser() -> Parser:
    parser = Parser(prog="ecap-detect", description="Find eBPF programs that hook plaintext.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    scan = sub.add_parser("scan", help="scan this host for eBPF sniffers and weak posture")
    scan.add_argument("--json", metavar="FILE|-", help=f"write the {SCHEMA} document ('-': stdout)")
    scan.add_argument("--html", metavar="FILE", help="write the HTML host report")
    scan.add_argument(
        "--fail-on",
        choices=SEVERITIES,
        default="high",
        help="exit 1 when a finding is at least this severe (default: high)",
    )
    scan.add_argument(
        "--audit-log",
        metavar="PATH",
        help="audit log to read BPF load history from (default /var/log/audit/audit.log)",
    )
    scan.add_argument(
        "--no-bpf",
        action="store_true",
        help="do not call bpf(2): see only what /proc shows (as without CAP_SYS_ADMIN)",
    )
    scan.add_argument(
        "--walk",
        choices=WALKS,
        default="auto",
        help="how to find fd holders and victims: 'kernel' (BPF iterators, "
        "fast on busy hosts), 'procfs' (/proc reads only), or 'auto' "
        "(default: kernel from a few hundred processes on)",
    )
    scan.add_argument(
        "--no-inventory",
        action="store_true",
        help="terminal output: findings only, no inventory tables",
    )
    scan.add_argument("--trust-dir", help="trusted public keys (default $ECAP_TRUST_DIR)")
    scan.add_argument("--journal", help="capture journal (default $ECAP_JOURNAL)")
    scan.add_argument("--run-dir", help="live session registry root (default $ECAP_RUN_DIR)")
    report = sub.add_parser("report", help="render saved scan documents as one HTML report")
    report.add_argument("scans", nargs="+", metavar="HOST.json")
    report.add_argument("--html", required=True, metavar="OUT.html")
    return parser


def _check_writable(target: str | None, flag: str) -> None:
    if target in (None, "-"):
        return
    parent = Path(target).resolve().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UsageError(
            f"{flag} {target}: directory {parent} does not exist or is not writable",
            hint="choose a writable path",
        )


def _html(docs: list[dict], out: str) -> None:
    """Host report for one document, fleet report for several (ecap.reports)."""
    from ecap.reports import host_report  # jinja2 only when HTML is asked for

    host_report.write(docs, Path(out))


def _scan(args) -> int:
    _check_writable(args.json, "--json")
    _check_writable(args.html, "--html")
    for flag, var in (
        ("trust_dir", "ECAP_TRUST_DIR"),
        ("journal", "ECAP_JOURNAL"),
        ("run_dir", "ECAP_RUN_DIR"),
    ):
        if getattr(args, flag):
            os.environ[var] = getattr(args, flag)
    audit_log = Path(args.audit_log) if args.audit_log else None
    if audit_log is not None and not audit_log.is_file():
        raise UsageError(f"--audit-log {audit_log}: no such file", hint="give an auditd log file")
    try:
        doc = run_scan(ScanOptions(audit_log=audit_log, use_bpf=not args.no_bpf, walk=args.walk))
    except Error:
        raise
    except OSError as exc:
        raise Error(f"scan failed: {exc}", hint="run as root on a host with /proc mounted") from exc
    if args.json:
        render_json.write(doc, args.json)
    if args.json != "-":
        from ecap.detect import render_term  # rich only for terminal output

        render_term.render(doc, sys.stdout, inventory=not args.no_inventory)
    if args.html:
        _html([doc], args.html)
    threshold = RANK[args.fail_on]
    above = [f for f in doc["findings"] if RANK[f["severity"]] >= threshold]
    if above:
        worst = max(above, key=lambda f: RANK[f["severity"]])["severity"]
        raise FindingsAboveThreshold(
            f"{len(above)} finding(s) at or above {args.fail_on} (worst: {worst})",
            hint="see the findings listed; respond to rogue sniffers, then rescan",
        )
    return 0


def _report(args) -> int:
    from ecap.detect import document

    docs = [document.load(path) for path in args.scans]
    _check_writable(args.html, "--html")
    _html(docs, args.html)
    return 0


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "scan":
        return _scan(args)
    return _report(args)


def main(argv: list[str] | None = None) -> None:
    run(_main, argv)
