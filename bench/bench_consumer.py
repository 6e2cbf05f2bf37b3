"""CPU per captured event in user space (``make bench``; not part of the tests).

The capture's consumer — decode a ring record, put the call together, track its
connection, write it — measured on records built with the real record layout (the
installed ``tls_rw`` loader's), so no kernel and no other process competes: the
number is CPU time of this process per event, steady whatever the machine does.

  jsonl   the live jsonl path: Pipeline.feed → JsonlWriter, to /dev/null
  text    the same with the text writer (HTTP/1 recognised, then raw)
  raw     the raw path: RawWriter.records + the engine's per-record peek (RawCounts)

Targets (issue 11): jsonl ≤ 4 µs per 1 KiB event, raw ≤ 1 µs per event.
"""

from __future__ import annotations

import io
import os
import struct
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ecap.capture import abi as abi_mod  # noqa: E402
from ecap.capture.engine import RawCounts  # noqa: E402
from ecap.capture.pipeline import Pipeline  # noqa: E402
from ecap.capture.records import Clock  # noqa: E402
from ecap.capture.sinks.interface import SinkOptions  # noqa: E402
from ecap.capture.sinks.jsonl import JsonlWriter  # noqa: E402
from ecap.capture.sinks.raw import RawWriter  # noqa: E402
from ecap.capture.sinks.text import TextWriter  # noqa: E402

N = 200_000


def records(abi: abi_mod.Abi, size: int, count: int) -> list[bytes]:
    """A thread announcement, a socket, then ``count`` one-record calls of ``size``."""
    header = struct.Struct(abi.header_format)
    pad = abi.data_offset - header.size

    def rec(kind: int, data: bytes, *, total: int = 0, off: int = 0, fd: int = 7) -> bytes:
        fields = (10**9, 0x5555AAAA, off, 4242, 4243, fd, total, 0, len(data), kind,
                  abi.FLAG_LAST, 0)  # fmt: skip
        return header.pack(*fields) + bytes(pad) + data

    thread = abi.struct("ecap_threadinfo").pack(0, 0, b"bench".ljust(16, b"\0"))
    sock = abi.struct("ecap_sockinfo").pack(2, 40000, 443, 0, bytes([127, 0, 0, 1]) + bytes(12),
                                            bytes([127, 0, 0, 1]) + bytes(12))  # fmt: skip
    payload = (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"x" * size)[:size]
    out = [rec(abi.KIND_THREAD, thread), rec(abi.KIND_SOCKET, sock)]
    out += [rec(abi.KIND_WRITE, payload, total=size, off=i * size) for i in range(count)]
    return out


def cpu_per_event(run, count: int) -> float:
    start = time.process_time()
    run()
    return (time.process_time() - start) / count * 1e6


def main() -> None:
    abi = abi_mod.of("tls_rw")
    sink = open(os.devnull, "wb")  # noqa: SIM115
    out = io.BufferedWriter(io.FileIO(sink.fileno(), "wb", closefd=False), 1 << 20)
    print(f"user-space CPU per event ({N} one-record calls, this process only):")
    for size in (1024, 16 * 1024):
        batch = records(abi, size, N)
        results = {}
        for name in ("jsonl", "text"):
            writer = JsonlWriter(out) if name == "jsonl" else TextWriter(out, colour=False,
                                                                         hex_mode=False)  # fmt: skip
            pipeline = Pipeline(abi, Clock(), 1 << 20, "tls", writer)
            chunks = [batch[i : i + 4096] for i in range(0, len(batch), 4096)]
            results[name] = cpu_per_event(lambda p=pipeline, c=chunks: [p.feed(b) for b in c], N)
        raw = RawWriter(out, SinkOptions(abi=abi))
        counts = RawCounts(abi)
        chunks = [batch[i : i + 4096] for i in range(0, len(batch), 4096)]

        def raw_run(chunks=chunks, raw=raw, counts=counts) -> None:
            for b in chunks:
                raw.records(b)
                counts.count(b)

        results["raw"] = cpu_per_event(raw_run, N)
        out.flush()
        print(f"  {size // 1024:>2} KiB:  jsonl {results['jsonl']:.2f} µs   "
              f"text {results['text']:.2f} µs   raw {results['raw']:.2f} µs")  # fmt: skip
    print("targets: jsonl ≤ 4 µs per 1 KiB event; raw ≤ 1 µs per event")


if __name__ == "__main__":
    main()
