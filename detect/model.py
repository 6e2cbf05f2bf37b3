"""What a scan collects: one frozen record per kernel object or attachment.

Collection modules (``programs``, ``maps``, ``links``, ``holders``, ``tracefs``,
``pins``) produce these; ``findings`` reasons over them; renderers print them.
Strings in them come from the host (and may come from an attacker): they are kept
raw here and escaped by each renderer for its medium.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, fields


@dataclass(frozen=True)
class Program:
    """One loaded BPF program (from bpf(2), or from fdinfo in degraded mode)."""

    id: int
    type: str
    name: str
    """Full function name from BTF func_info when present, else the 15-char kernel name."""
    tag: str
    load_time: float | None = None
    """Epoch seconds (converted from the kernel's boot-time nanoseconds)."""
    created_by_uid: int | None = None
    map_ids: tuple[int, ...] = ()
    btf_id: int = 0
    run_cnt: int | None = None
    """Only meaningful while ``kernel.bpf_stats_enabled`` is 1."""
    run_time_ns: int | None = None
    verified_insns: int | None = None
    source: str = "bpf"
    """``bpf`` (id walk) or ``fdinfo`` (degraded: seen only through a holder's fd)."""
    xlated_insns: int | None = None
    """Number of translated instructions read (None: not readable)."""
    helpers: tuple[str, ...] | None = None
    """Kernel helpers and kfuncs it calls, by name (None: unknown — degraded mode, or
    call targets hidden by ``kernel.kptr_restrict``)."""
    tail_calls: bool = False
    packet_loads: bool = False
    capabilities: tuple[str, ...] | None = None
    """What it can do (:mod:`ecap.detect.capabilities`), tail-call targets included;
    None when unknown."""


@dataclass(frozen=True)
class Map:
    """One BPF map; perf-event arrays and ring buffers are how sniffers ship data out."""

    id: int
    type: str
    name: str
    key_size: int = 0
    value_size: int = 0
    max_entries: int = 0
    flags: int = 0
    event_output: bool = False
    """True for perf-event arrays and ring buffers (user-space readable streams)."""
    source: str = "bpf"
    prog_ids: tuple[int, ...] = ()
    """For program arrays: the programs it holds (tail-call targets)."""


@dataclass(frozen=True)
class Link:
    """One BPF link and its type-specific info (uprobe file/offset for perf links)."""

    id: int
    type: str
    prog_id: int
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Holder:
    """A process fd that keeps a BPF object (or a BPF-carrying perf event) alive."""

    pid: int
    fd: int
    kind: str
    """``prog``, ``map``, ``link`` or ``perf_event``."""
    obj_id: int
    prog_id: int = 0
    """For links and perf events: the program they run."""


@dataclass(frozen=True)
class Probe:
    """One place where code is hooked: a uprobe, kprobe or tracepoint attachment."""

    source: str
    """``perf_event`` (TASK_FD_QUERY), ``link`` (perf-event link), ``uprobe_multi``, ``tracefs``."""
    type: str
    """``uprobe``, ``uretprobe``, ``kprobe``, ``kretprobe``, ``tracepoint``..."""
    target: str
    """Target file for uprobes, symbol for kprobes, tracepoint name otherwise."""
    offset: int = 0
    prog_id: int | None = None
    link_id: int | None = None
    holder_pid: int | None = None
    fd: int | None = None
    event: str | None = None
    """tracefs event name (``group/event``) for the legacy path."""
    enabled: bool | None = None
    pid_filter: int | None = None
    """uprobe_multi links may be bound to one process."""

    @property
    def is_uprobe(self) -> bool:
        return self.type in ("uprobe", "uretprobe")


@dataclass(frozen=True)
class Pin:
    """An object pinned in a bpffs, possibly in another mount namespace."""

    path: str
    """Path as the namespace sees it."""
    kind: str
    obj_id: int
    mount_ns: str
    via_pid: int
    """A process of that mount namespace whose root we looked through."""


def to_dict(obj: object) -> dict:
    """A JSON-ready dict of a flat record (tuples become lists).

    Shallow on purpose: records hold scalars, tuples and plain dicts, and
    ``dataclasses.asdict``'s deep copy costs milliseconds per thousand probes.
    """
    out = {}
    for name in _field_names(type(obj)):
        value = getattr(obj, name)
        out[name] = list(value) if isinstance(value, tuple) else value
    return out


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))
