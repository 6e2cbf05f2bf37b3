"""The consumer's hot path, on records laid out exactly as the kernel writes them.

No kernel: the ring reader runs over ordinary memory laid out as the kernel maps a
ring buffer, and the pipeline is fed records packed with the real record layout
(the built ``tls_rw`` loader's). What is checked is what the fast paths skip:
that a hand-formatted event line is the JSON ``json.dumps`` would write, that a
connection whose socket changed or that ended is not served from the memo of
settled connections, and that the reader publishes its position only past
records it took.
"""

from __future__ import annotations

import io
import json
import mmap
import os
import struct

from ecap.capture import abi as abi_mod
from ecap.capture.pipeline import Pipeline
from ecap.capture.records import Clock
from ecap.capture.schema import validate_record
from ecap.capture.sinks.interface import SinkOptions
from ecap.capture.sinks.jsonl import JsonlWriter
from ecap.capture.sinks.raw import FRAME, RECORD_TAG, RawWriter
from ecap.ebpf.ringbuf import RingBuffer

ABI = abi_mod.of("tls_rw")
HEADER = struct.Struct(ABI.header_format)
PAD = ABI.data_offset - HEADER.size
PID, TID, CONN = 4242, 4243, 0x5555AAAA


def _rec(kind: int, data: bytes = b"", *, fd: int = 7, total: int = 0, offset: int = 0,
         stream_off: int = 0, flags: int = ABI.FLAG_LAST, ts_ns: int = 10**9, conn: int = CONN,
         size: int | None = None, source: int = 0) -> bytes:  # fmt: skip
    size = len(data) if size is None else size
    fields = (ts_ns, conn, stream_off, PID, TID, fd, total, offset, size, kind, flags, 0, source)
    return HEADER.pack(*fields) + bytes(PAD) + data


def _thread(comm: bytes = b"client") -> bytes:
    return _rec(
        ABI.KIND_THREAD, ABI.struct("ecap_threadinfo").pack(1000, 1000, comm.ljust(16, b"\0"))
    )


def _socket(fd: int, lport: int, rport: int) -> bytes:
    info = ABI.struct("ecap_sockinfo").pack(2, lport, rport, 0, bytes([127, 0, 0, 1]) + bytes(12),
                                            bytes([10, 0, 0, 2]) + bytes(12))  # fmt: skip
    return _rec(ABI.KIND_SOCKET, info, fd=fd)


def _write(data: bytes, *, fd: int = 7, stream_off: int = 0, ts_ns: int = 10**9) -> bytes:
    return _rec(ABI.KIND_WRITE, data, fd=fd, total=len(data), stream_off=stream_off, ts_ns=ts_ns)


def _events(records: list[bytes]) -> list[dict]:
    out = io.BytesIO()
    pipeline = Pipeline(ABI, Clock(offset=1_700_000_000.0), 1 << 20, "tls", JsonlWriter(out))
    pipeline.feed(records)
    records = []
    for line in out.getvalue().decode().splitlines():
        record = json.loads(line)
        # hand-formatted, yet exactly the compact JSON of its own content, and valid
        assert line == json.dumps(record, ensure_ascii=False, separators=(",", ":"))
        if validate_record(record) == "event":
            records.append(record)
    return records


def test_event_lines_of_whole_and_pieced_calls_carry_every_field():
    big = bytes(range(256)) * 80  # 20 KiB: two records, the general path
    chunk = ABI.CHUNK
    events = _events([
        _thread(b'cl"ient\x1b'),
        _socket(7, 40000, 443),
        _write(b"GET / HTTP/1.1\r\n\r\n", ts_ns=2_500_000_001),
        _rec(ABI.KIND_READ, big[:chunk], total=len(big), flags=0, stream_off=0),
        _rec(ABI.KIND_READ, big[chunk:], total=len(big), offset=chunk, stream_off=0),
        _rec(ABI.KIND_WRITE, b"x" * 16, total=100, flags=ABI.FLAG_LAST | ABI.FLAG_TRUNCATED,
             stream_off=18),
    ])  # fmt: skip
    whole, pieced, cut = events
    assert whole["payload_b64"] == "R0VUIC8gSFRUUC8xLjENCg0K"
    assert whole["ts"] == "2023-11-14T22:13:22.500000+00:00"
    assert (whole["comm"], whole["uid"], whole["fd"]) == ('cl"ient\x1b', 1000, 7)
    assert (whole["local"], whole["peer"], whole["conn"]) == ("127.0.0.1:40000", "10.0.0.2:443",
                                                              "0x5555aaaa")  # fmt: skip
    assert (whole["len"], whole["total"], whole["truncated"], whole["lost"]) == (18, 18, 0, 0)
    assert pieced["direction"] == "read" and pieced["len"] == pieced["total"] == len(big)
    assert json.loads(json.dumps(pieced))["payload_b64"].startswith("AAECAwQF")
    assert (cut["len"], cut["total"], cut["lost"], cut["stream_offset"]) == (16, 100, 84, 18)
    assert [e["message_id"] for e in events] == [1, 2, 3]


def test_a_connection_whose_socket_changed_or_ended_is_not_taken_from_the_memo():
    events = _events([
        _thread(),
        _socket(7, 40000, 443),
        _write(b"one"),
        _write(b"two", stream_off=3),  # served from the memo
        _socket(9, 40001, 8443),  # the same SSL* moved to another socket
        _write(b"three", fd=9, stream_off=6),
        _write(b"four", fd=7, stream_off=11),  # a call whose syscall named the old socket
        _rec(ABI.KIND_CONN_END, fd=9),
        _socket(9, 40001, 8443),  # the address is reused by a new connection
        _write(b"five", fd=9),
    ])  # fmt: skip
    assert [(e["fd"], e["peer"]) for e in events] == [
        (7, "10.0.0.2:443"), (7, "10.0.0.2:443"), (9, "10.0.0.2:8443"), (7, "10.0.0.2:8443"),
        (9, "10.0.0.2:8443"),
    ]  # fmt: skip
    assert [e["connection_id"] for e in events] == [1, 1, 1, 1, 2]


def test_whole_calls_name_the_module_of_their_record_source():
    """Two modules sharing one kernel object (capture auto): the fast path names each
    connection after the module whose probe made the record."""
    out = io.BytesIO()
    pipeline = Pipeline(ABI, Clock(offset=1_700_000_000.0), 1 << 20, "tls", JsonlWriter(out),
                        sources=[["tls", "gnutls"]])  # fmt: skip
    pipeline.feed([
        _thread(),
        _rec(ABI.KIND_WRITE, b"openssl", total=7),
        _rec(ABI.KIND_WRITE, b"gnutls", total=6, conn=CONN + 8, source=1),
    ])  # fmt: skip
    events = [json.loads(line) for line in out.getvalue().decode().splitlines()]
    assert [(e["conn"], e["module"]) for e in events] == [
        (f"0x{CONN:x}", "tls"), (f"0x{CONN + 8:x}", "gnutls"),
    ]  # fmt: skip


def test_a_secret_names_its_connection_after_its_source_module():
    """The handshake's secrets come before any data: the connection they open is
    already the module's whose probe reported them (capture auto, one object)."""

    class Collect:
        def __init__(self) -> None:
            self.events: list = []

        def emit(self, event) -> None:
            self.events.append(event)

    secret = ABI.struct("ecap_secret").pack(bytes(32), bytes(64), 32, 1,
                                            b"CLIENT_RANDOM".ljust(40, b"\0"))  # fmt: skip
    out = Collect()
    pipeline = Pipeline(ABI, Clock(offset=1_700_000_000.0), 1 << 20, "tls", out,
                        sources=[["tls", "gnutls"]])  # fmt: skip
    pipeline.feed([
        _thread(),
        _rec(ABI.KIND_SECRET, secret, conn=CONN + 8, source=1),
        _rec(ABI.KIND_WRITE, b"gnutls", total=6, conn=CONN + 8, source=1),
    ])  # fmt: skip
    assert [(e.kind, e.conn.module) for e in out.events] == [("secret", "gnutls"),
                                                              ("data", "gnutls")]  # fmt: skip


class _KernelLikeRing:
    """Memory laid out as the kernel maps a ring buffer: the consumer page, then
    the producer page and the data pages twice in a row."""

    def __init__(self, size: int = 4 * mmap.PAGESIZE) -> None:
        self.size, self.page = size, mmap.PAGESIZE
        self.cons = mmap.mmap(-1, self.page)
        self.prod = mmap.mmap(-1, self.page + 2 * size)
        self.reader = RingBuffer.over(self.cons, self.prod, size)

    def put(self, pos: int, length: int, body: bytes, flags: int = 0) -> int:
        """A record at ring position ``pos``; returns the position after it."""
        blob = struct.pack("<II", length | flags, 0) + body
        for i, byte in enumerate(blob):
            at = (pos + i) % self.size
            self.prod[self.page + at] = self.prod[self.page + self.size + at] = byte
        return pos + ((8 + length + 7) & ~7)

    def publish(self, pos: int) -> None:
        struct.pack_into("<Q", self.prod, 0, pos)

    def consumer(self) -> int:
        return struct.unpack_from("<Q", self.cons, 0)[0]


def test_the_ring_reader_takes_records_across_the_wrap_and_stops_at_a_busy_one():
    ring = _KernelLikeRing()
    start = ring.size - 64  # the third record wraps around the end of the data pages
    struct.pack_into("<Q", ring.cons, 0, start)
    pos = ring.put(start, 5, b"first")
    pos = ring.put(pos, 9, b"discarded", flags=1 << 30)
    pos = ring.put(pos, 100, bytes(range(100)))
    busy_at = pos
    pos = ring.put(pos, 4, b"busy", flags=1 << 31)
    ring.publish(pos)
    assert ring.reader.drain() == [b"first", bytes(range(100))]
    assert ring.consumer() == busy_at  # not past the record still being written
    ring.put(busy_at, 4, b"done")
    assert ring.reader.drain() == [b"done"] and ring.consumer() == pos
    assert ring.reader.drain() == []


def test_the_ring_reader_stops_a_batch_at_its_byte_budget():
    ring = _KernelLikeRing()
    pos = 0
    for i in range(10):
        pos = ring.put(pos, 100, bytes([i]) * 100)
    ring.publish(pos)
    first = ring.reader.drain(max_bytes=250)
    assert [r[0] for r in first] == [0, 1, 2] and ring.consumer() == 3 * 112
    assert [r[0] for r in ring.reader.drain()] == list(range(3, 10)) and ring.consumer() == pos


def test_peeked_records_are_views_given_back_only_at_commit():
    ring = _KernelLikeRing()
    pos = ring.put(0, 5, b"hello")
    pos = ring.put(pos, 5, b"world")
    ring.publish(pos)
    views = ring.reader.peek()
    assert [bytes(v) for v in views] == [b"hello", b"world"] and ring.consumer() == 0
    ring.reader.commit()
    assert ring.consumer() == pos and ring.reader.peek() == []
    del views


def test_raw_frames_of_ring_views_reach_the_file_whole_across_short_writes(tmp_path, monkeypatch):
    ring = _KernelLikeRing()
    pos = 0
    for i in range(40):
        pos = ring.put(pos, 50, bytes([i]) * 50)
    ring.publish(pos)
    real_writev = os.writev

    def short_writev(fd: int, parts: list) -> int:  # at most 7 bytes per call
        return real_writev(fd, [b"".join(bytes(p) for p in parts[:2])[:7]])

    monkeypatch.setattr(os, "writev", short_writev)
    path = tmp_path / "raw"
    with path.open("wb") as out:
        writer = RawWriter(out, SinkOptions(abi=ABI))
        out.write(b"header\n")
        views = ring.reader.peek()
        writer.records(views)
        del views
        ring.reader.commit()
    frames = path.read_bytes().removeprefix(b"header\n")
    expected = b"".join(FRAME.pack(RECORD_TAG, 50) + bytes([i]) * 50 for i in range(40))
    assert frames == expected


def test_a_batch_of_only_discarded_records_is_given_back():
    """A discarded record (a probe that could not read what it reserved) yields no
    view, but committing the empty batch still moves the consumer past it — else the
    ring would stay readable and the capture's wait would spin."""
    ring = _KernelLikeRing()
    end = ring.put(0, 16, bytes(16), flags=1 << 30)  # BPF_RINGBUF_DISCARD_BIT
    ring.publish(end)
    assert ring.reader.peek() == []
    ring.reader.commit()
    assert ring.consumer() == end
