"""x86-64 code reading (capstone) for the few facts ecap takes from a library's code.

A stripped library still says where its internal functions are and where its
structures keep a field, in its instructions: the function a label string is
passed to (``lea rsi, [rip + "CLIENT_RANDOM"]`` then ``call F``), the displacement
an accessor reads through its first argument (``lea rsi, [rdi + 0x160]``). Both
readings are checked against each other by the caller, and whatever they yield is
then proven at run time (the capture verifies every secret against the wire), so
a misreading costs a refusal, never a wrong result.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterable

from ecap.elf import ElfImage

_LEA_RSI_RIP = b"\x48\x8d\x35"
"""``lea rsi, [rip + disp32]``: how a constant string becomes a call's 2nd argument."""
_WINDOW = 16
"""Instructions looked at after a string reference for the call it feeds."""


@functools.cache
def _disassembler():
    import capstone

    cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    cs.detail = True
    return cs


def string_vaddrs(elf: ElfImage, text: bytes) -> list[int]:
    """Virtual addresses where the NUL-terminated string ``text`` starts."""
    data = elf.raw
    needle = text + b"\0"
    out, at = [], data.find(needle)
    while at >= 0:
        vaddr = elf.offset_to_vaddr(at)
        if vaddr is not None:
            out.append(vaddr)
        at = data.find(needle, at + 1)
    return out


def _code(elf: ElfImage) -> Iterable[tuple[int, int, bytes]]:
    """(file offset, vaddr, bytes) of each executable PT_LOAD segment."""
    for seg in elf.load_segments:
        if seg.executable:
            yield seg.offset, seg.vaddr, elf.raw[seg.offset : seg.offset + seg.filesz]


def calls_fed_by_string(elf: ElfImage, text: bytes) -> set[int]:
    """Functions (vaddrs) called with ``text`` as their second argument."""
    targets = set(string_vaddrs(elf, text))
    found: set[int] = set()
    if not targets:
        return found
    cs = _disassembler()
    for _offset, vaddr, code in _code(elf):
        at = code.find(_LEA_RSI_RIP)
        while at >= 0:
            disp = struct.unpack_from("<i", code, at + 3)[0]
            if vaddr + at + 7 + disp in targets:
                call = _next_call(cs, code[at : at + 15 * _WINDOW], vaddr + at)
                if call is not None:
                    found.add(call)
            at = code.find(_LEA_RSI_RIP, at + 1)
    return found


def _next_call(cs, code: bytes, vaddr: int) -> int | None:
    import capstone.x86 as x86

    for count, insn in enumerate(cs.disasm(code, vaddr)):
        if count >= _WINDOW:
            return None
        if insn.mnemonic in ("call", "jmp"):
            ops = insn.operands
            if len(ops) == 1 and ops[0].type == x86.X86_OP_IMM:
                return int(ops[0].imm) if insn.mnemonic == "call" else None
            return None
        if insn.mnemonic in ("ret",):
            return None
    return None


def first_arg_displacements(elf: ElfImage, vaddr: int, limit: int = 24) -> list[int]:
    """Displacements of memory operands based on the first argument register
    (``rdi``) in the first ``limit`` instructions of the function at ``vaddr`` —
    up to the first write to ``rdi`` (after which it is something else)."""
    import capstone.x86 as x86

    offset = elf.vaddr_to_offset(vaddr)
    if offset is None:
        return []
    cs = _disassembler()
    out: list[int] = []
    for count, insn in enumerate(cs.disasm(elf.raw[offset : offset + 15 * limit], vaddr)):
        if count >= limit or insn.mnemonic in ("ret", "jmp", "call"):
            break
        written = [insn.reg_name(r) for r in insn.regs_access()[1]]
        for op in insn.operands:
            if op.type == x86.X86_OP_MEM and insn.reg_name(op.mem.base) == "rdi" and op.mem.disp:
                out.append(int(op.mem.disp))
        if "rdi" in written or "edi" in written:
            break
    return out


def displacements(elf: ElfImage, vaddr: int, limit: int = 24) -> list[int]:
    """Displacements of every memory operand in the first ``limit`` instructions of
    the function at ``vaddr`` (whatever the base register)."""
    import capstone.x86 as x86

    offset = elf.vaddr_to_offset(vaddr)
    if offset is None:
        return []
    out: list[int] = []
    for count, insn in enumerate(_disassembler().disasm(elf.raw[offset : offset + 15 * limit],
                                                        vaddr)):  # fmt: skip
        if count >= limit:
            break
        out += [int(op.mem.disp) for op in insn.operands if op.type == x86.X86_OP_MEM]
    return out
