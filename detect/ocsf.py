"""ecap findings as OCSF events, so a SIEM ingests them without a parser.

Findings become **Detection Finding** events (class 2004, category 2 Findings)
of OCSF 1.1.0 with the ``host`` profile: the finding id is ``finding_info.uid``,
``activity_id`` says whether the finding was created (1), updated (2) or closed
(3, a resolution), the owner process is the ``actor`` and the first evidence,
each hooked file another evidence, the BPF programs are the affected resources,
and the whole ecap finding rides along under ``unmapped.ecap`` so nothing is
lost. The watcher's own lifecycle records (start, heartbeat, reload, error,
stop) become **Application Lifecycle** events (class 6002): Start, Stop, or
Other with ``activity_name`` saying which.

1.1.0 is the version Amazon Security Lake ingests; every field used here means
the same in later 1.x versions.
"""

from __future__ import annotations

import os
import time
from datetime import datetime

from ecap.detect.alerts import SCHEMA as ALERT_SCHEMA

VERSION = "1.1.0"
PROFILES = ["host"]
DETECTION_FINDING = 2004
APPLICATION_LIFECYCLE = 6002
_SEVERITY = {"info": (1, "Informational"), "low": (2, "Low"), "medium": (3, "Medium")}
_SEVERITY |= {"high": (4, "High"), "critical": (5, "Critical")}
_ACTIVITY = {"new": (1, "Create"), "current": (1, "Create"), "changed": (2, "Update")}
_ACTIVITY |= {"resolved": (3, "Close")}
_LIFECYCLE = {"start": (3, "Start"), "stop": (4, "Stop")}
_SHA256, _REGULAR_FILE, _LINUX, _RULE = 3, 1, 200, 1


def _ms(iso_or_epoch: str | float | None) -> int:
    if iso_or_epoch is None:
        return int(time.time() * 1000)
    if isinstance(iso_or_epoch, str):
        return int(datetime.fromisoformat(iso_or_epoch).timestamp() * 1000)
    return int(iso_or_epoch * 1000)


def _metadata(tool_version: str, sequence: int | None = None) -> dict:
    meta = {
        "version": VERSION,
        "profiles": list(PROFILES),
        "product": {"name": "ecap-detect", "vendor_name": "ecap", "version": tool_version},
        "log_name": "ecap-detect",
    }
    if sequence is not None:
        meta["sequence"] = sequence
    return meta


def device(host: dict) -> dict:
    """The host an event is about (OCSF ``device``, host profile)."""
    out = {
        "hostname": str(host.get("hostname") or "unknown"),
        "name": str(host.get("hostname") or "unknown"),
        "type_id": 0,
        "os": {"name": "Linux", "type_id": _LINUX},
    }
    if host.get("kernel"):
        out["os"]["version"] = str(host["kernel"])
    if host.get("machine_id"):
        out["uid"] = str(host["machine_id"])
    return out


def _file(path: str, sha256: str | None = None) -> dict:
    out = {"name": os.path.basename(path) or path, "path": path, "type_id": _REGULAR_FILE}
    if sha256:
        out["hashes"] = [{"algorithm_id": _SHA256, "algorithm": "SHA-256", "value": sha256}]
    return out


def process(owner: dict) -> dict | None:
    """An ecap owner (see detect/SCHEMA.md) as an OCSF ``process``; None if no process."""
    if not owner or not owner.get("pid"):
        return None
    out: dict = {"pid": int(owner["pid"])}
    if owner.get("comm"):
        out["name"] = str(owner["comm"])
    if owner.get("cmdline"):
        out["cmd_line"] = " ".join(map(str, owner["cmdline"]))
    if owner.get("exe"):
        out["file"] = _file(str(owner["exe"]), owner.get("exe_sha256"))
    if owner.get("uid") is not None:
        out["user"] = {"uid": str(owner["uid"])}
        if owner.get("user"):
            out["user"]["name"] = str(owner["user"])
    chain = owner.get("parent_chain") or []
    if chain and chain[0].get("pid"):
        parent = {"pid": int(chain[0]["pid"])}
        if chain[0].get("comm"):
            parent["name"] = str(chain[0]["comm"])
        if chain[0].get("exe"):
            parent["file"] = _file(str(chain[0]["exe"]))
        out["parent_process"] = parent
    return out


def _evidences(finding: dict, proc: dict | None) -> list[dict]:
    out: list[dict] = []
    if proc is not None:
        out.append({"process": proc, "actor": {"process": proc}})
    for h in finding.get("hooked") or []:
        ev: dict = {
            "data": {
                k: h.get(k)
                for k in ("function", "offset", "type", "class", "source", "prog_id", "event")
            }
        }
        if h.get("path"):
            ev["file"] = _file(str(h["path"]))
        out.append(ev)
    if not out:
        out.append({"data": {"evidence": list(finding.get("evidence") or [])}})
    return out


def detection_finding(
    finding: dict,
    *,
    host: dict,
    tool_version: str,
    change: str = "new",
    when: str | float | None = None,
    first_seen: str | float | None = None,
    sequence: int | None = None,
) -> dict:
    """One ecap finding as an OCSF Detection Finding (class 2004)."""
    severity_id, severity = _SEVERITY[finding["severity"]]
    activity_id, activity = _ACTIVITY[change]
    proc = process(finding.get("owner") or {})
    info: dict = {
        "uid": str(finding["id"]),
        "title": str(finding["title"]),
        "desc": " ".join(str(x) for x in (finding.get("summary"), finding.get("why")) if x),
        "types": [str(finding.get("category"))],
        "analytic": {
            "name": f"ecap-detect {finding.get('category')}",
            "uid": str(finding.get("category")),
            "type_id": _RULE,
            "type": "Rule",
        },
    }
    if first_seen is not None:
        info["first_seen_time"] = _ms(first_seen)
    info["last_seen_time"] = _ms(when)
    event: dict = {
        "class_uid": DETECTION_FINDING,
        "class_name": "Detection Finding",
        "category_uid": 2,
        "category_name": "Findings",
        "activity_id": activity_id,
        "activity_name": activity,
        "type_uid": DETECTION_FINDING * 100 + activity_id,
        "type_name": f"Detection Finding: {activity}",
        "severity_id": severity_id,
        "severity": severity,
        "status_id": 4 if change == "resolved" else 1,
        "status": "Resolved" if change == "resolved" else "New",
        "time": _ms(when),
        "message": str(finding["title"]),
        "finding_info": info,
        "metadata": _metadata(tool_version, sequence),
        "device": device(host),
        "evidences": _evidences(finding, proc),
        "unmapped": {"ecap": finding},
    }
    if proc is not None:
        event["actor"] = {"process": proc}
    programs = finding.get("programs") or []
    if programs:
        event["resources"] = [
            {"type": "bpf-program", "uid": str(p), "name": f"BPF program {p}"} for p in programs
        ]
    remedies = [str(r) for r in finding.get("remediation") or []]
    if remedies:
        event["remediation"] = {
            "desc": "Controls that close this exposure (ecap-harden generate / controls): "
            + ", ".join(remedies),
            "references": remedies,
        }
    return event


def from_scan(doc: dict) -> list[dict]:
    """Every finding of an ``ecap.scan/2`` document as a Detection Finding (Create)."""
    version = str((doc.get("tool") or {}).get("version") or "")
    return [
        detection_finding(
            f, host=doc.get("host") or {}, tool_version=version, when=doc.get("generated_at")
        )
        for f in doc.get("findings") or []
    ]


def write_lines(events: list[dict], target: str) -> None:
    """One event per line (NDJSON) to a file (0600, atomically) or stdout (``-``)."""
    import json
    import sys

    text = "".join(json.dumps(e, separators=(",", ":"), default=str) + "\n" for e in events)
    if target == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        from ecap.fsutil import write_private_atomic

        write_private_atomic(target, text)


def from_alert(record: dict, *, host: dict, tool_version: str) -> dict:
    """An ``ecap.alert/1`` record as an OCSF event (2004 for findings, 6002 otherwise)."""
    if record.get("schema") != ALERT_SCHEMA:
        raise ValueError(f"not an {ALERT_SCHEMA} record")
    rtype = record["type"]
    if rtype in ("alert", "resolved"):
        return detection_finding(
            record["finding"],
            host=host,
            tool_version=tool_version,
            change=record.get("change", "resolved"),
            when=record["time"],
            first_seen=record.get("first_seen"),
            sequence=record["seq"],
        )
    activity_id, activity = _LIFECYCLE.get(rtype, (99, rtype.capitalize()))
    details = {k: v for k, v in record.items() if k not in ("schema", "time", "seq", "host")}
    return {
        "class_uid": APPLICATION_LIFECYCLE,
        "class_name": "Application Lifecycle",
        "category_uid": 6,
        "category_name": "Application Activity",
        "activity_id": activity_id,
        "activity_name": activity,
        "type_uid": APPLICATION_LIFECYCLE * 100 + activity_id,
        "type_name": f"Application Lifecycle: {activity}",
        "severity_id": 3 if rtype == "error" else 1,
        "severity": "Medium" if rtype == "error" else "Informational",
        "status_id": 2 if rtype == "error" else 1,
        "status": "Failure" if rtype == "error" else "Success",
        "time": _ms(record["time"]),
        "message": _lifecycle_message(record),
        "app": {"name": "ecap-detect watch", "vendor_name": "ecap", "version": tool_version},
        "metadata": _metadata(tool_version, record["seq"]),
        "device": device(host),
        "unmapped": {"ecap": details},
    }


def _lifecycle_message(record: dict) -> str:
    rtype = record["type"]
    if rtype == "heartbeat":
        active = (record.get("counts") or {}).get("active") or {}
        return f"ecap-detect watch heartbeat: {sum(active.values())} active finding(s)"
    if rtype == "error":
        return f"ecap-detect watch error: {record.get('message')}"
    if rtype == "stop":
        return f"ecap-detect watch stopped ({record.get('reason')})"
    return f"ecap-detect watch {rtype}"
