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
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ecap import config, fsutil
from ecap.errors import EnvironmentNotReady

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
    journal: str = ""
    """The journal this capture writes to (absolute path); "" for records made
    before captures said. Anything but the host journal is flagged by the detector."""

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
    return config.sessions_dir(run_dir) / _file_name(session_id)


def _file_name(session_id: str) -> str:
    if not session_id.replace("-", "").isalnum():
        raise ValueError(f"invalid session id {session_id!r}")
    return f"{session_id}.json"


@contextlib.contextmanager
def _sessions_fd(run_dir: Path | None, *, create: bool) -> Iterator[int]:
    """The sessions directory, reached without following links, both levels ours.

    The run directory (``ECAP_RUN_DIR``) and its ``sessions`` directory must be
    owned by this user and writable by nobody else, or a link planted there
    would turn the registry's mkdir, chmod and writes onto another directory.
    """
    root = config.run_dir(run_dir)
    with fsutil.dir_fd(root, create=create, private=True, what="run directory") as parent:
        fd = fsutil.open_subdir(
            parent,
            "sessions",
            shown=root / "sessions",
            create=create,
            private=True,
            what="sessions directory",
        )
    try:
        yield fd
    finally:
        os.close(fd)


def prepare_run_dir(run_dir: Path | None = None) -> None:
    """Create or check the registry before anything is authorized (exit 4 if unsafe)."""
    with _sessions_fd(run_dir, create=True):
        pass


def register(record: SessionRecord, run_dir: Path | None = None) -> Path:
    """Write (or rewrite, e.g. once program ids are known) the session file, 0600."""
    name = _file_name(record.session_id)
    with _sessions_fd(run_dir, create=True) as directory:
        fsutil.write_private_atomic_at(directory, name, record.to_json())
    return config.sessions_dir(run_dir) / name


def unregister(session_id: str, run_dir: Path | None = None) -> None:
    """Remove the session file; a missing file or directory is fine (idempotent cleanup).

    Runs on the way out of a capture, so it never raises: a file it could not
    remove is a stale claim the detector rejects (its process holds no programs).
    """
    with (
        contextlib.suppress(OSError, EnvironmentNotReady),
        _sessions_fd(run_dir, create=False) as directory,
    ):
        os.unlink(_file_name(session_id), dir_fd=directory)


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
