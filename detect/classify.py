"""Which hooked functions carry plaintext, and of what kind.

A uprobe on ``SSL_write`` sees every byte before encryption; on ``readline`` every
command typed into bash; on ``dispatch_command`` every SQL query. These are the
functions eCapture's modules (tls, gotls, gnutls, nss, bash, zsh, mysqld,
postgres) hook, and the ones our own capture uses.

ecap's own capture modules declare their plaintext hooks
(:func:`ecap.capture.modules.plaintext_functions`), so whatever a module hooks is
classified from that one declaration; ``_EXACT`` adds the functions of libraries
other tools hook and no ecap module covers yet.
"""

from __future__ import annotations

import functools
import re

TLS = "tls"
SHELL = "shell"
DATABASE = "database"
OTHER = "other"
PLAINTEXT_CLASSES = (TLS, SHELL, DATABASE)

_EXACT: dict[str, str] = {
    # OpenSSL / BoringSSL / LibreSSL (beyond what the tls module hooks)
    "SSL_peek": TLS,
    "SSL_peek_ex": TLS,
    # GnuTLS
    "gnutls_record_recv": TLS,
    "gnutls_record_send": TLS,
    # NSPR / NSS
    "PR_Read": TLS,
    "PR_Write": TLS,
    "PR_Recv": TLS,
    "PR_Send": TLS,
    # Go crypto/tls
    "crypto/tls.(*Conn).Read": TLS,
    "crypto/tls.(*Conn).Write": TLS,
    "crypto/tls.(*Conn).writeRecordLocked": TLS,
    "crypto/tls.(*Config).writeKeyLog": TLS,
    # shells
    "readline": SHELL,
    "zleread": SHELL,
    # databases
    "dispatch_command": DATABASE,
    "exec_simple_query": DATABASE,
    "pg_parse_query": DATABASE,
}
# C++ builds (MySQL, MariaDB) export mangled names: _Z16dispatch_commandP3THD...
_MANGLED = re.compile(r"^_Z(?:N\w*?)?\d+(dispatch_command)")


@functools.cache
def known_functions() -> dict[str, str]:
    """Every plaintext function name → its class: ecap's modules, then the rest."""
    from ecap.capture import modules

    return {**_EXACT, **modules.plaintext_functions()}


def classify(function: str | None) -> str:
    """``tls``, ``shell``, ``database`` or ``other`` for a function name."""
    if not function:
        return OTHER
    known = known_functions()
    cls = known.get(function)
    if cls:
        return cls
    base = function.split("@", 1)[0]  # versioned names: SSL_write@@OPENSSL_3.0.0
    if base in known:
        return known[base]
    m = _MANGLED.match(function)
    return known[m.group(1)] if m else OTHER
