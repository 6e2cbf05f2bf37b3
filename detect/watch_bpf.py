"""The watcher's kernel event source: one raw tracepoint program and its ring buffer.

``bpf/watch_events.bpf.c`` runs at every syscall exit and reports, through a
BPF ring buffer, the bpf(2) commands that attach, detach or pin, every
``perf_event_open`` and every ``PERF_EVENT_IOC_SET_BPF``. This module loads it
through the same light-skeleton loader as the scan's iterators (bpf(2) only: no
compiler, libbpf or tracefs at run time), attaches it with
BPF_RAW_TRACEPOINT_OPEN and reads the ring from an mmap, the way libbpf's
``ring_buffer__poll`` does. Loader, attach and ring reading are kept together
here so that they can move onto ecap's shared BPF loading layer in one piece.

Everything is held by file descriptors of this process: if the watcher is
killed (even with SIGKILL) the kernel detaches and frees it all.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ecap.detect import bpfsys
from ecap.ebpf import attach, loader
from ecap.ebpf.ringbuf import RingBuffer

LOADER = "watch_events"
PROGRAM = "watch_sys_exit"
TRACEPOINT = "sys_exit"

BPF_COMMANDS = {
    6: "BPF_OBJ_PIN",
    8: "BPF_PROG_ATTACH",
    9: "BPF_PROG_DETACH",
    17: "BPF_RAW_TRACEPOINT_OPEN",
    28: "BPF_LINK_CREATE",
    29: "BPF_LINK_UPDATE",
    34: "BPF_LINK_DETACH",
}


class EventSourceUnavailable(RuntimeError):
    """The event programs cannot run here; the message says why in one line."""


@dataclass(frozen=True)
class KernelEvent:
    """One syscall the event program reported."""

    pid: int
    tid: int
    kind: str
    """``bpf``, ``perf_event_open`` or ``perf_set_bpf``."""
    command: str
    """The bpf(2) command name for ``bpf`` events, else the syscall's own name."""
    ret: int
    comm: str
    monotonic_ns: int
    """When the syscall returned (CLOCK_MONOTONIC, as ``time.monotonic_ns()``)."""


class _Layout:
    """``struct ecap_watch_event`` and its kinds, from bpf/watch_abi.h via the loader."""

    def __init__(self, img: loader.Image) -> None:
        self.record = struct.Struct(img.struct_format("ecap_watch_event"))
        c = img.constants
        self.kinds = {
            c["ECAP_WATCH_KIND_BPF"]: "bpf",
            c["ECAP_WATCH_KIND_PERF_OPEN"]: "perf_event_open",
            c["ECAP_WATCH_KIND_SET_BPF"]: "perf_set_bpf",
        }
        self.bpf_kind = c["ECAP_WATCH_KIND_BPF"]

    def decode(self, raw: bytes) -> KernelEvent:
        ktime, tgid, tid, kind, cmd, ret, comm = self.record.unpack_from(raw)
        name = self.kinds.get(kind, f"kind{kind}")
        command = BPF_COMMANDS.get(cmd, f"bpf cmd {cmd}") if kind == self.bpf_kind else name
        return KernelEvent(tgid, tid, name, command, ret, bpfsys.cstr(comm), ktime)


def _image() -> loader.Image:
    try:
        return loader.image(LOADER)
    except loader.LoadError as exc:
        raise EventSourceUnavailable(exc.one_line()) from None


class EventSource:
    """The loaded, attached event program; a context manager that detaches it.

    Everything goes through ecap's one BPF layer (:mod:`ecap.ebpf`): the loader, the
    raw tracepoint attachment and the mmap'd ring buffer.
    """

    def __init__(self, *, ignore_pid: int | None = None) -> None:
        import os

        img = _image()
        self._layout = _Layout(img)
        try:
            self._obj = loader.load(img)
        except loader.LoadError as exc:
            raise EventSourceUnavailable(exc.one_line()) from None
        self._link: attach.Attachment | None = None
        self._ring: RingBuffer | None = None
        try:
            config = os.getpid() if ignore_pid is None else ignore_pid
            self._obj.map("config").update(struct.pack("<I", 0), struct.pack("<I", config))
            events = self._obj.map("events")
            self._ring = RingBuffer(events.fd, events.max_entries)
            self._link = attach.raw_tracepoint(self._obj.prog_fd(PROGRAM), TRACEPOINT)
        except (OSError, ValueError, attach.AttachError) as exc:
            self.close()
            raise EventSourceUnavailable(f"could not attach the event program: {exc}") from None

    def counters(self) -> dict[str, int]:
        """Events the kernel sent, and dropped because the ring was full."""
        counters = self._obj.map("counters")
        return {
            name: struct.unpack("<Q", counters.lookup(struct.pack("<I", i)) or bytes(8))[0]
            for i, name in enumerate(("sent", "dropped"))
        }

    def fileno(self) -> int:
        """Readable (poll/select) when records are waiting in the ring."""
        return self._obj.map("events").fd

    def read(self) -> list[KernelEvent]:
        """Every record waiting in the ring, decoded."""
        if self._ring is None:
            return []
        size = self._layout.record.size
        return [self._layout.decode(raw) for raw in self._ring.drain() if len(raw) >= size]

    def program_ids(self) -> list[int]:
        """Kernel ids of this source's programs (what the watcher registers as its own)."""
        return self._obj.prog_ids()

    def close(self) -> None:
        if self._link is not None:
            attach.detach_all([self._link])
            self._link = None
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        self._obj.close()

    def __enter__(self) -> EventSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def program_tags(name: str = LOADER) -> dict[str, str]:
    """Program name → kernel tag of the programs ``name`` loads, loaded and freed again.

    The tag is the kernel's hash of a program's instructions (map references
    zeroed), so it identifies *code*, whatever a program is called. A scan uses
    it to recognise the watcher's programs by what they are.
    """
    try:
        obj = loader.load(loader.image(name))
    except loader.LoadError as exc:
        raise EventSourceUnavailable(exc.one_line()) from None
    with obj:
        return obj.prog_tags()
