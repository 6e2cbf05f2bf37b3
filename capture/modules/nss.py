"""``capture nss``: NSS/NSPR — Firefox, Thunderbird, ``tstclnt``/``selfserv``.

An NSS application moves TLS plaintext through NSPR's generic I/O calls
(``PR_Write``/``PR_Read``/``PR_Send``/``PR_Recv``, and ``PR_Writev``, whose buffer
is a vector array) on a descriptor with NSS's TLS layer pushed on it. They have
the shape ``fn(desc, buf, len) → n`` of ``tls_rw``'s programs; ``PR_Writev`` is
marked ``IOVEC``. The connection is the descriptor (``PRFileDesc*``); ``PR_Close``
ends it.

The same calls write files and pipes. Which descriptors are TLS is decided **in
the kernel** (cookie flag ``NSPR_LAYERS``), so that no byte of a file ever leaves
it: the program walks the descriptor's layer chain (``lower`` pointers, NSPR's
public ABI) and keeps it only when one layer's ``write`` method is code of NSS's
TLS library — ``bpf_find_vma`` on that address, compared with the file name this
module resolved (``libssl3.so``; ``libnss3.so`` in builds that fold NSS into one
library), which it puts in the object's ``tls_layer_libs`` map. The verdict is kept
per descriptor until its top layer changes (a layer pushed later: STARTTLS).

NSS's ``libssl3.so`` is not OpenSSL's ``libssl.so.3``: the two never resolve to
each other (``tls`` requires ``SSL_write``, this module ``SSL_ImportFD``).
NSS completes its handshake inside the first read or write, through no exported
function: no handshake events. The socket comes from the socket system calls
made inside a call (the engine's syscall correlation).

No secrets (``--format keylog``/``pcapng`` refused, exit 2): NSS derives and keeps
them as PKCS#11 objects inside its token, and Debian's libssl3.so is built without
``NSS_ALLOW_SSLKEYLOGFILE`` — no function receives a secret as bytes.
"""

from __future__ import annotations

import os
import re
from typing import Any

from ecap.capture.events import CONNECTION, DATA
from ecap.capture.modules import _libraries
from ecap.capture.modules.interface import CaptureModule, Hook, HookTarget, MapEntry

CHECKED = ("NSPR_LAYERS",)
HOOKS = (
    Hook("PR_Write", "call_enter", "data_return", "write", CHECKED, plaintext=True,
         required=True),
    Hook("PR_Read", "call_enter", "data_return", "read", CHECKED, plaintext=True, required=True),
    Hook("PR_Send", "call_enter", "data_return", "write", CHECKED, plaintext=True),
    Hook("PR_Recv", "call_enter", "data_return", "read", CHECKED, plaintext=True),
    Hook("PR_Writev", "call_enter", "data_return", "write", (*CHECKED, "IOVEC"), plaintext=True),
    Hook("PR_Close", "conn_end"),
)  # fmt: skip
FUNCTIONS = tuple(h.function for h in HOOKS)
REQUIRED = tuple(h.function for h in HOOKS if h.required)

_NSPR_RE = re.compile(r"/lib(nspr4|nss3)\.so$")
"""NSPR's I/O: ``libnspr4.so``, or ``libnss3.so`` in builds that fold NSPR in."""
_TLS_LAYER_RE = re.compile(r"/lib(ssl3|nss3)\.so$")
"""The library implementing the TLS layer: the one defining ``SSL_ImportFD``."""
TLS_LAYER_FUNCTION = "SSL_ImportFD"
_VERSION_RE = re.compile(rb"Version: (NSS \d+\.\d+(?:\.\d+)*)")
LAYER_MAP = "tls_layer_libs"


def layer_key(name: str) -> bytes:
    """The ``tls_layer_libs`` key (``struct ecap_layer_lib``) of a library file name,
    as the kernel reads it from the mapping's dentry: NUL-padded, cut to fit."""
    from ecap.capture import abi

    size = abi.of(MODULE.bpf_object).struct("ecap_layer_lib").size
    return name.encode()[: size - 1].ljust(size, b"\0")


def resolve(pid: int, options: dict[str, Any]) -> HookTarget:
    """Find NSPR's I/O and NSS's TLS layer library in process ``pid``."""
    from ecap import procfs
    from ecap.errors import UsageError

    paths = procfs.mapped_files(pid)
    nspr = _libraries.find_mapped(pid, _NSPR_RE, FUNCTIONS, REQUIRED, paths)
    if nspr is None:
        raise UsageError(
            f"process {pid} ({procfs.comm(pid)!r}) maps no NSPR library (libnspr4.so) "
            f"defining {'/'.join(REQUIRED)}",
            hint="it may use another TLS library: try 'capture auto'",
        )
    layer = _libraries.find_mapped(pid, _TLS_LAYER_RE, (TLS_LAYER_FUNCTION,),
                                   (TLS_LAYER_FUNCTION,), paths)  # fmt: skip
    if layer is None:
        raise UsageError(
            f"process {pid} ({procfs.comm(pid)!r}) uses NSPR but maps no NSS TLS library "
            f"(libssl3.so defining {TLS_LAYER_FUNCTION}): it does no TLS through NSS",
            hint="it may use another TLS library: try 'capture auto'",
        )
    version = _libraries.version_in(layer.host_path, _VERSION_RE)
    entry = MapEntry(LAYER_MAP, layer_key(os.path.basename(layer.shown)), b"\x01")
    return HookTarget(pid, nspr.host_path, nspr.shown, nspr.kind, version,
                      MODULE.probes(nspr.offsets), nspr.offsets, (entry,))  # fmt: skip


MODULE = CaptureModule(
    name="nss",
    summary="NSS/NSPR: Firefox, Thunderbird, tstclnt/selfserv (TLS descriptors only)",
    classification="tls",
    bpf_object="tls_rw",
    hooks=HOOKS,
    emits=frozenset({DATA, CONNECTION}),
    identity="PRFileDesc*",
    resolve=resolve,
    no_secrets="NSS keeps its TLS secrets inside its PKCS#11 token, and Debian builds it "
    "without key logging (no SSLKEYLOGFILE, no key-log function to read them from)",
)
