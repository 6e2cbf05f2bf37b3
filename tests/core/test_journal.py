"""The journal: each kind of tampering is caught at the right line; concurrent
writers keep one valid chain; entries reach the kernel audit trail."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from ecap.auditlog import AuditSink
from ecap.journal import Journal, unfinished_sessions, verify_file


class NoAudit(AuditSink):
    """Audit deliberately unavailable, for tests that count entries exactly."""

    def send(self, message: str) -> bool:
        self.unavailable_reason = "disabled in this test"
        return False


def make_journal(tmp_path: Path, n: int = 6) -> Path:
    path = tmp_path / "journal.jsonl"
    j = Journal(path, audit=NoAudit())
    for i in range(n):
        j.append("gate.granted", jti=f"{i:032x}", pids=[100 + i], reason=f"entry {i}")
    return path


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def test_intact_chain_verifies_and_is_private(tmp_path):
    path = make_journal(tmp_path)
    status = verify_file(path)
    # 6 entries + the one-time notice that audit is unavailable
    assert status.ok and status.entries == 7
    assert path.stat().st_mode & 0o777 == 0o600
    events = [json.loads(x)["event"] for x in lines(path)]
    assert events.count("journal.audit_unavailable") == 1


def test_edited_entry(tmp_path):
    path = make_journal(tmp_path)
    ls = lines(path)
    ls[3] = ls[3].replace("entry 2", "entry X")
    path.write_text("".join(ls))
    status = verify_file(path)
    assert not status.ok and status.bad_line == 4 and "edited" in status.problem


def test_deleted_entry(tmp_path):
    path = make_journal(tmp_path)
    ls = lines(path)
    del ls[2]
    path.write_text("".join(ls))
    status = verify_file(path)
    assert (
        not status.ok
        and status.bad_line == 3
        and "deleted, inserted or reordered" in status.problem
    )


def test_inserted_entry(tmp_path):
    path = make_journal(tmp_path)
    ls = lines(path)
    other = make_journal(tmp_path / "other")
    ls.insert(4, lines(other)[4])
    path.write_text("".join(ls))
    assert verify_file(path).bad_line == 5


def test_reordered_entries(tmp_path):
    path = make_journal(tmp_path)
    ls = lines(path)
    ls[2], ls[3] = ls[3], ls[2]
    path.write_text("".join(ls))
    status = verify_file(path)
    assert not status.ok and status.bad_line == 3


def test_truncated_in_the_middle(tmp_path):
    path = make_journal(tmp_path)
    ls = lines(path)
    ls[3] = ls[3][: len(ls[3]) // 2] + "\n"
    path.write_text("".join(ls))
    status = verify_file(path)
    assert not status.ok and status.bad_line == 4 and "not a JSON object" in status.problem


def test_recomputed_hash_still_breaks_the_next_link(tmp_path):
    """An editor who also recomputes the edited entry's hash is caught one line later."""
    from ecap.journal import entry_hash

    path = make_journal(tmp_path)
    ls = lines(path)
    entry = json.loads(ls[2])
    entry["reason"] = "innocent"
    entry["hash"] = entry_hash(entry)
    ls[2] = json.dumps(entry, sort_keys=True) + "\n"
    path.write_text("".join(ls))
    assert verify_file(path).bad_line == 4


def test_cli_verify_names_first_bad_line(ecap_env, tmp_path):
    path = make_journal(tmp_path)
    r = ecap_env.run("ecap-audit", "journal", "verify", "--journal", str(path))
    assert r.returncode == 0 and "chain intact" in r.stdout
    ls = lines(path)
    del ls[5]
    path.write_text("".join(ls))
    r = ecap_env.run("ecap-audit", "journal", "verify", "--journal", str(path))
    assert r.returncode == 2
    assert "broken at line 6" in r.stderr and r.stderr.count("\n") == 1
    r = ecap_env.run("ecap-audit", "journal", "show", "--journal", str(path))
    assert "gate.granted" in r.stdout and r.returncode == 2


def _writer(path: str, worker: int, count: int) -> None:
    j = Journal(Path(path), audit=NoAudit())
    j._audit_notice_written = True  # only the real entries: count them exactly
    for i in range(count):
        j.append("capture.start", worker=worker, i=i)


def test_concurrent_appends_keep_the_chain(tmp_path):
    path = tmp_path / "journal.jsonl"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(path), w, 60)) for w in range(5)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    status = verify_file(path)
    assert status.ok and status.entries == 300
    seen = {(e["worker"], e["i"]) for e in Journal(path).read()}
    assert len(seen) == 300


@pytest.fixture
def auditd_running():
    """Run auditd (enabling kernel audit) for one test; restore the previous state."""
    assert shutil.which("auditd"), "auditd is installed by make setup"
    was_running = subprocess.run(["pgrep", "-x", "auditd"], capture_output=True).returncode == 0
    enabled_before = (
        "enabled 1" in subprocess.run(["auditctl", "-s"], capture_output=True, text=True).stdout
    )
    if not was_running:
        subprocess.run(["auditd"], check=True)
        for _ in range(50):
            if (
                "enabled 1"
                in subprocess.run(["auditctl", "-s"], capture_output=True, text=True).stdout
            ):
                break
            time.sleep(0.1)
    try:
        yield
    finally:
        if not was_running:
            subprocess.run(["pkill", "-x", "auditd"])
            for _ in range(50):
                if subprocess.run(["pgrep", "-x", "auditd"], capture_output=True).returncode:
                    break
                time.sleep(0.1)
            subprocess.run(["auditctl", "-e", "1" if enabled_before else "0"], capture_output=True)


def test_entries_reach_the_audit_trail(tmp_path, auditd_running):
    j = Journal(tmp_path / "journal.jsonl")
    entry = j.append("gate.granted", jti="f" * 32, pids=[1])
    assert j._audit.unavailable_reason is None
    found = ""
    for _ in range(50):
        found = subprocess.run(
            ["ausearch", "-m", "USER", "-i", "--input-logs"], capture_output=True, text=True
        ).stdout
        if entry["hash"] in found:
            break
        time.sleep(0.1)
    assert entry["hash"] in found
    assert "ecap-journal" in found
    assert not any(e["event"] == "journal.audit_unavailable" for e in j.read())


def test_audit_disabled_is_said_once(tmp_path):
    before = subprocess.run(["auditctl", "-s"], capture_output=True, text=True).stdout
    running = subprocess.run(["pgrep", "-x", "auditd"], capture_output=True).returncode == 0
    assert not running, "another test left auditd running"
    subprocess.run(["auditctl", "-e", "0"], check=True, capture_output=True)
    try:
        j = Journal(tmp_path / "journal.jsonl")
        for i in range(3):
            j.append("capture.start", i=i)
        notices = [e for e in j.read() if e["event"] == "journal.audit_unavailable"]
        assert len(notices) == 1 and "disabled" in notices[0]["reason"]
        assert verify_file(j.path).ok
    finally:
        if "enabled 1" in before:
            subprocess.run(["auditctl", "-e", "1"], capture_output=True)


def test_captures_that_started_and_never_stopped_are_listed(tmp_path):
    j = Journal(tmp_path / "journal.jsonl", audit=NoAudit())
    j.append("capture.start", session_id="done", jti="a")
    j.append("capture.stop", session_id="done", reason="duration")
    j.append("capture.start", session_id="alive", jti="b")  # written by this process: running
    j.append("capture.start", session_id="killed", jti="c")
    lines = j.path.read_text().splitlines()
    killed = json.loads(lines[-1])
    dead = subprocess.Popen(["true"])
    dead.wait()
    killed["pid"] = dead.pid  # as if a process that has exited wrote it
    entries = [json.loads(x) for x in lines[:-1]] + [killed]
    found = {u["session_id"]: u for u in unfinished_sessions(entries)}
    assert found.keys() == {"alive", "killed"}
    assert found["alive"]["running"] is True and found["killed"]["running"] is False
    assert found["killed"]["jti"] == "c" and found["killed"]["seq"] == killed["seq"]
