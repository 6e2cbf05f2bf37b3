"""ELF symbol resolution, both ways: function name → file offset, and back.

Capture attaches uprobes by *file offset* (what the uprobe PMU takes), so it needs
``SSL_write`` → offset. The detector sees only a path and an offset in a perf-event
fd and must say which function that is. Both directions use the same code here.

pyelftools parses headers, sections and segments. Symbol tables are decoded in
bulk with :func:`struct.iter_unpack` because a large executable (node exports tens
of thousands of symbols) would take seconds through per-symbol objects; name lookups
in ``.dynsym`` use the GNU hash table when present.
"""

from __future__ import annotations

import bisect
import mmap
import os
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

STT_OBJECT = 1
STT_FUNC = 2
STT_GNU_IFUNC = 10
SHN_UNDEF = 0


class NotAnElf(ValueError):
    """The file is missing, unreadable or not a valid ELF object."""


@dataclass(frozen=True)
class Symbol:
    """A function symbol located in the file."""

    name: str
    vaddr: int
    """``st_value``: virtual address in the object's own address space."""
    size: int
    file_offset: int
    """Offset in the file where the function's first instruction lies (uprobe offset)."""


@dataclass(frozen=True)
class LoadSegment:
    """A PT_LOAD program header: how file bytes map to virtual addresses."""

    vaddr: int
    memsz: int
    offset: int
    filesz: int
    executable: bool


_VERSION_RE = re.compile(
    rb"(OpenSSL \d+\.\d+\.\d+[a-z]*(?:-[A-Za-z0-9.]+)?(?: \d{1,2} [A-Z][a-z]{2} \d{4})?"
    rb"|BoringSSL|LibreSSL \d+\.\d+\.\d+)"
)


class ElfImage:
    """One ELF file opened for symbol work; use :func:`open_elf` for the cached one."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise NotAnElf(f"{self.path}: {exc.strerror}") from exc
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                raise NotAnElf(f"{self.path}: empty file")
            self._data = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        if self._data[:4] != b"\x7fELF":
            raise NotAnElf(f"{self.path}: not an ELF file")
        try:
            self._elf = ELFFile(_MmapStream(self._data))
        except ELFError as exc:
            raise NotAnElf(f"{self.path}: {exc}") from exc
        self._is64 = self._elf.elfclass == 64
        self._endian = "<" if self._elf.little_endian else ">"

    # -- segments -----------------------------------------------------------------
    @cached_property
    def load_segments(self) -> list[LoadSegment]:
        out = []
        for seg in self._elf.iter_segments():
            if seg["p_type"] == "PT_LOAD":
                out.append(
                    LoadSegment(
                        seg["p_vaddr"],
                        seg["p_memsz"],
                        seg["p_offset"],
                        seg["p_filesz"],
                        bool(seg["p_flags"] & 1),
                    )
                )
        return out

    def vaddr_to_offset(self, vaddr: int) -> int | None:
        """File offset of a virtual address, via the PT_LOAD that contains it."""
        for seg in self.load_segments:
            if seg.vaddr <= vaddr < seg.vaddr + seg.filesz:
                return vaddr - seg.vaddr + seg.offset
        return None

    def offset_to_vaddr(self, offset: int) -> int | None:
        """Virtual address of a file offset (inverse of :meth:`vaddr_to_offset`)."""
        for seg in self.load_segments:
            if seg.offset <= offset < seg.offset + seg.filesz:
                return offset - seg.offset + seg.vaddr
        return None

    # -- symbols ------------------------------------------------------------------
    def _section_bytes(self, name: str) -> tuple[bytes, object] | None:
        sec = self._elf.get_section_by_name(name)
        if sec is None or sec["sh_type"] == "SHT_NOBITS":
            return None
        return sec.data(), sec

    def _raw_symbols(
        self, table: str, types: tuple[int, ...] = (STT_FUNC, STT_GNU_IFUNC)
    ) -> list[tuple[str, int, int]]:
        """(name, value, size) of defined symbols of ``types`` (functions by default)
        in ``.dynsym``/``.symtab``."""
        found = self._section_bytes(table)
        if found is None:
            return []
        data, sec = found
        strtab = self._elf.get_section(sec["sh_link"]).data()
        if self._is64:
            fmt, name_i, info_i, shndx_i, value_i, size_i = "IBBHQQ", 0, 1, 3, 4, 5
        else:
            fmt, name_i, value_i, size_i, info_i, shndx_i = "IIIBBH", 0, 1, 2, 3, 5
        entsize = struct.calcsize(self._endian + fmt)
        usable = len(data) - len(data) % entsize
        out = []
        for ent in struct.iter_unpack(self._endian + fmt, data[:usable]):
            stype = ent[info_i] & 0xF
            if stype not in types or ent[shndx_i] == SHN_UNDEF:
                continue
            start = ent[name_i]
            end = strtab.find(b"\0", start)
            name = strtab[start:end].decode("utf-8", "surrogateescape")
            if name:
                out.append((name, ent[value_i], ent[size_i]))
        return out

    def _make_symbol(self, name: str, value: int, size: int) -> Symbol | None:
        offset = self.vaddr_to_offset(value)
        return None if offset is None else Symbol(name, value, size, offset)

    def find_functions(self, names: Iterable[str]) -> dict[str, Symbol]:
        """Locate the named functions; names not defined in this file are absent.

        ``.dynsym`` (exported API: what OpenSSL users call) is consulted first,
        ``.symtab`` only for names still missing (static or unexported builds).
        """
        wanted = set(names)
        found: dict[str, Symbol] = {}
        for table in (".dynsym", ".symtab"):
            if not wanted - found.keys():
                break
            for name, value, size in self._raw_symbols(table):
                if name in wanted and name not in found:
                    sym = self._make_symbol(name, value, size)
                    if sym is not None:
                        found[name] = sym
        return found

    def function_names(self) -> list[str]:
        """Every defined function name (to find a C++ function by its unmangled
        prefix when its parameter list differs between versions)."""
        return [n for table in (".dynsym", ".symtab") for n, _, _ in self._raw_symbols(table)]

    def data_addresses(self, names: Iterable[str]) -> dict[str, int]:
        """Link-time addresses of the named global variables defined here."""
        wanted = set(names)
        found: dict[str, int] = {}
        for table in (".dynsym", ".symtab"):
            for name, value, _ in self._raw_symbols(table, (STT_OBJECT,)):
                if name in wanted and name not in found:
                    found[name] = value
        return found

    def got_slot(self, name: str) -> int | None:
        """Link-time address of the GOT slot through which this file reaches the
        global ``name`` defined elsewhere (its GLOB_DAT relocation), or None."""
        from elftools.elf.relocation import RelocationSection

        for section in self._elf.iter_sections():
            if not isinstance(section, RelocationSection) or not section["sh_link"]:
                continue
            symtab = self._elf.get_section(section["sh_link"])
            for reloc in section.iter_relocations():
                index = reloc["r_info_sym"]
                if index and symtab.get_symbol(index).name == name:
                    return int(reloc["r_offset"])
        return None

    @cached_property
    def _by_address(self) -> tuple[list[int], list[tuple[str, int, int]]]:
        merged: dict[int, tuple[str, int, int]] = {}
        for table in (".symtab", ".dynsym"):  # dynsym names win: they are the API names
            for name, value, size in self._raw_symbols(table):
                prev = merged.get(value)
                if prev is None or table == ".dynsym" or (size and not prev[2]):
                    merged[value] = (name, value, size)
        ordered = sorted(merged.values(), key=lambda s: s[1])
        return [s[1] for s in ordered], ordered

    def function_at_offset(self, offset: int) -> tuple[Symbol, int] | None:
        """The function containing file ``offset`` and the distance into it.

        Returns ``(symbol, delta)``; delta 0 means the probe sits on the entry. A
        symbol with size 0 is accepted only for an exact hit.
        """
        vaddr = self.offset_to_vaddr(offset)
        if vaddr is None:
            return None
        addrs, syms = self._by_address
        i = bisect.bisect_right(addrs, vaddr) - 1
        if i < 0:
            return None
        name, value, size = syms[i]
        delta = vaddr - value
        if delta and (size == 0 or delta >= size):
            return None
        return Symbol(name, value, size, offset - delta), delta

    # -- identification -----------------------------------------------------------
    def ssl_version(self) -> str | None:
        """OpenSSL/BoringSSL/LibreSSL version string from ``.rodata``, if any."""
        return self.rodata_search(_VERSION_RE)

    def rodata_search(self, pattern: re.Pattern[bytes]) -> str | None:
        """The first group of ``pattern``'s first match in ``.rodata`` (a library's
        own version string), None when there is none."""
        found = self._section_bytes(".rodata")
        if found is None:
            return None
        m = pattern.search(found[0])
        return m.group(1).decode("ascii", "replace") if m else None

    def build_id(self) -> str | None:
        """GNU build-id (hex) from the ``.note.gnu.build-id`` note."""
        sec = self._elf.get_section_by_name(".note.gnu.build-id")
        if sec is None:
            return None
        for note in sec.iter_notes():
            if note["n_type"] == "NT_GNU_BUILD_ID":
                return str(note["n_desc"])
        return None

    def read(self, offset: int, size: int) -> bytes:
        """``size`` bytes of the file at ``offset`` (code to disassemble, strings)."""
        return bytes(self._data[offset : offset + size])

    def has_section(self, name: str) -> bool:
        return self._elf.get_section_by_name(name) is not None

    def section_data(self, name: str) -> bytes | None:
        """Raw bytes of a section, None when absent or NOBITS (used by Go's pclntab)."""
        found = self._section_bytes(name)
        return None if found is None else found[0]

    @property
    def raw(self) -> mmap.mmap:
        """The whole file, mapped read-only (code reading: :mod:`ecap.x86`)."""
        return self._data

    @property
    def elffile(self) -> ELFFile:
        """The underlying pyelftools object, for format-specific readers."""
        return self._elf


class _MmapStream:
    """A minimal file-like view over an mmap so pyelftools reads without copying."""

    def __init__(self, data: mmap.mmap) -> None:
        self._data = data
        self._pos = 0

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence == 0:
            self._pos = pos
        elif whence == 1:
            self._pos += pos
        else:
            self._pos = len(self._data) + pos
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, n: int = -1) -> bytes:
        end = len(self._data) if n is None or n < 0 else self._pos + n
        chunk = self._data[self._pos : end]
        self._pos += len(chunk)
        return chunk


_CACHE: dict[tuple[int, int, int, int], ElfImage] = {}


def open_elf(path: str | os.PathLike[str]) -> ElfImage:
    """An :class:`ElfImage`, cached by (device, inode, size, mtime).

    Keyed on file identity rather than path: the same libssl reached through two
    containers' roots is parsed once, and a replaced file is parsed again.
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        raise NotAnElf(f"{path}: {exc.strerror}") from exc
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    image = _CACHE.get(key)
    if image is None:
        image = ElfImage(path)
        _CACHE[key] = image
    return image
