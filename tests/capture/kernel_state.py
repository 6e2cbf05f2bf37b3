"""Read a running capture's kernel-side state (its BPF maps), as root, from outside.

Tests use it to check what the capture's programs keep per process — the state a
defect would leave behind — through the same bpf(2) layer ecap uses.
"""

from __future__ import annotations

import ctypes
import struct

from ecap.detect import bpfsys, programs
from ecap.ebpf.maps import Map


def capture_maps(prog_ids: list[int]) -> dict[str, Map]:
    """The maps the capture's programs use, by name (open fds: close with close_maps)."""
    map_ids = {m for p in programs.list_programs() if p.id in prog_ids for m in p.map_ids}
    out: dict[str, Map] = {}
    for map_id in sorted(map_ids):
        fd = bpfsys.fd_by_id(bpfsys.MAP_GET_FD_BY_ID, map_id)
        m = Map(fd, "")
        info = ctypes.create_string_buffer(80)
        bpfsys.info_by_fd(fd, info)
        m.name = bpfsys.cstr(info, 24, 16)
        out[m.name] = m
    return out


def close_maps(maps: dict[str, Map]) -> None:
    import os

    for m in maps.values():
        os.close(m.fd)


def entries_for_pid(m: Map, pid: int) -> int:
    """Keys of a per-process map that belong to ``pid`` (tgid first or in the upper half)."""
    count = 0
    for key in m.iter_keys():
        if m.key_size == 8:
            count += struct.unpack("<Q", key)[0] >> 32 == pid
        elif m.key_size >= 4:
            count += struct.unpack_from("<I", key)[0] == pid
    return count
