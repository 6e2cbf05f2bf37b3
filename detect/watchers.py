"""Running watchers, and how a scan tells their programs from a sniffer's.

``ecap-detect watch`` keeps a BPF program attached to every syscall exit. A
scan must not report it as a rogue program — and must not be fooled by a
sniffer that merely *says* it is the watcher. A running watcher registers
itself in ``$ECAP_RUN_DIR/watchers/PID.json`` (pid, start time, program ids);
that file is only a claim. A claim is accepted when:

* the file is a regular file owned by root and writable by no one else;
* the pid is alive with the recorded start time (not a recycled pid);
* every claimed program is loaded and held by that very process;
* every claimed program is a raw tracepoint program whose *tag* — the kernel's
  hash of its instructions — equals the tag of a program ecap ships in
  ``watch_events.loader``, which the verifier loads (unattached) and frees
  again to learn the tags on this kernel.

So the verdict rests on what the code in the kernel is and who holds it, never
on a name. Programs of an accepted watcher are listed under
``inventory.watchers`` and never produce a finding.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ecap import config, procfs
from ecap.fsutil import write_private_atomic

if TYPE_CHECKING:
    from ecap.detect.findings import Inventory

SCHEMA = "ecap.watcher/1"
VERIFIED = "verified"
REJECTED = "rejected"
_PROGRAM_TYPE = "raw_tracepoint"


@dataclass(frozen=True)
class WatcherVerdict:
    """What one registry file turned out to be."""

    pid: int
    status: str
    """``verified`` or ``rejected``."""
    reason: str
    prog_ids: frozenset[int]


def registry_dir(run_dir: str | os.PathLike[str] | None = None) -> Path:
    return config.run_dir(run_dir) / "watchers"


def register(prog_ids: list[int], run_dir: str | os.PathLike[str] | None = None) -> Path:
    """Claim this process's watcher programs (0600, in a 0700 directory)."""
    directory = registry_dir(run_dir)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    pid = os.getpid()
    body = {
        "schema": SCHEMA,
        "pid": pid,
        "start_time": procfs.start_time(pid),
        "prog_ids": sorted(prog_ids),
    }
    return write_private_atomic(directory / f"{pid}.json", json.dumps(body, sort_keys=True))


def unregister(run_dir: str | os.PathLike[str] | None = None) -> None:
    with contextlib.suppress(FileNotFoundError):
        (registry_dir(run_dir) / f"{os.getpid()}.json").unlink()


def remove_stale(run_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Remove claims of watchers that are gone (a SIGKILLed watcher cannot clean up)."""
    removed = []
    directory = registry_dir(run_dir)
    if not directory.is_dir():
        return removed
    for path in directory.glob("*.json"):
        try:
            claim = json.loads(path.read_text())
            alive = procfs.start_time(int(claim["pid"])) == int(claim["start_time"])
        except (OSError, ValueError, KeyError, TypeError, procfs.ProcessGone):
            alive = False
        if not alive:
            with contextlib.suppress(OSError):
                path.unlink()
            removed.append(path)
    return removed


_expected_tags: frozenset[str] | None = None


def expected_tags() -> frozenset[str]:
    """Tags of the programs ecap's watcher loads, on this kernel (computed once)."""
    global _expected_tags
    if _expected_tags is None:
        from ecap.detect.watch_bpf import program_tags

        _expected_tags = frozenset(program_tags().values())
    return _expected_tags


def _judge(path: Path, inv: Inventory) -> WatcherVerdict:
    pid, prog_ids = 0, frozenset()

    def rejected(reason: str) -> WatcherVerdict:
        return WatcherVerdict(pid, REJECTED, reason, prog_ids)

    try:
        st = os.lstat(path)
        claim = json.loads(path.read_text())
        if claim.get("schema") != SCHEMA:
            raise ValueError(f"schema is not {SCHEMA}")
        pid = int(claim["pid"])
        prog_ids = frozenset(int(p) for p in claim["prog_ids"])
        start = int(claim["start_time"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return rejected(f"{path.name}: unreadable claim ({exc})")
    if not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        return rejected("registry file not a regular root-owned file writable only by root")
    try:
        alive = procfs.start_time(pid) == start
    except (OSError, ValueError, IndexError, procfs.ProcessGone):
        alive = False
    if not alive:
        return rejected(f"pid {pid} is not running with the recorded start time")
    if not prog_ids:
        return rejected("claims no programs")
    held = inv.held_progs().get(pid, set())
    if not prog_ids <= held:
        return rejected(f"programs {sorted(prog_ids - held)} are not held by pid {pid}")
    try:
        tags = expected_tags()
    except RuntimeError as exc:
        return rejected(f"cannot load ecap's watcher programs to compare: {exc}")
    for prog_id in sorted(prog_ids):
        prog = inv.programs.get(prog_id)
        if prog is None or prog.type != _PROGRAM_TYPE or prog.tag not in tags:
            return rejected(f"program {prog_id} is not one of ecap's watcher programs (tag)")
    return WatcherVerdict(
        pid, VERIFIED, "programs match ecap's watcher and are held by it", prog_ids
    )


def evaluate(inv: Inventory, run_dir: str | os.PathLike[str] | None = None) -> list[WatcherVerdict]:
    """A verdict for every watcher claim in the registry."""
    directory = registry_dir(run_dir)
    if not directory.is_dir():
        return []
    return [_judge(path, inv) for path in sorted(directory.glob("*.json"))]


def verified_programs(verdicts: list[WatcherVerdict]) -> set[int]:
    return {p for v in verdicts if v.status == VERIFIED for p in v.prog_ids}
