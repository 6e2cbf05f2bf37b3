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
        "--format",
        choices=("ecap", "ocsf"),
        default="ecap",
        help="what --json writes: the ecap.scan/2 document (default) or one OCSF "
        "Detection Finding (class 2004) per line",
    )
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
        "--selinux-policy",
        metavar="PATH",
        help="analyse this binary SELinux policy (default: the loaded one, when SELinux "
        "is enabled), e.g. /etc/selinux/default/policy/policy.33",
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
    _add_watch(sub)
    report = sub.add_parser("report", help="render saved scan documents as one HTML report")
    report.add_argument("scans", nargs="*", metavar="HOST.json")
    report.add_argument("--html", required=True, metavar="OUT.html")
    report.add_argument(
        "--unreachable",
        action="append",
        default=[],
        metavar="HOST[=REASON]",
        help="a host that gave no scan (a row of the fleet report); repeatable",
    )
    return parser


def _add_watch(sub) -> None:
    """``watch``: options default to None so that a --config file can set them."""
    watch = sub.add_parser(
        "watch",
        help="watch continuously: alert the moment a sniffer attaches, resolve when it goes",
    )
    watch.add_argument(
        "--json", metavar="FILE|-", help="append JSON lines to FILE ('-': stdout, the default)"
    )
    watch.add_argument(
        "--format",
        choices=("ecap", "ocsf"),
        help="records as ecap.alert/1 (default) or OCSF 1.1.0 events (Detection Finding 2004)",
    )
    watch.add_argument(
        "--syslog",
        action="store_const",
        const=True,
        help="also send each record to the local syslog socket (RFC 5424)",
    )
    watch.add_argument("--syslog-socket", metavar="PATH", help="syslog socket (default /dev/log)")
    watch.add_argument(
        "--rescan", type=float, metavar="SECONDS", help="full rescan interval (default 60)"
    )
    watch.add_argument(
        "--heartbeat", type=float, metavar="SECONDS", help="heartbeat record interval (default 60)"
    )
    watch.add_argument(
        "--min-severity",
        choices=SEVERITIES,
        help="alert on findings at least this severe (default: low)",
    )
    watch.add_argument("--walk", choices=WALKS, help="fd walk of each scan (default auto)")
    watch.add_argument(
        "--config",
        metavar="FILE",
        help="TOML file with the same options (keys as the long options, '_' for '-'); "
        "re-read on SIGHUP; command-line options win",
    )
    watch.add_argument("--trust-dir", help="trusted public keys (default $ECAP_TRUST_DIR)")
    watch.add_argument("--journal", help="capture journal (default $ECAP_JOURNAL)")
    watch.add_argument("--run-dir", help="live session registry root (default $ECAP_RUN_DIR)")


def _watch(args) -> int:
    from ecap.detect.watch import Watcher, load_config

    overrides = {
        k: getattr(args, k)
        for k in (
            "json",
            "format",
            "syslog",
            "syslog_socket",
            "rescan",
            "heartbeat",
            "min_severity",
            "walk",
            "trust_dir",
            "journal",
            "run_dir",
        )
    }
    config_path = Path(args.config) if args.config else None
    if config_path is not None and not config_path.is_file():
        raise UsageError(f"--config {config_path}: no such file", hint="give a TOML file")
    options = load_config(config_path, overrides)
    _check_writable(options.json, "--json")
    return Watcher(options, config_path=config_path, overrides=overrides).run()


def _check_writable(target: str | None, flag: str) -> None:
    if target in (None, "-"):
        return
    parent = Path(target).resolve().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UsageError(
            f"{flag} {target}: directory {parent} does not exist or is not writable",
            hint="choose a writable path",
        )


def _html(docs: list[dict], out: str, unreachable: list[tuple[str, str]] | None = None) -> None:
    """Host report for one document, fleet report for several (ecap.reports)."""
    from ecap.reports import host_report  # jinja2 only when HTML is asked for

    host_report.write(docs, Path(out), unreachable=unreachable)


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
    selinux_policy = Path(args.selinux_policy) if args.selinux_policy else None
    if selinux_policy is not None and not selinux_policy.is_file():
        raise UsageError(
            f"--selinux-policy {selinux_policy}: no such file",
            hint="give a binary policy such as /etc/selinux/default/policy/policy.33",
        )
    try:
        doc = run_scan(
            ScanOptions(
                audit_log=audit_log,
                selinux_policy=selinux_policy,
                use_bpf=not args.no_bpf,
                walk=args.walk,
            )
        )
    except Error:
        raise
    except OSError as exc:
        raise Error(f"scan failed: {exc}", hint="run as root on a host with /proc mounted") from exc
    json_to = args.json or ("-" if args.format == "ocsf" else None)
    if args.format == "ocsf":
        from ecap.detect import ocsf

        ocsf.write_lines(ocsf.from_scan(doc), json_to)
    elif json_to:
        render_json.write(doc, json_to)
    if json_to != "-":
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

    if not args.scans and not args.unreachable:
        raise UsageError("no scan files given", hint="pass one or more HOST.json files")
    docs = [document.load(path) for path in args.scans]
    _check_writable(args.html, "--html")
    unreachable = []
    for item in args.unreachable:
        name, _, why = item.partition("=")
        if not name:
            raise UsageError(f"--unreachable {item!r}: no host name", hint="give HOST[=REASON]")
        unreachable.append((name, why or "unreachable"))
    _html(docs, args.html, unreachable)
    return 0


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "scan":
        return _scan(args)
    if args.command == "watch":
        return _watch(args)
    return _report(args)


def main(argv: list[str] | None = None) -> None:
    run(_main, argv)
