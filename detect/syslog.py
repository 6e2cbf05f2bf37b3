"""RFC 5424 syslog messages to the local socket, for ``ecap-detect watch --syslog``.

Python's ``logging.handlers.SysLogHandler`` writes the older BSD format
(``<PRI>message``, no timestamp, host or structured data), which receivers parse
by guesswork. RFC 5424 is what rsyslog, syslog-ng and journald parse exactly:

    <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD-ELEMENT...] MSG

Only IANA-registered structured-data ids are used (``origin``, ``meta``), so
no private enterprise number is invented. The MSG is the record as JSON,
ASCII-only (``ensure_ascii``), so it needs no BOM and can never carry a
control character or a byte that breaks the framing.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from datetime import UTC, datetime

DEFAULT_SOCKET = "/dev/log"
FACILITY_AUTH = 4
MAX_MESSAGE = 8192
"""rsyslog's default maxMessageSize; longer alerts are sent in compact form."""

# RFC 5424 6.2.1 severities
SEVERITY = {"critical": 2, "high": 3, "medium": 4, "low": 5, "info": 6}
RECORD_SEVERITY = {"error": 3, "stop": 5, "start": 5, "reload": 5, "heartbeat": 6}


def _header_field(value: str, limit: int) -> str:
    """PRINTUSASCII (33..126), at most ``limit`` characters, "-" when empty."""
    text = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return text or "-"


def sd_escape(value: str) -> str:
    """PARAM-VALUE escaping (RFC 5424 6.3.3): backslash before '"', '\\' and ']'."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def format_message(
    *,
    severity: int,
    msgid: str,
    message: str,
    hostname: str,
    app_name: str = "ecap-detect",
    procid: int | None = None,
    facility: int = FACILITY_AUTH,
    timestamp: datetime | None = None,
    structured: dict[str, dict[str, str]] | None = None,
) -> bytes:
    """One RFC 5424 message, framed for a datagram (no trailing newline)."""
    if not 0 <= severity <= 7 or not 0 <= facility <= 23:
        raise ValueError("syslog facility 0..23 and severity 0..7")
    ts = (timestamp or datetime.now(UTC)).astimezone(UTC)
    stamp = ts.strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"
    sd = "".join(
        "["
        + _header_field(sd_id, 32).replace("=", "").replace("]", "").replace('"', "")
        + "".join(
            f' {_header_field(k, 32).replace("=", "")}="{sd_escape(str(v))}"'
            for k, v in params.items()
        )
        + "]"
        for sd_id, params in (structured or {}).items()
    )
    header = (
        f"<{facility * 8 + severity}>1 {stamp} {_header_field(hostname, 255)} "
        f"{_header_field(app_name, 48)} {_header_field(str(procid or os.getpid()), 128)} "
        f"{_header_field(msgid, 32)} {sd or '-'}"
    )
    return (header + " " + message).encode("utf-8")


def _compact(record: dict) -> dict:
    """An alert without the bulky parts of its finding (for the syslog size limit)."""
    out = {k: v for k, v in record.items() if k != "finding"}
    f = record.get("finding") or {}
    owner = f.get("owner") or {}
    out["finding"] = {
        "id": f.get("id"),
        "severity": f.get("severity"),
        "category": f.get("category"),
        "title": f.get("title"),
        "authorized": f.get("authorized"),
        "programs": f.get("programs"),
        "owner": {k: owner.get(k) for k in ("pid", "comm", "exe", "kind", "pinned_at")},
        "hooked": [
            {k: h.get(k) for k in ("path", "function", "type")} for h in f.get("hooked") or []
        ][:8],
        "compact": True,
    }
    return out


def record_message(record: dict, body: dict, *, hostname: str, version: str) -> bytes:
    """An ``ecap.alert/1`` record (``body`` as sent: the record itself, or OCSF) as syslog."""
    rtype = record["type"]
    severity = SEVERITY.get(record.get("severity", ""), 6)
    if rtype == "resolved":
        severity = 5  # notice: good news
    elif rtype != "alert":
        severity = RECORD_SEVERITY.get(rtype, 6)
    structured = {
        "origin": {"software": "ecap-detect", "swVersion": version},
        "meta": {"sequenceId": str(record["seq"])},
    }
    msgid = rtype if rtype != "alert" else f"alert-{record.get('change', 'new')}"

    def build(payload: dict) -> bytes:
        return format_message(
            severity=severity,
            msgid=msgid,
            message=json.dumps(payload, ensure_ascii=True, separators=(",", ":"), default=str),
            hostname=hostname,
            structured=structured,
        )

    message = build(body)
    if len(message) > MAX_MESSAGE and "finding" in record:
        message = build(_compact(record))
    return message[:MAX_MESSAGE]


class SyslogSender:
    """A connected datagram socket to the local syslog daemon."""

    def __init__(self, path: str = DEFAULT_SOCKET) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._sock.connect(path)
        except OSError:
            self._sock.close()
            raise

    dropped: int = 0
    """Messages not sent because the daemon's queue was full (the watcher never blocks)."""

    def send(self, message: bytes) -> None:
        """Send one message without blocking; if the daemon restarted, reconnect once."""
        try:
            self._sock.send(message, socket.MSG_DONTWAIT)
        except BlockingIOError:
            self.dropped += 1
        except OSError:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.connect(self.path)
            try:
                self._sock.send(message, socket.MSG_DONTWAIT)
            except BlockingIOError:
                self.dropped += 1

    def close(self) -> None:
        self._sock.close()
