"""Every loaded BPF program, by id walk (``bpftool prog list``'s job)."""

from __future__ import annotations

import ctypes
import struct
import time
from dataclasses import replace

from ecap.detect import bpfsys, btf, insns, kallsyms
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


MAX_XLATED_BYTES = 8 << 20
"""1M instructions (the verifier's limit) is 8 MiB; anything claiming more is not read."""


def read_program(fd: int, boot: float) -> tuple[Program, insns.Decoded | None]:
    """Two-pass OBJ_GET_INFO_BY_FD: counts first, then map ids, func_info and the
    translated instructions (decoded here; helper names are resolved per scan)."""
    info = ctypes.create_string_buffer(_INFO_SIZE)
    bpfsys.info_by_fd(fd, info)
    xlated_len = struct.unpack_from("<I", info, 20)[0]
    nr_maps = struct.unpack_from("<I", info, 52)[0]
    btf_id = struct.unpack_from("<I", info, 128)[0]
    nr_func = struct.unpack_from("<I", info, 144)[0]
    map_ids: tuple[int, ...] = ()
    first_func_type = 0
    decoded = None
    xlated_len = xlated_len if 0 < xlated_len <= MAX_XLATED_BYTES else 0
    if nr_maps or (btf_id and nr_func) or xlated_len:
        maps_buf = ctypes.create_string_buffer(4 * max(nr_maps, 1))
        func_buf = ctypes.create_string_buffer(8 * max(nr_func, 1))
        code_buf = ctypes.create_string_buffer(max(xlated_len, 8))
        second = ctypes.create_string_buffer(_INFO_SIZE)
        struct.pack_into("<IQ", second, 52, nr_maps, ctypes.addressof(maps_buf))
        if xlated_len:
            struct.pack_into("<I", second, 20, xlated_len)
            struct.pack_into("<Q", second, 32, ctypes.addressof(code_buf))
        if btf_id and nr_func:
            struct.pack_into("<IQI", second, 132, 8, ctypes.addressof(func_buf), nr_func)
        bpfsys.info_by_fd(fd, second)
        got_maps = min(nr_maps, struct.unpack_from("<I", second, 52)[0])
        map_ids = struct.unpack_from(f"<{got_maps}I", maps_buf, 0) if got_maps else ()
        if btf_id and nr_func:
            first_func_type = struct.unpack_from("<II", func_buf, 0)[1]
        if xlated_len:
            got = min(xlated_len, struct.unpack_from("<I", second, 20)[0])
            decoded = insns.decode(code_buf.raw[:got])
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
    prog = Program(
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
    if decoded is not None:
        prog = replace(
            prog,
            xlated_insns=decoded.insns,
            tail_calls=decoded.tail_calls,
            packet_loads=decoded.packet_loads,
        )
    return prog, decoded


def name_helpers(progs: list[tuple[Program, insns.Decoded | None]]) -> list[Program]:
    """Programs with the names of the helpers and kfuncs they call (one kallsyms read).

    ``helpers`` stays None when the calls cannot be named (addresses hidden by
    ``kernel.kptr_restrict``, or no instructions readable).
    """
    wanted = {off for _p, d in progs if d is not None for off in d.calls}
    names = kallsyms.resolve(wanted) if wanted else {}
    out = []
    for prog, dec in progs:
        if dec is None or dec.hidden_calls or (dec.calls and names is None):
            out.append(prog)
            continue
        called = [(names or {}).get(off) or f"kernel+{off:#x}" for off in dec.calls]
        out.append(replace(prog, helpers=tuple(sorted(set(called)))))
    return out


def list_programs() -> list[Program]:
    """All programs; ones unloaded between GET_NEXT_ID and GET_FD_BY_ID are skipped.

    Raises :class:`bpfsys.BpfError` (EPERM) without CAP_SYS_ADMIN: the caller
    degrades to fdinfo.
    """
    boot = boot_epoch()
    return name_helpers(
        bpfsys.read_each(
            bpfsys.PROG_GET_NEXT_ID, bpfsys.PROG_GET_FD_BY_ID, lambda fd: read_program(fd, boot)
        )
    )


def run_counts(prog_ids: list[int]) -> dict[int, int]:
    """Current run count of each program still loaded (counts move only while
    run-time statistics are enabled)."""
    out = {}
    for prog_id in prog_ids:
        try:
            with bpfsys.Fd(bpfsys.fd_by_id(bpfsys.PROG_GET_FD_BY_ID, prog_id)) as fd:
                info = ctypes.create_string_buffer(_INFO_SIZE)
                bpfsys.info_by_fd(fd, info)
                out[prog_id] = struct.unpack_from("<Q", info, 200)[0]
        except bpfsys.BpfError:
            continue
    return out
