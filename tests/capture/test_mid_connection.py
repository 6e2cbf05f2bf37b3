"""Attaching to connections that already exist (the incident responder's case).

The client opens its connection and finishes a first exchange before the capture
starts; only the second request is captured. It must render as the protocol it
is — HTTP/2 without having seen the preface, HTTP/1.1 keep-alive — with its
path and body, and the peer must be known although the connection was opened
before the attach.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from ecap.capture.schema import validate_lines
from tests import tls_helpers
from tests.conftest import ecap_cmd

pytestmark = [pytest.mark.bpf, pytest.mark.slow]

H2_CLIENT = r"""
import socket, ssl, sys
import h2.config, h2.connection, h2.events
ctx = ssl.create_default_context()
ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
ctx.set_alpn_protocols(["h2"])
sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1]))))
assert sock.selected_alpn_protocol() == "h2"
conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
conn.initiate_connection()
sock.sendall(conn.data_to_send())

def fetch(stream_id, path):
    conn.send_headers(stream_id, [(":method", "GET"), (":path", path), (":scheme", "https"),
                                  (":authority", "ecap.test"), ("x-ecap-test", "h2-midway")],
                      end_stream=True)
    sock.sendall(conn.data_to_send())
    body = b""
    while True:
        for event in conn.receive_data(sock.recv(65536)):
            if isinstance(event, h2.events.DataReceived):
                body += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id:
                sock.sendall(conn.data_to_send())
                return body
        sock.sendall(conn.data_to_send())

fetch(1, "/hello")
print("first done", flush=True)
sys.stdin.readline()
sys.stdout.write(fetch(3, "/gzip?second").hex() + "\n")
"""

H1_CLIENT = r"""
import http.client, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
conn = http.client.HTTPSConnection("127.0.0.1", int(sys.argv[1]), context=ctx)
conn.request("GET", "/hello?first")
conn.getresponse().read()
print("first done", flush=True)
sys.stdin.readline()
conn.request("GET", "/hello?second", headers={"X-Ecap-Test": "keep-alive"})
sys.stdout.write(conn.getresponse().read().decode() + "\n")
"""


def _capture_second_request(script, tls_server, clients, start_capture) -> str:
    client = tls_helpers._waiting([sys.executable, "-c", script, str(tls_server.port)])
    clients.append(client)
    assert client.stdout.readline() == b"first done\n"
    run = start_capture([client.pid])
    tls_helpers.release(client)
    assert client.stdout.readline()
    client.wait(30)
    assert run.wait(60) == 0, run.stderr
    records = validate_lines(run.output.read_text().splitlines())
    text = subprocess.run([ecap_cmd("ecap-audit"), "replay", str(run.output)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert text.returncode == 0, text.stderr
    peers = {r["peer"] for r in records if r["type"] == "event"}
    assert peers == {f"127.0.0.1:{tls_server.port}"}, "the peer of a pre-existing connection"
    return text.stdout


def test_http2_joined_midway_renders_the_next_request(tls_server, clients, start_capture):
    text = _capture_second_request(H2_CLIENT, tls_server, clients, start_capture)
    assert "joined this connection midway" in text
    assert ":path: /gzip?second" in text and ":method: GET" in text
    # the first request indexed :authority and x-ecap-test before the attach
    assert "h2-midway" not in text and "header field(s) not decodable" in text
    assert "content-encoding: gzip" in text and "gzip decoded" in text
    assert tls_helpers.GZIP_TEXT.decode().splitlines()[0] in text
    assert "/hello" not in text  # the first exchange happened before the attach


def test_http1_keep_alive_joined_midway_renders_the_next_request(
    tls_server, clients, start_capture
):
    text = _capture_second_request(H1_CLIENT, tls_server, clients, start_capture)
    assert "GET /hello?second HTTP/1.1" in text and "X-Ecap-Test: keep-alive" in text
    assert tls_helpers.HELLO.decode().strip() in text
    assert "/hello?first" not in text
