"""Writing files the way a security tool must: private, whole, or not at all."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_private_atomic(
    path: str | os.PathLike[str], data: bytes | str, *, mode: int = 0o600
) -> Path:
    """Write ``data`` to ``path`` atomically with permissions ``mode``.

    The temporary file is created 0600 in the destination directory, fsync'd and
    renamed over the target, so a reader never sees a half-written file and a
    crash leaves either the old file or the new one.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    import tempfile  # only writers pay for it

    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return target


def open_private(path: str | os.PathLike[str], flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC):
    """Open a file for writing that is created 0600 (and made 0600 if it existed).

    Captured plaintext must never be world-readable, not even for the instant
    between create and chmod, so the mode is passed to open(2) itself.
    """
    fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "wb" if not flags & os.O_APPEND else "ab")


def read_to_end(fd: int, chunk: int = 1 << 17) -> bytes:
    """Everything an fd yields until EOF (procfs and BPF iterator files are read in
    pieces: one read() returns at most what the kernel generated so far)."""
    chunks = []
    while block := os.read(fd, chunk):
        chunks.append(block)
    return b"".join(chunks)
