"""``--format keylog``: the TLS secrets, NSS key-log format, proven lines only.

One line per secret (``CLIENT_RANDOM`` for TLS 1.2; the four traffic secrets and
``EXPORTER_SECRET`` for TLS 1.3), written and flushed as each is proven against
its connection's packets (:mod:`ecap.capture.wire.verifier`). A secret that
was not proven is never written: it is counted in the summary, the session
record beside the file and the journal. Wireshark and tshark read the file as
is (``-o tls.keylog_file:FILE``). The first line is a ``#`` comment naming the
session; key-log readers skip it.
"""

from __future__ import annotations

from typing import IO, Any

from ecap.capture.events import KEY, Event, KeyEvent
from ecap.capture.sinks.interface import Sink, SinkOptions


def key_line(event: KeyEvent) -> bytes:
    """The NSS key-log line of a proven secret."""
    return f"{event.label} {event.client_random.hex()} {event.secret.hex()}\n".encode("ascii")


class KeylogWriter:
    def __init__(self, out: IO[bytes], _options: SinkOptions) -> None:
        self._out = out

    def header(self, info: dict[str, Any]) -> None:
        pids = ",".join(str(p) for p in info.get("pids", []))
        self._out.write(
            f"# ecap-audit key log: session {info['session_id']}, module {info['module']}, "
            f"pids {pids}\n".encode("ascii", "replace")
        )
        self._out.flush()

    def emit(self, event: Event) -> None:
        if event.kind == KEY and event.verified:  # type: ignore[union-attr]
            self._out.write(key_line(event))  # type: ignore[arg-type]
            self._out.flush()

    def summary(self, summary: dict[str, Any]) -> None:
        """Nothing: the key log holds keys only (the summary is on stderr, in the
        session record and in the journal)."""

    def flush(self) -> None:
        self._out.flush()


SINK = Sink(
    name="keylog",
    summary="the TLS secrets as an NSS key log (for Wireshark/tshark), each proven against "
    "its connection's packets first",
    token_mode="keylog",
    consumes=frozenset({KEY}),
    open=KeylogWriter,
    explicit=True,
    record_beside=True,
)
