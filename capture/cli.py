"""ecap-audit: authorized capture of TLS plaintext, and the authorization around it.

Typical flow (see README):
  on the target host   ecap-audit request --pid 1234 --module tls --reason "INC-42" --out req.json
  authorizer           ecap-audit authorize req.json --key ca.key --operator alice --reason "INC-42"
  on the target host   ecap-audit capture tls --pid 1234 --token token.jwt

Every gate decision and every capture start/stop is appended to a hash-chained
journal (ECAP_JOURNAL, default /var/lib/ecap/journal.jsonl).

Exit codes: 0 ok, 2 usage or input error, 3 authorization refused, 4 environment
not ready (see 'ecap-audit doctor').
"""

from __future__ import annotations

import argparse
import sys

from ecap.capture import cli_capture
from ecap.cli import Parser, run
from ecap.errors import UsageError

_TOKEN_READ_LIMIT = 64 * 1024
_DESCENDANTS_HELP = (
    "also cover the processes the targets fork while captured (child shells, a "
    "database's backends); off unless asked for in the request and granted"
)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trust-dir",
        help="trusted public keys (env ECAP_TRUST_DIR, default /etc/ecap/trusted-keys)",
    )
    p.add_argument(
        "--journal", help="journal file (env ECAP_JOURNAL, default /var/lib/ecap/journal.jsonl)"
    )


def build_parser() -> Parser:
    parser = Parser(
        prog="ecap-audit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=Parser
    )

    p = sub.add_parser("doctor", help="check that this host and process can capture")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("keygen", help="make an Ed25519 signing key pair for authorizers")
    p.add_argument(
        "--out", required=True, metavar="PREFIX", help="writes PREFIX.key (0600) and PREFIX.pub"
    )
    p.add_argument(
        "--passphrase-file", help="encrypt the private key with the first line of this file"
    )
    p.add_argument("--trust", action="store_true", help="also install PREFIX.pub in the trust dir")
    _common(p)

    p = sub.add_parser("trust", help="install a public key in the trust directory")
    p.add_argument("pubkey", help="PEM public key (PREFIX.pub from keygen)")
    _common(p)

    p = sub.add_parser("request", help="describe local processes for an authorizer to sign")
    p.add_argument(
        "--pid", type=int, action="append", required=True, help="target PID (repeatable)"
    )
    p.add_argument("--module", action="append", required=True, help="capture module (tls)")
    p.add_argument(
        "--mode",
        action="append",
        help="output mode(s) wanted (default: all but keylog and pcapng, which must be "
        "named: their keys decrypt a connection for anyone who recorded it)",
    )
    p.add_argument("--reason", required=True, help="why the capture is needed (ticket, incident)")
    p.add_argument("--out", help="write the request here (default: stdout)")
    p.add_argument("--with-descendants", action="store_true", help=_DESCENDANTS_HELP)

    p = sub.add_parser("authorize", help="sign a capture request into a token")
    p.add_argument("request", nargs="?", help="REQUEST.json from 'ecap-audit request'")
    p.add_argument("--this-host", action="store_true", help="build the request here from --pid")
    p.add_argument("--pid", type=int, action="append", help="with --this-host: target PID")
    p.add_argument("--key", required=True, help="signing key (PREFIX.key)")
    p.add_argument(
        "--passphrase-file", help="passphrase of an encrypted key (or ECAP_KEY_PASSPHRASE)"
    )
    p.add_argument("--operator", required=True, help="who will run the capture")
    p.add_argument("--reason", required=True, help="why it is authorized")
    p.add_argument("--issuer", help="issuing authority (default: authorizer@<this host>)")
    p.add_argument("--module", action="append", help="grant only these modules")
    p.add_argument("--mode", action="append", help="grant only these output modes")
    p.add_argument("--ttl", default="2h", help="validity, e.g. 30m, 2h (default 2h, max 24h)")
    p.add_argument("--single-use", action="store_true", help="the token may start one capture only")
    p.add_argument("--with-descendants", action="store_true", help=_DESCENDANTS_HELP)
    p.add_argument("--out", help="write the token here, 0600 (default: stdout)")

    p = sub.add_parser("verify", help="verify a token and print what it authorizes")
    p.add_argument("--token", required=True, help="token file ('-' for stdin)")
    p.add_argument("--pid", type=int, action="append", help="also check these PIDs are in scope")
    p.add_argument("--module", help="also check this module is allowed")
    p.add_argument("--mode", help="also check this output mode is allowed")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _common(p)

    p = sub.add_parser("revoke", help="add token ids or key ids to the signed revocation list")
    p.add_argument("--key", required=True, help="a trusted signing key (PREFIX.key)")
    p.add_argument("--passphrase-file")
    p.add_argument("--jti", action="append", default=[], help="token id to revoke")
    p.add_argument("--kid", action="append", default=[], help="key fingerprint to revoke")
    _common(p)

    p = sub.add_parser(
        "journal",
        help="show or verify the tamper-evident journal, or repair a torn last entry",
        description="show: the entries; verify: check the hash chain (exit 2 naming the "
        "first bad line); repair: when the last write was cut short (a crash, a full "
        "disk), move the incomplete last entry to JOURNAL.torn-TIME and journal the "
        "repair; refused when the chain is broken anywhere else",
    )
    p.add_argument("action", choices=["show", "verify", "repair"])
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _common(p)

    p = sub.add_parser("capture", help="capture plaintext of authorized processes")
    cli_capture.add_arguments(p)
    _common(p)

    p = sub.add_parser(
        "replay", help="render a recorded session (JSONL or raw) as text, or a raw one as JSONL"
    )
    p.add_argument("session", help="a session file written by 'capture --format jsonl' or 'raw'")
    p.add_argument(
        "--format",
        choices=("text", "jsonl"),
        default="text",
        help="text: the decoded view (default); jsonl: the session record",
    )
    p.add_argument("--hex", action="store_true", help="payloads as hex dumps")

    p = sub.add_parser(
        "report", help="render a capture session (JSONL or raw) as an HTML audit report"
    )
    p.add_argument("session", help="a session file written by 'capture --format jsonl' or 'raw'")
    p.add_argument("--html", required=True, help="output HTML file")
    p.add_argument("--json", help="also write the report's JSON twin here")
    _common(p)
    return parser


def read_token(value: str) -> str:
    """Token text from a file or stdin ('-'); size-capped before parsing."""
    try:
        if value == "-":
            data = sys.stdin.read(_TOKEN_READ_LIMIT + 1)
        else:
            with open(value, errors="replace") as f:
                data = f.read(_TOKEN_READ_LIMIT + 1)
    except OSError as exc:
        raise UsageError(f"cannot read token file {value}: {exc.strerror}") from exc
    return data.strip()


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    from ecap.capture import commands

    handler = getattr(commands, f"cmd_{args.command}")
    return int(handler(args) or 0)


def main(argv: list[str] | None = None) -> None:
    run(_main, argv)


if __name__ == "__main__":
    main()
