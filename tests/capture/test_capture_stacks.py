"""``capture gnutls``, ``capture nss`` and ``capture auto`` against real programs.

The server (``tests/tls_helpers.py``) writes down what it received and sent on
each connection; a capture is right when the target's write stream is what the
server received and its read stream what the server sent, byte for byte. With
NSS, the client's own file and pipe I/O goes through the same NSPR calls: those
bytes must never appear.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ecap.authz import keys, request, token
from ecap.capture import modules
from ecap.capture.schema import validate_lines
from ecap.errors import UsageError
from tests import tls_helpers
from tests.capture import stack_clients
from tests.capture.audit_helpers import authorized_finding, stop_capture, wait_for
from tests.capture.conftest import read_stream

pytestmark = [pytest.mark.bpf, pytest.mark.slow]

HTTP_REQUEST = "GET /hello?who={who} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def nss_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return stack_clients.nss_database(tmp_path_factory.mktemp("nssdb"))


@pytest.fixture(scope="module")
def nss_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("nss_client") / "nss_client"
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "nss"], capture_output=True,
                           text=True, check=True).stdout.split()  # fmt: skip
    subprocess.run(["gcc", "-O1", "-o", str(out), str(HERE / "programs" / "nss_client.c"),
                    *flags], check=True)  # fmt: skip
    return out


@pytest.fixture
def selfserv(nss_db: Path) -> Iterator[stack_clients.SelfServ]:
    server = stack_clients.selfserv(nss_db)
    try:
        yield server
    finally:
        server.stop()


def _finish(run) -> list[dict]:
    assert run.wait(60) == 0, run.stderr
    records = validate_lines(run.output.read_text().splitlines())
    assert records[-1]["lost_events"] == 0
    return records


def _of(records: list[dict], kind: str) -> list[dict]:
    return [r for r in records if r["type"] == kind]


def _client_port(connection: dict) -> int:
    return int(connection["local"].rsplit(":", 1)[1])


def _assert_connection_exact(records: list[dict], server, conn: dict) -> None:
    """The events of one connection are exactly what the server saw on it."""
    events = [e for e in _of(records, "event") if e["connection_id"] == conn["connection_id"]]
    received, sent = server.transcript(_client_port(conn))
    assert read_stream(events, "write") == received
    assert read_stream(events, "read") == sent
    assert conn["peer"] == f"127.0.0.1:{server.port}" and conn["fd_source"] == "kernel"
    assert all(e["truncated"] == 0 and e["lost"] == 0 for e in events)


def _written(output: Path) -> bool:
    """A live session file already holds a write event."""
    lines = output.read_text().splitlines() if output.exists() else []
    return any(r.get("type") == "event" and r.get("direction") == "write"
               for r in map(json.loads, lines[1:]))  # fmt: skip


def _target(records: list[dict], module: str) -> dict:
    (target,) = [t for t in records[0]["targets"] if t["module"] == module]
    return target


# ------------------------------------------------------------------------- GnuTLS


def test_wget_on_gnutls_one_mib_byte_exact_and_a_bystander_yields_nothing(
    tls_server, clients, start_capture, tmp_path
):
    n = 1 << 20
    target = stack_clients.wget(tmp_path / "target.body")
    other = stack_clients.wget(tmp_path / "other.body")
    clients += [target, other]
    run = start_capture([target.pid], module="gnutls")
    finding = authorized_finding(run.proc.pid)
    hooked = {h["function"] for h in finding["hooked"]}
    assert {"gnutls_record_send2", "gnutls_record_recv"} <= hooked
    assert {h["class"] for h in finding["hooked"] if h["function"].startswith("gnutls_record")} == {
        "tls"
    }
    stack_clients.release_wget(other, tls_server.url("/hello?who=other"))
    stack_clients.release_wget(target, tls_server.url(f"/bytes?n={n}&seed=11"))
    assert target.wait(60) == 0 and other.wait(60) == 0
    assert (tmp_path / "target.body").read_bytes() == tls_helpers.deterministic_bytes(n, 11)
    records = _finish(run)
    assert records[-1]["stop_reason"] == "all targets exited"

    (conn,) = _of(records, "connection")
    assert conn["module"] == "gnutls" and conn["handshake_seen"]
    _assert_connection_exact(records, tls_server, conn)
    assert read_stream(records, "read").endswith(tls_helpers.deterministic_bytes(n, 11))
    # the bystander ran the same library at the same time: none of it is here
    assert {e["pid"] for e in _of(records, "event")} == {target.pid}
    assert b"who=other" not in read_stream(records, "write")

    target_info = _target(records, "gnutls")
    assert target_info["hooked"].startswith("/usr/lib/x86_64-linux-gnu/libgnutls.so.30")
    assert target_info["version"].startswith("GnuTLS 3.")
    # gnutls_record_send jumps to gnutls_record_send2: only the latter is probed
    assert "gnutls_record_send2" in target_info["functions"]
    assert "gnutls_record_send" not in target_info["functions"]


def test_gnutls_cli_session_opened_before_the_capture(tls_server, clients, start_capture):
    client = stack_clients.gnutls_cli(tls_server.port)  # handshake done, nothing sent yet
    clients.append(client)
    run = start_capture([client.pid], module="gnutls")
    assert client.stdin is not None and client.stdout is not None
    client.stdin.write(HTTP_REQUEST.format(who="cli").encode())
    client.stdin.flush()
    seen = b""
    while tls_helpers.HELLO not in seen:
        line = client.stdout.readline()
        assert line, seen
        seen += line
    client.stdin.close()
    client.wait(30)
    records = _finish(run)
    (conn,) = _of(records, "connection")
    # connected before the capture: socket and peer come from the kernel's socket
    assert not conn["handshake_seen"] and not _of(records, "handshake")
    _assert_connection_exact(records, tls_server, conn)


# ---------------------------------------------------------------------------- NSS


def test_tstclnt_only_its_tls_descriptor_not_its_pipe_and_file(
    tls_server, nss_db, clients, start_capture, tmp_path
):
    """tstclnt reads the request from a pipe (PR_Read) and writes the answer to a file
    (PR_Write): the same functions as its TLS I/O, and none of it may be captured."""
    target = stack_clients.tstclnt(tls_server.port, nss_db, tmp_path / "target.out")
    other = stack_clients.tstclnt(tls_server.port, nss_db, tmp_path / "other.out")
    clients += [target, other]
    run = start_capture([target.pid], module="nss")
    finding = authorized_finding(run.proc.pid)
    assert {"PR_Write", "PR_Read", "PR_Writev"} <= {h["function"] for h in finding["hooked"]}
    for proc, who in ((other, "other"), (target, "target")):
        assert proc.stdin is not None
        proc.stdin.write(HTTP_REQUEST.format(who=who).encode())
        proc.stdin.flush()
    for name in ("target.out", "other.out"):
        wait_for(lambda n=name: (tmp_path / n).read_bytes().endswith(tls_helpers.HELLO),
                 what=f"the answer in {name}")  # fmt: skip
    tls_helpers.stop_process(target)  # tstclnt does not exit by itself
    records = _finish(run)

    (conn,) = _of(records, "connection")
    assert conn["module"] == "nss" and conn["pid"] == target.pid
    _assert_connection_exact(records, tls_server, conn)
    _, sent = tls_server.transcript(_client_port(conn))
    assert (tmp_path / "target.out").read_bytes() == sent  # written by PR_Write, not captured
    assert {e["pid"] for e in _of(records, "event")} == {target.pid}
    header = records[0]
    assert header["identity"] == "PRFileDesc*"
    info = _target(records, "nss")
    assert info["hooked"].endswith("/libnspr4.so") and info["version"].startswith("NSS 3.")


def test_selfserv_as_a_server_both_directions_with_pr_writev(selfserv, start_capture):
    run = start_capture([selfserv.proc.pid], module="nss")
    request = b"GET /from-a-client HTTP/1.0\r\nX-Ecap-Test: selfserv\r\n\r\n"
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    answer = b""
    with socket.create_connection(("127.0.0.1", selfserv.port)) as raw:
        local = raw.getsockname()
        with ctx.wrap_socket(raw) as tls:
            tls.sendall(request)
            while chunk := tls.recv(65536):
                answer += chunk
    assert answer.startswith(b"HTTP/1.0 200 OK") and request in answer
    wait_for(lambda: _written(run.output), what="the answer captured")
    stop_capture(run)
    records = validate_lines(run.output.read_text().splitlines())
    # the server received the request and sent the answer (one PR_Writev of vectors)
    assert read_stream(records, "read") == request
    assert read_stream(records, "write") == answer
    (conn,) = _of(records, "connection")
    assert conn["peer"] in (f"{local[0]}:{local[1]}", f"[::ffff:{local[0]}]:{local[1]}")


def test_nss_client_large_writev_and_its_own_file_through_nspr(
    tls_server, nss_client, clients, start_capture, tmp_path
):
    size = 100_000  # vectors of 33 333 and 66 667 bytes: pieces across 16 KiB chunks
    out = tmp_path / "answer"
    client = subprocess.Popen([str(nss_client), str(tls_server.port), str(size), str(out)],
                              stdin=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    clients.append(client)
    stack_clients.wait_mapped(client.pid, "libssl3.so")
    run = start_capture([client.pid], module="nss")
    tls_helpers.release(client)
    assert client.wait(30) == 0, client.stderr.read() if client.stderr else ""
    records = _finish(run)
    (conn,) = _of(records, "connection")
    _assert_connection_exact(records, tls_server, conn)
    body = bytes((i * 7 + 3) & 0xFF for i in range(size))
    (writev,) = [e for e in _of(records, "event") if e["direction"] == "write"]
    assert writev["total"] > size and "segments" not in writev
    assert read_stream(records, "write").endswith(body)
    _, sent = tls_server.transcript(_client_port(conn))
    assert out.read_bytes() == sent and sent.endswith(body)  # the file: PR_Write, not captured


def test_no_module_takes_another_librarys_libssl(tls_server, nss_db, clients, tmp_path):
    """NSS's libssl3.so is not OpenSSL's libssl.so.3, either way round; auto picks
    each process's own stack."""
    nss_proc = stack_clients.tstclnt(tls_server.port, nss_db, tmp_path / "out")
    openssl_proc = subprocess.Popen(
        ["python3", "-c", "import ssl, sys; sys.stdin.readline()"], stdin=subprocess.PIPE
    )
    gnutls_proc = stack_clients.wget(tmp_path / "body")
    clients += [nss_proc, openssl_proc, gnutls_proc]
    stack_clients.wait_mapped(openssl_proc.pid, "libssl.so.3")
    tls, nss, gnutls = modules.get("tls"), modules.get("nss"), modules.get("gnutls")
    with pytest.raises(UsageError, match="maps no libssl"):
        tls.resolve(nss_proc.pid, {})
    libssl3 = next(p for p in Path(f"/proc/{nss_proc.pid}/maps").read_text().split()
                   if p.endswith("/libssl3.so"))  # fmt: skip
    with pytest.raises(UsageError, match="does not define SSL_write"):
        tls.resolve(nss_proc.pid, {"libssl": libssl3})
    with pytest.raises(UsageError, match="maps no NSPR"):
        nss.resolve(openssl_proc.pid, {})
    assert nss.resolve(nss_proc.pid, {}).map_entries[0].key.rstrip(b"\0") == b"libssl3.so"
    auto = modules.get("auto")
    assert auto.select is not None
    assert auto.select(nss_proc.pid) == ("nss",)
    assert auto.select(openssl_proc.pid) == ("tls",)
    assert auto.select(gnutls_proc.pid) == ("gnutls",)
    assert not gnutls.applies(openssl_proc.pid)


# --------------------------------------------------------------------------- auto


def test_auto_captures_both_stacks_of_one_process(
    tls_server, clients, start_capture, ecap_env, tmp_path
):
    target = stack_clients.two_stacks_client(tls_server.port)
    bystander = stack_clients.two_stacks_client(tls_server.port)
    clients += [target, bystander]
    run = start_capture([target.pid], module="auto", token_modules=("auto", "gnutls", "tls"))
    finding = authorized_finding(run.proc.pid)
    assert {"SSL_write", "gnutls_record_send2"} <= {h["function"] for h in finding["hooked"]}
    assert finding["authorization"]["modules"] == ["gnutls", "tls"]
    tls_helpers.release(bystander)
    tls_helpers.release(target)
    for proc in (target, bystander):
        assert proc.stdout is not None
        assert proc.stdout.read() == tls_helpers.HELLO * 2
        assert proc.wait(30) == 0
    records = _finish(run)

    header = records[0]
    assert header["module"] == "auto" and header["modules"] == ["gnutls", "tls"]
    hooked = {t["module"]: t["hooked"] for t in header["targets"] if t["pid"] == target.pid}
    assert hooked["tls"].endswith("/libssl.so.3")
    assert hooked["gnutls"].startswith("/usr/lib/x86_64-linux-gnu/libgnutls.so.30")
    connections = {c["module"]: c for c in _of(records, "connection")}
    assert set(connections) == {"tls", "gnutls"} and len(_of(records, "connection")) == 2
    for conn in connections.values():
        _assert_connection_exact(records, tls_server, conn)
    assert b"stack=openssl" in read_stream(
        [e for e in _of(records, "event") if e["connection_id"] == connections["tls"]["connection_id"]],
        "write",
    )  # fmt: skip
    assert {e["pid"] for e in _of(records, "event")} == {target.pid}  # not the bystander

    start = [e for e in map(json.loads, ecap_env.journal.read_text().splitlines())
             if e["event"] == "capture.start"]  # fmt: skip
    assert start[-1]["module"] == "auto" and start[-1]["modules"] == ["gnutls", "tls"]
    text = ecap_env.run("ecap-audit", "replay", str(run.output))
    assert text.returncode == 0, text.stderr
    for module, wanted in (("tls", "stack=openssl"), ("gnutls", "stack=gnutls")):
        (request_line,) = [line for line in text.stdout.splitlines() if f"] pid {target.pid}" in line
                           and f"[{module}]" in line and "HTTP/1 request" in line]  # fmt: skip
        after = text.stdout.split(request_line, 1)[1]
        assert after.lstrip().startswith(f"GET /hello?{wanted}")
    html = tmp_path / "session.html"
    report = ecap_env.run("ecap-audit", "report", str(run.output), "--html", str(html))
    assert report.returncode == 0, report.stderr
    page = html.read_text()
    assert 'Verdict: <span class="ok">inside its authorization' in page
    for module, path in hooked.items():
        assert f'<td>{module}</td><td class="mono">{path}</td>' in page


def test_auto_refused_when_the_token_lacks_a_module_it_selects(
    tls_server, clients, ecap_env, tmp_path, sleeper
):
    client = stack_clients.two_stacks_client(tls_server.port)
    clients.append(client)
    # `request --module auto` names what auto would hook, for the authorizer to see
    asked = ecap_env.run("ecap-audit", "request", "--pid", str(client.pid), "--module", "auto",
                         "--reason", "INC-13")  # fmt: skip
    assert asked.returncode == 0, asked.stderr
    assert json.loads(asked.stdout)["modules"] == ["auto", "gnutls", "tls"]
    here = ecap_env.run("ecap-audit", "authorize", "--this-host", "--pid", str(client.pid),
                        "--module", "auto", "--key", str(ecap_env.key_path), "--operator", "op",
                        "--reason", "INC-13", "--out", str(tmp_path / "here.jwt"))  # fmt: skip
    assert here.returncode == 0, here.stderr
    shown = ecap_env.run("ecap-audit", "verify", "--token", str(tmp_path / "here.jwt"), "--json")
    assert json.loads(shown.stdout)["modules"] == ["auto", "gnutls", "tls"]

    # the authorizer strikes gnutls from what the request asked
    narrowed = ecap_env.write_token(
        ecap_env.authorize([client.pid], modules=("auto",), grant_modules=("auto", "tls"))
    )
    output = tmp_path / "never.jsonl"
    refused = ecap_env.run("ecap-audit", "capture", "auto", "--pid", str(client.pid), "--token",
                           str(narrowed), "--format", "jsonl", "--output", str(output),
                           "--duration", "10")  # fmt: skip
    assert refused.returncode == 3, refused.stderr
    (line,) = refused.stderr.strip().splitlines()
    assert "module 'gnutls' is not allowed by the token" in line
    assert not output.exists()
    journal = [json.loads(e) for e in ecap_env.journal.read_text().splitlines()]
    gate = [e for e in journal if not e["event"].startswith("journal.")]
    assert [e["event"] for e in gate] == ["gate.refused"]  # nothing granted, nothing started
    assert gate[0]["module"] == "auto" and gate[0]["modules"] == ["gnutls", "tls"]

    # a process with no TLS library at all: nothing to request, nothing to capture —
    # exit 2, and the gate never runs
    asked = ecap_env.run("ecap-audit", "request", "--pid", str(sleeper.pid), "--module", "auto",
                         "--reason", "INC-13")  # fmt: skip
    assert asked.returncode == 2 and "uses no TLS library that ecap captures" in asked.stderr
    doc = request.build([sleeper.pid], modules=["tls"], modes=["jsonl"], reason="old request")
    doc["modules"] = ["auto"]  # as if the process had dropped its library since
    stale = token.issue(doc, keys.load_private(ecap_env.key_path), operator="op", reason="r",
                        ttl_seconds=600, issuer="pytest")  # fmt: skip
    none = ecap_env.run("ecap-audit", "capture", "auto", "--pid", str(sleeper.pid), "--token",
                        str(ecap_env.write_token(stale, "stale.jwt")), "--duration", "10")  # fmt: skip
    assert none.returncode == 2 and "uses no TLS library that ecap captures" in none.stderr
    assert len(ecap_env.journal.read_text().splitlines()) == len(journal)


def test_modules_on_two_kernel_objects_load_as_two_sides(tls_server, clients, tmp_path):
    """The engine's composite kernel side: modules sharing an object share it (told
    apart by the cookie's upper half), another object gets its own ring."""
    import os

    from ecap.capture.kernel import KernelSides

    tls, gnutls, bash = (modules.get(n) for n in ("tls", "gnutls", "bash"))
    wget = stack_clients.wget(tmp_path / "body")
    clients.append(wget)
    kernel = KernelSides([tls, gnutls, bash], ring_mb=1)
    try:
        assert kernel.sources == [["tls", "gnutls"], ["bash"]]
        assert [s.module.bpf_object for s in kernel.sides] == ["tls_rw", "shell"]
        kernel.authorize_pids([os.getpid()])
        assert all(side.is_authorized(os.getpid()) for side in kernel.sides)
        kernel.revoke_pid(os.getpid())
        assert not any(side.is_authorized(os.getpid()) for side in kernel.sides)
        target = gnutls.resolve(wget.pid, {})
        assert kernel.attach(gnutls, target) == len(target.probes)
        shift = kernel.abi.COOKIE_SOURCE_SHIFT
        assert {p.cookie >> shift for _pid, p in kernel.sides[0].probes} == {1}  # gnutls: 2nd
        kernel.wait(1)  # polls both rings
        assert len(kernel.prog_ids()) == sum(len(s.prog_ids()) for s in kernel.sides)
    finally:
        kernel.close()
