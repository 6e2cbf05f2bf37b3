"""``ecap-audit capture tls`` against real clients, a real server and the real kernel.

The server writes down what it received and sent on each connection; a capture is
correct when the target's write stream equals what the server received and its
read stream equals what the server sent — byte for byte.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ecap.capture.schema import validate_lines
from tests import tls_helpers
from tests.capture.conftest import assert_calls_match, read_stream

pytestmark = [pytest.mark.bpf, pytest.mark.slow]


def _events(records: list[dict]) -> list[dict]:
    return [r for r in records if r["type"] == "event"]


def _assert_exact(records: list[dict], server: tls_helpers.TlsServer, pid: int) -> None:
    received, sent = server.transcript()
    assert read_stream(records, "write", pid) == received
    assert read_stream(records, "read", pid) == sent
    events = _events(records)
    assert events, "no events captured"
    assert {e["pid"] for e in events} == {pid}
    assert {e["peer"] for e in events} == {f"127.0.0.1:{server.port}"}
    assert all(e["truncated"] == 0 and e["lost"] == 0 for e in events)
    # one TLS connection, seen as one from its first byte to its end
    (conn,) = [r for r in records if r["type"] == "connection"]
    assert records[-1]["connections"] == 1 and {e["connection_id"] for e in events} == {
        conn["connection_id"]
    }
    assert conn["bytes_written"] == len(received) and conn["bytes_read"] == len(sent)


def _finish(run, client) -> list[dict]:
    client.wait(30)
    assert run.wait(60) == 0, run.stderr
    # the session file parses and follows the session schema line by line
    records = validate_lines(run.output.read_text().splitlines())
    assert records[-1]["stop_reason"] == "all targets exited"
    assert records[0]["grant"]["operator"] == "test-operator"
    assert oct(os.stat(run.output).st_mode & 0o777) == "0o600"
    return records


def test_curl_request_and_response_byte_exact(tls_server, clients, start_capture):
    client = tls_helpers.curl_client(tls_server, "/hello")
    clients.append(client)
    run = start_capture([client.pid])
    tls_helpers.release_curl(client, tls_server.url("/hello"))
    assert client.stdout.read() == tls_helpers.HELLO
    records = _finish(run, client)
    _assert_exact(records, tls_server, client.pid)
    header = records[0]
    assert header["targets"][0]["hooked"].endswith("libssl.so.3")
    assert header["targets"][0]["version"].startswith("OpenSSL 3")
    assert {e["comm"] for e in _events(records)} == {"curl"}
    assert any(r["type"] == "handshake" for r in records)
    # the session record renders back into the decoded exchange
    replay = subprocess.run(
        [str(Path(sys.executable).parent / "ecap-audit"), "replay", str(run.output)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert replay.returncode == 0, replay.stderr
    assert "GET /hello HTTP/1.1" in replay.stdout and "X-Ecap-Test: curl" in replay.stdout
    assert tls_helpers.HELLO.decode().strip() in replay.stdout


def test_python_client_uses_ex_functions_from_a_second_thread(tls_server, clients, start_capture):
    client = tls_helpers.python_client(tls_server, "/hello")
    clients.append(client)
    run = start_capture([client.pid])
    tls_helpers.release(client)
    assert client.stdout.read() == tls_helpers.HELLO
    records = _finish(run, client)
    _assert_exact(records, tls_server, client.pid)
    # The request ran in a worker thread: every event's tid differs from the pid.
    assert all(e["tid"] != client.pid for e in _events(records))


def test_node_static_openssl_in_the_executable(tls_server, clients, start_capture):
    client = tls_helpers.node_client(tls_server, "/hello")
    clients.append(client)
    run = start_capture([client.pid])
    tls_helpers.release(client)
    assert client.stdout.read() == tls_helpers.HELLO
    records = _finish(run, client)
    _assert_exact(records, tls_server, client.pid)
    target = records[0]["targets"][0]
    assert target["kind"] == "executable" and target["hooked"] == "/usr/bin/node"


def test_one_mib_response_is_captured_whole(tls_server, clients, start_capture):
    n = 1 << 20
    client = tls_helpers.python_client(tls_server, f"/bytes?n={n}&seed=7")
    clients.append(client)
    run = start_capture([client.pid])
    tls_helpers.release(client)
    body = client.stdout.read()
    assert len(body) == n
    records = _finish(run, client)
    _, sent = tls_server.transcript()
    captured = read_stream(records, "read", client.pid)
    assert hashlib.sha256(captured).hexdigest() == hashlib.sha256(sent).hexdigest()
    assert captured.endswith(tls_helpers.deterministic_bytes(n, 7))
    assert records[-1]["lost_events"] == 0


def test_large_write_is_chunked_to_the_limit_and_the_rest_counted(
    tls_server, clients, start_capture, tmp_path
):
    size = 300 * 1024  # one SSL_write_ex larger than the 256 KiB per-call limit
    body = tls_helpers.deterministic_bytes(size, 3)
    body_file = tmp_path / "body.bin"
    body_file.write_bytes(body)
    client = tls_helpers.python_client(tls_server, "/echo", method="POST", body_file=body_file)
    clients.append(client)
    run = start_capture([client.pid])
    tls_helpers.release(client)
    assert client.stdout.read() == body
    records = _finish(run, client)
    big = [e for e in _events(records) if e["total"] == size]
    assert len(big) == 1, [(e["direction"], e["total"]) for e in _events(records)]
    limit = records[0]["max_call_bytes"]
    assert limit == 256 * 1024
    assert big[0]["len"] == limit and big[0]["truncated"] == size - limit
    import base64

    assert base64.b64decode(big[0]["payload_b64"]) == body[:limit]
    assert records[-1]["truncated_bytes"] == size - limit
    # the echoed response arrives in many reads, all whole
    assert read_stream(records, "read", client.pid) == tls_server.transcript()[1]


def test_other_process_doing_tls_at_the_same_time_yields_nothing(
    tls_server, clients, start_capture
):
    target = tls_helpers.python_client(tls_server, "/hello?who=target")
    other = tls_helpers.python_client(tls_server, "/hello?who=other")
    clients += [target, other]
    run = start_capture([target.pid])
    tls_helpers.release(other)
    tls_helpers.release(target)
    assert other.stdout.read() == tls_helpers.HELLO
    records = _finish(run, target)
    events = _events(records)
    assert events and {e["pid"] for e in events} == {target.pid}
    everything = read_stream(records, "write") + read_stream(records, "read")
    assert b"who=target" in everything and b"who=other" not in everything


def test_http2_request_rendered_with_hpack_decoded_headers(tls_server, clients, start_capture):
    client = tls_helpers.curl_client(tls_server, "/hello", http2=True)
    clients.append(client)
    run = start_capture([client.pid], fmt="text")
    tls_helpers.release_curl(client, tls_server.url("/hello"))
    assert client.stdout.read() == tls_helpers.HELLO
    client.wait(30)
    assert run.wait(60) == 0, run.stderr
    text = run.output.read_text()
    assert "connections: 1" in text
    assert "HTTP/2 connection preface" in text
    assert ":method: GET" in text and ":path: /hello" in text
    assert "user-agent: curl/" in text and "x-ecap-test: curl" in text
    assert ":status: 200" in text
    assert tls_helpers.HELLO.decode().strip() in text
    assert oct(os.stat(run.output).st_mode & 0o777) == "0o600"


def test_http1_text_rendering_decodes_gzip_and_chunked(tls_server, clients, start_capture):
    client = tls_helpers.python_client(tls_server, "/gzip")
    clients.append(client)
    run = start_capture([client.pid], fmt="text")
    tls_helpers.release(client)
    client.stdout.read()
    client.wait(30)
    assert run.wait(60) == 0, run.stderr
    text = run.output.read_text()
    assert "GET /gzip HTTP/1.1" in text and "X-Ecap-Test: python" in text
    assert "gzip decoded" in text and "compressed body: ecap ecap" in text


def test_sigint_stops_with_summary_and_journal_entry(tls_server, clients, start_capture, ecap_env):
    client = tls_helpers.python_client(tls_server, "/hello")  # waits: never exits by itself
    clients.append(client)
    run = start_capture([client.pid])
    run.proc.send_signal(signal.SIGINT)
    assert run.wait(30) == 0, run.stderr
    assert "capture stopped: SIGINT" in run.stderr
    assert "lost: 0 events" in run.stderr
    records = run.records()
    assert records[-1]["type"] == "summary" and records[-1]["stop_reason"] == "SIGINT"
    from ecap.journal import Journal

    # (the journal's own notices, e.g. journal.audit_unavailable, are not ours)
    entries = [e for e in Journal(ecap_env.journal).read() if not e["event"].startswith("journal.")]
    events = [e["event"] for e in entries]
    assert events[-3:] == ["gate.granted", "capture.start", "capture.stop"]
    start, stop = entries[-2], entries[-1]
    assert start["session_id"] == stop["session_id"] == records[0]["session_id"]
    assert start["pids"] == [client.pid] and start["prog_ids"]
    assert stop["reason"] == "SIGINT"
    assert Journal(ecap_env.journal).verify().ok
    # the session unregistered itself
    assert not list((ecap_env.run_dir / "sessions").glob("*.json"))


def test_process_in_its_own_mount_namespace_is_hooked_in_its_own_libssl(
    tls_server, clients, start_capture, tmp_path
):
    """eCapture's "wrong libssl inside containers": here the process sees, at the
    host's libssl path, a *different file* (a copy bind-mounted in a private mount
    namespace). Probes on the host's file would never fire; resolving through
    /proc/PID/root hooks the file the process really runs."""
    host_lib = "/usr/lib/x86_64-linux-gnu/libssl.so.3"
    copy = tmp_path / "libssl.so.3"
    shutil.copyfile(host_lib, copy)
    script = (
        f"mount --bind {copy} {host_lib} && exec {sys.executable} -c "
        f"{shlex.quote(tls_helpers.PYTHON_CLIENT)} GET {tls_server.port} /hello"
    )
    client = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    clients.append(client)
    tls_helpers.wait_for_tls_mapped(client.pid)
    seen = os.stat(f"/proc/{client.pid}/root{host_lib}")
    assert seen.st_ino != os.stat(host_lib).st_ino  # really another file
    run = start_capture([client.pid])
    tls_helpers.release(client)
    assert client.stdout.read() == tls_helpers.HELLO
    records = _finish(run, client)
    _assert_exact(records, tls_server, client.pid)
    assert records[0]["targets"][0]["hooked"] == host_lib


def test_ring_overflow_is_counted_to_the_byte_never_silent(tls_server, clients, start_capture):
    """The capture is frozen (SIGSTOP) while its target reads 4 MiB through a 1 MiB
    ring: records are lost for sure. Every lost byte must be accounted for."""
    n = 4 << 20
    client = tls_helpers.python_client(tls_server, f"/bytes?n={n}&seed=5")
    clients.append(client)
    run = start_capture([client.pid], extra=("--ring-size", "1"))
    run.proc.send_signal(signal.SIGSTOP)
    try:
        tls_helpers.release(client)
        assert len(client.stdout.read()) == n
        client.wait(30)
    finally:
        run.proc.send_signal(signal.SIGCONT)
    assert run.wait(60) == 0, run.stderr
    records = validate_lines(run.output.read_text().splitlines())
    summary = records[-1]
    assert summary["lost_events"] > 0 and summary["lost_bytes"] > 0
    assert "lost so far: ring buffer full" in run.stderr
    assert f"lost: {summary['lost_events']} events" in run.stderr
    received, sent = tls_server.transcript()
    assert read_stream(records, "write", client.pid) == received  # before the overflow
    # each read's surviving chunks sit where they belong; what is missing is counted
    totals = assert_calls_match(records, client.pid, "read", sent)
    assert summary["lost_bytes"] > 0
    assert totals["lost"] + totals["lost_calls"] == summary["lost_bytes"]
    assert totals["captured"] + summary["lost_bytes"] == len(sent)
