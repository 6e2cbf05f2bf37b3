"""Userspace halves of the capture, on synthetic and library-generated input.

No kernel here: chunk reassembly, HTTP/1 and HTTP/2 rendering (the HTTP/2 bytes
are produced by the real ``h2`` client and server state machines), address
decoding, output escaping and the JSONL schema validator.
"""

from __future__ import annotations

import gzip
import io
import json
import random
import socket
import struct
import subprocess
import zlib

import brotli
import h2.config
import h2.connection
import pytest

from ecap.capture import abi, modules
from ecap.capture.connections import Connection, _decode_proc_addr, format_sockaddr
from ecap.capture.decoders import ConnectionRenderer
from ecap.capture.decoders.bodies import looks_textual
from ecap.capture.decoders.http1 import Http1Stream
from ecap.capture.events import ConnectionEndEvent, DataEvent
from ecap.capture.records import Call, Clock, Reassembler, Record
from ecap.capture.schema import SchemaError, validate_lines, validate_record
from ecap.capture.sinks.jsonl import JsonlWriter
from ecap.capture.sinks.text import TextWriter
from ecap.errors import UsageError

ABI = abi.of("tls_rw")
LAST, TRUNCATED, FAULT = ABI.FLAG_LAST, ABI.FLAG_TRUNCATED, ABI.FLAG_FAULT
READ, WRITE = ABI.KIND_READ, ABI.KIND_WRITE
TLS = modules.get("tls")


def _rec(
    offset: int, data: bytes, total: int, flags: int, ts: int = 1000, kind: int = READ,
    tid: int = 11, size: int | None = None,
) -> Record:  # fmt: skip
    size = len(data) if size is None else size
    return Record(ts, 0xABC, 0, 10, tid, 5, total, offset, size, kind, flags, 0, 0, 0, "x", data)


def test_reassembler_joins_chunks_in_order_and_counts_truncation():
    r = Reassembler(Clock(), 8, ABI)
    assert r.add(_rec(0, b"abcd", 10, 0)) == []
    (call,) = r.add(_rec(4, b"efgh", 10, LAST | TRUNCATED))
    assert isinstance(call, Call)
    assert call.data == b"abcdefgh" and call.total == 10 and call.truncated == 2
    assert call.lost == 0 and call.direction == "read" and call.segments is None


def test_a_lost_chunk_is_a_counted_gap_never_zero_bytes():
    r = Reassembler(Clock(), 12, ABI)
    r.add(_rec(0, b"abcd", 12, 0))
    (call,) = r.add(_rec(8, b"ijkl", 12, LAST))  # the middle record was lost
    assert call.data == b"abcdijkl" and call.lost == 4
    assert call.segments == [(0, 4), (8, 4)]


def test_unreadable_memory_is_a_counted_gap_never_data():
    r = Reassembler(Clock(), 12, ABI)
    r.add(_rec(0, b"abcd", 12, 0))
    r.add(_rec(4, b"", 12, FAULT, size=4))  # the probe could not read bytes 4..8
    (call,) = r.add(_rec(8, b"ijkl", 12, LAST))
    assert call.data == b"abcdijkl" and call.unreadable == 4 and call.lost == 0
    assert call.segments == [(0, 4), (8, 4)]


def test_a_call_whose_last_record_was_lost_is_delivered_before_the_next_call():
    r = Reassembler(Clock(), 12, ABI)
    r.add(_rec(0, b"abcd", 12, 0, ts=1000, kind=WRITE))
    r.add(_rec(0, b"zz", 2, 0, ts=7, tid=99))  # another thread's call in between
    first, second = r.add(_rec(0, b"next", 4, LAST, ts=2000))  # same thread, next call
    assert (first.data, first.lost, first.direction) == (b"abcd", 8, "write")
    assert first.segments == [(0, 4)]
    assert (second.data, second.lost) == (b"next", 0)
    # ...and one that never gets a successor is delivered once it is stale
    (late,) = r.stale(now=10**9)
    assert late.tid == 99 and late.lost == 0 and late.data == b"zz"
    assert r.flush() == []


def _feed_in_pieces(stream, data: bytes, seed: int = 1):
    rnd = random.Random(seed)
    out, pos = [], 0
    while pos < len(data):
        step = rnd.randint(1, 40)
        out += list(stream.feed(data[pos : pos + step]))
        pos += step
    return out


def test_http1_chunked_and_encoded_bodies_fed_byte_by_byte():
    body = b"the quick brown fox " * 20
    chunked = (
        b"".join(
            f"{len(p):x}\r\n".encode() + p + b"\r\n"
            for p in (gzip.compress(body)[:30], gzip.compress(body)[30:])
        )
        + b"0\r\n\r\n"
    )
    stream = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Encoding: gzip\r\n\r\n"
        + chunked
        + b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: "
        + str(len(brotli.compress(body))).encode()
        + b"\r\n\r\n"
        + brotli.compress(body)
        + b"HTTP/1.1 200 OK\r\nContent-Encoding: deflate\r\nContent-Length: "
        + str(len(zlib.compress(body))).encode()
        + b"\r\n\r\n"
        + zlib.compress(body)
    )
    items = _feed_in_pieces(Http1Stream(), stream)
    assert [i.title for i in items] == ["HTTP/1 response"] * 3
    for item, enc in zip(items, ("gzip", "br", "deflate"), strict=True):
        text = "\n".join(item.lines)
        assert f"{enc} decoded" in text and "the quick brown fox the quick" in text


def test_http1_escapes_terminal_controls_in_headers_and_body():
    evil = b"GET /x HTTP/1.1\r\nX-Evil: \x1b]0;pwned\x07\r\nContent-Length: 6\r\n\r\n\x1b[2Jhi"
    (item,) = Http1Stream().feed(evil)
    text = "\n".join(item.lines)
    assert "\x1b" not in text and "\x07" not in text
    assert "\\x1b]0;pwned\\x07" in text


def _h2_exchange() -> tuple[bytes, bytes]:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    client.initiate_connection()
    client.send_headers(
        1,
        [
            (":method", "GET"),
            (":path", "/secret"),
            (":scheme", "https"),
            (":authority", "example"),
            ("authorization", "Bearer s3cr3t"),
        ],
        end_stream=True,
    )
    to_server = client.data_to_send()
    server.initiate_connection()
    server.receive_data(to_server)
    server.send_headers(1, [(":status", "200"), ("content-encoding", "gzip")])
    server.send_data(1, gzip.compress(b"top secret body"), end_stream=True)
    return to_server, server.data_to_send()


def test_http2_headers_are_hpack_decoded_per_direction():
    to_server, to_client = _h2_exchange()
    r = ConnectionRenderer()
    items = _feed_in_pieces(_Dir(r, "write"), to_server) + _feed_in_pieces(
        _Dir(r, "read"), to_client
    )
    text = "\n".join(i.title + "\n" + "\n".join(i.lines) for i in items)
    assert r.protocol == "http2"
    assert "HTTP/2 connection preface" in text
    assert ":path: /secret" in text and "authorization: Bearer s3cr3t" in text
    assert ":status: 200" in text and "top secret body" in text and "gzip decoded" in text


def test_http2_joined_midway_decodes_what_hpack_allows():
    """The capture attaches after a first exchange: no preface, HPACK tables
    half-built. The second request is recognised from its frames; what was indexed
    before the attach is named as not decodable, the rest decodes exactly."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    client.initiate_connection()
    server.initiate_connection()
    common = [(":method", "GET"), (":scheme", "https"), (":authority", "example"),
              ("x-trace", "t-1234")]  # fmt: skip
    client.send_headers(1, [*common[:1], (":path", "/first"), *common[1:]], end_stream=True)
    server.receive_data(client.data_to_send())
    server.send_headers(1, [(":status", "200"), ("content-type", "text/plain")])
    server.send_data(1, b"x" * 5000 + b"first body", end_stream=True)
    first_response = server.data_to_send()
    client.receive_data(first_response)
    client.data_to_send()

    client.send_headers(3, [*common[:1], (":path", "/second"), *common[1:]], end_stream=True)
    request = client.data_to_send()
    server.receive_data(request)
    server.send_headers(3, [(":status", "200"), ("content-type", "text/plain"),
                            ("content-encoding", "gzip")])  # fmt: skip
    server.send_data(3, gzip.compress(b"second body"), end_stream=True)
    response = server.data_to_send()

    r = ConnectionRenderer()
    items = list(r.feed("read", first_response[-1000:]))  # inside a DATA frame
    assert r.protocol == "raw" and items[0].title == "data (1000 bytes)"
    items += list(r.feed("write", request))
    assert r.protocol == "http2"
    items += list(r.feed("read", response[:12]))  # a frame split across calls
    items += list(r.feed("read", response[12:]))
    text = "\n".join(i.title + "\n" + "\n".join(i.lines) for i in items)
    assert "joined this connection midway" in text
    assert ":path: /second" in text and ":method: GET" in text
    # :authority and x-trace were indexed by the first request, before the attach
    assert "t-1234" not in text
    assert "2 header field(s) not decodable" in text
    assert ":status: 200" in text and "content-encoding: gzip" in text
    assert "1 header field(s) not decodable" in text  # content-type, indexed before
    assert "second body" in text and "gzip decoded" in text


def test_http2_frames_are_not_seen_in_text_or_random_bytes():
    from ecap.capture.decoders.http2 import looks_like_frames

    assert not looks_like_frames(b"GET / HTTP/1.1\r\n")
    assert not looks_like_frames(b"\x00\x01\x02\x03bin\xff")
    assert not looks_like_frames(b"\x00\x00\x04\x00\x00\x00\x00\x00\x00")  # DATA, stream 0
    # SETTINGS (stream 0, length multiple of 6), then the start of the next frame
    assert looks_like_frames(b"\x00\x00\x06\x04\x00\x00\x00\x00\x00" + b"\0" * 6 + b"\x00\x00")
    assert not looks_like_frames(b"\x00\x00\x05\x04\x00\x00\x00\x00\x00" + b"\0" * 5)


class _Dir:
    """Feed one direction of a ConnectionRenderer through the Http1Stream-like API."""

    def __init__(self, renderer: ConnectionRenderer, direction: str) -> None:
        self.r, self.d = renderer, direction

    def feed(self, data: bytes):
        return self.r.feed(self.d, data)


def test_unknown_protocol_is_shown_raw_or_hex():
    r = ConnectionRenderer()
    (item,) = r.feed("write", b"\x00\x01\x02\x03bin\xff")
    assert item.title == "data (8 bytes)" and item.lines[0].startswith("00000000  00 01")
    r = ConnectionRenderer(hex_mode=True)
    (item,) = r.feed("read", b"PING plain text")
    assert item.lines[0].startswith("00000000  50 49 4e 47")


def test_sockaddr_and_proc_net_decoding():
    v4 = (
        struct.pack("<H", socket.AF_INET)
        + struct.pack(">H", 8443)
        + socket.inet_aton("10.1.2.3")
        + b"\0" * 8
    )
    assert format_sockaddr(v4) == "10.1.2.3:8443"
    v6 = (
        struct.pack("<H", socket.AF_INET6)
        + struct.pack(">H", 443)
        + b"\0" * 4
        + socket.inet_pton(socket.AF_INET6, "2001:db8::1")
        + b"\0" * 4
    )
    assert format_sockaddr(v6) == "[2001:db8::1]:443"
    assert _decode_proc_addr("0100007F:20FB") == "127.0.0.1:8443"
    assert _decode_proc_addr("00000000000000000000000001000000:01BB") == "[::1]:443"


def _conn() -> Connection:
    return Connection(1, 10, 0xABC, "cu\x1brl", "tls", fd=5, peer="127.0.0.1:1")


def _call(data: bytes, **kw) -> Call:
    return Call("write", 1.0, 10, 11, 0, "cu\x1brl", 5, 0xABC, len(data), data, 0, 0, **kw)


def test_text_writer_escapes_everything_host_derived():
    out = io.BytesIO()
    w = TextWriter(out, colour=False, hex_mode=False)
    w.emit(
        DataEvent(_conn(), 1, _call(b"hello \x1b[31mred\x1b[0m, then a line of ordinary prose\n"))
    )
    w.emit(ConnectionEndEvent(_conn()))
    text = out.getvalue().decode()
    assert "\x1b" not in text and "cu\\x1brl" in text and "hello \\x1b[31mred" in text


def test_text_writer_shows_a_gap_and_stops_parsing_across_it():
    out = io.BytesIO()
    w = TextWriter(out, colour=False, hex_mode=False)
    head = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
    call = Call("write", 1.0, 10, 11, 0, "curl", 5, 0xABC, len(head) + 10, head + b"tail",
                0, 6, segments=[(0, len(head)), (len(head) + 6, 4)])  # fmt: skip
    w.emit(DataEvent(_conn(), 1, call))
    text = out.getvalue().decode()
    assert "GET /a HTTP/1.1" in text and "[6 bytes missing here" in text
    assert "6 bytes lost: ring buffer full" in text and "\\0" not in text


def test_jsonl_writer_output_validates_and_validator_rejects_bad_records():
    out = io.BytesIO()
    w = JsonlWriter(out)
    grant = {
        k: "x"
        for k in (
            "jti",
            "operator",
            "reason",
            "issuer",
            "expires_at",
            "targets",
            "modules",
            "modes",
        )
    }
    w.header(
        {
            "session_id": "s",
            "started_at": 1.0,
            "module": "tls",
            "identity": "SSL*",
            "format": "jsonl",
            "token": "t",
            "grant": grant,
            "host": {},
            "pids": [10],
            "targets": [],
            "max_call_bytes": 262144,
            "ring_bytes": 1 << 25,
        }
    )
    w.emit(DataEvent(_conn(), 1, _call(b"payload")))
    w.emit(DataEvent(_conn(), 2, _call(b"pay", segments=[(0, 2), (5, 1)], unreadable=2)))
    w.emit(ConnectionEndEvent(_conn()))
    w.summary(
        {
            "session_id": "s",
            "events": {},
            "bytes": {},
            "connections": 1,
            "lost_events": 0,
            "lost_bytes": 0,
            "truncated_bytes": 0,
            "unreadable_bytes": 0,
            "deep_calls": 0,
            "failed_calls": 0,
            "max_call_bytes": 1,
            "stop_reason": "SIGINT",
            "started_at": 1.0,
            "stopped_at": 2.0,
            "duration": 1.0,
        }
    )
    lines = out.getvalue().decode().splitlines()
    records = validate_lines(lines)
    assert [r["type"] for r in records] == ["header", "event", "event", "connection", "summary"]
    assert records[2]["segments"] == [[0, 2], [5, 1]] and records[2]["unreadable"] == 2
    bad = dict(records[1], pid="10")
    with pytest.raises(SchemaError, match=r"event\.pid"):
        validate_record(bad)
    with pytest.raises(SchemaError, match="segments"):
        validate_record(dict(records[2], segments=[[0, 9]]))
    with pytest.raises(SchemaError, match="first"):
        validate_lines(lines[1:])
    with pytest.raises(SchemaError, match="last record"):
        validate_lines(lines[:-1])
    assert json.loads(lines[1])["payload_b64"] == "cGF5bG9hZA=="


def test_resolution_names_what_it_looked_for_and_checks_overrides(tmp_path):
    proc = subprocess.Popen(["sleep", "60"])
    try:
        with pytest.raises(UsageError, match="maps no libssl"):
            TLS.resolve(proc.pid, {})
        with pytest.raises(UsageError, match="no such file"):
            TLS.resolve(proc.pid, {"libssl": str(tmp_path / "nope.so")})
        with pytest.raises(UsageError, match="is not mapped by process"):
            TLS.resolve(proc.pid, {"libssl": "/usr/lib/x86_64-linux-gnu/libssl.so.3"})
    finally:
        proc.kill()
        proc.wait()


def test_resolution_finds_libssl_and_static_node():
    py = subprocess.Popen(
        ["python3", "-c", "import ssl, sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    node = subprocess.Popen(["node", "-e", "process.stdin.resume()"], stdin=subprocess.PIPE)
    try:
        from tests.tls_helpers import wait_for_tls_mapped

        wait_for_tls_mapped(py.pid)
        lib = TLS.resolve(py.pid, {})
        assert lib.kind == "library" and lib.display_path.endswith("libssl.so.3")
        assert str(lib.path).startswith(f"/proc/{py.pid}/root/")
        assert lib.version and lib.version.startswith("OpenSSL 3")
        assert {"SSL_write", "SSL_read", "SSL_write_ex", "SSL_read_ex"} <= set(lib.functions)
        # every data function gets an entry and a return probe, each with its cookie
        writes = [p for p in lib.probes if p.function == "SSL_write_ex"]
        assert sorted(p.retprobe for p in writes) == [False, True]
        assert {p.cookie for p in writes} == {WRITE | ABI.COOKIE_LEN_IN_ARG4}
        over = TLS.resolve(py.pid, {"libssl": lib.display_path})
        assert over.kind == "override" and over.functions == lib.functions
        exe = TLS.resolve(node.pid, {})
        assert exe.kind == "executable" and exe.display_path == "/usr/bin/node"
        from ecap.elf import open_elf

        sym = open_elf(exe.path).find_functions(("SSL_write",))["SSL_write"]
        assert exe.functions["SSL_write"] == sym.file_offset != sym.vaddr
    finally:
        for p in (py, node):
            p.kill()
            p.wait()


def _raw(kind: int, tid: int, conn: int, offset: int, data: bytes, total: int, flags: int,
         source: int = 0, ts: int = 1000) -> bytes:  # fmt: skip
    """A ring record as the kernel writes it (header laid out by the ABI)."""
    fields = (ts, conn, 0, 10, tid, 5, total, offset, len(data), kind, flags, 0, source)
    return struct.pack(ABI.header_format, *fields).ljust(ABI.data_offset, b"\0") + data


class _Events:
    def __init__(self) -> None:
        self.events: list = []

    def emit(self, event) -> None:
        self.events.append(event)


def test_a_session_of_several_modules_keeps_each_ring_apart_and_names_each_module():
    """``capture auto``: modules sharing an object are told apart by the record's
    source; a module on another object has its own ring, whose calls must not cut
    into the first ring's call in progress on the same thread."""
    from ecap.capture.pipeline import Pipeline

    out = _Events()
    pipeline = Pipeline(ABI, Clock(0.0), 1 << 20, "auto", out,
                        sources=[["gnutls", "tls"], ["other"]])  # fmt: skip
    body = bytes(range(20))
    pipeline.feed([_raw(WRITE, 7, 0x1, 0, body[:10], 20, 0, source=1)], side=0)
    pipeline.feed([_raw(READ, 7, 0x2, 0, b"from the other ring", 19, LAST)], side=1)
    pipeline.feed([_raw(WRITE, 7, 0x1, 10, body[10:], 20, LAST, source=1),
                   _raw(READ, 8, 0x3, 0, b"gnutls", 6, LAST, source=0)], side=0)  # fmt: skip
    got = {e.conn.conn: e for e in out.events}
    assert got[0x1].call.data == body and got[0x1].call.lost == 0  # one call, not cut
    assert {conn: e.conn.module for conn, e in got.items()} == {
        0x1: "tls",
        0x2: "other",
        0x3: "gnutls",
    }


def test_what_looks_textual_is_the_same_for_ascii_and_utf8():
    """ASCII is judged by a byte table, other UTF-8 character by character: the
    verdicts agree, and a character cut by the 4 KiB sample is not "binary"."""
    assert looks_textual(b"GET / HTTP/1.1\r\nHost: a\r\n\tfolded\r\n\r\n")
    assert looks_textual(b"x" * 90 + b"\x00" * 10) and not looks_textual(b"x" * 89 + b"\x00" * 11)
    assert looks_textual("é".encode() * 90 + b"\x00" * 10)
    assert not looks_textual("é".encode() * 89 + b"\x00" * 11)
    assert not looks_textual(b"x" * 50 + b"\x7f" * 50)
    assert looks_textual(b"x" * 4095 + "é".encode() * 10)  # the 4096th byte starts "é"
    assert not looks_textual(b"\x89PNG\r\n\x1a\n\xff\xfe")
