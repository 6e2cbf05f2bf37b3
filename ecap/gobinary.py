"""What hooking a Go executable needs beyond its function table (:mod:`ecap.gopclntab`).

* **Build info** (``.go.buildinfo``, Go ≥ 1.13): the Go version and build settings
  (``GOARCH``, ``GOEXPERIMENT``...), which decide the calling convention: Go ≥ 1.17
  on amd64 passes arguments and results in registers (ABIInternal), older Go on
  the stack. Stripping keeps this section.
* **Return instructions**, found by disassembling a function's range with
  capstone: Go code must never get a uretprobe (the runtime copies goroutine
  stacks, and a rewritten return address breaks it), so results are read by
  uprobes on each ``RET``; and the branch of the prologue's stack check, where an
  entry probe costs one trap instead of two.
* **Where the runtime keeps the current goroutine** (``g``) in thread-local
  storage, read off ``runtime.morestack``'s first ``fs:`` access.
* **Struct layouts from DWARF** when the binary has it (not ``-ldflags=-w``):
  the member offsets that lead from a ``*tls.Conn`` to its socket's fd.
"""

from __future__ import annotations

import functools
import re
import struct
from dataclasses import dataclass
from typing import Any

from ecap.elf import ElfImage
from ecap.gopclntab import GoFunc

BUILDINFO_MAGIC = b"\xff Go buildinf:"
REGISTER_ABI = "register"
STACK_ABI = "stack"
_VERSION_RE = re.compile(r"go(\d+)\.(\d+)")


class NotDisassembled(ValueError):
    """A function's code could not be decoded to its end (its returns are unknown)."""


# -- build info -----------------------------------------------------------------------


@dataclass(frozen=True)
class BuildInfo:
    """The Go version and the build settings the binary records."""

    version: str
    """``go1.19.8`` (as ``runtime.Version()`` says it)."""
    settings: dict[str, str]
    """``build`` lines of the module info: ``GOARCH``, ``GOEXPERIMENT``, ``-ldflags``..."""

    @property
    def release(self) -> tuple[int, int] | None:
        """(1, 19) for go1.19.8; None for a version string that names no release."""
        m = _VERSION_RE.search(self.version)
        return (int(m.group(1)), int(m.group(2))) if m else None

    @property
    def experiments(self) -> set[str]:
        found = set(filter(None, self.settings.get("GOEXPERIMENT", "").split(",")))
        if " X:" in self.version:
            found |= set(self.version.split(" X:", 1)[1].split(","))
        return found


def _uvarint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _module_settings(modinfo: str) -> dict[str, str]:
    out = {}
    for line in modinfo.splitlines():
        parts = line.split("\t", 1)
        if len(parts) == 2 and parts[0] == "build" and "=" in parts[1]:
            key, _, value = parts[1].partition("=")
            out[key] = value
    return out


def build_info(image: ElfImage) -> BuildInfo | None:
    """The binary's Go build info, None when it has none (not Go, or Go < 1.13)."""
    data = image.section_data(".go.buildinfo")
    if data is None or not data.startswith(BUILDINFO_MAGIC) or len(data) < 32:
        return None
    ptr_size, flags = data[14], data[15]
    try:
        if flags & 2:  # Go >= 1.18: the strings follow the header, length-prefixed
            n, pos = _uvarint(data, 32)
            version = data[pos : pos + n].decode("utf-8", "replace")
            n, pos = _uvarint(data, pos + n)
            modinfo = data[pos : pos + n]
        else:  # Go 1.13-1.17: pointers to two Go strings
            e = ">" if flags & 1 else "<"
            word = e + ("Q" if ptr_size == 8 else "I")
            version = _go_string(image, struct.unpack_from(word, data, 16)[0], word)
            modinfo = _go_string(image, struct.unpack_from(word, data, 16 + ptr_size)[0], word)
            version = version.decode("utf-8", "replace")
    except (IndexError, struct.error):
        return None
    # the module info is framed by 16-byte sentinels
    text = modinfo[16:-16] if len(modinfo) >= 33 else modinfo
    return BuildInfo(version, _module_settings(text.decode("utf-8", "replace")))


def _go_string(image: ElfImage, vaddr: int, word: str) -> bytes:
    """The bytes of the Go string header at ``vaddr`` (pointer, length)."""
    header = _read_vaddr(image, vaddr, 2 * struct.calcsize(word))
    ptr, length = struct.unpack(word + word[-1], header)
    return _read_vaddr(image, ptr, length)


def _read_vaddr(image: ElfImage, vaddr: int, size: int) -> bytes:
    offset = image.vaddr_to_offset(vaddr)
    if offset is None:
        raise IndexError(f"address {vaddr:#x} is not in the file")
    return image.read(offset, size)


def calling_convention(info: BuildInfo) -> str | None:
    """``register`` or ``stack`` for amd64 code of this Go release, None if unknown.

    Register ABI from Go 1.17; in 1.17 and 1.18 ``GOEXPERIMENT=noregabi`` still
    turned it off (from 1.19 the experiment is gone and the setting is ignored).
    """
    release = info.release
    if release is None or info.settings.get("GOARCH", "amd64") != "amd64":
        return None
    if release < (1, 17):
        return STACK_ABI
    if release < (1, 19) and "noregabi" in info.experiments:
        return STACK_ABI
    return REGISTER_ABI


# -- code -----------------------------------------------------------------------------


def _capstone(detail: bool = False) -> Any:
    import capstone

    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.detail = detail
    return md


def _code(image: ElfImage, fn: GoFunc) -> tuple[int, bytes]:
    offset = image.vaddr_to_offset(fn.entry)
    if offset is None:
        raise NotDisassembled(f"{fn.name} is not in the file")
    return offset, image.read(offset, fn.end - fn.entry)


def return_offsets(image: ElfImage, fn: GoFunc) -> list[int]:
    """File offsets of every return instruction of ``fn`` (linear sweep: Go puts
    no data in its text, and the function's range comes from the pclntab)."""
    offset, code = _code(image, fn)
    found = []
    decoded = 0
    for address, size, mnemonic, _ops in _capstone().disasm_lite(code, fn.entry):
        decoded += size
        if mnemonic == "ret":
            found.append(offset + address - fn.entry)
    if decoded != len(code):
        raise NotDisassembled(
            f"{fn.name}: decoded {decoded} of {len(code)} bytes (unknown instruction)"
        )
    return found


def stack_check_branch(image: ElfImage, fn: GoFunc) -> int | None:
    """File offset of the conditional jump of ``fn``'s stack-bound check, None when
    its prologue has none.

    A Go function starts by comparing the stack pointer with ``g.stackguard0``
    (``[r14 + 16]``, or ``[reg + 16]`` after loading g from TLS) and jumping to its
    ``runtime.morestack`` call when the stack is too small. A uprobe there fires
    exactly when one at the entry would (once per pass: twice for a call whose stack
    grows), with the arguments still in place, and costs one trap instead of two:
    the kernel emulates a conditional jump, but single-steps the compare or ``lea``
    a Go function starts with.
    """
    from capstone import x86

    offset, code = _code(image, fn)
    previous = None
    for n, insn in enumerate(_capstone(detail=True).disasm(code[:64], fn.entry)):
        if n >= 6:
            break
        if (insn.id in (x86.X86_INS_JBE, x86.X86_INS_JB) and previous is not None
                and previous.id == x86.X86_INS_CMP):  # fmt: skip
            ops = previous.operands
            target = insn.operands[0].imm if insn.operands else 0
            if (len(ops) == 2 and ops[1].type == x86.X86_OP_MEM and ops[1].mem.disp == 16
                    and fn.entry <= target < fn.end):  # fmt: skip
                return offset + insn.address - fn.entry
        previous = insn
    return None


def prologue_convention(image: ElfImage, fn: GoFunc) -> str | None:
    """What the function's stack-bound check says: ABIInternal compares against
    ``[r14 + 16]`` (r14 is g), the stack ABI first loads g from ``fs:``."""
    from capstone import x86

    _, code = _code(image, fn)
    for n, insn in enumerate(_capstone(detail=True).disasm(code[:64], fn.entry)):
        if n >= 3:
            break
        for op in insn.operands:
            if op.type != x86.X86_OP_MEM:
                continue
            if op.mem.segment == x86.X86_REG_FS:
                return STACK_ABI
            if op.mem.base == x86.X86_REG_R14:
                return REGISTER_ABI
    return None


def tls_g_slot(image: ElfImage, morestack: GoFunc | None) -> int:
    """Where g lives below the fs base, in 8-byte units (1 for ``fs:-8``, what
    every statically linked linux/amd64 Go binary uses): the first ``fs:``
    access with a constant displacement in ``runtime.morestack``."""
    from capstone import x86

    if morestack is None:
        return 1
    _, code = _code(image, morestack)
    for insn in _capstone(detail=True).disasm(code[:128], morestack.entry):
        for op in insn.operands:
            if (op.type == x86.X86_OP_MEM and op.mem.segment == x86.X86_REG_FS
                    and not op.mem.base and not op.mem.index):  # fmt: skip
                disp = op.mem.disp
                if disp < 0 and disp % 8 == 0:
                    return -disp // 8
    return 1


# -- DWARF ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def struct_offsets(image: ElfImage, wanted: tuple[tuple[str, str], ...]) -> dict | None:
    """``{(struct, member): offset}`` for each wanted pair, from the binary's DWARF;
    None when there is no DWARF or any pair is missing.

    Go's DWARF holds every type of the program in one unit and names types by
    their full Go name inline (``DW_FORM_string``). Walking that unit with
    pyelftools takes ~0.5 s; finding each name's bytes and parsing only the DIE
    that owns them (its abbreviation code is the byte before; the DIE must parse
    as a ``structure_type`` of exactly that name) takes a few milliseconds.
    """
    elf = image.elffile
    if not image.has_section(".debug_info"):
        return None
    try:
        dwarf = elf.get_dwarf_info()
        info = elf.get_section_by_name(".debug_info").data()
    except Exception:  # pyelftools raises many kinds: a DWARF it cannot read is no DWARF
        return None
    out: dict[tuple[str, str], int] = {}
    for name in {s for s, _ in wanted}:
        members = _members(dwarf, info, name)
        if members is None:
            return None
        for struct_name, member in wanted:
            if struct_name == name:
                if member not in members:
                    return None
                out[(name, member)] = members[member]
    return out


def _members(dwarf: Any, info: bytes, name: str) -> dict[str, int] | None:
    """Member name → offset of the structure type ``name`` (None if not found)."""
    needle = name.encode() + b"\0"
    pos = info.find(needle)
    while pos > 0:
        try:
            die = dwarf.get_DIE_from_refaddr(pos - 1)
        except Exception:  # not the start of a DIE (the name in another string)
            die = None
        attr = die.attributes.get("DW_AT_name") if die is not None else None
        if die is not None and die.tag == "DW_TAG_structure_type" and attr and attr.value == needle[:-1]:  # fmt: skip
            out = {}
            for child in die.iter_children():
                loc = child.attributes.get("DW_AT_data_member_location")
                member = child.attributes.get("DW_AT_name")
                if child.tag == "DW_TAG_member" and loc and member and isinstance(loc.value, int):
                    out[member.value.decode()] = loc.value
            return out
        pos = info.find(needle, pos + 1)
    return None
