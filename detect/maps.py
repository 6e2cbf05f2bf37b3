"""Every BPF map, by id walk (``bpftool map list``'s job)."""

from __future__ import annotations

import ctypes
import struct

from ecap.detect import bpfsys
from ecap.detect.model import Map

MAP_TYPES = (
    "unspec",
    "hash",
    "array",
    "prog_array",
    "perf_event_array",
    "percpu_hash",
    "percpu_array",
    "stack_trace",
    "cgroup_array",
    "lru_hash",
    "lru_percpu_hash",
    "lpm_trie",
    "array_of_maps",
    "hash_of_maps",
    "devmap",
    "sockmap",
    "cpumap",
    "xskmap",
    "sockhash",
    "cgroup_storage",
    "reuseport_sockarray",
    "percpu_cgroup_storage",
    "queue",
    "stack",
    "sk_storage",
    "devmap_hash",
    "struct_ops",
    "ringbuf",
    "inode_storage",
    "task_storage",
    "bloom_filter",
    "user_ringbuf",
    "cgrp_storage",
    "arena",
)
EVENT_OUTPUT_TYPES = {"perf_event_array", "ringbuf"}
MAX_PROG_ARRAY_SLOTS = 4096
"""Program-array slots read for tail-call targets (a lookup each)."""


def type_name(value: int) -> str:
    return MAP_TYPES[value] if 0 <= value < len(MAP_TYPES) else f"type{value}"


def read_map(fd: int) -> Map:
    info = ctypes.create_string_buffer(128)
    bpfsys.info_by_fd(fd, info)
    mtype, map_id, key, value, entries, flags = struct.unpack_from("<6I", info, 0)
    tname = type_name(mtype)
    prog_ids: tuple[int, ...] = ()
    if tname == "prog_array" and key == 4 and value == 4:
        prog_ids = _prog_array_targets(fd, min(entries, MAX_PROG_ARRAY_SLOTS))
    return Map(
        id=map_id,
        type=tname,
        name=bpfsys.cstr(info, 24, 16),
        key_size=key,
        value_size=value,
        max_entries=entries,
        flags=flags,
        event_output=tname in EVENT_OUTPUT_TYPES,
        prog_ids=prog_ids,
    )


def _prog_array_targets(fd: int, slots: int) -> tuple[int, ...]:
    """Ids of the programs in a program array (user-space lookups return prog ids)."""
    out = []
    for slot in range(slots):
        try:
            raw = bpfsys.map_lookup(fd, struct.pack("<I", slot), 4)
        except bpfsys.BpfError:
            break
        if raw is not None:
            out.append(struct.unpack("<I", raw)[0])
    return tuple(sorted(set(out)))


def list_maps() -> list[Map]:
    """All maps (EPERM without CAP_SYS_ADMIN, like :func:`programs.list_programs`)."""
    return bpfsys.read_each(bpfsys.MAP_GET_NEXT_ID, bpfsys.MAP_GET_FD_BY_ID, read_map)
