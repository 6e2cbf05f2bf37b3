"""``ecap-audit capture gotls`` against our own Go HTTPS client, built four ways.

The client (``programs/gotls_client.go``) is built plain, stripped
(``-ldflags=-s -w``), PIE and stripped PIE (``tests/go_programs.py``, cached). The
test server writes down what it received and sent on each connection; a capture
is right when, per connection, the target's write stream is what the server
received and its read stream what the server sent — byte for byte — with the
server's address as the peer. Go's client speaks HTTP/2 when offered; the second
connection is forced to HTTP/1.1.
"""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path

import pytest

from ecap.capture.schema import validate_lines
from tests import tls_helpers
from tests.go_programs import VARIANTS

pytestmark = [pytest.mark.bpf, pytest.mark.slow]

BODY = 65536
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _start(binary: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """The client, waiting for a line on stdin."""
    return subprocess.Popen(
        [str(binary), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )


def _run(binary: Path, *args: str) -> bytes:
    """What the client prints with nobody watching."""
    done = subprocess.run([str(binary), *args], input=b"go\n", capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _finish(run, *procs: subprocess.Popen) -> list[dict]:
    for proc in procs:
        proc.wait(60)
    assert run.wait(60) == 0, run.stderr
    records = validate_lines(run.output.read_text().splitlines())
    assert records[-1]["stop_reason"] == "all targets exited"
    assert oct(os.stat(run.output).st_mode & 0o777) == "0o600"
    return records


def _by_connection(records: list[dict]) -> dict[int, dict[str, bytes]]:
    """connection id → {write, read, local, peer} from the events, in message order."""
    out: dict[int, dict] = {}
    for event in sorted((r for r in records if r["type"] == "event"),
                        key=lambda r: r["message_id"]):  # fmt: skip
        assert event["lost"] == 0 and event["truncated"] == 0 and "unreadable" not in event
        conn = out.setdefault(event["connection_id"], {"write": b"", "read": b"",
                                                       "ends": set()})  # fmt: skip
        # no call missing in between: each starts where the previous one ended
        assert event["stream_offset"] == len(conn[event["direction"]])
        conn[event["direction"]] += base64.b64decode(event["payload_b64"])
        conn["ends"].add((event["local"], event["peer"]))
    return out


def _assert_each_connection_exact(conns: dict[int, dict], server: tls_helpers.TlsServer,
                                  pid_port: set[int]) -> None:  # fmt: skip
    for conn in conns.values():
        ((local, peer),) = conn["ends"]
        assert peer == f"127.0.0.1:{server.port}"
        port = int(local.rsplit(":", 1)[1])
        received, sent = server.transcript(port)
        assert conn["write"] == received, "the request bytes differ from what the server got"
        assert conn["read"] == sent, "the response bytes differ from what the server sent"
        pid_port.add(port)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_http2_and_http1_requests_captured_byte_exact(
    variant, gotls_clients, tls_server, start_capture, clients, ecap_env
):
    binary = gotls_clients[variant]
    args = ("requests", f"https://127.0.0.1:{tls_server.port}", str(BODY))
    expected = _run(binary, *args)
    assert expected.count(b" 200 ") == 4 and b"same false" not in expected
    target = _start(binary, *args)
    bystander = _start(binary, *args)  # the same program at the same time, not authorized
    clients += [target, bystander]
    run = start_capture([target.pid], module="gotls")
    for proc in (target, bystander):
        tls_helpers.release(proc)
    # the target runs normally under capture: the same output as with nobody watching
    assert target.stdout.read() == expected
    assert bystander.stdout.read() == expected
    records = _finish(run, target, bystander)

    header = records[0]
    (hooked,) = header["targets"]
    assert header["module"] == "gotls" and header["identity"] == "*tls.Conn"
    assert hooked["kind"] == "executable" and hooked["version"].startswith("go1.")
    assert {"crypto/tls.(*Conn).Read", "crypto/tls.(*Conn).Write"} <= set(hooked["functions"])
    events = [r for r in records if r["type"] == "event"]
    assert {e["pid"] for e in events} == {target.pid}, "the bystander must yield nothing"
    assert {e["comm"] for e in events} <= {f"gotls-{variant}"[:15]}

    conns = _by_connection(records)
    assert len(conns) == 2
    ports: set[int] = set()
    _assert_each_connection_exact(conns, tls_server, ports)
    first_writes = sorted(c["write"][: len(H2_PREFACE)] for c in conns.values())
    assert first_writes == sorted([H2_PREFACE, b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1"[:24]])
    assert records[-1]["connections"] == 2
    assert sum(1 for r in records if r["type"] == "handshake") == 2

    # rendered: HTTP/2 with its pseudo-headers, HTTP/1.1 with its request line
    replay = ecap_env.run("ecap-audit", "replay", str(run.output))
    assert replay.returncode == 0, replay.stderr
    text = replay.stdout
    assert "HTTP/2 connection preface" in text
    assert ":method: POST" in text and ":path: /echo" in text and ":path: /hello" in text
    assert "POST /echo HTTP/1.1" in text and "GET /hello HTTP/1.1" in text
    assert tls_helpers.HELLO.decode().strip() in text
