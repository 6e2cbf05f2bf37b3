"""A full disk and a torn write: the journal stays whole, the gate fails closed, and
an operator can recover a cut-short last entry (itself journaled).

The full disk is real: a small tmpfs mounted by the test and filled up, so that an
entry crossing into the next page is cut short by write(2) exactly as on a full
/var.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ecap.authz.gate import authorize_capture
from ecap.errors import AuthorizationRefused, EnvironmentNotReady, Error
from ecap.journal import TORN_TAIL, Journal, verify_file
from tests.core.test_journal import NoAudit, make_journal

PAGE = 4096


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs (unmounted after the test)."""
    mnt = tmp_path / "small"
    mnt.mkdir(mode=0o700)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "ecap-test-full", str(mnt)],
        check=True,
    )
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def fill(mnt: Path) -> Path:
    """Fill the file system with one file; returns it (delete it to free the space)."""
    filler = mnt / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                os.write(fd, b"\0" * PAGE)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
    finally:
        os.close(fd)
    return filler


def journal_on(mnt: Path) -> Path:
    """A journal whose last page is partly used, so the next big entry is cut short."""
    path = make_journal(mnt, n=3)
    assert path.stat().st_size % PAGE, "the journal must end inside a page"
    return path


def use_up_last_page(path: Path) -> None:
    """On a full file system, append small entries until the journal's last page is
    too full for another: the gate's larger entries cannot fit after this."""
    journal = Journal(path, audit=NoAudit())
    for _ in range(PAGE // 100):
        try:
            journal.append("test.pad")
        except Error:
            return
    raise AssertionError("the file system never filled up")


def test_full_disk_append_is_all_or_nothing(small_fs):
    path = journal_on(small_fs)
    before = path.read_bytes()
    filler = fill(small_fs)
    journal = Journal(path, audit=NoAudit())
    # An entry larger than what is left of the journal's last page: write(2) puts
    # part of it on disk and stops. The append must undo that part and fail.
    with pytest.raises(EnvironmentNotReady, match=r"cannot append to journal .*No space left"):
        journal.append("gate.granted", jti="f" * 32, reason="x" * 3 * PAGE)
    assert path.read_bytes() == before
    assert verify_file(path).ok
    # Space again: appends continue the same chain.
    filler.unlink()
    entry = journal.append("gate.refused", reason="after the disk was freed")
    assert verify_file(path).ok and entry["hash"] in path.read_text()


def test_full_disk_fails_the_capture_with_exit_4_and_keeps_single_use(ecap_env, sleeper, small_fs):
    """The capture stops at the gate (nothing resolved, nothing loaded) and the
    single-use token it did not use stays usable."""
    journal = journal_on(small_fs)
    token_file = ecap_env.write_token(ecap_env.authorize([sleeper.pid], single_use=True))
    filler = fill(small_fs)
    use_up_last_page(journal)
    before = journal.read_bytes()
    env = {**ecap_env.env, "ECAP_JOURNAL": str(journal)}
    r = ecap_env.run(
        "ecap-audit",
        "capture",
        "tls",
        "--pid",
        str(sleeper.pid),
        "--token",
        str(token_file),
        "--format",
        "jsonl",
        "--output",
        str(ecap_env.root / "out.jsonl"),
        env=env,
    )
    assert r.returncode == 4, r.stderr
    # one error line (after the loud notice that single-use state is not the host's)
    [error] = [line for line in r.stderr.splitlines() if "error:" in line]
    assert "cannot append to journal" in error and "gate.granted was not recorded" in error
    assert journal.read_bytes() == before
    assert not (ecap_env.root / "out.jsonl").exists()
    # A refusal that cannot be journaled is not silent either.
    with pytest.raises(EnvironmentNotReady, match="the gate refused: token is not a well-formed"):
        authorize_capture(
            "garbage",
            pids=[sleeper.pid],
            module="tls",
            mode="jsonl",
            journal=Journal(journal, audit=NoAudit()),
        )
    filler.unlink()
    grant = authorize_capture(
        token_file.read_text(),
        pids=[sleeper.pid],
        module="tls",
        mode="jsonl",
        journal=Journal(journal, audit=NoAudit()),
    )
    assert grant.single_use
    with pytest.raises(AuthorizationRefused, match="already been used"):
        authorize_capture(
            token_file.read_text(),
            pids=[sleeper.pid],
            module="tls",
            mode="jsonl",
            journal=Journal(journal, audit=NoAudit()),
        )
    assert verify_file(journal).ok


def _torn(tmp_path: Path) -> tuple[Path, bytes, bytes]:
    """A journal whose last write stopped half-way (a crash); (path, good part, torn bytes)."""
    path = make_journal(tmp_path, n=4)
    good = path.read_bytes()
    torn = b'{"event": "capture.start", "hash": "0123'
    with open(path, "ab") as f:
        f.write(torn)
    return path, good, torn


def test_torn_tail_blocks_appends_until_repaired(ecap_env, tmp_path):
    path, good, torn = _torn(tmp_path)
    env = {**ecap_env.env, "ECAP_JOURNAL": str(path)}
    r = ecap_env.run("ecap-audit", "journal", "verify", env=env)
    assert r.returncode == 2 and TORN_TAIL in r.stderr and "journal repair" in r.stderr
    with pytest.raises(EnvironmentNotReady, match=r"incomplete entry.*journal repair"):
        Journal(path, audit=NoAudit()).append("gate.refused", reason="x")

    r = ecap_env.run("ecap-audit", "journal", "repair", env=env)
    assert r.returncode == 0, r.stderr
    assert f"removed an incomplete last entry ({len(torn)} bytes" in r.stdout
    [evidence] = tmp_path.glob("journal.jsonl.torn-*")
    assert evidence.read_bytes() == torn
    assert stat.S_IMODE(evidence.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(good)
    assert verify_file(path).ok
    [repaired] = [e for e in Journal(path).read() if e["event"] == "journal.repaired"]
    assert repaired["action"] == "removed" and repaired["removed_bytes"] == len(torn)
    assert repaired["removed_sha256"] == hashlib.sha256(torn).hexdigest()
    assert repaired["evidence"] == str(evidence)
    # and the journal takes entries again
    Journal(path, audit=NoAudit()).append("gate.refused", reason="after repair")
    entries = verify_file(path).entries
    # a second repair has nothing to do and journals nothing
    r = ecap_env.run("ecap-audit", "journal", "repair", env=env)
    assert r.returncode == 0 and "nothing to repair" in r.stdout
    assert verify_file(path).ok and verify_file(path).entries == entries


def test_repair_keeps_a_whole_entry_that_lost_only_its_newline(tmp_path):
    path = make_journal(tmp_path, n=3)
    data = path.read_bytes()
    path.write_bytes(data[:-1])
    assert verify_file(path).problem == TORN_TAIL
    result = Journal(path, audit=NoAudit()).repair()
    assert result.action == "completed" and result.evidence is None
    kept = data.count(b"\n")
    lines = path.read_bytes().splitlines(keepends=True)
    assert b"".join(lines[:kept]) == data
    assert json.loads(lines[kept])["event"] == "journal.repaired"
    assert verify_file(path).ok


def test_repair_refuses_a_journal_broken_elsewhere(ecap_env, tmp_path):
    """Repair cuts only a torn tail; an edited entry is evidence and stays as it is."""
    path, _, _ = _torn(tmp_path)
    path.write_bytes(path.read_bytes().replace(b"entry 1", b"entry X"))
    before = path.read_bytes()
    r = ecap_env.run(
        "ecap-audit", "journal", "repair", env={**ecap_env.env, "ECAP_JOURNAL": str(path)}
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "broken at line 3: entry hash does not match" in r.stderr
    assert "not a torn last entry" in r.stderr
    assert path.read_bytes() == before
    assert not list(tmp_path.glob("journal.jsonl.torn-*"))
