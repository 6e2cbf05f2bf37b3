"""The capture session report: evidence that a capture stayed inside its authorization.

Input is the JSONL ``ecap-audit capture --format jsonl`` writes (schema
``ecap.capture/2``: a header with the token, event and connection records, a
summary). The file is a claim, not proof: the report verifies the token again
against the trust store (at the moment the capture started, since it may have
expired since), shows the claims *from the verified token* rather than the
header's copy, checks every recorded PID, the module and the output mode against
that scope, and checks the journal's hash chain and the session's entries in it.
Each check is shown with its result, so an auditor sees what holds and what does
not. No captured plaintext is put into the report: only sizes and counts.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ecap import config
from ecap.authz.policy import (
    AllOf,
    Allowed,
    Context,
    TargetsInScope,
    TimeWindow,
    token_checks,
)
from ecap.authz.token import CLOCK_SKEW_SECONDS, Grant
from ecap.capture.schema import READABLE as CAPTURE_READABLE
from ecap.capture.schema import SCHEMA as CAPTURE_SCHEMA
from ecap.errors import AuthorizationRefused, UsageError
from ecap.journal import Journal, entry_hash, verify_file
from ecap.reports import _render
from ecap.text import printable

SCHEMA = "ecap.report.session/1"
HINT = (
    "pass the session file written by 'ecap-audit capture MODULE --format jsonl|raw --output FILE'"
)


@dataclass(frozen=True)
class Check:
    """One line of the auditor's checklist."""

    name: str
    ok: bool | None
    """True holds, False violated, None could not be established."""
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


def _epoch(value: Any) -> float | None:
    """Epoch seconds from a number or an ISO 8601 string (None when neither)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value).timestamp()
        except ValueError:
            return None
    return None


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """A JSONL session as it is (leniently: a damaged file still gets its report), or a
    raw one decoded into the same records by the capture's own pipeline."""
    from ecap.capture.replay import iter_session_records, looks_raw

    if looks_raw(path):
        yield from enumerate(iter_session_records(path), start=1)
    else:
        yield from _render.iter_jsonl(path, what="session file", hint=HINT)


def read_session(path: str | Path) -> dict[str, Any]:
    """Header, summary, connections and per-connection event tallies of a JSONL file."""
    header: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None
    connections: dict[Any, dict[str, Any]] = {}
    tallies: dict[Any, dict[str, Any]] = {}
    event_pids: set[int] = set()
    others: dict[str, int] = {}
    activity: dict[str, dict[str, Any]] = {}
    keys: dict[Any, dict[str, Any]] = {}
    shown = printable(str(path))
    for number, rec in _records(Path(path)):
        kind = rec.get("type")
        if header is None:
            if kind != "header":
                raise UsageError(
                    f"session file {shown} does not start with a header record "
                    f"(line {number} is {printable(repr(kind))})",
                    hint=HINT,
                )
            if rec.get("schema") not in CAPTURE_READABLE:
                _render.check_schema(rec, CAPTURE_SCHEMA, f"session file {shown} header", HINT)
            header = rec
            continue
        if kind == "event":
            cid = rec.get("connection_id")
            t = tallies.setdefault(
                cid,
                {
                    "events": 0,
                    "write": 0,
                    "read": 0,
                    "captured": 0,
                    "truncated": 0,
                    "lost": 0,
                    "first": None,
                    "last": None,
                    "pids": set(),
                },
            )
            t["events"] += 1
            direction = rec.get("direction")
            total = _int(rec.get("total"))
            if direction in ("write", "read"):
                t[direction] += total
            t["captured"] += _int(rec.get("len"))
            t["truncated"] += _int(rec.get("truncated"))
            t["lost"] += _int(rec.get("lost"))
            ts = rec.get("ts")
            t["first"] = t["first"] or ts
            t["last"] = ts or t["last"]
            if isinstance(rec.get("pid"), int):
                t["pids"].add(rec["pid"])
                event_pids.add(rec["pid"])
            if cid not in connections:
                connections[cid] = {
                    "connection_id": cid,
                    "pid": rec.get("pid"),
                    "comm": rec.get("comm"),
                    "peer": rec.get("peer"),
                    "local": rec.get("local"),
                    "ended": False,
                }
        elif kind == "connection":
            cid = rec.get("connection_id")
            connections[cid] = {**connections.get(cid, {}), **rec, "ended": True}
            if isinstance(rec.get("pid"), int):
                event_pids.add(rec["pid"])
        elif kind == "key":
            _tally_key(keys, rec)
            if isinstance(rec.get("pid"), int):
                event_pids.add(rec["pid"])
        elif kind in ("command", "statement"):
            _tally_activity(activity, rec)
            if isinstance(rec.get("pid"), int):
                event_pids.add(rec["pid"])
        elif kind == "summary":
            summary = rec
        else:
            others[str(kind)] = others.get(str(kind), 0) + 1
    if header is None:
        raise UsageError(f"session file {shown} is empty", hint=HINT)
    return {
        "header": header,
        "summary": summary,
        "connections": connections,
        "tallies": tallies,
        "event_pids": event_pids,
        "other_records": others,
        "activity": activity,
        "keys": keys,
    }


def _tally_key(keys: dict[Any, dict[str, Any]], rec: dict[str, Any]) -> None:
    """Per connection: how many secrets were proven (and written) or not, and why
    not — never a secret (the session record holds none)."""
    entry = keys.setdefault(rec.get("connection_id"), {"verified": 0, "not_verified": 0,
                                                        "reasons": {}})  # fmt: skip
    if rec.get("verified") is True:
        entry["verified"] += 1
    else:
        entry["not_verified"] += 1
        reason = str(rec.get("reason"))
        entry["reasons"][reason] = entry["reasons"].get(reason, 0) + 1


def _tally_activity(activity: dict[str, dict[str, Any]], rec: dict[str, Any]) -> None:
    """Counts of commands / statements by outcome — never their text (no plaintext
    in reports): a command's exit status or how it ended, a statement's status and
    error code."""
    kind = str(rec.get("type"))
    entry = activity.setdefault(kind, {"count": 0, "outcomes": {}, "truncated": 0, "lost": 0})
    entry["count"] += 1
    if kind == "command":
        ending = rec.get("ending")
        status = rec.get("status")
        if ending in ("status", "exit") and isinstance(status, int):
            outcome = f"exit status {status}"
        elif ending == "signal":
            outcome = f"killed by signal {status}"
        else:
            outcome = str(ending)
    else:
        outcome = str(rec.get("status"))
        if outcome == "error" and rec.get("error") is not None:
            outcome = f"error {rec.get('error')}"
    entry["outcomes"][outcome] = entry["outcomes"].get(outcome, 0) + 1
    entry["truncated"] += _int(rec.get("truncated"))
    entry["lost"] += _int(rec.get("lost"))


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def verify_grant(
    token: Any, started_at: float | None, trust_dir: Path | None
) -> tuple[Grant | None, str, str]:
    """(grant, status at capture start, status now).

    The token is verified once (signature, lifetime, revocation: the gate's
    checks, the host binding left out since the report may be read elsewhere);
    only the validity window is then judged at the two instants.
    """
    if not isinstance(token, str) or not token:
        return None, "no token in the session header", "-"
    ctx = Context(token=token, trust_dir=config.trust_dir(trust_dir))
    try:
        AllOf(*token_checks(check_host=False, check_time=False)).verify(ctx)
        grant = ctx.require_grant()
        if started_at is not None:
            ctx.now = started_at
        TimeWindow().verify(ctx)
        at_start = "verified: valid when the capture started"
    except AuthorizationRefused as refusal:
        return None, f"NOT verified: {refusal.one_line()}", "-"
    ctx.now = time.time()
    try:
        TimeWindow().verify(ctx)
        now = "still valid now"
    except AuthorizationRefused as refusal:
        now = f"no longer valid now: {refusal.one_line()}"
    return grant, at_start, now


def _policy_check(name: str, grant: Grant, check: Any, detail: str) -> Check:
    """One checklist line decided by one of the gate's policy checks."""
    ctx = Context(token="", trust_dir=Path("."), grant=grant)
    try:
        check.verify(ctx)
    except AuthorizationRefused as refusal:
        return Check(name, False, f"{detail}; {refusal.message}")
    return Check(name, True, detail)


def scope_checks(data: dict[str, Any], grant: Grant | None) -> list[Check]:
    """Did the recorded capture stay inside what the verified token allowed?"""
    header, summary = data["header"], data["summary"] or {}
    checks: list[Check] = []
    if grant is None:
        return [
            Check("token verifies", False, "the scope cannot be checked without a verified token")
        ]
    checks.append(Check("token verifies", True, f"EdDSA signature by trusted key {grant.kid}"))
    claimed = header.get("grant") if isinstance(header.get("grant"), dict) else {}
    differs = sorted(k for k, v in grant.summary().items() if k in claimed and claimed[k] != v)
    checks.append(
        Check(
            "header claims match the token",
            not differs,
            "the header's copy of the claims is what the token says"
            if not differs
            else "header differs from the verified token in: " + ", ".join(differs),
        )
    )
    hostinfo = header.get("host") if isinstance(header.get("host"), dict) else {}
    host_ok: bool | None = None
    if hostinfo.get("hostname"):
        host_ok = hostinfo.get("hostname") == grant.hostname and (
            grant.machine_id is None or hostinfo.get("machine_id") == grant.machine_id
        )
    checks.append(
        Check(
            "captured on the authorized host",
            host_ok,
            f"session host {hostinfo.get('hostname') or 'not recorded'} / token host "
            f"{grant.hostname}",
        )
    )
    targets = [t for t in header.get("targets") or [] if isinstance(t, dict)]
    recorded = [
        (t.get("pid"), t.get("start_time") if isinstance(t.get("start_time"), int) else None)
        for t in targets
    ]
    shown = f"targets {', '.join(str(t.get('pid')) for t in targets) or 'none recorded'}"
    try:
        in_scope: Any = TargetsInScope(recorded, live=False)
    except AuthorizationRefused as refusal:
        checks.append(
            Check("every target process is in scope (PID and start time)", False, refusal.message)
        )
    else:
        checks.append(
            _policy_check(
                "every target process is in scope (PID and start time)", grant, in_scope, shown
            )
        )
    strays = sorted(p for p in data["event_pids"] if p not in grant.pids)
    # With descendants granted, other PIDs are the targets' children (the kernel
    # adds a process only at its parent's fork).
    checks.append(
        Check(
            "every recorded event comes from an authorized PID",
            not strays or grant.descendants,
            f"PIDs seen in records: {', '.join(map(str, sorted(data['event_pids']))) or 'none'}"
            + (
                (
                    f"; descendants (the token grants them): {', '.join(map(str, strays))}"
                    if grant.descendants
                    else f"; NOT authorized: {', '.join(map(str, strays))}"
                )
                if strays
                else ""
            ),
        )
    )
    module = header.get("module")
    # `auto` captures through other modules: each one that hooked must be granted too.
    used = [str(module)] + [
        str(t.get("module")) for t in header.get("targets") or []
        if isinstance(t, dict) and t.get("module") not in (None, module)
    ]  # fmt: skip
    used = list(dict.fromkeys(used))
    checks.append(
        _policy_check(
            "module allowed" if len(used) == 1 else "modules allowed",
            grant,
            AllOf(*(Allowed("module", name) for name in used)),
            f"{', '.join(used)} (token allows {', '.join(grant.modules)})",
        )
    )
    fmt = header.get("format")
    mode = header.get("mode") or _mode_of(str(fmt))
    checks.append(
        _policy_check(
            "output mode allowed",
            grant,
            Allowed("mode", str(mode)),
            f"{mode!s}{'' if mode == fmt else f' (format {fmt!s})'} "
            f"(token allows {', '.join(grant.modes)})",
        )
    )
    started = _epoch(header.get("started_at"))
    stopped = _epoch(summary.get("stopped_at"))
    checks.append(
        Check(
            "started inside the validity window",
            None
            if started is None
            else grant.not_before - CLOCK_SKEW_SECONDS
            <= started
            < grant.expires_at + CLOCK_SKEW_SECONDS,
            f"started {_render.when(started)}, window {_render.when(grant.not_before)} → "
            f"{_render.when(grant.expires_at)}",
        )
    )
    checks.append(
        Check(
            "stopped before the token expired",
            None if stopped is None else stopped <= grant.expires_at + CLOCK_SKEW_SECONDS,
            f"stopped {_render.when(stopped)}"
            if stopped is not None
            else "no summary record: the capture did not finish cleanly (or is still running)",
        )
    )
    return checks


def _mode_of(fmt: str) -> str:
    """The token mode a format needs (a file without the header's ``mode``)."""
    from ecap.capture import sinks

    sink = sinks.by_name(fmt)
    return sink.token_mode if sink is not None else fmt


def journal_view(path: Path, session_id: str, jti: str | None) -> dict[str, Any]:
    """Chain status of the journal and the session's own entries in it."""
    view: dict[str, Any] = {
        "path": str(path),
        "available": False,
        "ok": None,
        "entries": [],
        "problem": None,
        "total": 0,
    }
    try:
        status = verify_file(path)
    except UsageError as exc:
        view["problem"] = exc.one_line()
        return view
    except OSError as exc:
        view["problem"] = f"cannot read the journal: {exc.strerror}"
        return view
    view.update(
        available=True,
        ok=status.ok,
        total=status.entries,
        bad_line=status.bad_line,
        problem=status.problem,
        head=status.head,
    )
    for index, entry in enumerate(Journal(path).read()):
        mine = entry.get("session_id") == session_id or (
            jti and entry.get("jti") == jti and str(entry.get("event", "")).startswith("gate.")
        )
        if not mine:
            continue
        view["entries"].append(
            {
                "seq": entry.get("seq"),
                "ts": entry.get("ts"),
                "event": entry.get("event"),
                "operator": entry.get("operator"),
                "pids": entry.get("pids"),
                "detail": entry.get("reason") or entry.get("stop_reason") or "",
                "hash": entry.get("hash"),
                "journal_override": entry.get("journal_override"),
                "single_use_dir_override": entry.get("single_use_dir_override"),
                "in_verified_chain": status.ok or index < status.entries,
                "hash_ok": entry.get("hash") == entry_hash(entry),
            }
        )
    return view


def journal_checks(j: dict[str, Any]) -> list[Check]:
    events = [e["event"] for e in j["entries"]]
    if not j["available"]:
        return [Check("journal available", None, j["problem"] or "not found")]
    out = [
        Check(
            "journal hash chain intact",
            j["ok"],
            f"{j['total']} entries verify"
            if j["ok"]
            else f"broken at line {j.get('bad_line')}: {j['problem']}",
        )
    ]
    for needed in ("gate.granted", "capture.start", "capture.stop"):
        out.append(
            Check(
                f"journal has {needed} for this session",
                needed in events,
                "present" if needed in events else "missing",
            )
        )
    unverified = [e for e in j["entries"] if not (e["in_verified_chain"] and e["hash_ok"])]
    out.append(
        Check(
            "the session's entries are inside the verified chain",
            not unverified if j["entries"] else None,
            f"{len(j['entries'])} entries"
            + (f"; {len(unverified)} not verified" if unverified else ""),
        )
    )
    return out


def override_warnings(j: dict[str, Any]) -> list[str]:
    """What the session's own journal entries say was kept off the host's state.

    Not a failed check: tests and demos journal elsewhere on purpose. But an
    auditor must see that the host journal has no record of this capture, or that
    a single-use token was tracked outside the host's single-use directory.
    """
    out = []
    moved = sorted({e["journal_override"] for e in j["entries"] if e.get("journal_override")})
    if moved:
        out.append(
            f"journaled to {', '.join(moved)}, not the host journal "
            f"{config.DEFAULT_JOURNAL}: the host journal has no record of this capture"
        )
    spent = sorted(
        {e["single_use_dir_override"] for e in j["entries"] if e.get("single_use_dir_override")}
    )
    if spent:
        out.append(
            f"single-use token tracked in {', '.join(spent)} ({config.UNSAFE_SINGLE_USE_ENV}), "
            f"not the host's {config.DEFAULT_SINGLE_USE_DIR}: it may have been used elsewhere"
        )
    return out


def _list(value: Any) -> list[Any]:
    """A field a session file should hold as a list (anything else: empty)."""
    return value if isinstance(value, list) else []


def _connections(data: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for cid, conn in data["connections"].items():
        t = data["tallies"].get(cid, {})
        written = conn.get("bytes_written", t.get("write", 0))
        read = conn.get("bytes_read", t.get("read", 0))
        out.append(
            {
                "id": cid,
                "pid": conn.get("pid"),
                "comm": conn.get("comm"),
                "module": conn.get("module"),
                "peer": conn.get("peer") or "?",
                "local": conn.get("local"),
                "protocol": conn.get("protocol"),
                "started": conn.get("started_at") or t.get("first"),
                "ended": conn.get("ended_at") or (None if conn.get("ended") else "(open at stop)"),
                "end_reason": conn.get("end_reason"),
                "messages": conn.get("messages", t.get("events", 0)),
                "bytes_written": written,
                "bytes_read": read,
                "truncated": t.get("truncated", 0),
                "lost": t.get("lost", 0),
                "key_counts": data.get("keys", {}).get(cid),
            }
        )
    return sorted(out, key=lambda c: (str(c["started"] or ""), str(c["id"])))


def build_view(
    data: dict[str, Any], *, trust_dir: Path | None = None, journal: Path | None = None
) -> dict[str, Any]:
    """The session report's view model (also its JSON twin)."""
    header, summary = data["header"], data["summary"]
    started = _epoch(header.get("started_at"))
    grant, at_start, now = verify_grant(header.get("token"), started, trust_dir)
    session_id = str(header.get("session_id") or "")
    j = journal_view(config.journal_path(journal), session_id, grant.jti if grant else None)
    checks = scope_checks(data, grant) + journal_checks(j)
    conns = _connections(data)
    s = summary or {}
    totals = {
        "connections": s.get("connections", len(conns)),
        "events": s.get("events") or {},
        "bytes": s.get("bytes") or {},
        "lost_events": s.get("lost_events"),
        "lost_bytes": s.get("lost_bytes", sum(c["lost"] for c in conns)),
        "truncated_bytes": s.get("truncated_bytes", sum(c["truncated"] for c in conns)),
        "unreadable_bytes": s.get("unreadable_bytes", 0),
        "failed_calls": s.get("failed_calls"),
        "max_call_bytes": s.get("max_call_bytes", header.get("max_call_bytes")),
        "stop_reason": s.get("stop_reason") or "no summary record (interrupted?)",
        "duration": s.get("duration"),
        "tls_keys": s.get("keys") if isinstance(s.get("keys"), dict) else None,
        "packets": s.get("packets"),
        "packet_bytes": s.get("packet_bytes"),
        "packets_dropped": s.get("packets_dropped"),
    }
    violated = [c for c in checks if c.ok is False]
    unknown = [c for c in checks if c.ok is None]
    return {
        "schema": SCHEMA,
        "generated_at": _render.now_iso(),
        "generator": _render.generator(),
        "session": {
            "id": session_id,
            "module": header.get("module"),
            "modules": [m for m in _list(header.get("modules")) if isinstance(m, str)],
            "format": header.get("format"),
            "mode": header.get("mode") or _mode_of(str(header.get("format"))),
            "started_at": _render.when(started),
            "stopped_at": _render.when(_epoch(s.get("stopped_at"))),
            "host": header.get("host") if isinstance(header.get("host"), dict) else {},
            "targets": [t for t in header.get("targets") or [] if isinstance(t, dict)],
            "finished": summary is not None,
        },
        "token": {
            "verified": grant is not None,
            "at_start": at_start,
            "now": now,
            "claims": _claims(grant) if grant else None,
            "unverified_claims": None if grant else header.get("grant"),
        },
        "verdict": "inside its authorization"
        if not violated and not unknown
        else "VIOLATIONS found"
        if violated
        else "not fully established",
        "verdict_ok": not violated and not unknown,
        "checks": [c.as_dict() for c in checks],
        "warnings": override_warnings(j),
        "totals": totals,
        "connections": conns,
        "journal": j,
        "other_records": data["other_records"],
        "activity": {
            kind: {**entry, "outcomes": dict(sorted(entry["outcomes"].items()))}
            for kind, entry in sorted(data.get("activity", {}).items())
        },
    }


def _claims(grant: Grant) -> dict[str, Any]:
    out = grant.summary()
    out["issued_at"] = _render.when(grant.issued_at)
    out["not_before"] = _render.when(grant.not_before)
    out["expires_at"] = _render.when(grant.expires_at)
    return out


def render_session_report(
    session_jsonl_path: str | Path,
    html_path: str | Path,
    json_path: str | Path | None = None,
    *,
    trust_dir: str | Path | None = None,
    journal: str | Path | None = None,
) -> Path:
    """Write the session report (and its JSON twin), both 0600; returns the HTML path."""
    data = read_session(session_jsonl_path)
    view = build_view(
        data,
        trust_dir=Path(trust_dir) if trust_dir else None,
        journal=Path(journal) if journal else None,
    )
    html = _render.render_html("session.html.j2", view)
    return _render.write_report(html, view, html_path, json_path)


def cli_render(args: argparse.Namespace) -> int:
    """``ecap-audit report SESSION.jsonl --html OUT [--json OUT]``."""
    path = render_session_report(
        args.session,
        args.html,
        getattr(args, "json", None),
        trust_dir=getattr(args, "trust_dir", None),
        journal=getattr(args, "journal", None),
    )
    print(f"session report written to {printable(str(path))}")
    if getattr(args, "json", None):
        print(f"JSON twin written to {printable(str(args.json))}")
    return 0
