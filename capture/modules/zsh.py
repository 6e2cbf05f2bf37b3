"""``capture zsh``: every command an interactive zsh reads, with its exit status.

zsh's line editor is a module, ``zsh/zle`` (``zle.so``), loaded by interactive
shells; both probes are there (see ``bpf/shell.bpf.c``). ``zlegetline`` returns
the finished line only when ``zleread`` itself calls it (completion, history and
widgets call it too: never from ``zleread``), so only real command lines are
captured; ``zlecontext`` tells a command line from a ``select`` reply or ``vared``.
``lastval`` (the exit status) lives in ``/bin/zsh``: the program reads it through
``zle.so``'s own GOT slot, so no per-process address is needed.

zsh keeps its strings *metafied* (bytes 0x83-0x9f and NUL escaped as 0x83 followed
by the byte XOR 32): the text is un-metafied here, so it is exactly what was typed.
"""

from __future__ import annotations

from typing import Any

from ecap.capture.events import COMMAND
from ecap.capture.modules._shell import ShellRecords, delta
from ecap.capture.modules.interface import CaptureModule, Hook, HookTarget, Probe, RecordContext

HOOKS = (
    Hook("zleread", "zsh_command_start", plaintext=True, required=True),
    Hook("zlegetline", "zsh_getline_enter", "zsh_line", plaintext=True, required=True),
)
META = 0x83
ZLE_SO = "/zsh/zle.so"


def unmetafy(raw: bytes) -> bytes:
    """zsh's metafied string → the real bytes (a trailing lone Meta is dropped)."""
    if META not in raw:
        return raw
    out = bytearray()
    it = iter(raw)
    for byte in it:
        if byte == META:
            nxt = next(it, None)
            if nxt is not None:
                out.append(nxt ^ 32)
        else:
            out.append(byte)
    return bytes(out)


def line_text(raw: bytes, truncated: int) -> bytes | None:
    """A line zleread returned ends with the newline it appended; without it (and not
    cut short) the line was not accepted."""
    if raw.endswith(b"\n"):
        return unmetafy(raw[:-1])
    return unmetafy(raw) if truncated else None


def getline_cookie(zlegetline: int, zleread: int, zleread_size: int, zlecontext: int) -> int:
    """zsh_getline_enter's cookie: distance to zlecontext (bits 0-31), to zleread
    (signed, bits 32-55) and zleread's size in 16-byte units (bits 56-63)."""
    to_zleread = zleread - zlegetline
    units = -(-zleread_size // 16)
    if not -(1 << 23) <= to_zleread < 1 << 23 or units > 0xFF:
        raise ValueError("zle.so is laid out beyond what the cookie can say")
    return delta(zlecontext, zlegetline) | ((to_zleread & 0xFFFFFF) << 32) | (units << 56)


def resolve(pid: int, options: dict[str, Any]) -> HookTarget:
    """The zle.so the zsh process ``pid`` has loaded, and the probes."""
    from ecap import procfs
    from ecap.elf import NotAnElf, open_elf
    from ecap.errors import UsageError

    mapped = next((p for p in procfs.mapped_files(pid) if p.endswith(ZLE_SO)), None)
    if mapped is None:
        raise UsageError(
            f"process {pid} ({procfs.comm(pid)!r}) has no zsh line editor (zsh/zle) loaded",
            hint="capture zsh needs an interactive zsh (it loads zle.so at its first prompt)",
        )
    host_path = procfs.in_root(pid, mapped)
    try:
        elf = open_elf(host_path)
        funcs = elf.find_functions(h.function for h in HOOKS)
        data = elf.data_addresses(["zlecontext"])
        lastval_slot = elf.got_slot("lastval")
    except NotAnElf:
        funcs, data, lastval_slot = {}, {}, None
    missing = [h.function for h in HOOKS if h.function not in funcs]
    missing += [n for n, v in (("zlecontext", data.get("zlecontext")),
                               ("lastval", lastval_slot)) if v is None]  # fmt: skip
    if missing:
        raise UsageError(
            f"{mapped} in process {pid} does not define {', '.join(missing)}",
            hint="this zsh's line editor is not one ecap knows (zsh 5.x)",
        )
    zleread, getline = funcs["zleread"], funcs["zlegetline"]
    probes = (
        Probe("zleread", zleread.file_offset, "zsh_command_start", False,
              delta(lastval_slot, zleread.vaddr)),
        Probe("zlegetline", getline.file_offset, "zsh_getline_enter", False,
              getline_cookie(getline.vaddr, zleread.vaddr, zleread.size, data["zlecontext"])),
        Probe("zlegetline", getline.file_offset, "zsh_line", True, 0),
    )  # fmt: skip
    parts = mapped.split("/")
    version = f"zsh {parts[-3]}" if len(parts) >= 3 and parts[-3][:1].isdigit() else None
    offsets = {name: sym.file_offset for name, sym in funcs.items()}
    return HookTarget(pid, host_path, mapped, "library", version, probes, offsets)


def _records(ctx: RecordContext) -> ShellRecords:
    return ShellRecords(ctx, "zsh", line_text)


MODULE = CaptureModule(
    name="zsh",
    summary="interactive zsh: every command line read (multi-line as one), exit status",
    classification="shell",
    bpf_object="shell",
    hooks=HOOKS,
    emits=frozenset({COMMAND}),
    identity="shell process",
    resolve=resolve,
    records=_records,
)
