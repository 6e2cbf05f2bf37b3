"""Which hooked functions carry plaintext, and of what kind.

A uprobe on ``SSL_write`` sees every byte before encryption; on ``readline`` every
command typed into bash; on ``dispatch_command`` every SQL query. These are the
functions eCapture's modules (tls, gotls, gnutls, nss, bash, zsh, mysqld,
postgres) hook, and the ones our own capture uses.
"""

from __future__ import annotations

import re

TLS = "tls"
SHELL = "shell"
DATABASE = "database"
OTHER = "other"
PLAINTEXT_CLASSES = (TLS, SHELL, DATABASE)

_EXACT: dict[str, str] = {
    # OpenSSL / BoringSSL / LibreSSL
    "SSL_read": TLS,
    "SSL_write": TLS,
    "SSL_read_ex": TLS,
    "SSL_write_ex": TLS,
    "SSL_do_handshake": TLS,
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


def classify(function: str | None) -> str:
    """``tls``, ``shell``, ``database`` or ``other`` for a function name."""
    if not function:
        return OTHER
    cls = _EXACT.get(function)
    if cls:
        return cls
    base = function.split("@", 1)[0]  # versioned names: SSL_write@@OPENSSL_3.0.0
    if base in _EXACT:
        return _EXACT[base]
    m = _MANGLED.match(function)
    return _EXACT[m.group(1)] if m else OTHER
