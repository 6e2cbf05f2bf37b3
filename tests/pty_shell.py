"""An interactive shell on a real pseudo-terminal, typed into as a person would.

The shell runs in its own session with the pty's slave as its controlling
terminal, so bash's readline and zsh's line editor are really active (raw mode,
prompts, continuation prompts). A reader thread keeps the master drained (a full
pty buffer would block the shell) and collects the output for :meth:`expect`.
"""

from __future__ import annotations

import contextlib
import os
import pty
import signal
import subprocess
import threading
import time
from collections.abc import Sequence

PROMPT = "ECAP-PROMPT> "


def _take_terminal() -> None:
    """In the child, after setsid: make the pty its controlling terminal (as a
    terminal emulator or sshd does)."""
    import fcntl
    import termios

    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class PtyShell:
    """One shell process on its own pty."""

    def __init__(self, argv: Sequence[str], *, env: dict[str, str] | None = None) -> None:
        master, slave = pty.openpty()
        base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TERM": "dumb", "HOME": "/root",
                "PS1": PROMPT, "PS2": "> ", "LANG": "C.UTF-8"}  # fmt: skip
        self.proc = subprocess.Popen(
            list(argv), stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
            env={**base, **(env or {})}, close_fds=True, preexec_fn=_take_terminal,
        )  # fmt: skip
        os.close(slave)
        self.master = master
        self.pid = self.proc.pid
        self._out = bytearray()
        self._lock = threading.Lock()
        self._seen = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                self._out += data

    @property
    def output(self) -> bytes:
        with self._lock:
            return bytes(self._out)

    def expect(self, marker: str | bytes, timeout: float = 20) -> None:
        """Wait until ``marker`` appears in the output after the last match."""
        want = marker.encode() if isinstance(marker, str) else marker
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                found = self._out.find(want, self._seen)
                if found >= 0:
                    self._seen = found + len(want)
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.01)
        raise AssertionError(f"{want!r} not seen; output ends {self.output[-400:]!r}")

    def prompt(self, timeout: float = 20) -> None:
        self.expect(PROMPT, timeout)

    def type(self, text: str | bytes, *, chunk: int = 512) -> None:
        """Send keystrokes (in pieces, as a terminal would)."""
        data = text.encode() if isinstance(text, str) else text
        for i in range(0, len(data), chunk):
            os.write(self.master, data[i : i + chunk])

    def run(self, line: str) -> None:
        """Type one line, press Enter, wait for the next prompt."""
        self.type(line + "\r")
        self.prompt()

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        with contextlib.suppress(OSError):
            os.close(self.master)
        self._reader.join(5)
