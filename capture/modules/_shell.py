"""What ``capture bash`` and ``capture zsh`` share: records → one event per command.

The kernel side (``bpf/shell.bpf.c``) sends each line the shell's line editor
returns (LINE, chunked like any call) and a PROMPT record each time the shell
starts reading a new command, carrying the status the previous command left.
Here the lines between two PROMPTs become one :class:`CommandEvent` — a
multi-line ``if``, a heredoc, a ``\\`` continuation are one command with their
whole text — ended by the next PROMPT (its exit status), by an exec (the shell
was replaced: ``exec cmd``) or by the shell's exit (``exit 3``: the kernel's exit
code). Nothing is dropped: what is still open when the capture stops is written
as ``running``.

The attach cookies tell the programs where the shell's globals are, as signed
distances from the probed function (:func:`delta`), so one link serves every
process running the same file, whatever its load address.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ecap.capture.events import CommandEvent
from ecap.capture.modules.interface import RecordContext
from ecap.capture.records import Call, Reassembler, Record

_U32 = 0xFFFFFFFF


def delta(to: int, frm: int) -> int:
    """``to - frm`` as the 32-bit two's complement a cookie carries."""
    d = to - frm
    if not -(1 << 31) <= d < 1 << 31:
        raise ValueError(f"distance {d:#x} does not fit a cookie field")
    return d & _U32


def tty_name(device: int) -> str | None:
    """A terminal device as the kernel side reports it ((major << 20) | minor) →
    ``pts/3``, ``tty1``; None for 0 (no controlling terminal)."""
    if not device:
        return None
    major, minor = device >> 20, device & 0xFFFFF
    if 136 <= major <= 143:
        return f"pts/{(major - 136) * 256 + minor}"
    if major == 4 and minor < 64:
        return f"tty{minor}"
    if os.path.exists(f"/sys/dev/char/{major}:{minor}"):  # the name the host gives it
        return os.path.basename(os.path.realpath(f"/sys/dev/char/{major}:{minor}"))
    return f"{major}:{minor}"


@dataclass
class _Command:
    ts: float
    uid: int
    comm: str
    tty: str | None
    parts: list[bytes] = field(default_factory=list)
    length: int = 0
    truncated: int = 0
    lost: int = 0


class ShellRecords:
    """One session's commands, per shell process."""

    def __init__(self, ctx: RecordContext, shell: str,
                 line_text: Callable[[bytes, int], bytes | None]) -> None:  # fmt: skip
        """``line_text(raw, truncated)`` → the line as typed, or None when it is not
        a command line (zsh: an aborted line)."""
        self._ctx = ctx
        self._shell = shell
        self._line_text = line_text
        self._reasm = Reassembler(ctx.clock, ctx.max_call_bytes, ctx.abi)
        self._prompt = ctx.abi.struct("ecap_prompt").unpack_from
        self._open: dict[int, _Command] = {}
        self._written = 0
        self.handlers = {ctx.abi.KIND_LINE: self._on_line, ctx.abi.KIND_PROMPT: self._on_prompt}

    def _on_line(self, rec: Record) -> None:
        for call in self._reasm.add(rec):
            self._add_line(call)

    def _add_line(self, call: Call) -> None:
        text = self._line_text(call.data, call.truncated)
        if text is not None:
            cmd = self._open.get(call.pid)
            if cmd is None:
                cmd = self._open[call.pid] = _Command(
                    call.ts, call.uid, call.comm, tty_name(call.stream_offset)
                )
            cmd.parts.append(text)
            # The line's real length, less what line_text removed (zsh's newline).
            cmd.length += call.total - (len(call.data) - len(text))
            cmd.truncated += call.truncated
            cmd.lost += call.lost + call.unreadable

    def _on_prompt(self, rec: Record) -> None:
        status, _context = self._prompt(rec.data)
        self._close(rec.pid, self._ctx.clock.wall(rec.ts_ns), status if status >= 0 else None,
                    "status")  # fmt: skip

    def _close(self, pid: int, ended: float | None, status: int | None, ending: str) -> None:
        cmd = self._open.pop(pid, None)
        if cmd is None:
            return
        self._written += 1
        self._ctx.emit(
            CommandEvent(
                shell=self._shell, ts=cmd.ts, ended_at=ended, pid=pid, uid=cmd.uid,
                comm=cmd.comm, tty=cmd.tty, text=b"\n".join(cmd.parts), lines=len(cmd.parts),
                length=cmd.length + len(cmd.parts) - 1, truncated=cmd.truncated, lost=cmd.lost,
                status=status, ending=ending,
            )
        )  # fmt: skip

    def process_left(self, pid: int, how: str, exit_code: int | None) -> None:
        if how == "exec":
            self._close(pid, time.time(), None, "exec")
        elif exit_code is not None and exit_code & 0x7F:
            self._close(pid, time.time(), exit_code & 0x7F, "signal")
        else:
            status = None if exit_code is None else (exit_code >> 8) & 0xFF
            self._close(pid, time.time(), status, "exit")

    def finish(self) -> None:
        for call in self._reasm.flush():
            self._add_line(call)
        for pid in list(self._open):
            self._close(pid, None, None, "running")

    def counts(self) -> dict[str, int]:
        return {"command": self._written}
