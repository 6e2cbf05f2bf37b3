"""Names of the kernel functions a BPF program calls.

A translated program calls helpers and kfuncs at ``__bpf_call_base + imm``; the
name at that address (``bpf_probe_read_user``, ``bpf_ringbuf_output``,
``htab_map_update_elem``...) comes from ``/proc/kallsyms``, as bpftool does it.
Reading kallsyms costs the kernel ~50 ms (120,000 lines), so it is read only when
some program calls something, once per kernel build per process (the offsets from
``__bpf_call_base`` do not move with KASLR: the whole text moves together). A
``watch`` loop pays it once.

Addresses are shown only to CAP_SYSLOG with ``kernel.kptr_restrict`` ≤ 1; under
``kptr_restrict=2`` (or without CAP_SYSLOG) every address reads as zero and
names cannot be found: :func:`resolver` then returns None and callers say so.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from ecap.fsutil import read_to_end

KALLSYMS = "/proc/kallsyms"
_cache: dict[str, dict[int, str | None]] = {}
"""build id → {call offset → name}; offsets are constant for one kernel image."""


def _build_id() -> str:
    """The running kernel image's identity (GNU build id in /sys/kernel/notes)."""
    try:
        with open("/sys/kernel/notes", "rb") as f:
            return f.read(4096).hex()
    except OSError:
        return os.uname().version + os.uname().release


def _read() -> bytes:
    fd = os.open(KALLSYMS, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return read_to_end(fd, 1 << 20)
    finally:
        os.close(fd)


def _address_of(text: bytes, name: bytes) -> int | None:
    at = text.find(b" " + name + b"\n")
    if at < 0:
        return None
    start = text.rfind(b"\n", 0, at) + 1
    try:
        return int(text[start : start + 16], 16)
    except ValueError:
        return None


def _line_at(text: bytes, pos: int) -> tuple[int, int]:
    """(start, end) of the line containing byte ``pos``."""
    start = text.rfind(b"\n", 0, pos) + 1
    end = text.find(b"\n", pos)
    return start, end if end >= 0 else len(text)


def _text_symbol(line: bytes) -> str | None:
    fields = line.split()
    if len(fields) >= 3 and fields[1] in (b"t", b"T", b"w", b"W"):
        return fields[2].decode("ascii", "replace")
    return None


def _name_at(text: bytes, address: int, core_end: int) -> str | None:
    """The text symbol at ``address``: binary search over the core kernel's lines
    (kallsyms lists them in address order), then the modules' lines."""
    lo, hi = 0, core_end
    while lo < hi:
        mid = (lo + hi) // 2
        start, end = _line_at(text, mid)
        try:
            addr = int(text[start : start + 16], 16)
        except ValueError:
            return None
        if addr < address:
            lo = end + 1
        elif addr > address:
            hi = start
        else:  # several names may share an address: take a text symbol among them
            while start > 0:
                prev, _ = _line_at(text, start - 1)
                if text[prev : prev + 16] != text[start : start + 16]:
                    break
                start = prev
            key = text[start : start + 16]
            while start < core_end and text[start : start + 16] == key:
                _, end = _line_at(text, start)
                name = _text_symbol(text[start:end])
                if name is not None:
                    return name
                start = end + 1
            return None
    needle = b"%016x " % address
    at = text.find(needle, core_end)  # module symbols are not sorted
    if at < 0:
        return None
    return _text_symbol(text[at : _line_at(text, at)[1]])


def resolve(offsets: Iterable[int]) -> dict[int, str | None] | None:
    """Names for these call offsets, or None when kallsyms shows no addresses."""
    wanted = set(offsets)
    build = _build_id()
    known = _cache.setdefault(build, {})
    missing = wanted - known.keys()
    if missing:
        try:
            text = _read()
        except OSError:
            return None
        base = _address_of(text, b"__bpf_call_base")
        if not base:  # kptr_restrict hides addresses: they all read as zero
            return None
        core_end = text.find(b"\t[")  # the first module symbol's line
        core_end = len(text) if core_end < 0 else text.rfind(b"\n", 0, core_end) + 1
        for off in missing:
            known[off] = _name_at(text, base + off, core_end)
    return {off: known[off] for off in wanted}


def clear_cache() -> None:
    """Forget names (tests; a long-running watcher never needs to)."""
    _cache.clear()
