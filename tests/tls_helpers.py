"""A local HTTPS service and TLS clients for tests that need real TLS traffic.

Shared by the capture and detect tests. The server runs as a *separate process*
(``python tests/tls_helpers.py serve``) so that a test can tell its PID apart from
the clients'. It speaks HTTP/1.1 and, when the client offers ALPN ``h2``, HTTP/2
(through the ``h2`` library). Routes:

``/hello``            a short text body
``/bytes?n=N&seed=S`` N deterministic bytes (see :func:`deterministic_bytes`)
``/gzip``             a gzip-encoded text body (Content-Encoding: gzip)
``/echo`` (POST)      the request body back
``/chunked``          a chunked text body

Clients wait for one line on stdin before doing their request, so a test can
start them, authorize their PID, start a capture, and then let them go.
"""

from __future__ import annotations

import contextlib
import datetime
import gzip
import hashlib
import ipaddress
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

HELLO = b"hello from the ecap test server\n"
GZIP_TEXT = b"compressed body: " + b"ecap " * 200 + b"\n"
CHUNKED_PARTS = (b"first chunk;", b" second chunk;", b" third and last\n")


def deterministic_bytes(n: int, seed: int = 0) -> bytes:
    """N bytes that both sides can regenerate (SHA-256 counter stream)."""
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest() * 64
        counter += 1
    return bytes(out[:n])


def make_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1/localhost (cert path, key path)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ecap-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(key_path, 0o600)
    return cert_path, key_path


# ----------------------------------------------------------------------- server side


def _route(method: str, target: str, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    url = urlsplit(target)
    query = parse_qs(url.query)
    if url.path == "/hello":
        return 200, [("content-type", "text/plain")], HELLO
    if url.path == "/bytes":
        n = int(query.get("n", ["1024"])[0])
        seed = int(query.get("seed", ["0"])[0])
        return 200, [("content-type", "application/octet-stream")], deterministic_bytes(n, seed)
    if url.path == "/gzip":
        return (
            200,
            [("content-type", "text/plain"), ("content-encoding", "gzip")],
            gzip.compress(GZIP_TEXT),
        )
    if url.path == "/echo":
        return 200, [("content-type", "application/octet-stream")], body
    return 404, [("content-type", "text/plain")], b"not found\n"


class _Transcript:
    """What the server received and sent on one connection, as plaintext files.

    Tests compare the capture against these: the server's view is the ground truth
    of what went through the TLS connection in each direction.
    """

    def __init__(self, directory: str | None, peer_port: int) -> None:
        self._files = None
        if directory:
            base = Path(directory) / f"conn-{peer_port}"
            self._files = (
                open(f"{base}.in", "wb", buffering=0),  # noqa: SIM115
                open(f"{base}.out", "wb", buffering=0),  # noqa: SIM115
            )

    def received(self, data: bytes) -> None:
        if self._files:
            self._files[0].write(data)

    def sent(self, data: bytes) -> None:
        if self._files:
            self._files[1].write(data)

    def close(self) -> None:
        if self._files:
            for f in self._files:
                f.close()


def _serve_http1(conn: ssl.SSLSocket, log: _Transcript) -> None:
    reader = conn.makefile("rb")
    while True:
        line = reader.readline()
        log.received(line)
        if not line:
            return
        method, target, _ = line.decode("latin-1").split(" ", 2)
        headers = {}
        while True:
            h = reader.readline()
            log.received(h)
            if h in (b"\r\n", b"\n", b""):
                break
            k, _, v = h.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        body = reader.read(int(headers.get("content-length", "0") or 0))
        log.received(body)
        if urlsplit(target).path == "/chunked":
            out = (
                b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n"
            )
            for part in CHUNKED_PARTS:
                out += f"{len(part):x}\r\n".encode() + part + b"\r\n"
            out += b"0\r\n\r\n"
            log.sent(out)
            conn.sendall(out)
        else:
            status, hdrs, payload = _route(method, target, body)
            head = f"HTTP/1.1 {status} {'OK' if status == 200 else 'Not Found'}\r\n"
            for k, v in [*hdrs, ("content-length", str(len(payload)))]:
                head += f"{k}: {v}\r\n"
            out = head.encode() + b"\r\n" + payload
            log.sent(out)
            conn.sendall(out)
        if headers.get("connection", "").lower() == "close":
            return


def _serve_h2(conn: ssl.SSLSocket, log: _Transcript) -> None:
    import h2.config
    import h2.connection
    import h2.events

    h2c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    h2c.initiate_connection()

    def flush() -> None:
        out = h2c.data_to_send()
        log.sent(out)
        conn.sendall(out)

    flush()
    requests: dict[int, dict] = {}
    unsent: dict[int, bytes] = {}  # stream → response body bytes not sent yet

    def send_bodies() -> None:
        """As much of each response body as the frame size and the peer's flow
        control window allow; the rest waits for a WINDOW_UPDATE."""
        for stream_id, rest in list(unsent.items()):
            while rest:
                room = min(h2c.local_flow_control_window(stream_id),
                           h2c.max_outbound_frame_size)  # fmt: skip
                if room <= 0:
                    break
                h2c.send_data(stream_id, rest[:room])
                rest = rest[room:]
            if rest:
                unsent[stream_id] = rest
            else:
                del unsent[stream_id]
                h2c.end_stream(stream_id)

    while True:
        data = conn.recv(65536)
        log.received(data)
        if not data:
            return
        for event in h2c.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                requests[event.stream_id] = {"headers": dict(event.headers), "body": b""}
            elif isinstance(event, h2.events.DataReceived):
                requests[event.stream_id]["body"] += event.data
                h2c.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                req = requests.pop(event.stream_id)
                hdrs = {k.decode(): v.decode() for k, v in req["headers"].items()}
                status, extra, payload = _route(hdrs[":method"], hdrs[":path"], req["body"])
                h2c.send_headers(
                    event.stream_id,
                    [(":status", str(status)), *extra, ("content-length", str(len(payload)))],
                )
                unsent[event.stream_id] = payload
            elif isinstance(event, h2.events.ConnectionTerminated):
                flush()
                return
        send_bodies()
        flush()


def _handle(raw: socket.socket, ctx: ssl.SSLContext, transcripts: str | None) -> None:
    log = _Transcript(transcripts, raw.getpeername()[1])
    try:
        with (
            contextlib.suppress(OSError, ValueError, ssl.SSLError, KeyError),
            ctx.wrap_socket(raw, server_side=True) as conn,
        ):
            if conn.selected_alpn_protocol() == "h2":
                _serve_h2(conn, log)
            else:
                _serve_http1(conn, log)
    finally:
        log.close()


def serve(cert: str, key: str, port_file: str, transcripts: str | None = None) -> None:
    """Accept TLS connections on 127.0.0.1 (ephemeral port written to port_file).

    With ``transcripts``, each connection's plaintext is written to
    ``conn-CLIENTPORT.in`` (received) and ``.out`` (sent) in that directory.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    sock = socket.create_server(("127.0.0.1", 0))
    tmp = port_file + ".tmp"
    Path(tmp).write_text(str(sock.getsockname()[1]))
    os.replace(tmp, port_file)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    while True:
        raw, _ = sock.accept()
        threading.Thread(target=_handle, args=(raw, ctx, transcripts), daemon=True).start()


# ----------------------------------------------------------------------- test side


@dataclass
class TlsServer:
    """A running test server: its process, port and certificate."""

    proc: subprocess.Popen
    port: int
    cert: Path
    transcripts: Path

    def transcript(self, client_port: int | None = None) -> tuple[bytes, bytes]:
        """(bytes the server received, bytes it sent) on one connection.

        Without ``client_port`` there must be exactly one connection.
        """
        if client_port is None:
            names = sorted(self.transcripts.glob("conn-*.in"))
            assert len(names) == 1, f"expected one connection, got {names}"
            base = names[0].with_suffix("")
        else:
            base = self.transcripts / f"conn-{client_port}"
        return Path(f"{base}.in").read_bytes(), Path(f"{base}.out").read_bytes()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        stop_process(self.proc)


def start_server(directory: Path) -> TlsServer:
    """Start the server in its own process and wait until it listens."""
    cert, key = make_cert(directory)
    port_file = directory / "port"
    transcripts = directory / "transcripts"
    transcripts.mkdir()
    proc = subprocess.Popen(
        [sys.executable, __file__, "serve", str(cert), str(key), str(port_file), str(transcripts)],
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc)
            raise RuntimeError("TLS test server did not start")
        time.sleep(0.02)
    return TlsServer(proc, int(port_file.read_text()), cert, transcripts)


def stop_process(proc: subprocess.Popen, timeout: float = 5) -> None:
    """Terminate, then kill; always reap (no zombie, nothing left running)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


PYTHON_CLIENT = r"""
import http.client, ssl, sys, threading
sys.stdin.readline()
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
method, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
body = open(sys.argv[4], "rb").read() if len(sys.argv) > 4 else None
def request():
    # In a second thread on purpose: capture must cover every thread of a target.
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx)
    conn.request(method, path, body=body, headers={"X-Ecap-Test": "python"})
    data = conn.getresponse().read()
    sys.stdout.buffer.write(data)
    conn.close()
worker = threading.Thread(target=request)
worker.start()
worker.join()
"""

NODE_CLIENT = r"""
const https = require('https');
const [port, path] = process.argv.slice(1);
process.stdin.once('data', () => {
  https.get({host: '127.0.0.1', port: Number(port), path, rejectUnauthorized: false,
             headers: {'X-Ecap-Test': 'node'}}, (res) => {
    const parts = [];
    res.on('data', (d) => parts.push(d));
    res.on('end', () => { process.stdout.write(Buffer.concat(parts)); process.exit(0); });
  });
});
"""


def python_client(
    server: TlsServer, path: str, *, method: str = "GET", body_file: Path | None = None
) -> subprocess.Popen:
    """A Python http.client client (SSL_read_ex/SSL_write_ex) waiting for a stdin line."""
    args = [sys.executable, "-c", PYTHON_CLIENT, method, str(server.port), path]
    if body_file is not None:
        args.append(str(body_file))
    return _waiting(args)


def curl_client(server: TlsServer, path: str, *, http2: bool = False,
                tls: tuple[str, ...] = ()) -> subprocess.Popen:  # fmt: skip
    """curl (SSL_write/SSL_read in libssl); its URL arrives on stdin (``-K -``).

    curl maps libssl at start-up and then blocks reading its config from stdin, so
    the PID is authorized and captured before any TLS happens. ``tls``: curl's TLS
    options (``--tls-max 1.2``, ``--ciphers``...).
    """
    args = ["curl", "-sS", "-k", "-H", "X-Ecap-Test: curl", *tls, "-K", "-"]
    args.append("--http2" if http2 else "--http1.1")
    return _waiting(args)


def release(proc: subprocess.Popen, line: str = "go") -> None:
    """Let a waiting client proceed (and close its stdin)."""
    assert proc.stdin is not None
    proc.stdin.write(line.encode() + b"\n")
    proc.stdin.close()


def release_curl(proc: subprocess.Popen, url: str) -> None:
    release(proc, f'url = "{url}"')


def node_client(server: TlsServer, path: str) -> subprocess.Popen:
    """node's https module (OpenSSL linked statically into /usr/bin/node)."""
    return _waiting(["node", "-e", NODE_CLIENT, str(server.port), path])


def _waiting(args: list[str]) -> subprocess.Popen:
    proc = subprocess.Popen(
        args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    wait_for_tls_mapped(proc.pid)
    return proc


def wait_for_tls_mapped(pid: int, timeout: float = 20) -> None:
    """Wait until the process has mapped its TLS code (libssl or its own executable)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            return
        exe = (
            os.path.basename(os.readlink(f"/proc/{pid}/exe"))
            if os.path.exists(f"/proc/{pid}/exe")
            else ""
        )
        if "libssl" in maps or exe == "node":
            # node: wait for the event loop (its stdin listener) to be set up
            if exe == "node":
                time.sleep(0.3)
            return
        time.sleep(0.02)


def wait_for_line(stream, needle: str, timeout: float) -> bool:
    """Read lines from a text stream until one contains ``needle`` (or EOF/timeout)."""
    import threading

    found = threading.Event()

    def pump() -> None:
        for line in stream:
            if needle in line:
                found.set()
                return
        found.set()

    threading.Thread(target=pump, daemon=True).start()
    return found.wait(timeout)


def spawn_with_pid(
    pid: int, args: list[str], attempts: int = 500, **popen
) -> subprocess.Popen | None:
    """Start ``args`` as process ``pid`` (a recycled PID) via ns_last_pid; None if raced."""
    last_pid = Path("/proc/sys/kernel/ns_last_pid")
    for _ in range(attempts):
        last_pid.write_text(str(pid - 1))
        proc = subprocess.Popen(args, **popen)
        if proc.pid == pid:
            return proc
        stop_process(proc)
    return None


if __name__ == "__main__":
    if len(sys.argv) in (5, 6) and sys.argv[1] == "serve":
        serve(*sys.argv[2:])
    else:
        sys.exit("usage: tls_helpers.py serve CERT KEY PORT_FILE [TRANSCRIPT_DIR]")
