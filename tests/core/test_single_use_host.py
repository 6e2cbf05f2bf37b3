"""Single use is per host, not per journal; a journal that is not the host's says so.

``ECAP_JOURNAL`` is an ordinary setting: pointing it elsewhere must not make a
spent single-use token new again, and whatever is journaled there carries the
path in every entry and every audit record, so that the detector and the session
report can flag a capture the host journal never saw.
"""

from __future__ import annotations

import pytest

from ecap import config
from ecap.auditlog import AuditSink
from ecap.authz.gate import authorize_capture
from ecap.errors import EnvironmentNotReady
from ecap.journal import Journal, audit_value


class RecordingAudit(AuditSink):
    """Keeps what would go to the kernel audit trail."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def send(self, message: str) -> bool:
        self.messages.append(message)
        return True


def _capture(ecap_env, token_file, pid: int, journal) -> tuple[int, str]:
    r = ecap_env.run(
        "ecap-audit",
        "capture",
        "tls",
        "--pid",
        str(pid),
        "--token",
        str(token_file),
        env={**ecap_env.env, "ECAP_JOURNAL": str(journal)},
    )
    return r.returncode, r.stderr


def test_single_use_token_cannot_be_reused_with_another_journal(ecap_env, sleeper):
    token_file = ecap_env.write_token(ecap_env.authorize([sleeper.pid], single_use=True))
    first, second = ecap_env.root / "one.jsonl", ecap_env.root / "elsewhere" / "two.jsonl"
    # The first use passes the gate (and then fails: sleep has no libssl; the token is spent).
    code, err = _capture(ecap_env, token_file, sleeper.pid, first)
    assert code == 2 and "maps no libssl" in err, err
    assert "WARNING: single-use tokens are tracked in" in err  # the unsafe override is loud
    code, err = _capture(ecap_env, token_file, sleeper.pid, second)
    assert code == 3, err
    assert "single-use token" in err and "has already been used" in err
    [refused] = [e for e in Journal(second).read() if e["event"] == "gate.refused"]
    assert "already been used" in refused["reason"]
    assert refused["journal_override"] == str(second)
    [granted] = [e for e in Journal(first).read() if e["event"] == "gate.granted"]
    assert granted["single_use_dir_override"] == str(ecap_env.single_use_dir)
    assert (ecap_env.single_use_dir / granted["jti"]).exists()
    assert not (second.parent / "used-tokens").exists()


def test_single_use_state_is_fixed_unless_the_unsafe_override_is_set(monkeypatch, tmp_path):
    monkeypatch.delenv(config.UNSAFE_SINGLE_USE_ENV, raising=False)
    monkeypatch.setenv("ECAP_JOURNAL", str(tmp_path / "journal.jsonl"))
    assert (
        config.single_use_dir()
        == config.DEFAULT_SINGLE_USE_DIR
        == (config.DEFAULT_JOURNAL.parent / "used-tokens")
    )
    monkeypatch.setenv(config.UNSAFE_SINGLE_USE_ENV, str(tmp_path / "u"))
    assert config.single_use_dir() == tmp_path / "u"


def test_single_use_directory_must_be_private(ecap_env, sleeper):
    ecap_env.single_use_dir.mkdir(mode=0o777)
    ecap_env.single_use_dir.chmod(0o777)
    with pytest.raises(EnvironmentNotReady, match=r"single-use state directory .* writable by"):
        authorize_capture(
            ecap_env.authorize([sleeper.pid], single_use=True),
            pids=[sleeper.pid],
            module="tls",
            mode="text",
        )
    ecap_env.single_use_dir.rmdir()
    victim = ecap_env.root / "victim"
    victim.mkdir(mode=0o755)
    ecap_env.single_use_dir.symlink_to(victim)
    with pytest.raises(EnvironmentNotReady, match="is a symbolic link"):
        authorize_capture(
            ecap_env.authorize([sleeper.pid], single_use=True),
            pids=[sleeper.pid],
            module="tls",
            mode="text",
        )
    assert not list(victim.iterdir())


def test_every_entry_and_audit_record_of_another_journal_names_it(tmp_path):
    path = tmp_path / "j o u r n a l.jsonl"
    audit = RecordingAudit()
    entry = Journal(path, audit=audit).append("gate.refused", reason="x")
    assert entry["journal_override"] == str(path)
    assert audit.messages == [
        f"op=ecap-journal event=gate.refused seq=1 hash={entry['hash']} "
        f"journal={str(path).encode().hex().upper()}"
    ]
    assert audit_value("/var/tmp/j.jsonl") == '"/var/tmp/j.jsonl"'


def test_the_host_journal_is_not_flagged(monkeypatch, tmp_path):
    """What makes a journal 'the host's' is its path, whatever the variable says."""
    monkeypatch.setattr(config, "DEFAULT_JOURNAL", tmp_path / "journal.jsonl")
    audit = RecordingAudit()
    entry = Journal(tmp_path / "journal.jsonl", audit=audit).append("gate.refused", reason="x")
    assert "journal_override" not in entry and "journal=" not in audit.messages[0]
    assert config.is_host_journal(tmp_path / "." / "journal.jsonl")
