"""``--format keylog``, ``pcapng`` and ``pcapng --plaintext`` against real clients,
the real kernel and tshark.

The proof of a key log is that tshark, given it, decrypts a recording ecap did
not make (dumpcap's); the proof of a pcapng is that tshark opens it decrypted
with no key file, packet for packet the same as that independent recording of
the target's connection — nothing missing, nothing twice, nothing of the
bystander that talked to the same server on the same port at the same time.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pcapng import FileScanner, blocks

from ecap.capture.schema import validate_lines
from ecap.capture.sinks._pcapng import DecryptionSecrets
from tests import tls_helpers
from tests.capture import stack_clients
from tests.capture.audit_helpers import wait_for
from tests.capture.stack_clients import wait_mapped

pytestmark = [pytest.mark.bpf, pytest.mark.slow]

TLS13_LABELS = {"CLIENT_HANDSHAKE_TRAFFIC_SECRET", "SERVER_HANDSHAKE_TRAFFIC_SECRET",
                "CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0", "EXPORTER_SECRET"}  # fmt: skip
BODY = tls_helpers.HELLO.decode().strip()

PYTHON_TLS_CLIENT = r"""
import http.client, ssl, sys
sys.stdin.readline()
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
if sys.argv[2] == "1.2":
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(sys.argv[3])
conn = http.client.HTTPSConnection("127.0.0.1", int(sys.argv[1]), context=ctx)
conn.request("GET", "/hello")
sys.stdout.buffer.write(conn.getresponse().read())
conn.close()
"""


@contextmanager
def recording(port: int, path: Path) -> Iterator[None]:
    """dumpcap on loopback, for this server's port: the independent record."""
    proc = subprocess.Popen(["dumpcap", "-q", "-i", "lo", "-f", f"tcp port {port}", "-w", str(path)],
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    ready = threading.Event()

    def pump() -> None:
        for line in proc.stderr:  # type: ignore[union-attr]
            if "Capturing on" in line or "File:" in line:
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    try:
        assert ready.wait(30) and proc.poll() is None, "dumpcap did not start"
        yield
    finally:
        tls_helpers.stop_process(proc, timeout=10)


def tshark(*args: str) -> str:
    done = subprocess.run(["tshark", *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _fields(
    path: Path, display_filter: str, *fields: str, options: tuple[str, ...] = ()
) -> list[list[str]]:
    args = [*options, "-r", str(path), "-Y", display_filter, "-T", "fields"]
    for f in fields:
        args += ["-e", f]
    return [line.split("\t") for line in tshark(*args).splitlines() if line.strip()]


def _python_client(server: tls_helpers.TlsServer, version: str, ciphers: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", PYTHON_TLS_CLIENT, str(server.port), version, ciphers],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    tls_helpers.wait_for_tls_mapped(proc.pid)
    return proc


def _session(output: Path) -> list[dict]:
    record = output.with_name(output.name + ".session.jsonl")
    assert record.stat().st_mode & 0o777 == 0o600
    return validate_lines(record.read_text().splitlines())


KEYLOG_CASES = [
    ("curl", ("--tlsv1.3", "--tls13-ciphers", "TLS_CHACHA20_POLY1305_SHA256"), "0x1303"),
    (
        "curl",
        ("--tlsv1.2", "--tls-max", "1.2", "--ciphers", "ECDHE-ECDSA-CHACHA20-POLY1305"),
        "0xcca9",
    ),
    ("python", ("1.2", "ECDHE-ECDSA-AES128-GCM-SHA256"), "0xc02b"),
    ("python", ("1.3", ""), "0x1302"),
]


@pytest.mark.parametrize(("client_kind", "tls", "suite"), KEYLOG_CASES,
                         ids=["curl-tls13-chacha20", "curl-tls12-chacha20", "python-tls12-aes128gcm",
                              "python-tls13-aes256gcm"])  # fmt: skip
def test_keylog_decrypts_an_independent_recording(tls_server, clients, start_capture, tmp_path,
                                                  client_kind, tls, suite):  # fmt: skip
    if client_kind == "curl":
        client = tls_helpers.curl_client(tls_server, "/hello", tls=tls)
    else:
        client = _python_client(tls_server, *tls)
    clients.append(client)
    traffic = tmp_path / "traffic.pcapng"
    with recording(tls_server.port, traffic):
        run = start_capture([client.pid], fmt="keylog")
        if client_kind == "curl":
            tls_helpers.release_curl(client, tls_server.url("/hello"))
        else:
            tls_helpers.release(client)
        assert client.stdout.read() == tls_helpers.HELLO
        client.wait(30)
        assert run.wait(60) == 0, run.stderr
    _assert_key_log_decrypts(run, traffic, {"CLIENT_RANDOM"} if "1.2" in tls else TLS13_LABELS,
                             suite)  # fmt: skip


def _assert_key_log_decrypts(run, traffic: Path, labels: set[str], suite: str) -> None:
    """ecap's key log (``run.output``) has ``labels`` for one connection, each line
    proven, and with it tshark decrypts the independent recording ``traffic``, on
    which ``suite`` was negotiated: the request path and the response body."""
    assert run.output.stat().st_mode & 0o777 == 0o600
    lines = [
        line.split() for line in run.output.read_text().splitlines() if not line.startswith("#")
    ]
    assert {line[0] for line in lines} == labels
    assert len(lines) == len(labels)  # each secret once
    assert len({line[1] for line in lines}) == 1  # one connection, one client random
    # the suite asked for is the one negotiated (on the independent recording)
    assert _fields(traffic, "tls.handshake.type == 2", "tls.handshake.ciphersuite") == [[suite]]
    # without keys tshark sees no HTTP; with ecap's key log it sees the request and the body
    assert _fields(traffic, "http", "http.request.uri") == []
    keyed = ("-o", f"tls.keylog_file:{run.output}")
    assert ["/hello"] in _fields(traffic, "http.request", "http.request.uri", options=keyed)
    bodies = _fields(traffic, "http.response", "http.file_data", options=keyed)
    assert any(BODY in row[0] for row in bodies), bodies
    summary = _session(run.output)[-1]
    assert summary["keys"] == {
        "verified": len(lines),
        "not_verified": 0,
        "not_verified_reasons": {},
    }
    assert f"keys: {len(lines)} proven and written" in run.stderr


GO_TLS13_LABELS = TLS13_LABELS - {"EXPORTER_SECRET"}
"""Go's handshakes derive no exporter line (writeKeyLog is never given one)."""


def _wget(server: tls_helpers.TlsServer, priority: str) -> subprocess.Popen:
    """wget (GnuTLS) with a GnuTLS priority string, waiting for its URL on stdin:
    attached before it handshakes (gnutls-cli handshakes as it starts)."""
    proc = subprocess.Popen(
        ["wget", "-q", "--no-check-certificate", "--tries=1", f"--ciphers={priority}",
         "-O", "-", "-i", "-"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    wait_mapped(proc.pid, "libgnutls")
    return proc


def _go_client(binary: Path, server: tls_helpers.TlsServer, tls: str) -> subprocess.Popen:
    """The gotls test client's ``get`` mode, waiting for a line on stdin."""
    return subprocess.Popen([str(binary), "get", server.url("/hello"), tls],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def _start_module_client(module: str, tls: str, server, gotls_clients) -> subprocess.Popen:
    if module == "gnutls":
        return _wget(server, tls)
    return _go_client(gotls_clients["stripped-pie"], server, tls)


def _release_module_client(module: str, proc: subprocess.Popen, server) -> None:
    tls_helpers.release(proc, server.url("/hello") if module == "gnutls" else "go")


GNUTLS13 = "NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+CHACHA20-POLY1305"
GNUTLS12 = "NORMAL:-VERS-ALL:+VERS-TLS1.2:-CIPHER-ALL:+AES-256-GCM"
MODULE_KEYLOG_CASES = [
    ("gnutls", GNUTLS13, "0x1303", TLS13_LABELS),
    ("gnutls", GNUTLS12, "0xc02c", {"CLIENT_RANDOM"}),
    # Go chooses its TLS 1.3 suite itself (AES-GCM where the CPU has AES-NI)
    ("gotls", "1.3", None, GO_TLS13_LABELS),
    ("gotls", "1.2-chacha20", "0xcca9", {"CLIENT_RANDOM"}),
]


@pytest.mark.parametrize(("module", "tls", "suite", "labels"), MODULE_KEYLOG_CASES,
                         ids=["gnutls-tls13-chacha20", "gnutls-tls12-aes256gcm", "gotls-tls13",
                              "gotls-tls12-chacha20"])  # fmt: skip
def test_gnutls_and_go_key_logs_decrypt_an_independent_recording(
    tls_server, clients, start_capture, tmp_path, gotls_clients, module, tls, suite, labels
):
    """wget (GnuTLS, its internal key-log function found in Debian's stripped
    libgnutls) and the Go client (stripped PIE: writeKeyLog found via .gopclntab)."""
    client = _start_module_client(module, tls, tls_server, gotls_clients)
    clients.append(client)
    traffic = tmp_path / "traffic.pcapng"
    with recording(tls_server.port, traffic):
        run = start_capture([client.pid], fmt="keylog", module=module)
        _release_module_client(module, client, tls_server)
        assert client.stdout.read() == tls_helpers.HELLO
        client.wait(30)
        assert run.wait(60) == 0, run.stderr
    if suite is None:
        (suite,) = {r[0] for r in _fields(traffic, "tls.handshake.type == 2",
                                          "tls.handshake.ciphersuite")}  # fmt: skip
        assert suite in ("0x1301", "0x1302", "0x1303")
    _assert_key_log_decrypts(run, traffic, labels, suite)


@pytest.mark.parametrize("module", ["gnutls", "gotls"])
def test_gnutls_and_go_pcapng_open_decrypted(tls_server, clients, start_capture, gotls_clients,
                                             module):  # fmt: skip
    """The same program, not authorized, talks to the same server at the same time:
    none of its packets is in the file."""
    tls = GNUTLS13 if module == "gnutls" else "1.3"
    client = _start_module_client(module, tls, tls_server, gotls_clients)
    bystander = _start_module_client(module, tls, tls_server, gotls_clients)
    clients += [client, bystander]
    run = start_capture([client.pid], fmt="pcapng", module=module)
    for proc in (client, bystander):
        _release_module_client(module, proc, tls_server)
    for proc in (client, bystander):
        assert proc.stdout.read() == tls_helpers.HELLO
        proc.wait(30)
    assert run.wait(60) == 0, run.stderr
    comments, _found = _assert_opens_decrypted(run.output)
    (comment,) = comments
    assert comment.startswith(f"pid {client.pid} (") and f") {module} connection " in comment
    ports = {int(p) for r in _fields(run.output, "tcp", "tcp.srcport", "tcp.dstport") for p in r}
    assert len(ports - {tls_server.port}) == 1  # the target's connection, not the bystander's


def _blocks(path: Path) -> list:
    with open(path, "rb") as f, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # python-pcapng on its if_tsresol
        return list(FileScanner(f))


def _assert_opens_decrypted(out: Path) -> tuple[set[str], list]:
    """A 0600 pcapng that tshark alone (no key file) shows decrypted — the request
    to /hello and the response body — with the secrets before the first packet.
    Returns its packet comments and its blocks."""
    assert out.stat().st_mode & 0o777 == 0o600
    assert _fields(out, "http.request", "http.request.uri") == [["/hello"]]
    assert any(BODY in r[0] for r in _fields(out, "http.response", "http.file_data"))
    found = _blocks(out)
    kinds = [type(b) for b in found]
    assert kinds.index(DecryptionSecrets) < kinds.index(blocks.EnhancedPacket)
    return {r[0] for r in _fields(out, "frame", "frame.comment")}, found


def test_pcapng_opens_decrypted_and_holds_only_the_targets_packets(ecap_env, tls_server, clients,
                                                                   start_capture, tmp_path):  # fmt: skip
    """node (OpenSSL inside its executable) is the target; curl, talking to the same
    server on the same port at the same time, is the bystander."""
    target = tls_helpers.node_client(tls_server, "/hello")
    bystander = tls_helpers.curl_client(tls_server, "/hello")
    clients += [target, bystander]
    traffic = tmp_path / "traffic.pcapng"
    with recording(tls_server.port, traffic):
        run = start_capture([target.pid], fmt="pcapng")
        tls_helpers.release(target)
        tls_helpers.release_curl(bystander, tls_server.url("/hello"))
        assert target.stdout.read() == tls_helpers.HELLO
        assert bystander.stdout.read() == tls_helpers.HELLO
        target.wait(30)
        assert run.wait(60) == 0, run.stderr
    out = run.output
    # tshark alone (no key file) shows the decrypted request and response; the
    # secrets come first: the Decryption Secrets Block precedes every packet
    comments, found = _assert_opens_decrypted(out)
    # every packet says who: the node target, its module and connection
    assert comments == {f"pid {target.pid} (node) tls connection 1"}
    # the independent recording has two connections; the file exactly the target's
    ports = {
        int(r[0])
        for r in _fields(traffic, "tcp.flags.syn == 1 && tcp.flags.ack == 0", "tcp.srcport")
    }
    assert len(ports) == 2
    ours = {int(p) for r in _fields(out, "tcp", "tcp.srcport", "tcp.dstport") for p in r} - {
        tls_server.port
    }
    assert len(ours) == 1 and ours < ports
    (bystander_port,) = ports - ours
    (our_port,) = ours
    wire = ("tcp.seq_raw", "tcp.ack_raw", "tcp.len", "tcp.flags")
    recorded = _fields(traffic, f"tcp.port == {our_port}", *wire)
    captured = _fields(out, "tcp", *wire)
    assert captured == recorded  # same packets, same order: none missing, none twice
    assert _fields(out, f"tcp.port == {bystander_port}", "frame.number") == []
    key_log = b"".join(b.secrets_data for b in found if isinstance(b, DecryptionSecrets))
    secrets = [line.split()[2] for line in key_log.decode().splitlines()]
    assert len(secrets) == 5
    records = _session(out)
    keys = [r for r in records if r["type"] == "key"]
    assert {k["label"] for k in keys} == TLS13_LABELS and all(k["verified"] for k in keys)
    assert all("secret" not in k for k in keys)
    summary = records[-1]
    assert summary["packets"] == len(captured) and summary["packets_dropped"] == 0
    # the session report lists the connection and its key counts, and no secret
    report = tmp_path / "report.html"
    done = ecap_env.run("ecap-audit", "report", str(out) + ".session.jsonl", "--html", str(report),
                        "--json", str(tmp_path / "report.json"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    view = json.loads((tmp_path / "report.json").read_text())
    assert view["verdict_ok"], [c for c in view["checks"] if not c["ok"]]
    assert view["session"]["mode"] == "pcapng"
    assert view["totals"]["tls_keys"]["verified"] == 5
    assert view["connections"][0]["key_counts"]["verified"] == 5
    html = report.read_text() + (tmp_path / "report.json").read_text()
    assert not any(secret in html for secret in secrets)


@pytest.mark.parametrize("module", ["tls", "gnutls", "gotls"])
def test_a_wrong_secret_location_yields_no_key(ecap_env, tls_server, clients, start_capture,
                                               gotls_clients, module):  # fmt: skip
    """The UNSAFE test hook reads every secret 8 bytes off: each is caught, counted
    and reported, and not one line is written — whichever module read it."""
    if module == "tls":
        client = tls_helpers.curl_client(tls_server, "/hello")
    else:
        client = _start_module_client(module, GNUTLS13 if module == "gnutls" else "1.3",
                                      tls_server, gotls_clients)  # fmt: skip
    clients.append(client)
    run = start_capture([client.pid], fmt="keylog", module=module,
                        env={"ECAP_UNSAFE_TEST_SECRET_SHIFT": "8"})  # fmt: skip
    if module == "tls":
        tls_helpers.release_curl(client, tls_server.url("/hello"))
    else:
        _release_module_client(module, client, tls_server)
    assert client.stdout.read() == tls_helpers.HELLO
    client.wait(30)
    assert run.wait(60) == 0, run.stderr
    assert "UNSAFE: ECAP_UNSAFE_TEST_SECRET_SHIFT=8" in run.stderr
    assert [line for line in run.output.read_text().splitlines() if not line.startswith("#")] == []
    secrets = len(GO_TLS13_LABELS if module == "gotls" else TLS13_LABELS)
    records = _session(run.output)
    keys = [r for r in records if r["type"] == "key"]
    assert len(keys) == secrets and not any(k["verified"] for k in keys)
    summary = records[-1]
    assert summary["keys"]["verified"] == 0 and summary["keys"]["not_verified"] == secrets
    assert f"{secrets} NOT verified and not written" in run.stderr
    journal = [json.loads(line) for line in ecap_env.journal.read_text().splitlines()]
    (start,) = [e for e in journal if e["event"] == "capture.start"]
    assert start["mode"] == "keylog" and start["unsafe_secret_shift"] == "8"
    (stop,) = [e for e in journal if e["event"] == "capture.stop"]
    assert stop["summary"]["keys"]["not_verified"] == secrets


def test_plaintext_pcapng_is_dissected_as_http1_and_http2(tls_server, clients, start_capture):
    h1 = tls_helpers.curl_client(tls_server, "/hello")
    h2 = tls_helpers.curl_client(tls_server, "/hello", http2=True)
    clients += [h1, h2]
    run = start_capture([h1.pid, h2.pid], fmt="pcapng", extra=("--plaintext",))
    for proc in (h1, h2):
        tls_helpers.release_curl(proc, tls_server.url("/hello"))
        assert proc.stdout.read() == tls_helpers.HELLO
        proc.wait(30)
    assert run.wait(60) == 0, run.stderr
    out = run.output
    # HTTP/1.1 is recognised as it is; HTTP/2 on a port Wireshark does not tie to
    # HTTP needs "Decode As" (the README says so)
    assert _fields(out, "http.request", "http.request.uri") == [["/hello"]]
    h2_paths = _fields(out, "http2.headers.path", "http2.headers.path",
                       options=("-d", f"tcp.port=={tls_server.port},http2"))  # fmt: skip
    assert ["/hello"] in h2_paths
    bodies = _fields(out, "http2.data.data", "http2.data.data",
                     options=("-d", f"tcp.port=={tls_server.port},http2"))  # fmt: skip
    # the server ends the stream with an empty DATA frame; tshark then shows the body
    # once for the frame and once reassembled
    shown = {bytes.fromhex(part.replace(":", "")) for part in bodies[0][0].split(",") if part}
    assert shown == {tls_helpers.HELLO}, bodies
    comments = {r[0] for r in _fields(out, "frame", "frame.comment")}
    assert {c.split()[1] for c in comments} == {str(h1.pid), str(h2.pid)}
    # real addresses and ports: the server's port, the clients' own
    assert {int(r[0]) for r in _fields(out, "tcp", "tcp.dstport") if r[0]} >= {tls_server.port}
    assert all("placeholders" not in c for c in comments)


@pytest.fixture(scope="module")
def nss_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return stack_clients.nss_database(tmp_path_factory.mktemp("nssdb"))


@pytest.mark.parametrize("module", ["gnutls", "gotls", "nss"])
def test_plaintext_pcapng_of_every_other_tls_module_is_dissected(
    tls_server, clients, start_capture, gotls_clients, nss_db, tmp_path, module
):
    """No keys needed: the captured plaintext as packets is dissected as HTTP whatever
    library carried it — NSS included, whose secrets ecap cannot read. Go's client
    speaks HTTP/2 when the server offers it, the others HTTP/1.1."""
    if module == "nss":
        client = stack_clients.tstclnt(tls_server.port, nss_db, tmp_path / "nss.out")
    else:
        client = _start_module_client(module, GNUTLS13 if module == "gnutls" else "1.3",
                                      tls_server, gotls_clients)  # fmt: skip
    clients.append(client)
    run = start_capture([client.pid], fmt="pcapng", module=module, extra=("--plaintext",))
    if module == "nss":
        assert client.stdin is not None
        client.stdin.write(b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        client.stdin.flush()
        wait_for(lambda: (tmp_path / "nss.out").read_bytes().endswith(tls_helpers.HELLO),
                 what="tstclnt's answer")  # fmt: skip
        tls_helpers.stop_process(client)  # tstclnt does not exit by itself
    else:
        _release_module_client(module, client, tls_server)
        assert client.stdout.read() == tls_helpers.HELLO
        client.wait(30)
    assert run.wait(60) == 0, run.stderr
    http2 = ("-d", f"tcp.port=={tls_server.port},http2")
    paths = _fields(run.output, "http.request", "http.request.uri") or _fields(
        run.output, "http2.headers.path", "http2.headers.path", options=http2
    )
    assert ["/hello"] in paths, paths
    comments = {r[0] for r in _fields(run.output, "frame", "frame.comment")}
    assert comments and all(c.startswith(f"pid {client.pid} (") for c in comments), comments
    assert any(f") {module} connection " in c for c in comments), comments
