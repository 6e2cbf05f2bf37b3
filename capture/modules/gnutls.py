"""``capture gnutls``: GnuTLS — ``wget``, ``gnutls-cli``, ``git``/``apt`` helpers.

GnuTLS moves application data with ``gnutls_record_send2``/``gnutls_record_send``
(and ``gnutls_record_send_range``) and ``gnutls_record_recv``/``_recv_seq``: the
shape ``fn(session, buf, len) → ssize_t`` of ``tls_rw``'s programs, so this
module is a list of hooks and cookies (``RET_LONG``: the count is 64-bit) on the
shared object. The byte count is the return value.

Since 3.6.3 ``gnutls_record_send`` is a jump to ``gnutls_record_send2`` (the
same call, seen twice by two probes); where ``send2`` exists only it is hooked.

The session's socket comes from ``gnutls_transport_set_int2`` (and
``gnutls_transport_set_ptr``/``_ptr2`` when the "pointer" is the socket's number,
as wget passes it), or, for sessions set up before the capture, from the socket
system calls made inside a call (the engine's syscall correlation). A handshake
is complete when ``gnutls_handshake`` returns 0 (``OK_IS_ZERO``); ``gnutls_bye``
and ``gnutls_deinit`` end the session.

Secrets (``--format keylog``/``pcapng``): GnuTLS passes every secret it derives to
its internal ``_gnutls_call_keylog_func(session, label, secret, size)``, found in
a stripped library by the labels its callers pass
(:mod:`ecap.capture.modules._keylog_function`); the client random is where
``gnutls_session_get_random`` reads it.
"""

from __future__ import annotations

import re
from typing import Any

from ecap.capture.events import CONNECTION, DATA, HANDSHAKE
from ecap.capture.modules import _keylog_function, _libraries
from ecap.capture.modules.interface import CaptureModule, Hook, HookTarget, SecretSource

RET = ("RET_LONG",)
HOOKS = (
    Hook("gnutls_record_send", "call_enter", "data_return", "write", RET, plaintext=True,
         required=True),
    Hook("gnutls_record_send2", "call_enter", "data_return", "write", RET, plaintext=True),
    Hook("gnutls_record_send_range", "call_enter", "data_return", "write", RET, plaintext=True),
    Hook("gnutls_record_recv", "call_enter", "data_return", "read", RET, plaintext=True,
         required=True),
    Hook("gnutls_record_recv_seq", "call_enter", "data_return", "read", RET, plaintext=True),
    Hook("gnutls_handshake", "call_enter", "handshake_return", "handshake", ("OK_IS_ZERO",)),
    Hook("gnutls_transport_set_int2", "set_fd"),
    Hook("gnutls_transport_set_ptr", "set_fd", flags=("FD_IN_PTR",)),
    Hook("gnutls_transport_set_ptr2", "set_fd", flags=("FD_IN_PTR",)),
    Hook("gnutls_bye", "conn_end"),
    Hook("gnutls_deinit", "conn_end"),
)  # fmt: skip
FUNCTIONS = tuple(h.function for h in HOOKS)
REQUIRED = tuple(h.function for h in HOOKS if h.required)

_LIBGNUTLS_RE = re.compile(r"/libgnutls\.so(\.[0-9.]+)?$")
"""``libgnutls.so.30``; not ``libgnutls-dane``, ``libgnutlsxx`` or ``libgnutls-openssl``
(the OpenSSL compatibility layer, whose ``SSL_write`` calls these functions)."""
_VERSION_RE = re.compile(rb"(GnuTLS \d+\.\d+\.\d+)")
"""GnuTLS builds its version into a log line ("Enabled GnuTLS 3.7.9 logging...")."""


def _probed(offsets: dict[str, int]) -> dict[str, int]:
    """Every hooked function found, but ``send`` only where there is no ``send2``."""
    if "gnutls_record_send2" in offsets:
        return {k: v for k, v in offsets.items() if k != "gnutls_record_send"}
    return offsets


def resolve(pid: int, options: dict[str, Any]) -> HookTarget:
    """Find GnuTLS in process ``pid``: a mapped ``libgnutls.so*``, or the executable
    itself when it links GnuTLS statically."""
    from ecap import procfs
    from ecap.errors import UsageError

    found = _libraries.find_mapped(pid, _LIBGNUTLS_RE, FUNCTIONS, REQUIRED)
    found = found or _libraries.find_in_executable(pid, FUNCTIONS, REQUIRED)
    if found is None:
        raise UsageError(
            f"process {pid} ({procfs.comm(pid)!r}) maps no libgnutls and its executable "
            f"exports no {'/'.join(REQUIRED)}",
            hint="it may use another TLS library: try 'capture auto'",
        )
    offsets = _probed(found.offsets)
    version = _libraries.version_in(found.host_path, _VERSION_RE)
    return HookTarget(pid, found.host_path, found.shown, found.kind, version,
                      MODULE.probes(offsets), offsets)  # fmt: skip


MODULE = CaptureModule(
    name="gnutls",
    summary="GnuTLS: libgnutls (wget, gnutls-cli, curl-gnutls...), also in containers",
    classification="tls",
    bpf_object="tls_rw",
    hooks=HOOKS,
    emits=frozenset({DATA, HANDSHAKE, CONNECTION}),
    identity="gnutls_session_t",
    resolve=resolve,
    secrets=SecretSource(
        "GnuTLS 3.7.x: its internal _gnutls_call_keylog_func (every secret, whether or "
        "not the application or SSLKEYLOGFILE asked for a key log)",
        _keylog_function.GNUTLS.probes,
    ),
)
