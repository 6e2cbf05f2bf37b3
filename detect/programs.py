"""Every loaded BPF program, by id walk (``bpftool prog list``'s job)."""

from __future__ import annotations

import ctypes
import struct
import time

from ecap.detect import bpfsys, btf
from ecap.detect.model import Program

PROG_TYPES = (
    "unspec",
    "socket_filter",
    "kprobe",
    "sched_cls",
    "sched_act",
    "tracepoint",
    "xdp",
    "perf_event",
    "cgroup_skb",
    "cgroup_sock",
    "lwt_in",
    "lwt_out",
    "lwt_xmit",
    "sock_ops",
    "sk_skb",
    "cgroup_device",
    "sk_msg",
    "raw_tracepoint",
    "cgroup_sock_addr",
    "lwt_seg6local",
    "lirc_mode2",
    "sk_reuseport",
    "flow_dissector",
    "cgroup_sysctl",
    "raw_tracepoint_writable",
    "cgroup_sockopt",
    "tracing",
    "struct_ops",
    "ext",
    "lsm",
    "sk_lookup",
    "syscall",
    "netfilter",
)
_INFO_SIZE = 256  # sizeof(struct bpf_prog_info) is 232 on 6.x; the tail stays zero


def type_name(value: int) -> str:
    return PROG_TYPES[value] if 0 <= value < len(PROG_TYPES) else f"type{value}"


def boot_epoch() -> float:
    """Epoch time of boot: load times are nanoseconds since boot (CLOCK_BOOTTIME)."""
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


def read_program(fd: int, boot: float) -> Program:
    """Two-pass OBJ_GET_INFO_BY_FD: counts first, then map ids and func_info."""
    info = ctypes.create_string_buffer(_INFO_SIZE)
    bpfsys.info_by_fd(fd, info)
    nr_maps = struct.unpack_from("<I", info, 52)[0]
    btf_id = struct.unpack_from("<I", info, 128)[0]
    nr_func = struct.unpack_from("<I", info, 144)[0]
    map_ids: tuple[int, ...] = ()
    first_func_type = 0
    if nr_maps or (btf_id and nr_func):
        maps_buf = ctypes.create_string_buffer(4 * max(nr_maps, 1))
        func_buf = ctypes.create_string_buffer(8 * max(nr_func, 1))
        second = ctypes.create_string_buffer(_INFO_SIZE)
        struct.pack_into("<IQ", second, 52, nr_maps, ctypes.addressof(maps_buf))
        if btf_id and nr_func:
            struct.pack_into("<IQI", second, 132, 8, ctypes.addressof(func_buf), nr_func)
        bpfsys.info_by_fd(fd, second)
        got_maps = min(nr_maps, struct.unpack_from("<I", second, 52)[0])
        map_ids = struct.unpack_from(f"<{got_maps}I", maps_buf, 0) if got_maps else ()
        if btf_id and nr_func:
            first_func_type = struct.unpack_from("<II", func_buf, 0)[1]
    (
        ptype,
        pid_,
    ) = struct.unpack_from("<II", info, 0)
    tag = bytes(info[8:16]).hex()
    load_ns, uid = struct.unpack_from("<QI", info, 40)
    name = bpfsys.cstr(info, 64, 16)
    if first_func_type:
        name = btf.func_names(btf_id).get(first_func_type, name) or name
    run_time, run_cnt = struct.unpack_from("<QQ", info, 192)
    verified = struct.unpack_from("<I", info, 216)[0]
    return Program(
        id=pid_,
        type=type_name(ptype),
        name=name,
        tag=tag,
        load_time=boot + load_ns / 1e9 if load_ns else None,
        created_by_uid=uid,
        map_ids=tuple(map_ids),
        btf_id=btf_id,
        run_cnt=run_cnt if run_cnt or run_time else None,
        run_time_ns=run_time if run_cnt or run_time else None,
        verified_insns=verified or None,
    )


def list_programs() -> list[Program]:
    """All programs; ones unloaded between GET_NEXT_ID and GET_FD_BY_ID are skipped.

    Raises :class:`bpfsys.BpfError` (EPERM) without CAP_SYS_ADMIN: the caller
    degrades to fdinfo.
    """
    boot = boot_epoch()
    return bpfsys.read_each(
        bpfsys.PROG_GET_NEXT_ID, bpfsys.PROG_GET_FD_BY_ID, lambda fd: read_program(fd, boot)
    )
