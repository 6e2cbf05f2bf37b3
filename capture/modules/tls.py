"""``capture tls``: the OpenSSL API — libssl, BoringSSL builds, static OpenSSL (node).

How the file is found is :mod:`ecap.capture.modules._libraries`'s (the process's
own maps, through ``/proc/PID/root``; its executable for static builds). NSS's
``libssl3.so`` is a different library with a different API: it is never taken for
OpenSSL — its name does not match ``libssl.so*`` and it defines no ``SSL_write``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ecap.capture.events import CONNECTION, DATA, HANDSHAKE
from ecap.capture.modules import _keylog_function, _libraries
from ecap.capture.modules.interface import (
    CaptureModule,
    Hook,
    HookTarget,
    ModuleOption,
    SecretSource,
)

HOOKS = (
    Hook("SSL_write", "call_enter", "data_return", "write", plaintext=True, required=True),
    Hook("SSL_read", "call_enter", "data_return", "read", plaintext=True, required=True),
    Hook("SSL_write_ex", "call_enter", "data_return", "write", ("LEN_IN_ARG4",), plaintext=True),
    Hook("SSL_read_ex", "call_enter", "data_return", "read", ("LEN_IN_ARG4",), plaintext=True),
    Hook("SSL_do_handshake", "call_enter", "handshake_return", "handshake", plaintext=True),
    Hook("SSL_set_fd", "set_fd"),
    Hook("SSL_shutdown", "conn_end"),
    Hook("SSL_free", "conn_end"),
)
FUNCTIONS = tuple(h.function for h in HOOKS)
REQUIRED = tuple(h.function for h in HOOKS if h.required)

_LIBSSL_RE = re.compile(r"/lib(ssl|boringssl)([-_.][^/]*)?\.so(\.[0-9.]+)?$")


def _find_version(pid: int, ssl_path: str, maps_paths: list[str]) -> str | None:
    """OpenSSL keeps its version string in libcrypto, not libssl: look in both."""
    from ecap import procfs
    from ecap.elf import NotAnElf, open_elf

    directory = os.path.dirname(ssl_path)
    candidates = [ssl_path]
    candidates += [
        p
        for p in maps_paths
        if os.path.dirname(p) == directory and "libcrypto" in os.path.basename(p)
    ]
    candidates += [p for p in maps_paths if "libcrypto" in os.path.basename(p)]  # fmt: skip
    for candidate in candidates:
        try:
            version = open_elf(procfs.in_root(pid, candidate)).ssl_version()
        except NotAnElf:
            continue
        if version:
            return version
    return None


def _offsets_in(path: Path) -> dict[str, int]:
    return _libraries.offsets_in(path, FUNCTIONS)


def _target(pid: int, path: Path, shown: str, kind: str, version: str | None,
            offsets: dict[str, int]) -> HookTarget:  # fmt: skip
    return HookTarget(pid, path, shown, kind, version, MODULE.probes(offsets), offsets)


def resolve(pid: int, options: dict[str, Any]) -> HookTarget:
    """Find the OpenSSL API in process ``pid``.

    Order: ``--libssl`` when given (a path as the process sees it, or a host path);
    otherwise every mapped file whose name looks like libssl; otherwise the
    executable itself (static builds).
    """
    from ecap import procfs
    from ecap.elf import open_elf
    from ecap.errors import UsageError

    paths = procfs.mapped_files(pid)
    if options.get("libssl"):
        return _resolve_override(pid, options["libssl"], paths)
    found = _libraries.find_mapped(pid, _LIBSSL_RE, FUNCTIONS, REQUIRED, paths)
    if found is not None:
        version = _find_version(pid, found.shown, paths)
        return _target(pid, found.host_path, found.shown, found.kind, version, found.offsets)
    found = _libraries.find_in_executable(pid, FUNCTIONS, REQUIRED)
    if found is not None:
        version = open_elf(procfs.PROC / str(pid) / "exe").ssl_version()
        return _target(pid, found.host_path, found.shown, found.kind, version, found.offsets)
    raise UsageError(
        f"process {pid} ({procfs.comm(pid)!r}) maps no libssl and its executable "
        f"exports no {'/'.join(REQUIRED)}",
        hint="it may not use OpenSSL (Go, GnuTLS, NSS need other modules: try 'capture "
        "auto'), or pass --libssl PATH if it loads OpenSSL under another name",
    )


def _resolve_override(pid: int, libssl: str, paths: list[str]) -> HookTarget:
    from ecap import procfs
    from ecap.elf import NotAnElf, open_elf
    from ecap.errors import UsageError

    mapped_here = libssl in paths
    host_path = procfs.in_root(pid, libssl) if mapped_here else Path(libssl)
    if not host_path.exists():
        raise UsageError(
            f"--libssl {libssl}: no such file (in process {pid} or on the host)",
            hint="give the path shown in /proc/PID/maps",
        )
    offsets = _offsets_in(host_path)
    missing = [name for name in REQUIRED if name not in offsets]
    if missing:
        raise UsageError(
            f"--libssl {libssl} does not define {', '.join(missing)}",
            hint="point it at the libssl (or static binary) the process uses",
        )
    if not mapped_here and _mapped_same_inode(pid, host_path, paths) is None:
        raise UsageError(
            f"--libssl {libssl} is not mapped by process {pid}",
            hint="a probe on a file the process does not run never fires",
        )
    try:
        version = open_elf(host_path).ssl_version() or _find_version(pid, libssl, paths)
    except NotAnElf:
        version = None
    return _target(pid, host_path, libssl, "override", version, offsets)


def _mapped_same_inode(pid: int, host_path: Path, paths: list[str]) -> str | None:
    from ecap import procfs

    try:
        want = os.stat(host_path)
    except OSError:
        return None
    for mapped in paths:
        try:
            st = os.stat(procfs.in_root(pid, mapped))
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (want.st_dev, want.st_ino):
            return mapped
    return None


MODULE = CaptureModule(
    name="tls",
    summary="OpenSSL API: libssl (any path, also in containers), BoringSSL, static OpenSSL",
    classification="tls",
    bpf_object="tls_rw",
    hooks=HOOKS,
    emits=frozenset({DATA, HANDSHAKE, CONNECTION}),
    identity="SSL*",
    resolve=resolve,
    options=(
        ModuleOption("--libssl", "hook this libssl (path as the process sees it, or a host path)"),
    ),
    secrets=SecretSource(
        "OpenSSL 3.0.x: its internal key-log function ssl_log_secret (every secret, "
        "whether or not the application set a key log)",
        _keylog_function.OPENSSL.probes,
    ),
)
