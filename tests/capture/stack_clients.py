"""Real programs on each TLS stack ecap captures besides OpenSSL, for the tests.

GnuTLS: Debian's ``wget`` and ``gnutls-cli``. NSS: ``tstclnt`` and ``selfserv``
(``libnss3-tools``) with an NSS database made by ``certutil``. Two stacks in one
process: Python's ``ssl`` (OpenSSL) and GnuTLS loaded through ``ctypes``.

Each client is started so that the test can authorize its PID and attach the
capture before it sends its request (it waits on stdin), and maps its TLS library
from the start (linked, or loaded before the wait).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.tls_helpers import stop_process


def wait_mapped(pid: int, library: str, timeout: float = 20) -> None:
    """Until process ``pid`` maps a file whose name contains ``library``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if library in Path(f"/proc/{pid}/maps").read_text():
                return
        except OSError:
            return
        time.sleep(0.02)
    raise AssertionError(f"process {pid} did not map {library} in {timeout}s")


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 20) -> None:
    """Until something accepts connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"server exited with {proc.returncode}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------- GnuTLS


def wget(output: Path) -> subprocess.Popen:
    """wget (GnuTLS) reading its URLs from stdin: it fetches them once stdin closes."""
    proc = subprocess.Popen(
        ["wget", "-q", "--no-check-certificate", "--tries=1", "-O", str(output), "-i", "-"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    wait_mapped(proc.pid, "libgnutls")
    return proc


def release_wget(proc: subprocess.Popen, url: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(url.encode() + b"\n")
    proc.stdin.close()


def gnutls_cli(port: int) -> subprocess.Popen:
    """gnutls-cli connected (handshake done) to 127.0.0.1:``port``; what it reads on
    stdin it sends, what it receives it prints."""
    proc = subprocess.Popen(
        ["gnutls-cli", "--insecure", "-p", str(port), "127.0.0.1"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:
        if b"Handshake was completed" in line:
            return proc
    stop_process(proc)
    raise AssertionError("gnutls-cli did not complete its handshake")


# ---------------------------------------------------------------------------- NSS


def nss_database(directory: Path) -> Path:
    """An NSS database (empty password) holding a self-signed server certificate
    ``server`` for 127.0.0.1."""
    directory.mkdir(parents=True, exist_ok=True)
    db = f"sql:{directory}"
    subprocess.run(["certutil", "-N", "-d", db, "--empty-password"], check=True,
                   capture_output=True)  # fmt: skip
    noise = directory / "noise"
    noise.write_bytes(bytes(range(256)))
    subprocess.run(
        ["certutil", "-S", "-n", "server", "-s", "CN=127.0.0.1", "-x", "-t", "CTu,u,u",
         "-d", db, "-z", str(noise), "-k", "ec", "-q", "nistp256",
         "--extSAN", "ip:127.0.0.1,dns:localhost", "-v", "12"],
        check=True, capture_output=True,
    )  # fmt: skip
    return directory


def tstclnt(port: int, db: Path, stdout: Path) -> subprocess.Popen:
    """NSS's test client: connects, then sends what arrives on stdin (read through
    NSPR from a pipe) and writes what the server sends to ``stdout`` (a file,
    written through NSPR's PR_Write)."""
    proc = subprocess.Popen(
        ["tstclnt", "-h", "127.0.0.1", "-p", str(port), "-d", f"sql:{db}", "-o"],
        stdin=subprocess.PIPE, stdout=stdout.open("wb"), stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_mapped(proc.pid, "libssl3.so")
    return proc


@dataclass
class SelfServ:
    proc: subprocess.Popen
    port: int

    def stop(self) -> None:
        stop_process(self.proc)


def selfserv(db: Path) -> SelfServ:
    """NSS's test HTTPS server: answers a request with a header and the request
    echoed, written with PR_Writev; logs through NSPR to a pipe."""
    port = free_port()
    proc = subprocess.Popen(
        ["selfserv", "-d", f"sql:{db}", "-n", "server", "-p", str(port), "-V", "tls1.2:"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_port(port, proc)
    except BaseException:
        stop_process(proc)
        raise
    return SelfServ(proc, port)


# ------------------------------------------------------------------- two stacks

TWO_STACKS_CLIENT = r"""
# One process, two TLS stacks: Python's ssl (OpenSSL) and GnuTLS through ctypes.
import ctypes, http.client, socket, ssl, sys
from ctypes import c_char_p, c_int, c_size_t, c_ssize_t, c_void_p

gnutls = ctypes.CDLL("libgnutls.so.30")
gnutls.gnutls_record_send.argtypes = [c_void_p, c_char_p, c_size_t]
gnutls.gnutls_record_send.restype = c_ssize_t
gnutls.gnutls_record_recv.argtypes = [c_void_p, c_void_p, c_size_t]
gnutls.gnutls_record_recv.restype = c_ssize_t
gnutls.gnutls_transport_set_int2.argtypes = [c_void_p, c_int, c_int]
for name in ("gnutls_set_default_priority", "gnutls_handshake", "gnutls_deinit"):
    getattr(gnutls, name).argtypes = [c_void_p]
gnutls.gnutls_credentials_set.argtypes = [c_void_p, c_int, c_void_p]
gnutls.gnutls_global_init()
port = int(sys.argv[1])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
sys.stdin.readline()

conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx)
conn.request("GET", "/hello?stack=openssl", headers={"Connection": "close"})
sys.stdout.buffer.write(conn.getresponse().read())
conn.close()

cred, session = c_void_p(), c_void_p()
gnutls.gnutls_certificate_allocate_credentials(ctypes.byref(cred))
gnutls.gnutls_init(ctypes.byref(session), 2)  # GNUTLS_CLIENT
gnutls.gnutls_set_default_priority(session)
gnutls.gnutls_credentials_set(session, 1, cred)  # GNUTLS_CRD_CERTIFICATE
sock = socket.create_connection(("127.0.0.1", port))
gnutls.gnutls_transport_set_int2(session, sock.fileno(), sock.fileno())
assert gnutls.gnutls_handshake(session) == 0
request = b"GET /hello?stack=gnutls HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
assert gnutls.gnutls_record_send(session, request, len(request)) == len(request)
buf = ctypes.create_string_buffer(65536)
response = b""
while True:
    n = gnutls.gnutls_record_recv(session, buf, len(buf))
    if n in (-28, -52):  # GNUTLS_E_AGAIN (a TLS 1.3 ticket was read), _E_INTERRUPTED
        continue
    if n <= 0:
        break
    response += buf.raw[:n]
gnutls.gnutls_deinit(session)
sock.close()
sys.stdout.buffer.write(response.split(b"\r\n\r\n", 1)[1])
"""


def two_stacks_client(port: int) -> subprocess.Popen:
    """A Python process mapping OpenSSL (``ssl``) and GnuTLS (``ctypes``): after a line
    on stdin it fetches ``/hello`` once through each."""
    proc = subprocess.Popen(
        [sys.executable, "-c", TWO_STACKS_CLIENT, str(port)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    wait_mapped(proc.pid, "libgnutls")
    wait_mapped(proc.pid, "libssl.so")
    return proc
