"""A real TLS exchange between Python's ssl (OpenSSL) client and server in memory,
with the keys OpenSSL itself logs: the ground truth for the key-proof tests.

Run as a script (``python tls_transcript.py 1.2 CIPHERS``) so that an
``OPENSSL_CONF`` naming TLS 1.3 ciphersuites (CCM, ChaCha20) takes effect at
OpenSSL's start; prints JSON: the bytes each side wrote, in order, and the NSS key
log OpenSSL wrote (``SSLContext.keylog_filename``).
"""

from __future__ import annotations

import json
import ssl
import sys
import tempfile
from pathlib import Path

REQUEST = b"GET /proof HTTP/1.1\r\nHost: x\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nproof"


def exchange(version: str, ciphers: str | None) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.tls_helpers import make_cert

    work = Path(tempfile.mkdtemp())
    cert, key = make_cert(work)
    top = ssl.TLSVersion.TLSv1_2 if version == "1.2" else ssl.TLSVersion.TLSv1_3
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    client_ctx.maximum_version = top
    client_ctx.keylog_filename = str(work / "keys.log")
    if ciphers:
        client_ctx.set_ciphers(ciphers)
        server_ctx.set_ciphers(ciphers)
    pipes = {side: (ssl.MemoryBIO(), ssl.MemoryBIO()) for side in ("client", "server")}
    client = client_ctx.wrap_bio(*pipes["client"], server_side=False)
    server = server_ctx.wrap_bio(*pipes["server"], server_side=True)
    wire: list[tuple[str, str]] = []

    def move() -> None:
        for side, peer in (("client", "server"), ("server", "client")):
            data = pipes[side][1].read()
            if data:
                wire.append((side, data.hex()))
                pipes[peer][0].write(data)

    done = {"client": False, "server": False}
    for _ in range(20):
        for name, obj in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
            move()
        if all(done.values()):
            break
    client.write(REQUEST)
    move()
    assert server.read(1024) == REQUEST
    server.write(RESPONSE)
    move()
    for _ in range(3):  # TLS 1.3 tickets arrive before the response
        try:
            if client.read(1024) == RESPONSE:
                break
        except ssl.SSLWantReadError:
            move()
    return {
        "wire": wire,
        "keylog": (work / "keys.log").read_text(),
        "cipher": client.cipher()[0],
        "version": client.version(),
    }


if __name__ == "__main__":
    print(json.dumps(exchange(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)))
