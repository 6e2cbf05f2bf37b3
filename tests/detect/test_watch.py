"""``ecap-detect watch`` against real hooks: alerts as they attach, resolutions as they go.

The watcher runs with ``--rescan 3600``, so every alert below comes from the event
path (kernel events, inotify, pidfds) and says so in its ``trigger``; nothing
here waits for a rescan. Each test asserts only on the hooks it made itself.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from ecap.authz.verify import verify_token
from ecap.detect import alerts
from ecap.detect.scan import ScanOptions, run_scan
from ecap.detect.watch import MAX_EVENTS_IN_RECORD
from tests.detect.conftest import (
    HERE,
    LIBSSL,
    PY,
    read_ready,
    remove_bcc_tracefs_events,
    stop,
)
from tests.detect.test_authorization import _as_capture, _register
from tests.detect.test_live_hooks import append_line, offset_of
from tests.detect.watchproc import (
    WatchProcess,
    loaded_programs,
    owner_pid,
    registry_files,
    wait_unloaded,
)

pytestmark = [pytest.mark.bpf, pytest.mark.slow]

# What woke the watcher for a record. Other tests may load BPF programs on this
# machine at the same time, so the first wake-up of a batch can be theirs; what
# matters is that no record waited for the (hour-long) rescan.
EVENT_TRIGGERS = {"bpf-event", "file-event", "process-exit", "confirm"}


def _functions(record: dict) -> set[str]:
    return {h["function"] for h in record["finding"]["hooked"]}


def test_watch_alerts_and_resolves_as_hooks_come_and_go(
    ecap_env, hook, tls_victim, private_bpffs, tmp_path
):
    config = tmp_path / "watch.toml"
    config.write_text('min_severity = "info"\nrescan = 3600\nheartbeat = 3600\n')
    watch = WatchProcess(["--config", str(config), "--json", "-"], env=ecap_env.env)
    try:
        start = watch.wait_for(lambda r: r["type"] == "start")
        programs = start["programs"]
        assert programs and set(programs) <= loaded_programs()
        assert start["event_source"]["kernel"].startswith("bpf raw_tracepoint")
        assert [p.name for p in registry_files(ecap_env.run_dir)] == [f"{watch.pid}.json"]

        # (1) a bcc sniffer attaches: critical, naming the function and the owner
        sniffer = subprocess.Popen(
            [PY, str(HERE / "bcc_sniffer.py"), LIBSSL],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            read_ready(sniffer)
            alert = watch.wait_for(lambda r: r["type"] == "alert" and owner_pid(r) == sniffer.pid)
            assert alert["severity"] == "critical"
            assert alert["trigger"] in EVENT_TRIGGERS
            assert alert["change"] == "new"
            assert "SSL_write" in _functions(alert)
            assert alert["finding"]["owner"]["comm"] == "python"
            # its syscalls are among the events behind the alert, unless other tests'
            # BPF activity filled the record's list first
            assert (
                any(e["pid"] == sniffer.pid for e in alert["events"])
                or len(alert["events"]) == MAX_EVENTS_IN_RECORD
            )
            assert alert["latency_ms"] >= 0
            # a scan while the watcher runs: its programs are recognised as its own
            doc = run_scan(ScanOptions(walk="procfs", audit_history=False))
            (mine,) = [w for w in doc["inventory"]["watchers"] if w["pid"] == watch.pid]
            assert mine["status"] == "verified", mine
            assert not [f for f in doc["findings"] if set(f.get("programs", [])) & set(programs)]
        finally:
            stop(sniffer)
            remove_bcc_tracefs_events(sniffer.pid)
        gone = watch.wait_for(lambda r: r["type"] == "resolved" and owner_pid(r) == sniffer.pid)
        assert gone["finding_id"] == alert["finding_id"]
        assert gone["trigger"] in EVENT_TRIGGERS

        # (2) an authorized ecap capture: info, and never critical on the way
        tok = ecap_env.authorize([tls_victim.pid], operator="alice", reason="watch test")
        sid = uuid.uuid4().hex
        h = hook(
            f"{LIBSSL}:SSL_write", capture_args=_as_capture(ecap_env, tok, tls_victim.pid, sid)
        )
        _register(
            ecap_env,
            tok,
            hook_pid=h.pid,
            prog_ids=h.prog_ids,
            victim_pid=tls_victim.pid,
            jti=verify_token(tok).jti,
            session_id=sid,
        )
        authorized = watch.wait_for(lambda r: r["type"] == "alert" and owner_pid(r) == h.pid)
        assert authorized["severity"] == "info"
        assert authorized["finding"]["authorized"] is True
        assert authorized["finding"]["authorization"]["operator"] == "alice"

        # (3) a tracefs uprobe written with echo (on a function no other hook here uses:
        # a tracefs event on an offset a BPF probe already covers is listed once)
        group = f"ecapwatch{os.getpid()}"
        tracefs = Path("/sys/kernel/tracing")
        line = f"p:{group}/ssl_write {LIBSSL}:{offset_of(LIBSSL, 'SSL_peek_ex'):#x}"
        subprocess.run(["sh", "-c", f"echo '{line}' >> {tracefs}/uprobe_events"], check=True)
        try:
            probe = watch.wait_for(
                lambda r: (
                    r["type"] == "alert"
                    and (r["finding"].get("owner") or {}).get("tracefs_event")
                    == f"{group}/ssl_write"
                )
            )
            assert probe["trigger"] in EVENT_TRIGGERS
            assert probe["severity"] == "medium"  # defined, not enabled
            assert _functions(probe) == {"SSL_peek_ex"}
        finally:
            append_line(tracefs / "uprobe_events", f"-:{group}/ssl_write")
        watch.wait_for(lambda r: r["type"] == "resolved" and r["finding_id"] == probe["finding_id"])

        # (4) a pinned program left behind by a loader that exited
        pin = private_bpffs / "left_behind"
        hook(f"{LIBSSL}:SSL_read", mode="link", pin=str(pin))
        pinned = watch.wait_for(
            lambda r: (
                r["type"] == "alert"
                and (r["finding"].get("owner") or {}).get("pinned_at") == str(pin)
            )
        )
        assert pinned["severity"] == "critical"
        assert pinned["trigger"] in EVENT_TRIGGERS
        pin.unlink()
        watch.wait_for(
            lambda r: r["type"] == "resolved" and r["finding_id"] == pinned["finding_id"]
        )

        # SIGHUP: the configuration is read again
        config.write_text('min_severity = "high"\nrescan = 3600\nheartbeat = 3600\n')
        watch.signal(signal.SIGHUP)
        reload = watch.wait_for(lambda r: r["type"] == "reload")
        assert reload["options"]["min_severity"] == "high"
        # the authorized capture (info) is below the new threshold: resolved
        watch.wait_for(
            lambda r: r["type"] == "resolved" and r["finding_id"] == authorized["finding_id"]
        )
    finally:
        code = watch.stop()
    assert code == 0
    final = watch.records[-1]
    assert final["type"] == "stop" and final["reason"] == "SIGTERM"
    assert final["counts"]["alerts"] >= 4 and final["counts"]["kernel_events"] > 0
    for record in watch.records:
        alerts.validate({k: v for k, v in record.items() if k != "_received"})
    assert [r["seq"] for r in watch.records] == list(range(1, len(watch.records) + 1))
    assert not [
        r
        for r in watch.records
        if r["type"] == "alert" and owner_pid(r) == h.pid and r["severity"] == "critical"
    ]
    assert not wait_unloaded(programs)
    assert not registry_files(ecap_env.run_dir)


def _syslog_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    return sock


def _receive_all(sock: socket.socket, into: list[bytes]) -> None:
    """A syslog daemon's part: read every datagram as it comes, until shut down."""
    while True:
        try:
            data = sock.recv(65536)
        except OSError:
            return
        if not data:
            return
        into.append(data)


def test_sigkill_leaves_nothing_loaded_and_a_restart_reports_once(ecap_env, hook, tmp_path):
    rogue = hook(f"{LIBSSL}:SSL_write", mode="link")
    first = WatchProcess(["--rescan", "3600", "--min-severity", "critical"], env=ecap_env.env)
    try:
        programs = first.wait_for(lambda r: r["type"] == "start")["programs"]
        alert = first.wait_for(lambda r: r["type"] == "alert" and owner_pid(r) == rogue.pid)
        first.signal(signal.SIGKILL)
        first.proc.wait(timeout=10)
    finally:
        first.stop()
    assert not wait_unloaded(programs), "a killed watcher left its programs loaded"
    assert registry_files(ecap_env.run_dir), "the killed watcher's claim is still on disk"

    # restarted: OCSF lines to a file, syslog to a socket of the test's own
    out = tmp_path / "ocsf.jsonl"
    log_sock = _syslog_socket(tmp_path / "log.sock")
    messages: list[bytes] = []
    reader = threading.Thread(target=_receive_all, args=(log_sock, messages), daemon=True)
    reader.start()
    second = WatchProcess(
        [
            "--rescan",
            "1",
            "--heartbeat",
            "1",
            "--min-severity",
            "critical",
            "--format",
            "ocsf",
            "--json",
            str(out),
            "--syslog",
            "--syslog-socket",
            str(tmp_path / "log.sock"),
        ],
        env=ecap_env.env,
        stdout=False,
    )
    try:

        def lines() -> list[dict]:
            return [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            beats = [e for e in lines() if e["class_uid"] == 6002 and e["activity_id"] == 99]
            if beats and beats[-1]["unmapped"]["ecap"]["counts"]["scans"].get("rescan", 0) >= 3:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"no third rescan: {lines()[-3:]}")
    finally:
        second.stop()
        log_sock.shutdown(socket.SHUT_RDWR)
        reader.join(timeout=10)
        log_sock.close()
    events = lines()
    findings = [e for e in events if e["class_uid"] == 2004]
    mine = [e for e in findings if e["finding_info"]["uid"] == alert["finding_id"]]
    assert len(mine) == 1, f"a restart must report the current state once: {mine}"
    assert mine[0]["activity_id"] == 1 and mine[0]["severity_id"] == 5
    assert mine[0]["actor"]["process"]["pid"] == rogue.pid
    assert not [p for p in registry_files(ecap_env.run_dir) if p.name == f"{first.pid}.json"]
    assert os.stat(out).st_mode & 0o777 == 0o600
    # every line is valid OCSF 1.1.0 (see test_watch_units for the validator)
    from tests.detect.test_watch_units import assert_valid_ocsf

    for event in events:
        assert_valid_ocsf(event)
    # the same records went to syslog, RFC 5424-framed
    from tests.detect.test_watch_units import parse_rfc5424

    parsed = [parse_rfc5424(m) for m in messages]
    dropped = events[-1]["unmapped"]["ecap"]["counts"]["syslog_dropped"]  # the stop record
    assert len(parsed) + dropped == len(events), (len(parsed), dropped, len(events))
    assert dropped or any(
        p["msgid"] == "alert-current" and p["pri"] == 4 * 8 + 2 and alert["finding_id"] in p["msg"]
        for p in parsed
    )
