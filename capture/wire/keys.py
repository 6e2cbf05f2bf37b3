"""Does a TLS secret decrypt a record? The key schedules of RFC 8446 and 5246.

``cryptography`` does the ciphers (AES-GCM, AES-CCM, ChaCha20-Poly1305), HMAC and
HKDF-Expand; written here is only what it does not provide: TLS 1.3's
HKDF-Expand-Label (RFC 8446 7.1), TLS 1.2's PRF (RFC 5246 5) and the record
nonces and additional data of each version (RFC 8446 5.2-5.3, RFC 5288, 6655,
7905). A secret is proven by an authenticated decryption: the AEAD tag cannot
come out right with a wrong key (2^-128, 2^-64 for CCM_8).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from ecap.capture.wire.tls import Record


@dataclass(frozen=True)
class Suite:
    name: str
    aead: str
    """``gcm``, ``ccm``, ``ccm8`` or ``chacha``."""
    key_len: int
    hash_name: str
    """``sha256`` or ``sha384``: TLS 1.3's HKDF hash, TLS 1.2's PRF hash."""

    @property
    def hash(self) -> hashes.HashAlgorithm:
        return hashes.SHA384() if self.hash_name == "sha384" else hashes.SHA256()

    @property
    def tag_len(self) -> int:
        return 8 if self.aead == "ccm8" else 16

    def cipher(self, key: bytes):
        if self.aead == "gcm":
            return AESGCM(key)
        if self.aead == "chacha":
            return ChaCha20Poly1305(key)
        return AESCCM(key, tag_length=self.tag_len)


_GCM128 = ("gcm", 16, "sha256")
_GCM256 = ("gcm", 32, "sha384")
_CHACHA = ("chacha", 32, "sha256")
_CCM128, _CCM256 = ("ccm", 16, "sha256"), ("ccm", 32, "sha256")
_CCM8_128, _CCM8_256 = ("ccm8", 16, "sha256"), ("ccm8", 32, "sha256")
SUITES: dict[int, Suite] = {
    code: Suite(name, *spec)
    for code, name, spec in (
        (0x1301, "TLS_AES_128_GCM_SHA256", _GCM128),
        (0x1302, "TLS_AES_256_GCM_SHA384", _GCM256),
        (0x1303, "TLS_CHACHA20_POLY1305_SHA256", _CHACHA),
        (0x1304, "TLS_AES_128_CCM_SHA256", _CCM128),
        (0x1305, "TLS_AES_128_CCM_8_SHA256", _CCM8_128),
        (0x009C, "TLS_RSA_WITH_AES_128_GCM_SHA256", _GCM128),
        (0x009D, "TLS_RSA_WITH_AES_256_GCM_SHA384", _GCM256),
        (0x009E, "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256", _GCM128),
        (0x009F, "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384", _GCM256),
        (0xC02B, "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", _GCM128),
        (0xC02C, "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", _GCM256),
        (0xC02F, "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", _GCM128),
        (0xC030, "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", _GCM256),
        (0xCCA8, "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256", _CHACHA),
        (0xCCA9, "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", _CHACHA),
        (0xCCAA, "TLS_DHE_RSA_WITH_CHACHA20_POLY1305_SHA256", _CHACHA),
        (0xC09C, "TLS_RSA_WITH_AES_128_CCM", _CCM128),
        (0xC09D, "TLS_RSA_WITH_AES_256_CCM", _CCM256),
        (0xC09E, "TLS_DHE_RSA_WITH_AES_128_CCM", _CCM128),
        (0xC09F, "TLS_DHE_RSA_WITH_AES_256_CCM", _CCM256),
        (0xC0A0, "TLS_RSA_WITH_AES_128_CCM_8", _CCM8_128),
        (0xC0A1, "TLS_RSA_WITH_AES_256_CCM_8", _CCM8_256),
        (0xC0A2, "TLS_DHE_RSA_WITH_AES_128_CCM_8", _CCM8_128),
        (0xC0A3, "TLS_DHE_RSA_WITH_AES_256_CCM_8", _CCM8_256),
        (0xC0AC, "TLS_ECDHE_ECDSA_WITH_AES_128_CCM", _CCM128),
        (0xC0AD, "TLS_ECDHE_ECDSA_WITH_AES_256_CCM", _CCM256),
        (0xC0AE, "TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8", _CCM8_128),
        (0xC0AF, "TLS_ECDHE_ECDSA_WITH_AES_256_CCM_8", _CCM8_256),
    )
}
"""The AEAD suites a secret can be proven with. CBC suites (MAC-then-encrypt) are
not: their secrets are counted as not verified and never written."""


def hkdf_expand_label(secret: bytes, label: bytes, context: bytes, length: int,
                      algorithm: hashes.HashAlgorithm) -> bytes:  # fmt: skip
    """RFC 8446 7.1: HKDF-Expand(secret, HkdfLabel, length)."""
    full = b"tls13 " + label
    info = struct.pack("!HB", length, len(full)) + full + bytes([len(context)]) + context
    return HKDFExpand(algorithm, length, info).derive(secret)


def prf(secret: bytes, label: bytes, seed: bytes, length: int,
        algorithm: hashes.HashAlgorithm) -> bytes:  # fmt: skip
    """RFC 5246 5: PRF(secret, label, seed) = P_hash(secret, label + seed)."""

    def mac(data: bytes) -> bytes:
        h = hmac.HMAC(secret, algorithm)
        h.update(data)
        return h.finalize()

    seed = label + seed
    out, a = b"", seed
    while len(out) < length:
        a = mac(a)
        out += mac(a + seed)
    return out[:length]


def _xor_seq(iv: bytes, seq: int) -> bytes:
    return bytes(a ^ b for a, b in zip(iv, seq.to_bytes(len(iv), "big"), strict=True))


def tls13_traffic_keys(suite: Suite, secret: bytes) -> tuple[bytes, bytes]:
    """RFC 8446 7.3: (write key, write iv) of a traffic secret."""
    return (hkdf_expand_label(secret, b"key", b"", suite.key_len, suite.hash),
            hkdf_expand_label(secret, b"iv", b"", 12, suite.hash))  # fmt: skip


def tls13_decrypts(suite: Suite, key: bytes, iv: bytes, record: Record, seq: int = 0) -> bool:
    """Do these traffic keys decrypt ``record`` as the ``seq``-th record under them?"""
    try:
        inner = suite.cipher(key).decrypt(_xor_seq(iv, seq), record.body, record.header)
    except (InvalidTag, ValueError):
        return False
    inner = inner.rstrip(b"\0")
    return bool(inner) and inner[-1] in (21, 22, 23)  # alert, handshake, application data


@dataclass(frozen=True)
class Tls12Keys:
    client_key: bytes
    server_key: bytes
    client_iv: bytes
    server_iv: bytes


def tls12_keys(
    suite: Suite, master: bytes, client_random: bytes, server_random: bytes
) -> Tls12Keys:
    """RFC 5246 6.3 key block (an AEAD suite has no MAC keys)."""
    iv_len = 12 if suite.aead == "chacha" else 4
    block = prf(master, b"key expansion", server_random + client_random,
                2 * (suite.key_len + iv_len), suite.hash)  # fmt: skip
    k = suite.key_len
    return Tls12Keys(block[:k], block[k : 2 * k], block[2 * k : 2 * k + iv_len],
                     block[2 * k + iv_len :])  # fmt: skip


def tls12_decrypts(suite: Suite, key: bytes, iv: bytes, record: Record) -> bool:
    """Does (key, iv) decrypt this protected TLS 1.2 record (at its own sequence)?"""
    seq = record.seq.to_bytes(8, "big")
    body = record.body
    if suite.aead == "chacha":
        nonce, ciphertext = _xor_seq(iv, record.seq), body
    else:  # GCM and CCM: 4 bytes of implicit salt, 8 explicit in the record
        nonce, ciphertext = iv + body[:8], body[8:]
    plain_len = len(ciphertext) - suite.tag_len
    if plain_len < 0:
        return False
    aad = seq + record.header[:3] + plain_len.to_bytes(2, "big")
    try:
        suite.cipher(key).decrypt(nonce, ciphertext, aad)
    except (InvalidTag, ValueError):
        return False
    return True
