"""The kernel side of one capture session, for any module.

Loads the module's BPF object (through :mod:`ecap.ebpf.loader`, so no compiler
and no tracefs), fills the in-kernel allow-list, attaches each target's probes
with the target's PID and the object's raw tracepoints, reads the per-CPU
counters, forgets the map entries of processes that left, and detaches. Every
attachment is a file descriptor: if this process dies, even by SIGKILL, the
kernel removes them all.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import select
import socket
import struct
from collections.abc import Iterable, Sequence

from ecap.capture import abi as abi_mod
from ecap.capture.modules.interface import CaptureModule, HookTarget, Probe
from ecap.ebpf import attach, loader
from ecap.ebpf.packet_ring import PacketRing
from ecap.ebpf.ringbuf import RingBuffer
from ecap.errors import UsageError

DEFAULT_MAX_CALL_BYTES = 256 * 1024
"""Documented per-call limit: bytes of one call beyond it are counted as truncated."""
DEFAULT_RING_MB = 32
WAKE_FRACTION = 8
"""The kernel side wakes the reader when 1/8 of the ring is pending; otherwise the
reader polls (a record waits at most one poll interval)."""
SYSCALL_TRACEPOINTS = ("sys_enter", "sys_exit")
"""Raw tracepoints every system call on the host passes through: attached only
while some connection's socket is unknown (see :meth:`KernelSide.syscalls`)."""
PACKET_TRACEPOINTS = ("inet_sock_set_state", "net_dev_queue")
"""The packet tap's (``bpf/packet_tap.h``): attached only when the output needs the
connections' packets (keylog, pcapng)."""
NOT_PER_PROCESS = ("events", "stats", "scratch", "target_pids", "flows", "connecting")
"""Maps whose keys are not a process's: the packet tap's flows (keyed by both ends,
kept until the connection closes: its last packets come after its process left)
and the sockets being connected (keyed by the kernel socket)."""
_TASK_STORAGE = 29  # BPF_MAP_TYPE_TASK_STORAGE: per thread, freed with the thread

STAT_NAMES = {
    "STAT_LOST_EVENTS": "lost_events",
    "STAT_LOST_BYTES": "lost_bytes",
    "STAT_TRUNCATED_BYTES": "truncated_bytes",
    "STAT_FAILED_CALLS": "failed_calls",
    "STAT_FAULT_BYTES": "unreadable_bytes",
    "STAT_DEEP_CALLS": "deep_calls",
}
"""Counter slots (``capture_abi.h`` names) → summary field names."""

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def loopback_ifindex() -> int:
    """The loopback interface's index in this network namespace (1 when unnamed)."""
    try:
        return socket.if_nametoindex("lo")
    except OSError:
        return 1


def check_limits(ring_mb: int, max_call_bytes: int, chunk: int, ceiling: int) -> None:
    """The ring and per-call limits the C side can honour (exit 2 otherwise)."""
    if ring_mb < 1 or ring_mb & (ring_mb - 1) or ring_mb > 1024:
        raise UsageError(
            f"invalid --ring-size {ring_mb}", hint="a power of two between 1 and 1024 (MiB)"
        )
    if max_call_bytes < chunk or max_call_bytes % chunk or max_call_bytes > ceiling:
        raise UsageError(
            f"invalid --max-call-bytes {max_call_bytes}",
            hint=f"a multiple of {chunk} between {chunk} and {ceiling}",
        )


class KernelSide:
    """The loaded object, its attachments and its ring buffer."""

    def __init__(self, module: CaptureModule, *, ring_mb: int = DEFAULT_RING_MB,
                 max_call_bytes: int = DEFAULT_MAX_CALL_BYTES,
                 follow_descendants: bool = False, packets: bool = False,
                 plaintext: bool = True) -> None:  # fmt: skip
        """``follow_descendants``: the token grants the targets' descendants — the
        kernel adds each child to the allow-list at fork (capture_common.h).
        ``packets``: the output needs the targets' packets — the kernel tracks their
        TCP flows for the packet tap (``bpf/packet_tap.h``). ``plaintext`` False:
        the output needs none (keylog, pcapng), so the programs that can skip it
        (``copy_plaintext``) copy none out of the process."""
        self.module = module
        self.follow_descendants = follow_descendants
        self.packets = packets
        image = loader.image(module.bpf_object)
        self.abi = abi_mod.from_image(image)
        check_limits(ring_mb, max_call_bytes, self.abi.CHUNK, self.abi.MAX_CALL_BYTES)
        self.max_call_bytes = max_call_bytes
        ring_bytes = ring_mb * 1024 * 1024
        ring_bytes = max(ring_bytes, mmap.PAGESIZE)
        rodata = {
            "max_chunks": max_call_bytes // self.abi.CHUNK,
            "wake_at_bytes": ring_bytes // WAKE_FRACTION,
        }
        if follow_descendants:
            rodata["follow_descendants"] = 1
        if packets:
            if "packet_filter" not in image.program_sections:
                raise UsageError(
                    f"the {module.name} module's programs have no packet tap",
                    hint="use --format text, jsonl, raw or pcapng --plaintext",
                )
            rodata["track_flows"] = 1
            rodata["loopback_ifindex"] = loopback_ifindex()
        if not plaintext and "copy_plaintext" in image.header.get("rodata", {}):
            rodata["copy_plaintext"] = 0
        self.obj = loader.load(image, max_entries={"events": ring_bytes}, rodata=rodata)
        self.attachments: list[attach.Attachment] = []
        self._syscall_links: list[attach.Attachment] = []
        self._files_attached: set[tuple[int, int, int]] = set()
        self._module_maps: set[str] = set()
        """Maps the modules filled (HookTarget.map_entries): not per-process state."""
        self.probes: list[tuple[int, Probe]] = []
        """(pid, probe) as attached, cookies with their source."""
        try:
            self.ring = RingBuffer(self.obj.map("events").fd, ring_bytes)
        except BaseException:
            self.obj.close()
            raise
        self._pids = self.obj.map("target_pids")
        self._stats = self.obj.map("stats")
        self._stat_slots = {
            field: self.abi.constants[f"ECAP_{name}"] for name, field in STAT_NAMES.items()
        }

    # -- scope -------------------------------------------------------------------------
    def authorize_pids(self, pids: Iterable[int]) -> None:
        """Fill the in-kernel allow-list (the second PID check)."""
        scope = bytes([self.abi.SCOPE_TARGET])
        for pid in pids:
            self._pids.update(_U32.pack(pid), scope)

    def revoke_pid(self, pid: int) -> None:
        self._pids.delete(_U32.pack(pid))

    def is_authorized(self, pid: int) -> bool:
        return self._pids.lookup(_U32.pack(pid)) is not None

    def _keys_of(self, pid: int) -> dict[str, list[bytes]]:
        """Keys of the per-process maps that belong to ``pid``: their thread-group id
        is the first 32 bits (struct keys) or the upper half (pid_tgid keys)."""
        out: dict[str, list[bytes]] = {}
        for name, m in self.obj.maps.items():
            if name in NOT_PER_PROCESS or "." in name:
                continue
            if name in self._module_maps:
                continue
            if m.type == _TASK_STORAGE:
                continue  # the kernel frees a thread's entry with the thread
            if m.key_size == 8:
                out[name] = [k for k in m.iter_keys() if _U64.unpack(k)[0] >> 32 == pid]
            elif m.key_size >= 4:
                out[name] = [k for k in m.iter_keys() if _U32.unpack_from(k)[0] == pid]
        return out

    def forget_pid(self, pid: int) -> int:
        """Drop every map entry of a process that left the session; returns how many."""
        return sum(m_del for name, keys in self._keys_of(pid).items()
                   for m_del in (self.obj.map(name).delete(k) for k in keys))  # fmt: skip

    def entries_of(self, pid: int) -> dict[str, int]:
        """How many entries each per-process map holds for ``pid``."""
        return {name: len(keys) for name, keys in self._keys_of(pid).items()}

    # -- attach ------------------------------------------------------------------------
    def attach_tracepoints(self) -> None:
        """Every raw tracepoint program of the object (syscalls, exec)."""
        for name, section in self._raw_tracepoints():
            if section in SYSCALL_TRACEPOINTS:
                continue
            if section in PACKET_TRACEPOINTS and not self.packets:
                continue
            self.attachments.append(attach.raw_tracepoint(self.obj.prog_fd(name), section))
        self.syscalls(True)

    def packet_ring(self, ring_bytes: int) -> PacketRing:
        """The packet socket behind the object's flow filter (``packets`` only)."""
        return PacketRing(self.obj.prog_fd("packet_filter"), ring_bytes)

    def flow_owner(self, key: bytes) -> int | None:
        """The process a flow belongs to (``key``: its struct ecap_sockinfo, local end
        first), as the kernel attributed it; None when it is not a flow of ours. A
        flow that closed a moment ago still answers: its last packets are still
        being read."""
        value = self.obj.map("flows").lookup(key)
        return None if value is None else _U32.unpack_from(value)[0]

    def _raw_tracepoints(self) -> list[tuple[str, str]]:
        return [
            (name, section.split("/", 1)[1])
            for name, section in self.obj.image.program_sections.items()
            if section.startswith("raw_tracepoint/")
        ]

    @property
    def syscalls_attached(self) -> bool:
        return bool(self._syscall_links)

    def syscalls(self, on: bool) -> None:
        """Attach or detach the system-call tracepoints.

        They learn which socket a connection object uses when the library did not
        say (``SSL_set_fd``), and see ``connect``/``close``; but every system call
        of every process on the host runs through them. The engine keeps them only
        while some connection's socket is unknown, so bystanders pay nothing the
        rest of the time.
        """
        if on and not self._syscall_links:
            for name, section in self._raw_tracepoints():
                if section in SYSCALL_TRACEPOINTS:
                    self._syscall_links.append(
                        attach.raw_tracepoint(self.obj.prog_fd(name), section)
                    )
        elif not on and self._syscall_links:
            attach.detach_all(self._syscall_links)
            self._syscall_links.clear()

    def attach(self, target: HookTarget, source: int = 0) -> int:
        """Attach every probe of ``target`` with its PID; returns how many.

        ``source``: which of the session's modules sharing this object the target
        belongs to; it goes into the upper half of every cookie, and the kernel
        copies it into the records (``capture auto``). The target's map entries are
        written first.

        One uprobe_multi link per (program, entry or return): it carries all the
        offsets that program serves in this file, each with its cookie. With
        descendants granted, the links are not scoped to the PID — a PID-scoped
        link never fires in a child (the kernel filters on the target's memory
        map), and attaching per child from user space would race the child's
        first calls — so the in-kernel allow-list alone decides: other processes
        running the same file take the trap (a few µs per hooked call) and are
        ignored by the programs.
        """
        for entry in target.map_entries:
            self.obj.map(entry.map).update(entry.key, entry.value)
            self._module_maps.add(entry.map)
        link_pid = 0 if self.follow_descendants else target.pid
        if link_pid == 0:
            # One set of process-wide links per file: two targets running the same
            # file must not make every call fire twice.
            st = os.stat(target.path)
            if (st.st_dev, st.st_ino, source) in self._files_attached:
                return 0
            self._files_attached.add((st.st_dev, st.st_ino, source))
        tag = source << self.abi.COOKIE_SOURCE_SHIFT
        groups: dict[tuple[str, bool], list[Probe]] = {}
        for probe in target.probes:
            tagged = dataclasses.replace(probe, cookie=probe.cookie | tag)
            groups.setdefault((probe.program, probe.retprobe), []).append(tagged)
        # Returns first: a call entered while only its entry probe is attached would
        # leave a frame whose return is never seen (the programs also shed such
        # frames by their stack pointer, but need not).
        for (program, retprobe), probes in sorted(groups.items(), key=lambda g: not g[0][1]):
            self.attachments.append(
                attach.uprobe_multi(
                    self.obj.prog_fd(program), str(target.path), [p.offset for p in probes],
                    [p.cookie for p in probes], link_pid, retprobe=retprobe,
                    what=f"{', '.join(p.function for p in probes)} in {target.display_path}",
                )
            )  # fmt: skip
            self.probes += [(target.pid, p) for p in probes]
        return len(target.probes)

    # -- introspection -----------------------------------------------------------------
    def prog_ids(self) -> list[int]:
        return self.obj.prog_ids()

    def stats(self) -> dict[str, int]:
        """Per-CPU counters summed."""
        out = {}
        for field, slot in self._stat_slots.items():
            values = self._stats.lookup_all(_U32.pack(slot)) or []
            out[field] = sum(_U64.unpack(v[:8])[0] for v in values)
        return out

    def close(self) -> None:
        """Detach everything and unload (idempotent)."""
        attach.detach_all(self.attachments + self._syscall_links)
        self.attachments.clear()
        self._syscall_links.clear()
        ring = getattr(self, "ring", None)
        if ring is not None:
            ring.close()
            self.ring = None
        self.obj.close()


class KernelSides:
    """Every BPF object one session loads — one per object its modules use — driven
    as one.

    Modules that share an object (``capture auto`` with tls, gnutls and nss, all on
    ``tls_rw``) share its programs, maps and ring; each module's attachments carry
    its index among them in the cookie's upper half, which the kernel copies into
    each record's ``source``: :attr:`sources` turns (side, source) back into the
    module's name. A module with its own object (another side) has its own ring.
    """

    def __init__(self, modules: Sequence[CaptureModule], *, ring_mb: int = DEFAULT_RING_MB,
                 max_call_bytes: int = DEFAULT_MAX_CALL_BYTES,
                 follow_descendants: bool = False, packets: bool = False,
                 plaintext: bool = True) -> None:  # fmt: skip
        """``packets``/``plaintext``: as :class:`KernelSide`. The packet tap has one
        flow table, so a session that needs packets has one object."""
        if packets and len({m.bpf_object for m in modules}) > 1:
            raise UsageError(
                "keylog and pcapng capture through one BPF object; these modules need "
                + ", ".join(sorted({m.bpf_object for m in modules})),
                hint="capture each module in its own session",
            )
        self.sides: list[KernelSide] = []
        self.sources: list[list[str]] = []
        """Per side: module names by source index."""
        self._where: dict[str, tuple[int, int]] = {}
        self._epoll: select.epoll | None = None
        try:
            for module in modules:
                objects = [side.module.bpf_object for side in self.sides]
                if module.bpf_object not in objects:
                    self.sides.append(KernelSide(module, ring_mb=ring_mb,
                                                 max_call_bytes=max_call_bytes,
                                                 follow_descendants=follow_descendants,
                                                 packets=packets, plaintext=plaintext))  # fmt: skip
                    self.sources.append([])
                index = [side.module.bpf_object for side in self.sides].index(module.bpf_object)
                self._where[module.name] = (index, len(self.sources[index]))
                self.sources[index].append(module.name)
            if len(self.sides) > 1:
                self._epoll = select.epoll()
                for side in self.sides:
                    self._epoll.register(side.obj.map("events").fd, select.EPOLLIN)
        except BaseException:
            self.close()
            raise

    @property
    def abi(self) -> abi_mod.Abi:
        """The record layout (``capture_abi.h``: the same in every capture object)."""
        return self.sides[0].abi

    def authorize_pids(self, pids: Iterable[int]) -> None:
        pids = list(pids)
        for side in self.sides:
            side.authorize_pids(pids)

    def revoke_pid(self, pid: int) -> None:
        for side in self.sides:
            side.revoke_pid(pid)

    def forget_pid(self, pid: int) -> int:
        return sum(side.forget_pid(pid) for side in self.sides)

    def attach_tracepoints(self) -> None:
        for side in self.sides:
            side.attach_tracepoints()

    @property
    def ring(self) -> RingBuffer | None:
        """The first object's record ring (the one a packet tap wakes)."""
        return self.sides[0].ring

    def packet_ring(self, ring_bytes: int) -> PacketRing:
        return self.sides[0].packet_ring(ring_bytes)

    def flow_owner(self, key: bytes) -> int | None:
        return self.sides[0].flow_owner(key)

    def attach(self, module: CaptureModule, target: HookTarget) -> int:
        """Attach ``target`` (resolved by ``module``) to its module's object."""
        index, source = self._where[module.name]
        return self.sides[index].attach(target, source)

    @property
    def syscalls_attached(self) -> bool:
        return any(side.syscalls_attached for side in self.sides)

    def syscalls(self, on: bool) -> None:
        for side in self.sides:
            side.syscalls(on)

    def wait(self, timeout_ms: int) -> None:
        """Until some ring has records, or the timeout."""
        if self._epoll is None:
            ring = self.sides[0].ring
            assert ring is not None
            ring.wait(timeout_ms)
        else:
            self._epoll.poll(timeout_ms / 1000)

    def prog_ids(self) -> list[int]:
        return [i for side in self.sides for i in side.prog_ids()]

    def stats(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for side in self.sides:
            for name, value in side.stats().items():
                out[name] = out.get(name, 0) + value
        return out

    def close(self) -> None:
        """Detach everything and unload (idempotent)."""
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
        for side in self.sides:
            side.close()
