"""Hold each target from the gate to the detach, so a PID can never change hands.

A PID names a process only while that process lives; the token binds PID *and*
start time for that reason. Between the gate's check and the attach (a slow
machine, a debugger, a SIGSTOP) the target could exit and its PID go to another
process, which the probes would then capture. So the targets are held with a
``pidfd`` opened *before* the gate looks at them, together with their
executable's device and inode:

1. :meth:`TargetHold.confirm_grant` — after the gate: each held process is the
   one the token names (its start time is the token's claim, not re-read).
2. :meth:`TargetHold.confirm_attached` — after attaching, before ``capture.start``
   is journaled: each held process is still alive (its pidfd says so — a pidfd
   follows one process, never a PID), has the same start time, and runs the same
   executable file. Any mismatch aborts the capture and detaches.
"""

from __future__ import annotations

import contextlib
import os
import select
from dataclasses import dataclass

from ecap import procfs
from ecap.authz.token import Grant
from ecap.errors import AuthorizationRefused


@dataclass
class Held:
    """One target as it was when the hold was taken."""

    pid: int
    pidfd: int | None
    start_time: int | None
    exe_id: tuple[int, int] | None
    """(st_dev, st_ino) of /proc/PID/exe."""


def _exe_id(pid: int) -> tuple[int, int] | None:
    try:
        st = os.stat(procfs.PROC / str(pid) / "exe")
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _exited(pidfd: int) -> bool:
    """A pidfd polls readable once its process has exited."""
    return bool(select.select([pidfd], [], [], 0)[0])


class TargetHold:
    """pidfds and identities of the targets, taken before the gate decides."""

    def __init__(self, held: list[Held]) -> None:
        self.held = held

    @classmethod
    def take(cls, pids: list[int]) -> TargetHold:
        """Hold whatever process each PID names now (the gate then judges it)."""
        held = []
        for pid in pids:
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                held.append(Held(pid, None, None, None))
                continue
            try:
                start = procfs.start_time(pid)
            except procfs.ProcessGone:
                start = None
            held.append(Held(pid, pidfd, start, _exe_id(pid)))
        return cls(held)

    def start_times(self) -> dict[int, int]:
        return {h.pid: h.start_time for h in self.held if h.start_time is not None}

    def confirm_grant(self, grant: Grant) -> None:
        """Each held process is the one the token names and is still alive."""
        for h in self.held:
            claim = grant.target_for(h.pid)
            if claim is None or h.pidfd is None or h.start_time != claim.start_time:
                raise AuthorizationRefused(
                    f"PID {h.pid} held for the capture is not the process the token names",
                    hint="request a new authorization for the running process",
                )
            if _exited(h.pidfd):
                raise AuthorizationRefused(
                    f"PID {h.pid} exited after the authorization was granted",
                    hint="nothing was captured; request a new authorization",
                )

    def confirm_attached(self) -> None:
        """After attaching: the same processes, alive, running the same files."""
        for h in self.held:
            assert h.pidfd is not None
            if _exited(h.pidfd):
                raise AuthorizationRefused(
                    f"PID {h.pid} exited while the capture attached; its PID may now belong "
                    "to another process",
                    hint="nothing was captured; request a new authorization",
                )
            try:
                start = procfs.start_time(h.pid)
            except procfs.ProcessGone:
                start = None
            if start != h.start_time:
                raise AuthorizationRefused(f"PID {h.pid} changed hands while attaching")
            if _exe_id(h.pid) != h.exe_id:
                raise AuthorizationRefused(
                    f"PID {h.pid} runs another executable than the one authorized (it called exec)",
                    hint="request a new authorization for the program it runs now",
                )

    def alive(self, pid: int) -> bool:
        """Still the held process (not exited, not a zombie)."""
        for h in self.held:
            if h.pid == pid and h.pidfd is not None:
                if _exited(h.pidfd):
                    return False
                try:
                    return procfs.stat_fields(pid)[0] not in ("Z", "X")
                except procfs.ProcessGone:
                    return False
        return False

    def close(self) -> None:
        for h in self.held:
            if h.pidfd is not None:
                with contextlib.suppress(OSError):
                    os.close(h.pidfd)
                h.pidfd = None
