"""What a BPF program can do, from the helpers it calls and the maps it uses.

A sniffer needs two things whatever it is named and wherever it hooks: a way to
*read* the data (a helper that copies user memory) and a way to *ship* it (an
output helper — perf event array, ring buffer, trace pipe — or a map that user
space reads). A program that has neither is a counter or a filter; one that can
write user memory or override a function's return value tampers with the
processes it hooks. These names are what the findings reason over (see
``detect/SCHEMA.md``, "Capabilities"):

* ``read-user-memory`` — ``bpf_probe_read_user[_str]``, ``bpf_copy_from_user*``,
  the legacy ``bpf_probe_read[_str]`` (user or kernel), the ``*_dynptr`` kfuncs;
* ``read-kernel-memory`` — ``bpf_probe_read_kernel[_str]``, legacy ``bpf_probe_read``;
* ``write-user-memory`` — ``bpf_probe_write_user``;
* ``send-signal`` — ``bpf_send_signal[_thread]``, ``bpf_send_signal_task``;
* ``override-return`` — ``bpf_override_return``;
* ``output-to-user`` — ``bpf_perf_event_output`` (and its skb/xdp/tracepoint forms),
  ``bpf_ringbuf_output/reserve/submit``, ``bpf_trace_printk``, ``bpf_seq_*``;
* ``write-maps`` — uses a data map (hash, array, ...) that user space can read, or
  calls a map update/push helper: a slower channel, but a channel;
* ``read-socket-data`` — packet program types (TC, XDP, socket filters, cgroup
  skb, sk_skb/sk_msg, lwt) read packet bytes directly; ``bpf_skb_load_bytes`` and
  friends, ``LD_ABS``/``LD_IND``.

Capabilities reached through tail calls (``bpf_tail_call`` into a program array)
are added from the programs in that array.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

from ecap.detect.model import Map, Program

READ_USER = "read-user-memory"
READ_KERNEL = "read-kernel-memory"
WRITE_USER = "write-user-memory"
SEND_SIGNAL = "send-signal"
OVERRIDE_RETURN = "override-return"
OUTPUT = "output-to-user"
WRITE_MAPS = "write-maps"
READ_SOCKET = "read-socket-data"
ALL = (
    READ_USER,
    READ_KERNEL,
    WRITE_USER,
    SEND_SIGNAL,
    OVERRIDE_RETURN,
    OUTPUT,
    WRITE_MAPS,
    READ_SOCKET,
)
TAMPERING = (WRITE_USER, OVERRIDE_RETURN)
DESCRIPTIONS = {
    READ_USER: "reads user memory",
    READ_KERNEL: "reads kernel memory",
    WRITE_USER: "writes user memory",
    SEND_SIGNAL: "sends signals",
    OVERRIDE_RETURN: "overrides return values",
    OUTPUT: "outputs to user space",
    WRITE_MAPS: "stores into maps user space reads",
    READ_SOCKET: "reads socket/packet data",
}

# Prefix → capabilities of a kernel function name a program calls.
_BY_PREFIX: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("bpf_probe_read_user", (READ_USER,)),
    ("bpf_copy_from_user", (READ_USER,)),
    ("bpf_probe_read_compat", (READ_USER, READ_KERNEL)),
    ("bpf_probe_read_kernel", (READ_KERNEL,)),
    ("bpf_probe_write_user", (WRITE_USER,)),
    ("bpf_send_signal", (SEND_SIGNAL,)),
    ("bpf_override_return", (OVERRIDE_RETURN,)),
    ("bpf_ringbuf_output", (OUTPUT,)),
    ("bpf_ringbuf_reserve", (OUTPUT,)),
    ("bpf_ringbuf_submit", (OUTPUT,)),
    ("bpf_trace_printk", (OUTPUT,)),
    ("bpf_trace_vprintk", (OUTPUT,)),
    ("bpf_seq_write", (OUTPUT,)),
    ("bpf_seq_printf", (OUTPUT,)),
    ("bpf_skb_load_bytes", (READ_SOCKET,)),
    ("bpf_xdp_load_bytes", (READ_SOCKET,)),
    ("bpf_dynptr_from_skb", (READ_SOCKET,)),
    ("bpf_dynptr_from_xdp", (READ_SOCKET,)),
    ("bpf_msg_pull_data", (READ_SOCKET,)),
)
_BY_SUFFIX: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("event_output", (OUTPUT,)),  # bpf_perf_event_output[_tp|_raw_tp], skb/xdp forms
    ("event_output_tp", (OUTPUT,)),
    ("event_output_raw_tp", (OUTPUT,)),
    ("map_update_elem", (WRITE_MAPS,)),
    ("map_push_elem", (WRITE_MAPS,)),
)
PACKET_PROGRAM_TYPES = frozenset(
    {
        "socket_filter",
        "sched_cls",
        "sched_act",
        "xdp",
        "cgroup_skb",
        "sk_skb",
        "sk_msg",
        "lwt_in",
        "lwt_out",
        "lwt_xmit",
        "lwt_seg6local",
        "flow_dissector",
    }
)
TRACING_PROGRAM_TYPES = frozenset(
    {"kprobe", "tracepoint", "perf_event", "raw_tracepoint", "raw_tracepoint_writable", "tracing"}
)
"""Program types that run on hooks in processes or the kernel (uprobes are ``kprobe``)."""
# Maps that carry no data a program writes: output channels are counted through
# their helpers; program arrays hold programs; the rest hold ids or descriptors.
_NOT_DATA_MAPS = frozenset(
    {
        "prog_array",
        "perf_event_array",
        "ringbuf",
        "user_ringbuf",
        "cgroup_array",
        "stack_trace",
        "array_of_maps",
        "hash_of_maps",
        "devmap",
        "devmap_hash",
        "cpumap",
        "xskmap",
        "sockmap",
        "sockhash",
        "reuseport_sockarray",
        "struct_ops",
    }
)


def of_function(name: str) -> tuple[str, ...]:
    """Capabilities one called kernel function gives (``()`` for the harmless ones)."""
    for prefix, caps in _BY_PREFIX:
        if name.startswith(prefix):
            return caps
    for suffix, caps in _BY_SUFFIX:
        if name.endswith(suffix):
            return caps
    return ()


def own(
    *,
    prog_type: str,
    helpers: Iterable[str],
    map_types: Iterable[str],
    packet_loads: bool = False,
) -> tuple[str, ...]:
    """A program's capabilities from its own code (tail-call targets not included)."""
    caps: set[str] = set()
    for name in helpers:
        caps.update(of_function(name))
    if any(t not in _NOT_DATA_MAPS for t in map_types):
        caps.add(WRITE_MAPS)
    if prog_type in PACKET_PROGRAM_TYPES or packet_loads:
        caps.add(READ_SOCKET)
    return tuple(c for c in ALL if c in caps)


def with_tail_calls(
    own_caps: Mapping[int, tuple[str, ...] | None], tail_targets: Mapping[int, Iterable[int]]
) -> dict[int, tuple[str, ...] | None]:
    """Each program's capabilities including every program it can tail-call into.

    Unknown (None) stays unknown; a target that is unknown makes its caller unknown.
    """
    out: dict[int, tuple[str, ...] | None] = {}
    for start in own_caps:
        seen, stack, caps, unknown = {start}, [start], set(), False
        while stack:
            pid = stack.pop()
            mine = own_caps.get(pid)
            if mine is None:
                unknown = True
                break
            caps.update(mine)
            for nxt in tail_targets.get(pid, ()):
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        out[start] = None if unknown else tuple(c for c in ALL if c in caps)
    return out


def is_sniffer(caps: Iterable[str] | None) -> bool | None:
    """Reads user memory and has a channel to user space (None: unknown)."""
    if caps is None:
        return None
    have = set(caps)
    return READ_USER in have and bool(have & {OUTPUT, WRITE_MAPS})


def is_packet_tap(caps: Iterable[str] | None) -> bool:
    """Reads packet data and can copy it out through an output helper."""
    have = set(caps or ())
    return READ_SOCKET in have and OUTPUT in have


def tampers(caps: Iterable[str] | None) -> bool:
    return bool(set(caps or ()) & set(TAMPERING))


def describe(caps: Iterable[str] | None) -> str:
    """``reads user memory, outputs to user space`` — for titles and terminals."""
    if caps is None:
        return "capabilities unknown"
    words = [DESCRIPTIONS[c] for c in caps if c in DESCRIPTIONS]
    return ", ".join(words) or "no memory access or output"


def assess(programs: list[Program], maps: Mapping[int, Map]) -> list[Program]:
    """Programs with ``capabilities`` filled in (None where their calls are unknown)."""
    own_caps: dict[int, tuple[str, ...] | None] = {}
    targets: dict[int, list[int]] = {}
    for p in programs:
        used = [maps[m] for m in p.map_ids if m in maps]
        if p.helpers is None:
            own_caps[p.id] = None
        else:
            own_caps[p.id] = own(
                prog_type=p.type,
                helpers=p.helpers,
                map_types=[m.type for m in used],
                packet_loads=p.packet_loads,
            )
        if p.tail_calls:
            targets[p.id] = [t for m in used for t in m.prog_ids]
    total = with_tail_calls(own_caps, targets)
    return [replace(p, capabilities=total.get(p.id)) for p in programs]
