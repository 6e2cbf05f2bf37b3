"""Just enough BTF to name a program's functions.

The kernel truncates program names to 15 characters; the BTF ``func_info`` a
loader attaches names the real function (``probe_entry_SSL_write_ex``), which is
what an analyst needs to recognise a tool. Only the type section is walked, to
find ``BTF_KIND_FUNC`` names by type id.
"""

from __future__ import annotations

import ctypes
import struct

from ecap.detect import bpfsys

_BTF_MAGIC = 0xEB9F
KIND_FUNC = 12
# Bytes that follow the 12-byte btf_type header, per kind: (fixed, per vlen entry).
_TRAILER = {
    1: (4, 0),
    3: (12, 0),
    4: (0, 12),
    5: (0, 12),
    6: (0, 8),
    13: (0, 8),
    14: (4, 0),
    15: (0, 12),
    17: (4, 0),
    19: (0, 12),
}


def parse_names(raw: bytes) -> dict[int, str]:
    """Map type id → name for the FUNC types in a raw BTF blob (split BTF not needed)."""
    if len(raw) < 24:
        return {}
    magic, _ver, _flags, hdr_len = struct.unpack_from("<HBBI", raw, 0)
    if magic != _BTF_MAGIC:
        return {}
    type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", raw, 8)
    types = raw[hdr_len + type_off : hdr_len + type_off + type_len]
    strings = raw[hdr_len + str_off : hdr_len + str_off + str_len]
    out: dict[int, str] = {}
    pos, type_id = 0, 1
    while pos + 12 <= len(types):
        name_off, info, _size = struct.unpack_from("<III", types, pos)
        kind = (info >> 24) & 0x1F
        vlen = info & 0xFFFF
        if kind == KIND_FUNC:
            end = strings.find(b"\0", name_off)
            out[type_id] = strings[name_off:end].decode("utf-8", "surrogateescape")
        fixed, per = _TRAILER.get(kind, (0, 0))
        pos += 12 + fixed + per * vlen
        type_id += 1
    return out


_CACHE: dict[int, dict[int, str]] = {}


def clear_cache() -> None:
    _CACHE.clear()


def func_names(btf_id: int) -> dict[int, str]:
    """FUNC names of a loaded BTF object, cached per id for the scan."""
    if btf_id in _CACHE:
        return _CACHE[btf_id]
    names: dict[int, str] = {}
    try:
        with bpfsys.Fd(bpfsys.fd_by_id(bpfsys.BTF_GET_FD_BY_ID, btf_id)) as fd:
            info = ctypes.create_string_buffer(32)
            bpfsys.info_by_fd(fd, info)
            size = struct.unpack_from("<I", info, 8)[0]
            if size:
                data = ctypes.create_string_buffer(size)
                info = ctypes.create_string_buffer(32)
                struct.pack_into("<QI", info, 0, ctypes.addressof(data), size)
                bpfsys.info_by_fd(fd, info)
                names = parse_names(data.raw)
    except OSError:
        names = {}
    _CACHE[btf_id] = names
    return names
