"""Which hooks carry plaintext, and of what kind: the *reach* of a hook.

A uprobe on ``SSL_write`` sees every byte before encryption; on ``readline`` every
command typed into bash; on ``dispatch_command`` every SQL query. These are the
functions eCapture's modules (tls, gotls, gnutls, nss, bash, zsh, mysqld,
postgres) hook, and the ones our own capture uses (``tls``, ``shell``,
``database``). ecap's own capture modules declare their plaintext hooks
(:func:`ecap.capture.modules.plaintext_functions`), so whatever a module hooks is
classified from that one declaration; ``_EXACT`` adds the functions of libraries
other tools hook and no ecap module covers.

A careful attacker does not use those names, so reach is wider than a list of
functions:

* ``crypto`` — anything else inside a TLS or crypto library, by *file* (libssl,
  libcrypto, GnuTLS and nettle, NSS/NSPR, wolfSSL, mbedTLS, BoringSSL builds) or,
  for code linked statically, by name (``EVP_*``, ``ssl3_*``, Go ``crypto/*``):
  every record's plaintext passes through the cipher functions
  (``EVP_EncryptUpdate``), and a hook on an unexported internal function at a bare
  offset is still inside libssl;
* ``io`` — the C library's (or Go's) I/O functions: ``write``, ``send*``,
  ``recv*``, ``read*``...: plaintext where the process does not encrypt (files,
  pipes, plain sockets), ciphertext where it does;
* ``syscall-data`` — the data-carrying syscall tracepoints (``sys_enter_write``,
  ``sys_exit_read``, ``sendto``/``recvfrom``/``sendmsg``/``recvmsg``, vector forms),
  ``raw_syscalls`` (every syscall) and the kernel functions behind them.
"""

from __future__ import annotations

import functools
import re

TLS = "tls"
SHELL = "shell"
DATABASE = "database"
CRYPTO = "crypto"
IO = "io"
SYSCALL_DATA = "syscall-data"
OTHER = "other"
PLAINTEXT_CLASSES = (TLS, SHELL, DATABASE)
"""Functions whose arguments are plaintext by construction (named hooks)."""
FULL_PLAINTEXT_REACH = (TLS, SHELL, DATABASE, CRYPTO)
"""Where all the traffic passing is plaintext: a sniffer here is critical."""
PARTIAL_PLAINTEXT_REACH = (IO, SYSCALL_DATA)
"""Where plaintext passes only for processes that do not encrypt: high."""
DATA_REACH = FULL_PLAINTEXT_REACH + PARTIAL_PLAINTEXT_REACH

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


# Shared objects that implement TLS or the ciphers under it, by file name.
_CRYPTO_FILE = re.compile(
    r"^(?:libssl|libcrypto|libgnutls|libnettle|libhogweed|libnss3|libssl3|libnspr4|"
    r"libsmime3|libsoftokn3|libfreebl3|libfreeblpriv3|libnssutil3|libwolfssl|libmbedtls|"
    r"libmbedcrypto|libmbedx509|libboringssl|libbssl|libgcrypt|libsodium|libbotan)[-.\d]*"
    r"(?:\.so|$)"
)
_CRYPTO_NAME = re.compile(
    r"^(?:EVP_|SSL_|ssl3_|ssl_|tls1_|tls13_|tls_|dtls1_|ossl_|CRYPTO_|AES_|aesni_|"
    r"ChaCha20|chacha20_|gcm_|OPENSSL_|BIO_|gnutls_|_gnutls_|nettle_|PK11_|PR_|"
    r"crypto/|vendor/golang\.org/x/crypto/|golang\.org/x/crypto/)"
)
_SYSCALLS_WITH_DATA = (
    "read",
    "write",
    "readv",
    "writev",
    "pread64",
    "pwrite64",
    "preadv",
    "pwritev",
    "preadv2",
    "pwritev2",
    "sendto",
    "recvfrom",
    "sendmsg",
    "recvmsg",
    "sendmmsg",
    "recvmmsg",
    "splice",
    "vmsplice",
    "sendfile64",
)
_IO_FUNCTIONS = frozenset(_SYSCALLS_WITH_DATA) | {
    # the C library's own names and buffered I/O
    "pread",
    "pwrite",
    "preadv64",
    "pwritev64",
    "send",
    "recv",
    "fwrite",
    "fread",
    "fputs",
    "fgets",
    "sendfile",
    # Go's runtime and net stack: every Read/Write of a net.Conn passes here
    "syscall.read",
    "syscall.write",
    "syscall.Read",
    "syscall.Write",
    "internal/poll.(*FD).Read",
    "internal/poll.(*FD).Write",
    "net.(*conn).Read",
    "net.(*conn).Write",
}
# glibc aliases: __write, __libc_write, __GI___libc_write, __send, write_nocancel, read_chk
_IO_ALIAS = re.compile(
    r"^(?:__libc_|__GI___libc_|__GI___|__GI_|__|_)?(?P<base>[A-Za-z0-9_]+?)"
    r"(?:_nocancel|_chk)?(?:@.*)?$"
)
_SYSCALL_TRACEPOINTS = frozenset(
    [f"sys_{edge}_{name}" for name in _SYSCALLS_WITH_DATA for edge in ("enter", "exit")]
    + ["sys_enter", "sys_exit"]  # raw_syscalls: every syscall, buffers included
)
_KERNEL_DATA_FUNCTIONS = re.compile(
    r"^(?:__x64_sys_|__arm64_sys_|__ia32_sys_|__se_sys_|__do_sys_|ksys_|__sys_)?"
    r"(?:read|write|readv|writev|pread64|pwrite64|sendto|recvfrom|sendmsg|recvmsg|"
    r"sendmmsg|recvmmsg)$|^(?:vfs_read|vfs_write|vfs_readv|vfs_writev|sock_sendmsg|"
    r"sock_recvmsg|tcp_sendmsg|tcp_recvmsg|udp_sendmsg|udp_recvmsg|unix_stream_sendmsg|"
    r"unix_stream_recvmsg|tls_sw_sendmsg|tls_sw_recvmsg|new_sync_write|new_sync_read)"
    r"(?:_locked)?$"
)


def io_function(function: str) -> bool:
    """True for the C library's (or Go's) read/write/send/recv family, any alias."""
    if function in _IO_FUNCTIONS:
        return True
    m = _IO_ALIAS.match(function)
    return m is not None and m["base"] in _IO_FUNCTIONS


@functools.lru_cache(maxsize=1024)
def crypto_file(path: str | None) -> bool:
    """A TLS or crypto library, judged by its file name (any version suffix)."""
    if not path:
        return False
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return _CRYPTO_FILE.match(name) is not None


def syscall_tracepoint(name: str) -> bool:
    """``sys_enter_write``, ``syscalls:sys_exit_recvfrom``, ``raw_syscalls:sys_enter``..."""
    return name.rsplit(":", 1)[-1].rsplit("/", 1)[-1] in _SYSCALL_TRACEPOINTS


def reach(function: str | None, path: str | None, probe_type: str) -> str:
    """The reach class of one hook (see the module docstring).

    ``path`` is the hooked file for uprobes (its real name, as the kernel holds
    it, when known); ``function`` the resolved symbol, the kprobe symbol, or the
    tracepoint name.
    """
    if probe_type in ("tracepoint", "raw_tracepoint"):
        return SYSCALL_DATA if function and syscall_tracepoint(function) else OTHER
    if probe_type in ("kprobe", "kretprobe"):
        base = (function or "").split(".", 1)[0]  # isra/constprop clones
        return SYSCALL_DATA if _KERNEL_DATA_FUNCTIONS.match(base) else OTHER
    named = classify(function)
    if named != OTHER:
        return named
    if crypto_file(path) or (function and _CRYPTO_NAME.match(function)):
        return CRYPTO
    if function and io_function(function):
        return IO
    return OTHER
