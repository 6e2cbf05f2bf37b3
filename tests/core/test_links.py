"""Planted links and loose directories: ecap, running as root, never writes through them.

Each test plants what an attacker with write access to the place would: a
symlink where ecap is about to create a file or directory, a hard link to a file
that is not ecap's, a group-writable or foreign-owned run directory. The victim
must come out unchanged, and the operator gets one line and exit 2 or 4.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ecap import fsutil, sessions
from ecap.capture import engine
from ecap.errors import EnvironmentNotReady, UsageError
from ecap.journal import Journal
from tests.core.test_journal import NoAudit

SECRET = b"root:$6$not-yours:19000:0:99999:7:::\n"


@pytest.fixture
def victim_file(tmp_path: Path) -> Path:
    victim = tmp_path / "victim-file"
    victim.write_bytes(SECRET)
    victim.chmod(0o644)
    return victim


@pytest.fixture
def victim_dir(tmp_path: Path) -> Path:
    victim = tmp_path / "victim-dir"
    victim.mkdir()
    victim.chmod(0o755)
    (victim / "keep").write_text("x")
    return victim


def unchanged_file(victim: Path) -> bool:
    return victim.read_bytes() == SECRET and stat.S_IMODE(victim.stat().st_mode) == 0o644


def unchanged_dir(victim: Path) -> bool:
    return (
        sorted(p.name for p in victim.iterdir()) == ["keep"]
        and stat.S_IMODE(victim.stat().st_mode) == 0o755
    )


def test_output_symlink_is_refused_and_replaced_only_as_a_link(tmp_path, victim_file):
    link = tmp_path / "out.jsonl"
    link.symlink_to(victim_file)
    with pytest.raises(UsageError, match=r"already exists.*--force"):
        engine.open_output(link)
    assert unchanged_file(victim_file) and link.is_symlink()
    # --force replaces the link itself with a new private file; the target is untouched
    out = engine.open_output(link, replace=True)
    out.write(b"captured")
    out.close()
    assert not link.is_symlink() and link.read_bytes() == b"captured"
    assert stat.S_IMODE(link.stat().st_mode) == 0o600
    assert unchanged_file(victim_file)


def test_existing_output_file_is_never_truncated_without_force(tmp_path):
    existing = tmp_path / "evidence.jsonl"
    existing.write_bytes(b"yesterday's capture\n")
    with pytest.raises(UsageError, match="already exists"):
        engine.open_output(existing)
    assert existing.read_bytes() == b"yesterday's capture\n"
    (tmp_path / "d").mkdir()
    with pytest.raises(UsageError, match="cannot write output file"):
        engine.open_output(tmp_path / "d", replace=True)


def test_cli_refuses_an_existing_output_before_the_gate(ecap_env, sleeper, victim_file):
    link = ecap_env.root / "out.txt"
    link.symlink_to(victim_file)
    token = ecap_env.write_token(ecap_env.authorize([sleeper.pid]))
    r = ecap_env.run(
        "ecap-audit", "capture", "tls", "--pid", str(sleeper.pid), "--token", str(token),
        "--output", str(link),
    )  # fmt: skip
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "already exists" in r.stderr and "--force" in r.stderr
    assert unchanged_file(victim_file)
    assert not ecap_env.journal.exists()  # refused as input, before the gate


def test_session_registry_through_a_planted_sessions_link(ecap_env, victim_dir):
    ecap_env.run_dir.mkdir(mode=0o700)
    (ecap_env.run_dir / "sessions").symlink_to(victim_dir)
    record = sessions.SessionRecord(
        session_id="0" * 32,
        token="secret.token.value",
        operator="o",
        reason="r",
        module="tls",
        targets=[],
        prog_ids=[],
        capture_pid=os.getpid(),
        started_at=0.0,
        expires_at=0.0,
    )
    with pytest.raises(EnvironmentNotReady, match=r"sessions directory .* is a symbolic link"):
        sessions.register(record)
    with pytest.raises(EnvironmentNotReady, match="is a symbolic link"):
        sessions.prepare_run_dir()
    sessions.unregister(record.session_id)  # never raises, never follows
    assert unchanged_dir(victim_dir)


def test_cli_capture_refuses_a_planted_sessions_link_with_exit_4(ecap_env, sleeper, victim_dir):
    ecap_env.run_dir.mkdir(mode=0o700)
    (ecap_env.run_dir / "sessions").symlink_to(victim_dir)
    token = ecap_env.write_token(ecap_env.authorize([sleeper.pid]))
    r = ecap_env.run(
        "ecap-audit", "capture", "tls", "--pid", str(sleeper.pid), "--token", str(token),
    )  # fmt: skip
    assert r.returncode == 4 and r.stderr.count("\n") == 1, r.stderr
    assert "is a symbolic link" in r.stderr
    assert unchanged_dir(victim_dir)
    assert not ecap_env.journal.exists()  # nothing was authorized


@pytest.mark.parametrize(
    ("mode", "owner", "problem"),
    [
        (0o770, 0, "writable by group or others"),
        (0o703, 0, "writable by group or others"),
        (0o700, 65534, "owned by uid 65534"),
    ],
)
def test_run_dir_must_belong_to_the_user_and_no_one_else(ecap_env, mode, owner, problem):
    ecap_env.run_dir.mkdir()
    ecap_env.run_dir.chmod(mode)
    os.chown(ecap_env.run_dir, owner, -1)
    with pytest.raises(EnvironmentNotReady, match=f"run directory .* {problem}"):
        sessions.prepare_run_dir()
    assert not (ecap_env.run_dir / "sessions").exists()


def test_run_dir_itself_a_link_is_refused(ecap_env, victim_dir):
    ecap_env.run_dir.symlink_to(victim_dir)
    with pytest.raises(EnvironmentNotReady, match=r"run directory .* is a symbolic link"):
        sessions.prepare_run_dir()
    assert unchanged_dir(victim_dir)


def test_registry_is_created_private(ecap_env):
    sessions.prepare_run_dir()
    for d in (ecap_env.run_dir, ecap_env.run_dir / "sessions"):
        assert stat.S_IMODE(d.lstat().st_mode) == 0o700 and not d.is_symlink()


def test_journal_symlink_and_hard_link_are_refused(tmp_path, victim_file):
    link = tmp_path / "journal.jsonl"
    link.symlink_to(victim_file)
    with pytest.raises(EnvironmentNotReady, match=r"journal .* is a symbolic link"):
        Journal(link, audit=NoAudit()).append("gate.refused", reason="x")
    link.unlink()
    os.link(victim_file, link)
    with pytest.raises(EnvironmentNotReady, match=r"journal .* has 2 hard links"):
        Journal(link, audit=NoAudit()).append("gate.refused", reason="x")
    assert victim_file.read_bytes() == SECRET


def test_atomic_writes_replace_a_planted_link_not_its_target(tmp_path, victim_file):
    link = tmp_path / "token.jwt"
    link.symlink_to(victim_file)
    fsutil.write_private_atomic(link, "new")
    assert not link.is_symlink() and link.read_text() == "new"
    assert unchanged_file(victim_file)
