"""BPF map access by fd: lookup, update, delete, key walks and per-CPU values.

Keys and values are bytes of the map's own sizes (read once from the kernel with
BPF_OBJ_GET_INFO_BY_FD), so a caller packs them with :mod:`struct` as the C
declares them and nothing here restates a layout.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import struct
from collections.abc import Iterator

from ecap.ebpf import syscall as sc

BPF_ANY = 0
_PERCPU_TYPES = {5, 6, 10}  # PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH


@functools.cache
def possible_cpus() -> int:
    """CPUs the kernel sizes per-CPU values for (``/sys/devices/system/cpu/possible``)."""
    with open("/sys/devices/system/cpu/possible") as f:
        text = f.read().strip()
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count


class Map:
    """One map of a loaded object."""

    def __init__(self, fd: int, name: str) -> None:
        self.fd = fd
        self.name = name
        info = ctypes.create_string_buffer(80)
        a = sc.attr(16)
        struct.pack_into("<IIQ", a, 0, fd, len(info), ctypes.addressof(info))
        sc.bpf(sc.OBJ_GET_INFO_BY_FD, a)
        (self.type, self.id, self.key_size, self.value_size, self.max_entries) = struct.unpack_from(
            "<IIIII", info, 0
        )
        self.percpu = self.type in _PERCPU_TYPES
        stride = (self.value_size + 7) & ~7
        self._value_buf_size = stride * possible_cpus() if self.percpu else self.value_size
        self._stride = stride

    def _elem(self, cmd: int, key: bytes, value: ctypes.Array | None, flags: int = 0) -> int:
        kbuf = ctypes.create_string_buffer(key, self.key_size)
        a = sc.attr(32)
        struct.pack_into("<IIQQQ", a, 0, self.fd, 0, ctypes.addressof(kbuf), sc.addr(value), flags)
        return sc.bpf(cmd, a)

    def lookup(self, key: bytes) -> bytes | None:
        """The value, or None when the key is absent (per-CPU maps: CPU 0's)."""
        values = self.lookup_all(key)
        return values[0] if values else None

    def lookup_all(self, key: bytes) -> list[bytes] | None:
        """Every CPU's value for per-CPU maps, a one-element list otherwise."""
        value = ctypes.create_string_buffer(self._value_buf_size)
        try:
            self._elem(sc.MAP_LOOKUP_ELEM, key, value)
        except sc.BpfError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise
        if not self.percpu:
            return [value.raw]
        raw = value.raw
        return [
            raw[i * self._stride : i * self._stride + self.value_size]
            for i in range(possible_cpus())
        ]

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        buf = ctypes.create_string_buffer(value, self._value_buf_size)
        self._elem(sc.MAP_UPDATE_ELEM, key, buf, flags)

    def delete(self, key: bytes) -> bool:
        """Remove a key; False when it was not there."""
        try:
            self._elem(sc.MAP_DELETE_ELEM, key, None)
        except sc.BpfError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        return True

    def iter_keys(self) -> Iterator[bytes]:
        """Every key (a snapshot walk; keys deleted meanwhile may be skipped)."""
        nxt = ctypes.create_string_buffer(self.key_size)
        key: bytes | None = None
        while True:
            kbuf = ctypes.create_string_buffer(key or b"", self.key_size)
            a = sc.attr(32)
            struct.pack_into(
                "<IIQQ", a, 0, self.fd, 0, 0 if key is None else ctypes.addressof(kbuf),
                ctypes.addressof(nxt),
            )  # fmt: skip
            try:
                sc.bpf(sc.MAP_GET_NEXT_KEY, a)
            except sc.BpfError as exc:
                if exc.errno == errno.ENOENT:
                    return
                raise
            key = nxt.raw
            yield key
