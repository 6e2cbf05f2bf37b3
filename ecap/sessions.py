"""Registry of live capture sessions under ``$ECAP_RUN_DIR/sessions``.

A running ``ecap-audit capture`` writes one JSON file here so that ``ecap-detect``
can recognise its probes. The file is a *claim*, not proof: the detector must
verify the token inside it against the trust store and match the PIDs and program
ids against what is really attached (a forged session file proves nothing).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ecap import config
from ecap.fsutil import write_private_atomic

SCHEMA = "ecap.session/1"


@dataclass
class SessionTarget:
    """One authorized process: PID plus start time, as in the token."""

    pid: int
    start_time: int


@dataclass
class SessionRecord:
    """What a live capture says about itself."""

    session_id: str
    token: str
    """The raw JWT the session was granted with (verified again by the detector)."""
    operator: str
    reason: str
    module: str
    targets: list[SessionTarget]
    prog_ids: list[int]
    """Kernel ids of the BPF programs this session loaded."""
    capture_pid: int
    """PID of the ecap-audit process holding the programs."""
    started_at: float
    expires_at: float
    jti: str = ""
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"schema": SCHEMA, **asdict(self)}, indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> SessionRecord:
        if data.get("schema") != SCHEMA:
            raise ValueError(f"unknown session schema {data.get('schema')!r}")
        fields = {k: v for k, v in data.items() if k != "schema"}
        fields["targets"] = [SessionTarget(**t) for t in fields.get("targets", [])]
        return cls(**fields)


def session_path(session_id: str, run_dir: Path | None = None) -> Path:
    if not session_id.replace("-", "").isalnum():
        raise ValueError(f"invalid session id {session_id!r}")
    return config.sessions_dir(run_dir) / f"{session_id}.json"


def register(record: SessionRecord, run_dir: Path | None = None) -> Path:
    """Write (or rewrite, e.g. once program ids are known) the session file, 0600."""
    directory = config.sessions_dir(run_dir)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    return write_private_atomic(session_path(record.session_id, run_dir), record.to_json())


def unregister(session_id: str, run_dir: Path | None = None) -> None:
    """Remove the session file; a missing file is fine (idempotent cleanup)."""
    with contextlib.suppress(FileNotFoundError):
        session_path(session_id, run_dir).unlink()


def list_sessions(
    run_dir: Path | None = None,
) -> tuple[list[SessionRecord], list[tuple[Path, str]]]:
    """Parsed session records, and (path, problem) for files that did not parse."""
    directory = config.sessions_dir(run_dir)
    records: list[SessionRecord] = []
    problems: list[tuple[Path, str]] = []
    if not directory.is_dir():
        return records, problems
    for path in sorted(directory.glob("*.json")):
        try:
            records.append(SessionRecord.from_dict(json.loads(path.read_text())))
        except (OSError, ValueError, TypeError, KeyError) as exc:
            problems.append((path, str(exc)))
    return records, problems
