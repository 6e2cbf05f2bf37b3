"""The ``ecap.alert/1`` records of ``ecap-detect watch``, and their deduplication.

A watcher rescans whenever something may have changed; most rescans find what
the last one found. :class:`AlertState` remembers, per finding id, a
fingerprint of what matters about the finding (severity, title, what is hooked,
by which programs, owned by whom, authorized or not) and turns a scan into
records only for what is new, changed or gone. Victim lists and evidence lines
are left out of the fingerprint: processes that map libssl come and go all
the time, and an alert storm about them would bury the one that matters.

The record layout is documented in detect/ALERTS.md; :func:`validate` checks
a record against it (tests and consumers use the same function).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ecap.detect.findings import RANK, SEVERITIES

SCHEMA = "ecap.alert/1"
RECORD_TYPES = ("start", "alert", "resolved", "heartbeat", "reload", "error", "stop")
CHANGES = ("new", "changed", "current")
"""``current``: present when the watcher started (or after a restart): reported once."""


def iso(ts: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if ts is None else ts, UTC).isoformat()


def fingerprint(finding: dict) -> str:
    """What makes two sightings of one finding id "the same alert"."""
    owner = finding.get("owner") or {}
    key = {
        "severity": finding.get("severity"),
        "category": finding.get("category"),
        "title": finding.get("title"),
        "authorized": finding.get("authorized"),
        "programs": sorted(finding.get("programs") or []),
        "owner": [owner.get("pid"), owner.get("exe"), owner.get("pinned_at")],
        "hooked": sorted(
            [h.get("path"), h.get("offset"), h.get("function"), h.get("type"), h.get("enabled")]
            for h in finding.get("hooked") or []
        ),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Tracked:
    """One finding the watcher has alerted on and not yet seen resolved."""

    finding: dict
    fingerprint: str
    first_seen: float
    alerted_at: float


@dataclass
class Change:
    """What one scan changed, for one finding id."""

    kind: str
    """``new``, ``changed``, ``current`` (alerts) or ``resolved``."""
    finding: dict
    previous: dict | None = None
    first_seen: float | None = None


@dataclass
class AlertState:
    """Findings alerted on, by id; turns each scan into changes (deduplicated)."""

    min_severity: str = "low"
    tracked: dict[str, Tracked] = field(default_factory=dict)
    initialised: bool = False

    def update(self, findings: list[dict], *, now: float | None = None) -> list[Change]:
        """Compare a scan's findings with what was alerted; remember the new state.

        A finding below ``min_severity`` is not tracked; one that drops below it
        is reported resolved (it no longer needs attention at this level).
        """
        now = time.time() if now is None else now
        threshold = RANK[self.min_severity]
        seen: dict[str, dict] = {}
        for f in findings:
            if RANK.get(f.get("severity"), -1) >= threshold and f.get("id"):
                seen.setdefault(f["id"], f)
        changes: list[Change] = []
        for fid, f in seen.items():
            fp = fingerprint(f)
            old = self.tracked.get(fid)
            if old is None:
                kind = "new" if self.initialised else "current"
                self.tracked[fid] = Tracked(f, fp, now, now)
                changes.append(Change(kind, f, first_seen=now))
            elif old.fingerprint != fp:
                changes.append(
                    Change("changed", f, previous=old.finding, first_seen=old.first_seen)
                )
                self.tracked[fid] = Tracked(f, fp, old.first_seen, now)
            else:
                old.finding = f  # newest details (victims, evidence) for the resolution
        for fid in [fid for fid in self.tracked if fid not in seen]:
            old = self.tracked.pop(fid)
            changes.append(Change("resolved", old.finding, first_seen=old.first_seen))
        self.initialised = True
        return changes

    def set_threshold(self, min_severity: str) -> None:
        if min_severity not in SEVERITIES:
            raise ValueError(f"unknown severity {min_severity!r}")
        self.min_severity = min_severity

    def active_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(SEVERITIES, 0)
        for t in self.tracked.values():
            counts[t.finding["severity"]] += 1
        return counts

    def owner_pids(self) -> set[int]:
        """Processes whose exit would resolve a tracked finding."""
        return {
            t.finding["owner"]["pid"]
            for t in self.tracked.values()
            if isinstance(t.finding.get("owner"), dict) and t.finding["owner"].get("pid")
        }


def change_record(change: Change, *, trigger: str, now: float | None = None) -> dict:
    """The ``alert`` or ``resolved`` record body for one change (envelope added later)."""
    now = time.time() if now is None else now
    f = change.finding
    if change.kind == "resolved":
        return {
            "type": "resolved",
            "trigger": trigger,
            "finding_id": f["id"],
            "severity": f["severity"],
            "title": f["title"],
            "first_seen": iso(change.first_seen),
            "duration_s": round(now - (change.first_seen or now), 3),
            "finding": f,
        }
    record = {
        "type": "alert",
        "change": change.kind,
        "trigger": trigger,
        "finding_id": f["id"],
        "severity": f["severity"],
        "title": f["title"],
        "first_seen": iso(change.first_seen),
        "finding": f,
    }
    if change.previous is not None:
        record["previous"] = {
            "severity": change.previous.get("severity"),
            "title": change.previous.get("title"),
            "authorized": change.previous.get("authorized"),
        }
    return record


_REQUIRED = {
    "start": ("options", "event_source"),
    "alert": ("change", "trigger", "finding_id", "severity", "title", "first_seen", "finding"),
    "resolved": ("trigger", "finding_id", "severity", "title", "first_seen", "finding"),
    "heartbeat": ("uptime_s", "counts", "event_source"),
    "reload": ("options",),
    "error": ("message",),
    "stop": ("reason", "uptime_s", "counts"),
}
_FINDING_FIELDS = ("id", "severity", "category", "title", "summary", "evidence", "remediation")


def validate(record: dict) -> None:
    """Raise ValueError unless ``record`` is a well-formed ``ecap.alert/1`` record."""
    if not isinstance(record, dict) or record.get("schema") != SCHEMA:
        raise ValueError(f"schema is not {SCHEMA}")
    rtype = record.get("type")
    if rtype not in RECORD_TYPES:
        raise ValueError(f"unknown record type {rtype!r}")
    for key in ("time", "seq", "host", "watcher"):
        if key not in record:
            raise ValueError(f"{rtype} record lacks {key!r}")
    if not isinstance(record["seq"], int) or record["seq"] < 1:
        raise ValueError("seq must be a positive integer")
    datetime.fromisoformat(record["time"])
    for key in _REQUIRED[rtype]:
        if key not in record:
            raise ValueError(f"{rtype} record lacks {key!r}")
    if rtype in ("alert", "resolved"):
        f = record["finding"]
        missing = [k for k in _FINDING_FIELDS if k not in f]
        if missing:
            raise ValueError(f"finding lacks {', '.join(missing)}")
        if record["severity"] not in SEVERITIES or f["id"] != record["finding_id"]:
            raise ValueError("severity or finding_id does not match the finding")
    if rtype == "alert" and record["change"] not in CHANGES:
        raise ValueError(f"unknown change {record['change']!r}")
