"""Load the TLS capture program into the kernel and attach it, scoped to PIDs.

Everything kernel-facing lives here: building ``bpf/tls_capture.c`` with bcc,
filling the map of authorized PIDs, attaching uprobes *by file offset with the
target PID*, reading program ids for the session registry, reading the per-CPU
loss counters, and detaching. Probes are created through the perf-event uprobe PMU
(fd-based): when this process dies, even by SIGKILL, the kernel closes the fds and
nothing stays attached.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes as ct
import functools
import os
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ecap import procfs
from ecap.capture.targets import HookTarget
from ecap.errors import EnvironmentNotReady, UsageError

CHUNK = 16 * 1024
"""Payload bytes per ring-buffer record (a per-CPU map value must stay under 32 KiB)."""
DEFAULT_MAX_CALL_BYTES = 256 * 1024
"""Documented per-call limit: bytes of one SSL_write/SSL_read beyond it are counted
as truncated. Must be a multiple of :data:`CHUNK`."""
MAX_MAX_CALL_BYTES = 1024 * 1024
DEFAULT_RING_MB = 32
WAKEUP_EVERY = 32
ATTACH_ATTEMPTS = 4

KIND_WRITE, KIND_READ, KIND_HANDSHAKE, KIND_SSL_END, KIND_CONNECT, KIND_CLOSE = range(1, 7)
FLAG_LAST, FLAG_TRUNCATED = 1, 2
STAT_NAMES = ("lost_events", "lost_bytes", "truncated_bytes", "failed_calls", "events")

# (function, entry program, return program or None)
_HOOKS: tuple[tuple[str, str, str | None], ...] = (
    ("SSL_write", "enter_ssl_write", "return_ssl_write"),
    ("SSL_read", "enter_ssl_read", "return_ssl_read"),
    ("SSL_write_ex", "enter_ssl_write_ex", "return_ssl_write"),
    ("SSL_read_ex", "enter_ssl_read_ex", "return_ssl_read"),
    ("SSL_do_handshake", "enter_ssl_do_handshake", "return_ssl_do_handshake"),
    ("SSL_set_fd", "enter_ssl_set_fd", None),
    ("SSL_shutdown", "enter_ssl_end", None),
    ("SSL_free", "enter_ssl_end", None),
)


@functools.cache
def _attach_uprobe_fn() -> Callable[..., int]:
    """libbcc's ``bpf_attach_uprobe`` with its real seven-argument prototype.

    Debian's python3-bpfcc 0.26 declares only six arguments, so the C function
    reads ``ref_ctr_offset`` (the USDT semaphore offset) from whatever is on the
    stack. The kernel then refuses (EINVAL, dmesg "ref_ctr_offset mismatch") any
    later probe on the same instruction whose garbage differs. We load our own
    handle to the library (its prototype is separate from bcc's) and pass 0.
    """
    lib = ct.CDLL("libbcc.so.0", use_errno=True)
    fn = lib.bpf_attach_uprobe
    fn.restype = ct.c_int
    fn.argtypes = [ct.c_int, ct.c_int, ct.c_char_p, ct.c_char_p, ct.c_uint64, ct.c_int, ct.c_uint32]
    return fn


def attach_uprobe_at(
    bpf: Any, prog: str, path: str, offset: int, pid: int, *, retprobe: bool = False, what: str = ""
) -> None:
    """Attach program ``prog`` of a bcc ``BPF`` at a file offset, for one PID.

    bcc's own ``attach_uprobe(addr=)`` treats addr as a virtual address and parses
    the ELF again to convert it; we already hold the file offset the uprobe PMU
    wants, so we call one level down and keep bcc's bookkeeping, so that
    ``bpf.cleanup()`` detaches it. Transient EINVALs are retried.
    """
    from bcc import BPF

    fn = bpf.load_func(prog.encode(), BPF.KPROBE)
    raw_path = path.encode()
    ev_name = bpf._get_uprobe_evname(b"r" if retprobe else b"p", raw_path, offset, pid)
    attach = _attach_uprobe_fn()
    errno = 0
    for attempt in range(ATTACH_ATTEMPTS):
        fd = attach(fn.fd, 1 if retprobe else 0, ev_name, raw_path, offset, pid, 0)
        if fd >= 0:
            bpf._add_uprobe_fd(ev_name, fd)
            return
        errno = ct.get_errno()
        time.sleep(0.05 * (attempt + 1))
    raise EnvironmentNotReady(
        f"could not attach {'uretprobe' if retprobe else 'uprobe'} to {what or path} "
        f"(pid {pid}): {os.strerror(errno)}",
        hint="another tool may hold a probe at the same place with a different "
        "USDT semaphore offset (see dmesg 'ref_ctr_offset mismatch')",
    )


def bpf_source_path() -> Path:
    """The C source shipped in the ``ecap.bpf`` package."""
    import ecap.bpf

    return Path(ecap.bpf.__file__).parent / "tls_capture.c"


@dataclass(frozen=True)
class Attachment:
    """One uprobe this session attached."""

    pid: int
    path: str
    function: str
    offset: int
    retprobe: bool


@dataclass(frozen=True)
class HeaderLayout:
    """Where the fixed fields sit in a ring-buffer record (derived from the C struct)."""

    unpack: Callable[[bytes], tuple]
    names: tuple[str, ...]
    data_offset: int


def _layout_from_ctypes(cls: type[ct.Structure]) -> HeaderLayout:
    """Build a struct unpacker from bcc's ctypes view of ``struct tls_event``.

    bcc derives that class from the C source, so the C struct is the only place
    the layout is written down.
    """
    codes = {
        ct.c_ulonglong: "Q",
        ct.c_ulong: "Q",
        ct.c_uint: "I",
        ct.c_int: "i",
        ct.c_ushort: "H",
        ct.c_ubyte: "B",
        ct.c_longlong: "q",
        ct.c_long: "q",
        ct.c_short: "h",
        ct.c_byte: "b",
        ct.c_char: "c",
    }
    fmt, pos, names = "<", 0, []
    data_offset = None
    for name, ctype in cls._fields_:
        field = getattr(cls, name)
        if name == "data":
            data_offset = field.offset
            break
        if field.offset > pos:
            fmt += f"{field.offset - pos}x"
        if issubclass(ctype, ct.Array):
            fmt += f"{field.size}s"
        else:
            fmt += codes[ctype]
        names.append(name)
        pos = field.offset + field.size
    if data_offset is None:
        raise RuntimeError("struct tls_event has no data field")
    if data_offset > pos:
        fmt += f"{data_offset - pos}x"
    return HeaderLayout(struct.Struct(fmt).unpack_from, tuple(names), data_offset)


class Probes:
    """The loaded program and its attachments for one capture session."""

    def __init__(
        self, *, ring_mb: int = DEFAULT_RING_MB, max_call_bytes: int = DEFAULT_MAX_CALL_BYTES
    ) -> None:
        if ring_mb < 1 or ring_mb & (ring_mb - 1) or ring_mb > 1024:
            raise UsageError(
                f"ring size {ring_mb} MiB is not a power of two in 1..1024",
                hint="use e.g. --ring-size 32",
            )
        if max_call_bytes < CHUNK or max_call_bytes % CHUNK or max_call_bytes > MAX_MAX_CALL_BYTES:
            raise UsageError(
                f"per-call limit {max_call_bytes} must be a multiple of {CHUNK} "
                f"between {CHUNK} and {MAX_MAX_CALL_BYTES}",
                hint="use e.g. --max-call-bytes 262144",
            )
        self.max_call_bytes = max_call_bytes
        self.attachments: list[Attachment] = []
        try:
            from bcc import BPF
        except ImportError as exc:  # pragma: no cover - checked by preflight too
            raise EnvironmentNotReady(
                "bcc is not importable", hint="run 'make setup' (python3-bpfcc)"
            ) from exc
        self._BPF = BPF
        page = os.sysconf("SC_PAGE_SIZE")
        cflags = [
            f"-DECAP_CHUNK={CHUNK}",
            f"-DECAP_MAX_CHUNKS={max_call_bytes // CHUNK}",
            f"-DECAP_RING_PAGES={ring_mb * 1024 * 1024 // page}",
            f"-DECAP_WAKEUP_EVERY={WAKEUP_EVERY}",
            "-Wno-macro-redefined",
        ]
        try:
            self.bpf = BPF(src_file=str(bpf_source_path()).encode(), cflags=cflags)
        except Exception as exc:
            raise EnvironmentNotReady(
                f"the TLS capture program did not compile or load: {exc}",
                hint="run 'ecap-audit doctor' (kernel headers, tracefs, BPF support)",
            ) from exc
        self._stats = self.bpf["stats"]
        self._pids = self.bpf["target_pids"]

    # -- scope -----------------------------------------------------------------------
    def authorize_pids(self, pids: Iterable[int]) -> None:
        """Fill the in-kernel allow-list (the second PID check)."""
        for pid in pids:
            self._pids[ct.c_uint(pid)] = ct.c_ubyte(1)
            self.seed_sockets(pid)

    def seed_sockets(self, pid: int) -> int:
        """Tell the kernel side which fds of ``pid`` are already sockets.

        Connections opened before the capture started are learned here; new ones
        through the connect/accept tracepoints.
        """
        table = self.bpf["socket_fds"]
        count = 0
        with contextlib.suppress(procfs.ProcessGone):
            for fd, target in procfs.iter_fds(pid):
                if target.startswith("socket:"):
                    table[ct.c_ulonglong(pid << 32 | fd)] = ct.c_ubyte(1)
                    count += 1
        return count

    def revoke_pid(self, pid: int) -> None:
        with contextlib.suppress(KeyError):
            del self._pids[ct.c_uint(pid)]

    # -- attach ----------------------------------------------------------------------
    def attach(self, target: HookTarget) -> list[Attachment]:
        """Attach every hook whose function exists in the target, with its PID."""
        made = []
        for function, entry, ret in _HOOKS:
            sym = target.symbols.get(function)
            if sym is None:
                continue
            made.append(self._attach_one(target, function, sym.file_offset, entry, False))
            if ret:
                made.append(self._attach_one(target, function, sym.file_offset, ret, True))
        self.attachments.extend(made)
        return made

    def _attach_one(
        self, target: HookTarget, function: str, offset: int, prog: str, retprobe: bool
    ) -> Attachment:
        attach_uprobe_at(
            self.bpf,
            prog,
            str(target.path),
            offset,
            target.pid,
            retprobe=retprobe,
            what=f"{function} in {target.display_path}",
        )
        return Attachment(target.pid, target.display_path, function, offset, retprobe)

    # -- introspection ---------------------------------------------------------------
    def prog_ids(self) -> list[int]:
        """Kernel ids of every program this session loaded (for the session registry)."""
        ids = set()
        for fn in self.bpf.funcs.values():
            with contextlib.suppress(procfs.ProcessGone, KeyError, ValueError):
                ids.add(int(procfs.fdinfo(os.getpid(), fn.fd)["prog_id"]))
        return sorted(ids)

    def stats(self) -> dict[str, int]:
        """Per-CPU counters summed: lost events/bytes, truncated bytes, failed calls."""
        out = {}
        for i, name in enumerate(STAT_NAMES):
            out[name] = int(sum(self._stats[ct.c_int(i)]))
        return out

    def layout(self) -> HeaderLayout:
        table = self.bpf["events"]
        from bcc.table import _get_event_class

        return _layout_from_ctypes(_get_event_class(table))

    # -- data ------------------------------------------------------------------------
    def open_ring(self, on_record: Callable[[bytes], None]) -> None:
        """Deliver each ring-buffer record's raw bytes to ``on_record``."""

        def _callback(_ctx, data, size):
            on_record(ct.string_at(data, size))
            return 0

        self.bpf["events"].open_ring_buffer(_callback)

    def poll(self, timeout_ms: int) -> None:
        """Wait for records up to ``timeout_ms``, then drain whatever is pending.

        The kernel side wakes readers only every few records (to spare the traced
        process), so a timed-out poll is followed by a consume of the rest.
        """
        self.bpf.ring_buffer_poll(timeout_ms)
        self.bpf.ring_buffer_consume()

    def close(self) -> None:
        """Detach everything and free the program (idempotent).

        Probes made through the perf PMU go away when their fd closes. bcc's
        cleanup would also try to delete a same-named tracefs event for each one,
        which costs ~0.1 s apiece for events that do not exist; only events that
        really are in tracefs (bcc's fallback path) are left to bcc to remove.
        """
        bpf = getattr(self, "bpf", None)
        if bpf is None:
            return
        from bcc import libbcc

        in_tracefs = _tracefs_events()
        fds = []
        for name, fd in list(bpf.uprobe_fds.items()):
            if name.decode(errors="replace") not in in_tracefs:
                fds.append(fd)
                del bpf.uprobe_fds[name]
        for name, fd in list(bpf.tracepoint_fds.items()):
            fds.append(fd)
            del bpf.tracepoint_fds[name]
        # Each close waits for an RCU grace period in the kernel; in parallel the
        # whole detach takes one or two of them instead of one per probe.
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(32, len(fds) or 1)) as pool:
            list(pool.map(libbcc.lib.bpf_close_perf_event_fd, fds))
        with contextlib.suppress(Exception):
            bpf.cleanup()
        self.bpf = None


def _tracefs_events() -> set[str]:
    """Names of uprobe events defined through tracefs (normally none of ours)."""
    from ecap import host

    root = host.tracefs_root()
    if root is None:
        return set()
    try:
        text = (root / "uprobe_events").read_text()
    except OSError:
        return set()
    names = set()
    for line in text.splitlines():
        head = line.split(" ", 1)[0]
        if ":" in head:
            names.add(head.split(":", 1)[1].split("/")[-1])
    return names
