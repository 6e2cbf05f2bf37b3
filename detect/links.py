"""Every BPF link with its type-specific info (``bpftool link list``'s job).

Perf-event links (what libbpf and cilium/ebpf create for uprobes on kernels that
support it) report the uprobe's file and offset since Linux 6.6; uprobe_multi
links report path, every offset and the pid filter. Both are read in two passes:
the first learns the sub-type and counts, the second passes buffers sized for them.
"""

from __future__ import annotations

import ctypes
import struct

from ecap.detect import bpfsys
from ecap.detect.model import Link

LINK_TYPES = (
    "unspec",
    "raw_tracepoint",
    "tracing",
    "cgroup",
    "iter",
    "netns",
    "xdp",
    "perf_event",
    "kprobe_multi",
    "struct_ops",
    "netfilter",
    "tcx",
    "uprobe_multi",
    "netkit",
    "sockmap",
)
PERF_EVENT_TYPES = ("unspec", "uprobe", "uretprobe", "kprobe", "kretprobe", "tracepoint", "event")
_INFO_SIZE = 128
_NAME_MAX = 4096
_MULTI_MAX = 1 << 16


def type_name(value: int) -> str:
    return LINK_TYPES[value] if 0 <= value < len(LINK_TYPES) else f"type{value}"


def _perf_event_info(fd: int, first: ctypes.Array) -> dict:
    sub = struct.unpack_from("<I", first, 16)[0]
    kind = PERF_EVENT_TYPES[sub] if sub < len(PERF_EVENT_TYPES) else f"type{sub}"
    out: dict = {"perf_event_type": kind}
    if kind == "event":
        config, etype = struct.unpack_from("<QI", first, 24)
        return {**out, "config": config, "event_type": etype}
    name = ctypes.create_string_buffer(_NAME_MAX)
    info = ctypes.create_string_buffer(_INFO_SIZE)
    # The name pointer sits at @24 and its length at @32 for uprobe, kprobe and
    # tracepoint alike; offset follows at @36 and cookie/addr at @40.
    struct.pack_into("<QI", info, 24, ctypes.addressof(name), _NAME_MAX)
    bpfsys.info_by_fd(fd, info)
    text = name.value.decode("utf-8", "surrogateescape")
    offset = struct.unpack_from("<I", info, 36)[0]
    extra = struct.unpack_from("<Q", info, 40)[0]
    if kind in ("uprobe", "uretprobe"):
        return {**out, "file": text, "offset": offset, "cookie": extra}
    if kind in ("kprobe", "kretprobe"):
        return {**out, "func": text, "offset": offset, "addr": extra}
    return {**out, "tracepoint": text}


def _uprobe_multi_info(fd: int, first: ctypes.Array) -> dict:
    count = min(struct.unpack_from("<I", first, 52)[0], _MULTI_MAX)
    path = ctypes.create_string_buffer(_NAME_MAX)
    offsets = ctypes.create_string_buffer(8 * max(count, 1))
    info = ctypes.create_string_buffer(_INFO_SIZE)
    struct.pack_into(
        "<QQ", info, 16, ctypes.addressof(path), ctypes.addressof(offsets) if count else 0
    )
    struct.pack_into("<II", info, 48, _NAME_MAX, count)
    bpfsys.info_by_fd(fd, info)
    got, flags, pid = struct.unpack_from("<III", info, 52)
    got = min(got, count)
    return {
        "path": path.value.decode("utf-8", "surrogateescape"),
        "offsets": list(struct.unpack_from(f"<{got}Q", offsets, 0)) if got else [],
        "retprobe": bool(flags & 1),
        "pid": pid,
    }


def _raw_tp_info(fd: int) -> dict:
    name = ctypes.create_string_buffer(256)
    info = ctypes.create_string_buffer(_INFO_SIZE)
    struct.pack_into("<QI", info, 16, ctypes.addressof(name), 256)
    bpfsys.info_by_fd(fd, info)
    return {"tracepoint": name.value.decode("utf-8", "surrogateescape")}


def read_link(fd: int) -> Link:
    first = ctypes.create_string_buffer(_INFO_SIZE)
    bpfsys.info_by_fd(fd, first)
    ltype, link_id, prog_id = struct.unpack_from("<III", first, 0)
    tname = type_name(ltype)
    info: dict = {}
    try:
        if tname == "perf_event":
            info = _perf_event_info(fd, first)
        elif tname == "uprobe_multi":
            info = _uprobe_multi_info(fd, first)
        elif tname == "raw_tracepoint":
            info = _raw_tp_info(fd)
        elif tname == "tracing":
            attach, obj, btf_id = struct.unpack_from("<III", first, 16)
            info = {"attach_type": attach, "target_obj_id": obj, "target_btf_id": btf_id}
        elif tname == "cgroup":
            cg, attach = struct.unpack_from("<QI", first, 16)
            info = {"cgroup_id": cg, "attach_type": attach}
        elif tname in ("xdp", "tcx", "netkit"):
            ifindex, attach = struct.unpack_from("<II", first, 16)
            info = {"ifindex": ifindex, "attach_type": attach}
        elif tname == "kprobe_multi":
            count, flags = struct.unpack_from("<II", first, 24)
            info = {"count": count, "retprobe": bool(flags & 1)}
    except bpfsys.BpfError as exc:
        info = {"error": exc.strerror}
    return Link(id=link_id, type=tname, prog_id=prog_id, info=info)


def list_links() -> list[Link]:
    """All links (EPERM without CAP_SYS_ADMIN)."""
    return bpfsys.read_each(bpfsys.LINK_GET_NEXT_ID, bpfsys.LINK_GET_FD_BY_ID, read_link)
