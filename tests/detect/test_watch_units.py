"""Units of the watcher: OCSF mapping, syslog framing, deduplication, config, unit file.

OCSF events are checked against the OCSF 1.1.0 schema as published (the export of
schema.ocsf.io bundled in ``ocsf-json-schema``), turned into JSON Schema and
applied with ``jsonschema``: required attributes, types, enums, no stray keys.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import socket
import subprocess
import sys
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import jsonschema
import pytest

from ecap.detect import alerts, ocsf, syslog, watchers
from ecap.detect.watch import WatchOptions, load_config
from ecap.errors import UsageError
from tests.conftest import ecap_cmd

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[2]
CLASSES = {2004: "detection_finding", 6002: "application_lifecycle"}


@cache
def _validator(class_uid: int) -> jsonschema.Draft202012Validator:
    import ocsf_json_schema

    schema = ocsf_json_schema.OcsfJsonSchemaEmbedded(ocsf_json_schema.get_ocsf_schema(ocsf.VERSION))
    return jsonschema.Draft202012Validator(
        schema.get_class_schema(CLASSES[class_uid], ocsf.PROFILES)
    )


@cache
def _required(class_name: str) -> set[str]:
    """Required attributes of a class in the raw OCSF export, profiles applied."""
    import ocsf_json_schema

    raw = ocsf_json_schema.get_ocsf_schema(ocsf.VERSION)
    attrs = raw["classes"][class_name]["attributes"]
    return {
        k
        for k, a in attrs.items()
        if a.get("requirement") == "required" and a.get("profile") in (None, *ocsf.PROFILES)
    }


def assert_valid_ocsf(event: dict) -> None:
    errors = sorted(_validator(event["class_uid"]).iter_errors(event), key=str)
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors[:5]]
    missing = _required(CLASSES[event["class_uid"]]) - set(event)
    assert not missing, missing
    assert event["type_uid"] == event["class_uid"] * 100 + event["activity_id"]


def parse_rfc5424(datagram: bytes) -> dict:
    """Parse one message by RFC 5424's ABNF (section 6), strictly."""
    text = datagram.decode("utf-8")
    m = re.fullmatch(
        r"<(?P<pri>\d{1,3})>1 (?P<ts>\S+) (?P<host>[!-~]{1,255}) (?P<app>[!-~]{1,48}) "
        r"(?P<procid>[!-~]{1,128}) (?P<msgid>[!-~]{1,32}) "
        r"(?P<sd>-|(?:\[[^ =\]\"]{1,32}(?: [^ =\]\"]{1,32}=\"(?:[^\"\\\]]|\\[\"\\\]])*\")*\])+)"
        r"(?: (?P<msg>.*))?",
        text,
        re.S,
    )
    assert m, f"not RFC 5424: {text[:200]!r}"
    datetime.fromisoformat(m["ts"].replace("Z", "+00:00"))
    assert int(m["pri"]) <= 191
    return {**m.groupdict(), "pri": int(m["pri"])}


@pytest.fixture
def scan_doc() -> dict:
    return json.loads((FIXTURES / "scan-rogue.json").read_text())


# ---- OCSF ----------------------------------------------------------------------


def test_every_finding_of_a_real_scan_maps_to_a_valid_detection_finding(scan_doc):
    events = ocsf.from_scan(scan_doc)
    assert len(events) == len(scan_doc["findings"])
    for event, finding in zip(events, scan_doc["findings"], strict=True):
        assert_valid_ocsf(event)
        assert event["class_uid"] == 2004 and event["category_uid"] == 2
        assert event["finding_info"]["uid"] == finding["id"]
        assert event["finding_info"]["title"] == finding["title"]
        assert event["unmapped"]["ecap"] == finding
    rogue = next(e for e in events if e["severity_id"] == 5)
    finding = rogue["unmapped"]["ecap"]
    assert rogue["severity"] == "Critical" and rogue["activity_id"] == 1
    assert rogue["actor"]["process"]["pid"] == finding["owner"]["pid"]
    assert rogue["actor"]["process"]["file"]["hashes"][0]["value"] == finding["owner"]["exe_sha256"]
    assert {e["file"]["path"] for e in rogue["evidences"] if "file" in e} == {
        h["path"] for h in finding["hooked"]
    }
    assert {r["uid"] for r in rogue["resources"]} == {str(p) for p in finding["programs"]}
    assert rogue["device"]["hostname"] == scan_doc["host"]["hostname"]


def test_severity_and_activity_mapping():
    finding = {"id": "ECAP-x", "title": "t", "category": "posture", "evidence": []}
    host = {"hostname": "h"}
    got = {
        sev: ocsf.detection_finding({**finding, "severity": sev}, host=host, tool_version="0")[
            "severity_id"
        ]
        for sev in ("info", "low", "medium", "high", "critical")
    }
    assert got == {"info": 1, "low": 2, "medium": 3, "high": 4, "critical": 5}
    for change, activity in (("new", 1), ("current", 1), ("changed", 2), ("resolved", 3)):
        event = ocsf.detection_finding(
            {**finding, "severity": "low"}, host=host, tool_version="0", change=change
        )
        assert event["activity_id"] == activity
        assert_valid_ocsf(event)
    assert event["status_id"] == 4  # resolved


def test_a_broken_event_fails_the_validator(scan_doc):
    """The validator has teeth: a missing required attribute or a wrong type is caught."""
    event = ocsf.from_scan(scan_doc)[0]
    for damage in (
        lambda e: e.pop("finding_info"),
        lambda e: e["finding_info"].pop("uid"),
        lambda e: e.__setitem__("severity_id", "critical"),
        lambda e: e["metadata"]["product"].pop("vendor_name"),
    ):
        broken = copy.deepcopy(event)
        damage(broken)
        with pytest.raises(AssertionError):
            assert_valid_ocsf(broken)


def test_watch_lifecycle_records_map_to_application_lifecycle(scan_doc):
    base = {"schema": alerts.SCHEMA, "time": alerts.iso(), "seq": 3, "host": {}, "watcher": {}}
    host = scan_doc["host"]
    for body, activity in (
        ({"type": "start", "options": {}, "event_source": {}}, 3),
        ({"type": "heartbeat", "uptime_s": 1, "counts": {"active": {"low": 2}}}, 99),
        ({"type": "stop", "reason": "SIGTERM", "uptime_s": 1, "counts": {}}, 4),
        ({"type": "error", "message": "scan failed"}, 99),
    ):
        event = ocsf.from_alert({**base, **body}, host=host, tool_version="0")
        assert event["class_uid"] == 6002 and event["activity_id"] == activity
        assert_valid_ocsf(event)
    alert = {
        **base,
        "type": "alert",
        "change": "changed",
        "first_seen": alerts.iso(),
        "finding": scan_doc["findings"][0],
    }
    event = ocsf.from_alert(alert, host=host, tool_version="0")
    assert event["class_uid"] == 2004 and event["activity_id"] == 2
    assert event["metadata"]["sequence"] == 3
    assert_valid_ocsf(event)


def test_scan_format_ocsf_writes_one_valid_event_per_finding(tmp_path, monkeypatch):
    monkeypatch.setenv("ECAP_RUN_DIR", str(tmp_path / "run"))
    out = tmp_path / "scan.ocsf.jsonl"
    proc = subprocess.run(
        [ecap_cmd("ecap-detect"), "scan", "--format", "ocsf", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode in (0, 1), proc.stderr
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert events, "a host always has at least one posture finding here"
    for event in events:
        assert_valid_ocsf(event)
    assert out.stat().st_mode & 0o777 == 0o600


# ---- syslog --------------------------------------------------------------------


def test_rfc5424_framing_fields_and_escaping():
    when = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    raw = syslog.format_message(
        severity=2,
        msgid="alert-new",
        message='{"title":"x"}',
        hostname="web 1\x1b",
        procid=42,
        timestamp=when,
        structured={"origin": {"software": 'ecap "detect"]\\'}, "meta": {"sequenceId": "7"}},
    )
    assert raw == (
        b"<34>1 2026-01-02T03:04:05.678901Z web1 ecap-detect 42 alert-new "
        b'[origin software="ecap \\"detect\\"\\]\\\\"][meta sequenceId="7"] {"title":"x"}'
    )
    parsed = parse_rfc5424(raw)
    assert (parsed["pri"], parsed["host"], parsed["msgid"]) == (34, "web1", "alert-new")
    assert (
        parse_rfc5424(syslog.format_message(severity=6, msgid="", message="m", hostname=""))["host"]
        == "-"
    )
    with pytest.raises(ValueError):
        syslog.format_message(severity=8, msgid="x", message="m", hostname="h")


def test_alert_records_as_syslog_severity_and_size(scan_doc):
    finding = next(f for f in scan_doc["findings"] if f["severity"] == "critical")
    record = {
        "schema": alerts.SCHEMA,
        "type": "alert",
        "change": "new",
        "seq": 9,
        "severity": "critical",
        "finding": finding,
    }
    msg = parse_rfc5424(syslog.record_message(record, record, hostname="h", version="1"))
    assert msg["pri"] == 4 * 8 + 2 and msg["msgid"] == "alert-new"
    assert json.loads(msg["msg"])["finding"]["id"] == finding["id"]
    # an alert too large for one syslog message is sent compact, still parseable JSON
    huge = copy.deepcopy(record)
    huge["finding"]["evidence"] = ["x" * 100] * 200
    raw = syslog.record_message(huge, huge, hostname="h", version="1")
    assert len(raw) <= syslog.MAX_MESSAGE
    body = json.loads(parse_rfc5424(raw)["msg"])
    assert body["finding"]["compact"] is True and body["finding"]["id"] == finding["id"]
    resolved = {**record, "type": "resolved"}
    assert parse_rfc5424(syslog.record_message(resolved, resolved, hostname="h", version="1"))[
        "pri"
    ] == (4 * 8 + 5)


def test_sender_delivers_datagrams_to_a_local_socket(tmp_path):
    path = tmp_path / "log"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(5)
    try:
        sender = syslog.SyslogSender(str(path))
        sender.send(syslog.format_message(severity=5, msgid="m", message="hello", hostname="h"))
        assert parse_rfc5424(server.recv(65536))["msg"] == "hello"
        sender.close()
    finally:
        server.close()


# ---- deduplication -------------------------------------------------------------


def test_alert_state_dedups_tracks_changes_and_resolutions(scan_doc):
    state = alerts.AlertState(min_severity="low")
    findings = scan_doc["findings"]
    first = state.update(findings)
    assert {c.kind for c in first} == {"current"}
    assert len(first) == len({f["id"] for f in findings if f["severity"] != "info"})
    assert state.update(copy.deepcopy(findings)) == []
    # victims and evidence change all the time: no new alert for that
    noisy = copy.deepcopy(findings)
    noisy[0]["victims"] = []
    noisy[0]["evidence"].append("[uprobes] mapping present in pid(s) 1")
    assert state.update(noisy) == []
    # a real change (severity) is one "changed" record with the previous state
    changed = copy.deepcopy(findings)
    changed[0]["severity"] = "info"
    changed[0]["authorized"] = True
    state.set_threshold("info")
    (change,) = [c for c in state.update(changed) if c.kind == "changed"]
    assert change.previous["severity"] == "critical"
    # gone: resolved once, then nothing
    rest = changed[1:]
    (gone,) = state.update(rest)
    assert gone.kind == "resolved" and gone.finding["id"] == findings[0]["id"]
    assert state.update(rest) == []
    # a new finding after initialisation is "new"
    assert [c.kind for c in state.update(changed)] == ["new"]


def test_record_validation_refuses_malformed_records():
    good = {
        "schema": alerts.SCHEMA,
        "type": "error",
        "time": alerts.iso(),
        "seq": 1,
        "host": {},
        "watcher": {},
        "message": "m",
    }
    alerts.validate(good)
    for bad in (
        {**good, "schema": "x"},
        {**good, "type": "nope"},
        {**good, "seq": 0},
        {k: v for k, v in good.items() if k != "message"},
    ):
        with pytest.raises(ValueError):
            alerts.validate(bad)


# ---- options, unit file, claims ------------------------------------------------


def test_config_file_then_command_line(tmp_path):
    cfg = tmp_path / "w.toml"
    cfg.write_text('min_severity = "high"\nrescan = 30\nsyslog = true\n')
    opts = load_config(cfg, {"rescan": 5.0, "min_severity": None})
    assert (opts.min_severity, opts.rescan, opts.syslog, opts.json) == ("high", 5.0, True, None)
    assert load_config(None, {}).json == "-"  # no destination given: stdout
    for text, match in (
        ("rescan = 0\n", "rescan"),
        ('min_severity = "urgent"\n', "min_severity"),
        ("colour = true\n", "unknown key"),
        ("rescan = \n", "--config"),
    ):
        cfg.write_text(text)
        with pytest.raises(UsageError, match=match):
            load_config(cfg, {})


def test_shipped_watch_config_is_valid():
    opts = load_config(REPO / "deploy" / "systemd" / "watch.toml", {})
    assert isinstance(opts, WatchOptions) and opts.json == "/var/log/ecap/watch.jsonl"


def test_systemd_unit_verifies_and_is_hardened(tmp_path):
    if not shutil.which("systemd-analyze"):
        pytest.fail("systemd-analyze is missing (Debian package systemd)")
    text = (REPO / "deploy" / "systemd" / "ecap-detect-watch.service").read_text()
    for setting in (
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=CAP_BPF CAP_PERFMON CAP_SYS_ADMIN",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "KillSignal=SIGTERM",
    ):
        assert setting in text
    bounding = re.search(r"^CapabilityBoundingSet=(.*)$", text, re.M)[1].split()
    assert "CAP_SYS_MODULE" not in bounding and "CAP_NET_ADMIN" not in bounding
    prefix = str(Path(sys.executable).parent.parent)
    unit = tmp_path / "ecap-detect-watch.service"
    unit.write_text(text.replace("/opt/ecap", prefix))

    def verify(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60
        )

    result = verify(unit)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    typo = tmp_path / "typo" / unit.name
    typo.parent.mkdir()
    typo.write_text(unit.read_text().replace("ProtectSystem=", "ProtectSystm="))
    assert "Unknown key" in verify(typo).stderr  # the check would catch a broken unit


@pytest.mark.bpf
def test_a_forged_watcher_claim_is_rejected_by_tag_not_name(ecap_env, hook):
    """A sniffer that names its program like the watcher's and files a claim for it
    stays critical: its code is not the watcher's."""
    from ecap.detect.scan import ScanOptions, run_scan
    from tests.detect.conftest import LIBSSL

    h = hook(f"{LIBSSL}:SSL_write", comm="ecap-detect")
    claim = watchers.registry_dir() / f"{h.pid}.json"
    claim.parent.mkdir(parents=True, mode=0o700)
    from ecap import procfs

    claim.write_text(
        json.dumps(
            {
                "schema": watchers.SCHEMA,
                "pid": h.pid,
                "start_time": procfs.start_time(h.pid),
                "prog_ids": h.prog_ids,
            }
        )
    )
    claim.chmod(0o600)
    doc = run_scan(ScanOptions(walk="procfs", audit_history=False))
    (verdict,) = [w for w in doc["inventory"]["watchers"] if w["pid"] == h.pid]
    assert verdict["status"] == "rejected" and "tag" in verdict["reason"]
    (finding,) = [f for f in doc["findings"] if (f.get("owner") or {}).get("pid") == h.pid]
    assert finding["severity"] == "critical"


def test_watch_refuses_bad_options_with_one_line_and_its_exit_code(tmp_path):
    """Checked before anything is loaded: exit 2 for usage, 4 for a missing syslog socket."""
    for args, code, words in (
        (["--rescan", "0"], 2, "rescan"),
        (["--config", str(tmp_path / "missing.toml")], 2, "no such file"),
        (["--json", str(tmp_path / "no" / "such" / "dir" / "w.jsonl")], 2, "not writable"),
        (["--syslog", "--syslog-socket", str(tmp_path / "nolog")], 4, "cannot connect"),
    ):
        proc = subprocess.run(
            [ecap_cmd("ecap-detect"), "watch", *args], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == code, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and words in proc.stderr, proc.stderr
    assert not list(tmp_path.iterdir())
