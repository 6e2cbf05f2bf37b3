"""Where a C TLS library hands out its secrets: its internal key-log function.

OpenSSL calls ``ssl_log_secret(SSL *s, const char *label, const uint8_t *secret,
size_t secret_len)`` and GnuTLS ``_gnutls_call_keylog_func(gnutls_session_t
session, const char *label, const uint8_t *data, unsigned size)`` for every secret
they derive — CLIENT_RANDOM (TLS 1.2), the handshake and traffic secrets and
EXPORTER_SECRET (TLS 1.3) — and only inside do they check whether the application
(or ``SSLKEYLOGFILE``) asked for a key log. A uprobe on the entry sees each secret
with its exact length and its NSS label, with nothing set in the process: the shape
``fn(conn, label, secret, len)`` of ``tls_rw``'s ``secret_enter``.

Both functions are internal: a build with a symbol table names them (node); a
stripped library (Debian's libssl, libgnutls) is read for it — the one function
called with both ``"CLIENT_RANDOM"`` and ``"EXPORTER_SECRET"`` as its label
argument (string literals at those two call sites in both libraries).

The client random is not among the arguments: it lies in the connection object, at
an offset that depends on the build. It is read from an exported accessor
(``SSL_get_client_random``: ``lea rsi, [rdi + OFFSET]``; ``gnutls_session_get_random``:
``lea rax, [rdi + OFFSET]`` stored to its ``client`` datum). OpenSSL's log function
reads it too, so there the two readings must agree; GnuTLS's only passes the session
on to the callback. Both are version-dependent readings, so the capture proves every
secret against the wire before writing it; and only versions whose layout was proven
here are accepted at all (fail closed).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

from ecap.capture.modules.interface import HookTarget, Probe
from ecap.errors import UsageError

PROGRAM = "secret_enter"
ANCHORS = (b"CLIENT_RANDOM", b"EXPORTER_SECRET")
"""Labels passed straight to the log function (a TLS 1.2 and a TLS 1.3 call site)."""


class SecretsUnavailable(UsageError):
    """This library (version, build) does not give its secrets to ecap."""

    @classmethod
    def of(cls, target: HookTarget, why: str, needs: str) -> SecretsUnavailable:
        """The one wording of a refusal: which file and version, why, what would do
        (``needs``), and that the plaintext formats still work."""
        return cls(
            f"cannot read TLS secrets from {target.display_path} "
            f"({target.version or 'version unknown'}): {why}",
            hint=f"keylog and pcapng need {needs}; text, jsonl, raw and "
            "'pcapng --plaintext' still work",
        )


@dataclass(frozen=True)
class KeyLogFunction:
    """One library's key-log function and client-random accessor."""

    library: str
    """How the operator knows it (messages)."""
    known_versions: tuple[str, ...]
    """Version prefixes whose log function signature and connection layout ecap was
    proven against; anything else is refused for secrets (plaintext still works)."""
    log_function: str
    """Its name where a symbol table has it (also the probe's name)."""
    accessor: str
    """The exported function that reads the client random through its 1st argument."""
    log_reads_random: bool
    """The log function itself reads the client random (a second reading to agree)."""

    def _refuse(self, target: HookTarget, why: str) -> SecretsUnavailable:
        return SecretsUnavailable.of(
            target, why, f"a proven {' or '.join(v + 'x' for v in self.known_versions)}"
        )

    def probes(self, target: HookTarget, shift: int = 0) -> tuple[Probe, ...]:
        """The probe that reports every secret of ``target``'s library.

        ``shift`` moves where the secret is read (the UNSAFE test hook that proves a
        wrong location yields no key); 0 otherwise.
        """
        from ecap.capture import abi as abi_mod

        version = target.version or ""
        if not version.startswith(self.known_versions):
            raise self._refuse(
                target,
                f"ecap reads secrets only from versions it was proven against "
                f"({', '.join(v + 'x' for v in self.known_versions)})",
            )
        try:
            st = os.stat(target.path)
        except OSError as exc:
            raise self._refuse(target, exc.strerror or "unreadable") from exc
        identity = (st.st_dev, st.st_ino, int(st.st_mtime))
        found = _locate(self, str(Path(target.path)), identity)
        if isinstance(found, str):
            raise self._refuse(target, found)
        offset, random_offset = found
        abi = abi_mod.of("tls_rw")
        if random_offset > abi.SECRET_RANDOM_MASK:
            raise self._refuse(target, f"its client random lies too far (0x{random_offset:x})")
        return (Probe(self.log_function, offset, PROGRAM, False,
                      random_offset | secret_shift_bits(abi, shift)),)  # fmt: skip


def secret_shift_bits(abi, shift: int) -> int:
    """The cookie bits that move where a secret is read (ECAP_SECRET_SHIFT_SHIFT)."""
    if abs(shift) > abi.SECRET_SHIFT_LIMIT:
        raise UsageError(f"a secret shift of {shift} is beyond ±{abi.SECRET_SHIFT_LIMIT}")
    return (shift & 0xFFFF) << abi.SECRET_SHIFT_SHIFT


@functools.lru_cache(maxsize=32)
def _locate(
    spec: KeyLogFunction, path: str, _identity: tuple[int, int, int]
) -> tuple[int, int] | str:
    """(file offset of the log function, client random offset in the connection
    object), or why not."""
    from ecap import x86
    from ecap.elf import NotAnElf, open_elf

    try:
        elf = open_elf(path)
    except NotAnElf as exc:
        return str(exc)
    symbols = elf.find_functions((spec.log_function, spec.accessor))
    if spec.accessor not in symbols:
        return f"it does not export {spec.accessor}"
    # the first displacement off rdi, up to where rdi is overwritten: the client
    # random (gnutls_session_get_random then moves rdi to the server random)
    offsets = set(x86.first_arg_displacements(elf, symbols[spec.accessor].vaddr))
    if len(offsets) != 1:
        return f"{spec.accessor} does not read the client random at one place ({sorted(offsets)})"
    (random_offset,) = offsets
    if spec.log_function in symbols:
        return symbols[spec.log_function].file_offset, random_offset
    candidates = [x86.calls_fed_by_string(elf, label) for label in ANCHORS]
    common = set.intersection(*candidates)
    if len(common) != 1:
        return (
            f"its key-log function could not be found (candidates for "
            f"{', '.join(a.decode() for a in ANCHORS)}: {[sorted(c) for c in candidates]})"
        )
    (vaddr,) = common
    if spec.log_reads_random and random_offset not in x86.displacements(elf, vaddr):
        return (
            f"the function at 0x{vaddr:x} does not read the client random where "
            f"{spec.accessor} does (0x{random_offset:x})"
        )
    offset = elf.vaddr_to_offset(vaddr)
    if offset is None:
        return f"0x{vaddr:x} is not in the file"
    return offset, random_offset


OPENSSL = KeyLogFunction(
    library="OpenSSL",
    # Debian 12's libssl 3.0.x and node's bundled OpenSSL 3.0.x. 3.2 moved the state
    # into SSL_CONNECTION; 1.1.1, 3.1, BoringSSL and LibreSSL are not proven here.
    known_versions=("OpenSSL 3.0.",),
    log_function="ssl_log_secret",
    accessor="SSL_get_client_random",
    log_reads_random=True,
)
GNUTLS = KeyLogFunction(
    library="GnuTLS",
    # Debian 12's libgnutls30 3.7.9: security_parameters.client_random in the session.
    known_versions=("GnuTLS 3.7.",),
    log_function="_gnutls_call_keylog_func",
    accessor="gnutls_session_get_random",
    log_reads_random=False,
)
