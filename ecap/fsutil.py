"""Writing files the way a security tool running as root must: private, whole, or
not at all — and never through a link someone else planted.

Every file and directory ecap creates goes through this module. The last
component of each path is opened with ``O_NOFOLLOW`` and everything below a
directory ecap owns is reached through that directory's fd (``openat``,
``mkdirat``, ``renameat``), so a symlink planted in a shared or attacker-writable
place cannot redirect a root write, ``chmod`` or truncation onto another file.
The ancestors of a path the operator names (``/var/lib``, a home directory) are
taken as given: they are the operator's choice, not ecap's to second-guess.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

from ecap.errors import EnvironmentNotReady

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_component(parent_fd: int | None, name: str, *, create: bool, mode: int) -> int:
    """Open (after making, when asked and absent) one directory without following a link."""
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, mode, dir_fd=parent_fd)
    return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)


def check_private_dir(fd: int, path: str | os.PathLike[str], what: str) -> None:
    """Refuse (exit 4) a directory not owned by this user or writable by group/others.

    Whoever can write into a directory where ecap keeps live state can swap its
    entries between two of ecap's system calls; only the owner may.
    """
    st = os.fstat(fd)
    if st.st_uid != os.geteuid():
        raise EnvironmentNotReady(
            f"{what} {os.fspath(path)} is owned by uid {st.st_uid}, not by uid {os.geteuid()}",
            hint="chown it to the user running ecap (or remove it: ecap creates it 0700)",
        )
    if st.st_mode & 0o022:
        raise EnvironmentNotReady(
            f"{what} {os.fspath(path)} is writable by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o})",
            hint=f"chmod go-w {os.fspath(path)} (ecap creates it 0700)",
        )


def open_dir(
    path: str | os.PathLike[str],
    *,
    create: bool = False,
    mode: int = 0o700,
    private: bool = False,
    what: str = "directory",
) -> int:
    """An ``O_DIRECTORY`` fd on ``path``; its last component is never a symlink.

    ``create`` makes the directory and any missing parents (``mode``), each made
    with ``mkdirat`` and opened ``O_NOFOLLOW`` from its parent's fd. ``private``
    also requires it to be owned by this user and not group/other-writable (see
    :func:`check_private_dir`). Problems are :class:`EnvironmentNotReady` (exit 4).
    """
    target = Path(os.path.abspath(path))
    missing: list[str] = []
    existing = target
    while not os.path.lexists(existing):
        if not create:
            raise FileNotFoundError(errno.ENOENT, "no such directory", os.fspath(target))
        missing.append(existing.name)
        existing = existing.parent
    with _links_refused(target, what):
        # The deepest existing ancestor: followed if it is the operator's path
        # above us, never if it is the directory itself.
        flags = _DIR_FLAGS if existing == target else _DIR_FLAGS & ~os.O_NOFOLLOW
        fd = os.open(existing, flags)
        for name in reversed(missing):
            child = _open_component(fd, name, create=True, mode=mode)
            os.close(fd)
            fd = child
    return _checked(fd, private, target, what)


def open_subdir(
    parent_fd: int,
    name: str,
    *,
    shown: str | os.PathLike[str],
    create: bool = False,
    mode: int = 0o700,
    private: bool = False,
    what: str = "directory",
) -> int:
    """Like :func:`open_dir` for one entry of an already opened directory."""
    with _links_refused(shown, what):
        fd = _open_component(parent_fd, name, create=create, mode=mode)
    return _checked(fd, private, shown, what)


@contextlib.contextmanager
def _links_refused(shown: str | os.PathLike[str], what: str) -> Iterator[None]:
    """Turn "that was a link" (ELOOP, ENOTDIR under O_NOFOLLOW) into exit 4."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise EnvironmentNotReady(
                f"{what} {os.fspath(shown)} is a symbolic link or not a directory",
                hint="remove it (ecap creates it itself) and check who planted it",
            ) from exc
        raise


def _checked(fd: int, private: bool, shown: str | os.PathLike[str], what: str) -> int:
    if private:
        try:
            check_private_dir(fd, shown, what)
        except BaseException:
            os.close(fd)
            raise
    return fd


@contextlib.contextmanager
def dir_fd(path: str | os.PathLike[str], **kwargs: object) -> Iterator[int]:
    """:func:`open_dir` as a context manager that closes the fd."""
    fd = open_dir(path, **kwargs)  # type: ignore[arg-type]
    try:
        yield fd
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """Write every byte or raise: ``write(2)`` may write less than asked (a full disk)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:  # a regular file only returns 0 for an empty buffer
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[written:]


def create_new_at(directory: int, name: str, mode: int = 0o600) -> int:
    """Create ``name`` in the open ``directory``: never existing before, never a link."""
    return os.open(name, _NEW_FILE_FLAGS, mode, dir_fd=directory)


def write_private_atomic_at(
    directory: int, name: str, data: bytes | str, *, mode: int = 0o600
) -> None:
    """Write ``name`` inside the directory open on ``directory``, atomically, ``mode``.

    The temporary file is created ``O_EXCL|O_NOFOLLOW`` 0600, fsync'd and renamed
    over ``name``; a rename replaces a planted symlink itself, never its target,
    and a reader sees the old file or the new one, never half of one.
    """
    raw = data.encode() if isinstance(data, str) else data
    tmp = f".{name}.{secrets.token_hex(6)}.tmp"
    fd = create_new_at(directory, tmp)
    try:
        try:
            os.fchmod(fd, mode)
            write_all(fd, raw)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=directory, dst_dir_fd=directory)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=directory)
        raise


def write_private_atomic(
    path: str | os.PathLike[str], data: bytes | str, *, mode: int = 0o600
) -> Path:
    """Write ``data`` to ``path`` atomically with permissions ``mode``.

    Missing parent directories are created 0700; see :func:`write_private_atomic_at`.
    """
    target = Path(path)
    with dir_fd(target.parent, create=True) as parent:
        write_private_atomic_at(parent, target.name, data, mode=mode)
    return target


def create_private_file(path: str | os.PathLike[str], *, replace: bool = False) -> int:
    """Create ``path`` 0600 for writing and return its fd; never truncate what exists.

    An existing entry (file, symlink, anything) is :class:`FileExistsError` unless
    ``replace``: then the entry itself is unlinked — a symlink goes, its target is
    untouched — and a new file is created in its place with ``O_EXCL``, so a link
    planted in between makes the open fail instead of being followed. Captured
    plaintext is never world-readable, not even between create and chmod: the
    mode is given to open(2) itself.
    """
    target = Path(path)
    with dir_fd(target.parent) as parent:
        try:
            fd = create_new_at(parent, target.name)
        except FileExistsError:
            if not replace:
                raise
            if stat.S_ISDIR(os.lstat(target.name, dir_fd=parent).st_mode):
                raise IsADirectoryError(
                    errno.EISDIR, os.strerror(errno.EISDIR), str(target)
                ) from None
            os.unlink(target.name, dir_fd=parent)
            fd = create_new_at(parent, target.name)
    os.fchmod(fd, 0o600)
    return fd


def open_append_private(path: str | os.PathLike[str], *, what: str = "file") -> int:
    """Open (creating 0600, parents 0700) a file ecap appends to, for ``O_RDWR|O_APPEND``.

    Refuses (exit 4) a symlink, anything but a regular file, a file owned by
    another user, and a file with other hard links (a link to ``/etc/shadow``
    planted under the journal's name must not receive ecap's appends).
    """
    target = Path(path)
    with dir_fd(target.parent, create=True) as parent:
        try:
            fd = os.open(
                target.name,
                os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=parent,
            )
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise EnvironmentNotReady(
                    f"{what} {target} is a symbolic link",
                    hint="remove the link and check who planted it",
                ) from exc
            raise
    st = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(st.st_mode):
        problem = "is not a regular file"
    elif st.st_uid != os.geteuid():
        problem = f"is owned by uid {st.st_uid}, not by uid {os.geteuid()}"
    elif st.st_nlink != 1:
        problem = f"has {st.st_nlink} hard links"
    if problem:
        os.close(fd)
        raise EnvironmentNotReady(
            f"{what} {target} {problem}", hint="move it aside and check who made it"
        )
    os.fchmod(fd, 0o600)
    return fd


def read_to_end(fd: int, chunk: int = 1 << 17) -> bytes:
    """Everything an fd yields until EOF (procfs and BPF iterator files are read in
    pieces: one read() returns at most what the kernel generated so far)."""
    chunks = []
    while block := os.read(fd, chunk):
        chunks.append(block)
    return b"".join(chunks)
