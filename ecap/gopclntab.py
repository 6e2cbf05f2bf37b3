"""Function names of Go binaries from ``.gopclntab``, which survives ``strip``.

Go programs carry their own symbol table for stack traces and ``runtime.FuncForPC``.
Stripping removes ``.symtab`` but never ``.gopclntab``, so eCapture-style ``gotls``
hooks on ``crypto/tls.(*Conn).Read`` in a stripped binary can still be named —
and ``capture gotls`` can still find where to attach (entry and end of each
function: it disassembles the range for the return instructions). Both directions
live here: :meth:`GoFuncTable.function_at` (vaddr → name, the detector) and
:meth:`GoFuncTable.find` (name → range, the capture).

Supported layouts (``runtime/symtab.go``): Go 1.2–1.15 (magic 0xfffffffb),
1.16–1.17 (0xfffffffa), 1.18–1.19 (0xfffffff0) and 1.20+ (0xfffffff1).
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass

from ecap.elf import ElfImage

MAGIC_12 = 0xFFFFFFFB
MAGIC_116 = 0xFFFFFFFA
MAGIC_118 = 0xFFFFFFF0
MAGIC_120 = 0xFFFFFFF1
_MAGICS = {MAGIC_12, MAGIC_116, MAGIC_118, MAGIC_120}


class BadPclntab(ValueError):
    """The section is not a pclntab this reader understands."""


@dataclass(frozen=True)
class GoFunc:
    """One Go function: name and the virtual-address range of its code."""

    name: str
    entry: int
    end: int


class GoFuncTable:
    """Sorted Go function entries of one binary, parsed from raw pclntab bytes."""

    def __init__(self, data: bytes, *, little_endian: bool = True) -> None:
        if len(data) < 16:
            raise BadPclntab("pclntab too short")
        e = "<" if little_endian else ">"
        magic = struct.unpack_from(e + "I", data, 0)[0]
        if magic not in _MAGICS or data[4:6] != b"\0\0":
            raise BadPclntab(f"unknown pclntab magic {magic:#x}")
        ptr = data[7]
        if ptr not in (4, 8):
            raise BadPclntab(f"bad pointer size {ptr}")
        word = e + ("Q" if ptr == 8 else "I")

        def uword(off: int) -> int:
            return struct.unpack_from(word, data, off)[0]

        entries: list[tuple[int, int]] = []  # (entry vaddr, func struct offset)
        if magic == MAGIC_12:
            nfunc = uword(8)
            ftab = 8 + ptr
            for i in range(nfunc + 1):
                entries.append((uword(ftab + 2 * i * ptr), uword(ftab + (2 * i + 1) * ptr)))
            self._funcs = self._names_12(data, e, entries, nfunc)
        else:
            nfunc = uword(8)
            if magic == MAGIC_116:
                text_start = 0
                funcname_off, pcln_off = uword(8 + 2 * ptr), uword(8 + 6 * ptr)
            else:
                text_start = uword(8 + 2 * ptr)
                funcname_off, pcln_off = uword(8 + 3 * ptr), uword(8 + 7 * ptr)
            ftab = data[pcln_off:]
            if magic == MAGIC_116:
                for i in range(nfunc + 1):
                    entry = struct.unpack_from(word, ftab, 2 * i * ptr)[0]
                    foff = struct.unpack_from(word, ftab, (2 * i + 1) * ptr)[0]
                    entries.append((entry, foff))
            else:
                for i in range(nfunc + 1):
                    entry_off, foff = struct.unpack_from(e + "II", ftab, 8 * i)
                    entries.append((text_start + entry_off, foff))
            funcs = []
            nameoff_at = ptr if magic == MAGIC_116 else 4
            for i in range(nfunc):
                entry, foff = entries[i]
                nameoff = struct.unpack_from(e + "i", ftab, foff + nameoff_at)[0]
                start = funcname_off + nameoff
                name = data[start : data.index(b"\0", start)].decode("utf-8", "replace")
                funcs.append(GoFunc(name, entry, entries[i + 1][0]))
            self._funcs = funcs
        self._funcs.sort(key=lambda f: f.entry)
        self._entries = [f.entry for f in self._funcs]
        self._by_name = {f.name: f for f in self._funcs}

    @staticmethod
    def _names_12(data: bytes, e: str, entries: list[tuple[int, int]], nfunc: int) -> list[GoFunc]:
        ptr = data[7]
        funcs = []
        for i in range(nfunc):
            entry, foff = entries[i]
            nameoff = struct.unpack_from(e + "i", data, foff + ptr)[0]
            name = data[nameoff : data.index(b"\0", nameoff)].decode("utf-8", "replace")
            funcs.append(GoFunc(name, entry, entries[i + 1][0]))
        return funcs

    def __len__(self) -> int:
        return len(self._funcs)

    def function_at(self, vaddr: int) -> GoFunc | None:
        """The function whose code contains ``vaddr``."""
        i = bisect.bisect_right(self._entries, vaddr) - 1
        if i < 0:
            return None
        fn = self._funcs[i]
        return fn if fn.entry <= vaddr < fn.end else None

    def find(self, name: str) -> GoFunc | None:
        """A function by its full Go name (``crypto/tls.(*Conn).Read``)."""
        return self._by_name.get(name)


_CACHE: dict[int, GoFuncTable | None] = {}


def go_functions(image: ElfImage) -> GoFuncTable | None:
    """The Go function table of an ELF image (cached per image), None if not Go.

    Reads ``.gopclntab``; a broken table is treated as absent rather than fatal,
    since the caller is naming a probe target, not validating the binary.
    """
    key = id(image)
    if key in _CACHE:
        return _CACHE[key]
    little = image.elffile.little_endian
    table = None
    # Internally linked PIE binaries name the section .data.rel.ro.gopclntab.
    data = image.section_data(".gopclntab") or image.section_data(".data.rel.ro.gopclntab")
    if data is not None:
        table = _try_parse(data, little)
    else:
        # PIE and externally linked Go binaries keep the table inside .data.rel.ro
        # (or .rodata) without a section of its own: look for the header there.
        for section in (".data.rel.ro", ".rodata"):
            blob = image.section_data(section)
            if blob is not None:
                table = _search(blob, little)
                if table is not None:
                    break
    _CACHE[key] = table
    return table


def _try_parse(data: bytes, little: bool) -> GoFuncTable | None:
    try:
        table = GoFuncTable(data, little_endian=little)
    except (BadPclntab, struct.error, ValueError, IndexError):
        return None
    return table if len(table) else None


_MAX_CANDIDATES = 64


def _search(blob: bytes, little: bool) -> GoFuncTable | None:
    """Find a pclntab header inside a larger section: magic, two zero bytes, sane
    instruction quantum and pointer size; the first candidate that parses wins."""
    tried = 0
    for magic in (MAGIC_120, MAGIC_118, MAGIC_116, MAGIC_12):
        needle = struct.pack("<I" if little else ">I", magic) + b"\0\0"
        pos = blob.find(needle)
        while pos != -1 and tried < _MAX_CANDIDATES:
            if blob[pos + 6] in (1, 2, 4) and blob[pos + 7] in (4, 8):
                tried += 1
                table = _try_parse(blob[pos:], little)
                if table is not None and len(table) > 1:
                    return table
            pos = blob.find(needle, pos + 4)
    return None
