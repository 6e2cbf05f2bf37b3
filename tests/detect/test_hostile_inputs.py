"""Hostile inputs never silence the detector (issue 17, item 9).

Planted session files must not crash or hang the scan, and scan documents handed
to ``ecap-detect report`` or ``ecap-harden generate --from`` are refused with one
line and exit 2 when they are nested, huge, ill-typed or not numbers JSON allows.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from ecap.detect import document
from ecap.detect.sessions import read_sessions
from ecap.errors import UsageError
from tests.conftest import ecap_cmd
from tests.detect.conftest import scan


@pytest.fixture
def sessions_dir(ecap_env) -> Path:
    d = ecap_env.run_dir / "sessions"
    d.mkdir(parents=True, mode=0o700)
    return d


def test_planted_session_files_are_rejected_claims_not_crashes_or_hangs(sessions_dir):
    (sessions_dir / "deep.json").write_text("[" * 200_000)  # the report's case: over the cap
    (sessions_dir / "deeper.json").write_text("[" * 50_000)  # under it: the parser's limit
    os.mkfifo(sessions_dir / "fifo.json")
    (sessions_dir / "huge.json").write_bytes(b" " * (1 << 20))
    (sessions_dir / "link.json").symlink_to("/etc/shadow")
    (sessions_dir / "dir.json").mkdir()
    (sessions_dir / "list.json").write_text("[1, 2]")
    records, rejected, notes = read_sessions(sessions_dir)
    assert records == [] and notes == []
    reasons = {v.session_id: v.reason for v in rejected}
    assert reasons.keys() == {"deep", "deeper", "fifo", "huge", "link", "dir", "list"}
    assert "larger than" in reasons["deep"]
    assert "nested too deeply" in reasons["deeper"]
    assert "not a regular file" in reasons["fifo"]
    assert "larger than" in reasons["huge"]
    assert "cannot open" in reasons["link"]  # O_NOFOLLOW
    assert "not a JSON object" in reasons["list"]
    doc = scan(walk="procfs")  # and the whole scan goes on, listing them as rejected
    listed = {s["session_id"]: s["status"] for s in doc["inventory"]["sessions"]}
    assert {listed[k] for k in reasons} == {"rejected"}


def test_a_sessions_directory_others_can_write_proves_nothing(sessions_dir):
    record = {
        "schema": "ecap.session/1",
        "session_id": "s1",
        "token": "x.y.z",
        "operator": "o",
        "reason": "r",
        "module": "tls",
        "targets": [],
        "prog_ids": [1],
        "capture_pid": os.getpid(),
        "started_at": 0,
        "expires_at": 0,
    }
    (sessions_dir / "s1.json").write_text(json.dumps(record))
    sessions_dir.chmod(0o777)
    records, rejected, notes = read_sessions(sessions_dir)
    assert records == [] and [v.session_id for v in rejected] == ["s1"]
    assert "writable by others" in rejected[0].reason and "writable by others" in notes[0]


def _refused(path: Path) -> list[subprocess.CompletedProcess[str]]:
    out = path.parent / "out"
    runs = [
        subprocess.run(
            [ecap_cmd("ecap-detect"), "report", str(path), "--html", str(path.parent / "r.html")],
            capture_output=True,
            text=True,
            timeout=60,
        ),
        subprocess.run(
            [ecap_cmd("ecap-harden"), "generate", "--from", str(path), "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=60,
        ),
    ]
    for r in runs:
        assert r.returncode == 2, (r.args, r.stdout, r.stderr)
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert not (path.parent / "r.html").exists() and not out.exists()
    return runs


@pytest.mark.parametrize(
    "name,text,words",
    [
        ("nested", '{"schema": "ecap.scan/2", "findings": ' + "[" * 200_000, "nested too deeply"),
        ("nan", '{"schema": "ecap.scan/2", "host": {"hostname": NaN}}', "not a number JSON allows"),
        ("findings-x", '{"schema": "ecap.scan/2", "findings": "x"}', "findings: 'x' is not of type"),
        ("long-host", json.dumps({"schema": "ecap.scan/2", "host": {"hostname": "h" * 5000}}),
         "host/hostname"),
        ("bad-severity", json.dumps({"schema": "ecap.scan/2",
                                     "findings": [{"id": "a", "severity": "apocalyptic"}]}),
         "findings/0/severity"),
    ],
)  # fmt: skip
def test_bad_scan_documents_exit_2_with_one_line(tmp_path, name, text, words):
    path = tmp_path / f"{name}.json"
    path.write_text(text)
    for r in _refused(path):
        assert words in r.stderr


def test_a_huge_document_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "huge.json"
    with open(path, "wb") as f:  # sparse: 100 MB of host name costs no disk
        f.write(b'{"schema": "ecap.scan/2", "host": {"hostname": "')
        f.seek(100 * 1024 * 1024)
        f.write(b'"}}')
    for r in _refused(path):
        assert "larger than any real one" in r.stderr


def test_a_fifo_is_refused_not_waited_on(tmp_path):
    path = tmp_path / "fifo.json"
    os.mkfifo(path)
    for r in _refused(path):
        assert "not a regular file" in r.stderr


def test_the_published_schema_accepts_a_real_scan_and_both_schema_names():
    doc = scan(walk="procfs")
    assert doc["schema"] == document.SCHEMA == "ecap.scan/2"
    document.validate(json.loads(json.dumps(doc)))
    document.validate({**doc, "schema": "ecap.scan/1"})  # older scanners' documents
    with pytest.raises(UsageError, match=r"expected 'ecap\.scan/2'"):
        document.validate({**doc, "schema": "ecap.scan/3"})
    published = json.loads(document.SCHEMA_FILE.read_text())
    assert published["properties"]["schema"]["enum"] == list(document.READABLE)
