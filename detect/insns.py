"""A program's translated instructions (``xlated_prog_insns``), decoded for what matters.

The kernel returns a program's instructions after verification and fix-ups
(``bpf_insn_prepare_dump``): helper and kfunc calls keep their target as an offset
from ``__bpf_call_base`` (named through :mod:`ecap.detect.kallsyms`), map
references carry the map's id in ``imm`` with the reference kind in ``src_reg``,
and tail calls are spelled ``call 12``. That is all a detector needs to say what a
program *can* do, whatever it is called and wherever it is attached — the way
``bpftool prog dump xlated`` names the helpers, without running bpftool.

Decoding is a single linear pass over 8-byte instructions; nothing is executed
or followed, so a hostile program cannot make it loop.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

INSN = struct.Struct("<BBhi")

# Opcodes (include/uapi/linux/bpf.h, bpf_common.h)
_CALL = 0x85  # BPF_JMP | BPF_CALL
_LD_IMM64 = 0x18  # BPF_LD | BPF_IMM | BPF_DW
_LD_CLASS = 0x00
_MODE_ABS, _MODE_IND = 0x20, 0x40
_PSEUDO_CALL = 1  # bpf-to-bpf call (subprogram): not a helper
_PSEUDO_KFUNC_CALL = 2
TAIL_CALL_IMM = 12  # BPF_FUNC_tail_call, as bpf_insn_prepare_dump writes it
# src_reg of an ld_imm64 that refers to a map (after prepare_dump: the map's id in imm)
_MAP_FD, _MAP_VALUE, _MAP_IDX, _MAP_IDX_VALUE = 1, 2, 5, 6
_MAP_REFS = {_MAP_FD: "fd", _MAP_IDX: "fd", _MAP_VALUE: "value", _MAP_IDX_VALUE: "value"}


@dataclass(frozen=True)
class Decoded:
    """What one instruction stream refers to."""

    insns: int
    """Number of 8-byte instructions."""
    calls: tuple[int, ...]
    """Distinct helper/kfunc call targets (offsets from ``__bpf_call_base``), in order seen."""
    hidden_calls: int
    """Calls whose target the kernel zeroed (``kernel.kptr_restrict`` hides addresses)."""
    maps: dict[int, str]
    """map id → ``fd`` (the map itself, for helpers) or ``value`` (direct access to its data)."""
    tail_calls: bool
    packet_loads: bool
    """Classic ``LD_ABS``/``LD_IND`` packet loads (socket filters)."""


def decode(raw: bytes) -> Decoded:
    """Decode a translated instruction stream (a whole number of 8-byte insns)."""
    usable = len(raw) - len(raw) % INSN.size
    calls: dict[int, None] = {}
    maps: dict[int, str] = {}
    hidden = 0
    tail = packet = False
    skip_next = False
    for code, regs, _off, imm in INSN.iter_unpack(raw[:usable]):
        if skip_next:  # second half of an ld_imm64
            skip_next = False
            continue
        src = regs >> 4
        if code == _CALL:
            if src == _PSEUDO_CALL:
                continue
            if src == 0 and imm == TAIL_CALL_IMM:
                tail = True
            elif imm == 0:
                hidden += 1
            else:
                calls.setdefault(imm, None)
        elif code == _LD_IMM64:
            skip_next = True
            kind = _MAP_REFS.get(src)
            if kind is not None and imm > 0:
                old = maps.get(imm)
                maps[imm] = "value" if "value" in (old, kind) else kind
        elif code & 0x07 == _LD_CLASS and code & 0xE0 in (_MODE_ABS, _MODE_IND):
            packet = True
    return Decoded(usable // INSN.size, tuple(calls), hidden, maps, tail, packet)
