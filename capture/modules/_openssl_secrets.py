"""Where OpenSSL hands out its TLS secrets, in a given libssl (or static build).

OpenSSL calls ``ssl_log_secret(SSL *s, const char *label, const uint8_t *secret,
size_t secret_len)`` for every secret it derives — CLIENT_RANDOM (TLS 1.2), the
handshake and traffic secrets and EXPORTER_SECRET (TLS 1.3) — and only inside it
checks whether the application set a key-log callback. A uprobe on its entry sees
each secret with its exact length and its NSS label, without anything set in the
process. The function is internal: a build with a symbol table names it (node);
a stripped libssl (Debian's) is read for it — the one function called with both
``"CLIENT_RANDOM"`` and ``"EXPORTER_SECRET"`` as its label argument.

The client random is not among its arguments: it lies in the ``SSL`` object, at
an offset that depends on the build. It is read from the exported accessor
``SSL_get_client_random`` (``lea rsi, [rdi + OFFSET]``), and must agree with what
``ssl_log_secret`` itself reads. Both are version-dependent readings, so the
capture proves every secret against the wire before writing it; and only
versions whose layout was proven here are accepted at all (fail closed).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from ecap.capture.modules.interface import HookTarget, Probe
from ecap.errors import UsageError

KNOWN_VERSIONS = ("OpenSSL 3.0.",)
"""Version prefixes whose ``ssl_log_secret`` signature and ``SSL`` layout ecap was
proven against: Debian 12's libssl 3.0.x and node's bundled OpenSSL 3.0.x. 3.2
moved the state into ``SSL_CONNECTION``; 1.1.1, 3.1, BoringSSL and LibreSSL are
not proven here. Anything else is refused for secrets; plaintext still works."""
LOG_FUNCTION = "ssl_log_secret"
ACCESSOR = "SSL_get_client_random"
ANCHORS = (b"CLIENT_RANDOM", b"EXPORTER_SECRET")
"""Labels passed straight to the log function (a TLS 1.2 and a TLS 1.3 call site)."""
PROGRAM = "secret_enter"


class SecretsUnavailable(UsageError):
    """This library (version, build) does not give its secrets to ecap."""


def _refuse(target: HookTarget, why: str) -> SecretsUnavailable:
    return SecretsUnavailable(
        f"cannot read TLS secrets from {target.display_path} "
        f"({target.version or 'version unknown'}): {why}",
        hint="keylog and pcapng need a proven OpenSSL 3.0.x; text, jsonl, raw and "
        "'pcapng --plaintext' still work",
    )


@functools.lru_cache(maxsize=32)
def _locate(path: str, _identity: tuple[int, int, int]) -> tuple[int, int] | str:
    """(file offset of the log function, client random offset in SSL), or why not."""
    from ecap import x86
    from ecap.elf import NotAnElf, open_elf

    try:
        elf = open_elf(path)
    except NotAnElf as exc:
        return str(exc)
    symbols = elf.find_functions((LOG_FUNCTION, ACCESSOR))
    if ACCESSOR not in symbols:
        return f"it does not export {ACCESSOR}"
    offsets = set(x86.first_arg_displacements(elf, symbols[ACCESSOR].vaddr))
    if len(offsets) != 1:
        return f"{ACCESSOR} does not read the client random at one place ({sorted(offsets)})"
    (random_offset,) = offsets
    if LOG_FUNCTION in symbols:
        return symbols[LOG_FUNCTION].file_offset, random_offset
    candidates = [x86.calls_fed_by_string(elf, label) for label in ANCHORS]
    common = set.intersection(*candidates)
    if len(common) != 1:
        return (
            f"its key-log function could not be found (candidates for "
            f"{', '.join(a.decode() for a in ANCHORS)}: {[sorted(c) for c in candidates]})"
        )
    (vaddr,) = common
    if random_offset not in x86.displacements(elf, vaddr):
        return (
            f"the function at 0x{vaddr:x} does not read the client random where "
            f"{ACCESSOR} does (0x{random_offset:x})"
        )
    offset = elf.vaddr_to_offset(vaddr)
    if offset is None:
        return f"0x{vaddr:x} is not in the file"
    return offset, random_offset


def probes(target: HookTarget, shift: int = 0) -> tuple[Probe, ...]:
    """The probe that reports every secret of ``target``'s OpenSSL.

    ``shift`` moves where the secret is read (the UNSAFE test hook that proves a
    wrong location yields no key); 0 otherwise.
    """
    from ecap.capture import abi as abi_mod

    version = target.version or ""
    if not version.startswith(KNOWN_VERSIONS):
        raise _refuse(
            target,
            f"ecap reads secrets only from versions it was proven against "
            f"({', '.join(v + 'x' for v in KNOWN_VERSIONS)})",
        )
    try:
        st = os.stat(target.path)
    except OSError as exc:
        raise _refuse(target, exc.strerror or "unreadable") from exc
    found = _locate(str(Path(target.path)), (st.st_dev, st.st_ino, int(st.st_mtime)))
    if isinstance(found, str):
        raise _refuse(target, found)
    offset, random_offset = found
    abi = abi_mod.of("tls_rw")
    cookie = random_offset | ((shift & 0xFFFFFFFF) << abi.SECRET_COOKIE_SHIFT)
    return (Probe(LOG_FUNCTION, offset, PROGRAM, False, cookie),)
