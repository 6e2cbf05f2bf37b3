"""``capture bash``: every command an interactive bash reads, with its exit status.

Debian's bash links readline statically, so everything is in ``/bin/bash`` (as the
process sees it; containers included). See ``bpf/shell.bpf.c`` for why each
function: ``readline_internal_teardown`` (entry) sees the finished line even when
the capture attached while it was being typed — a return probe on ``readline``
would miss that one — and ``read_command`` delimits commands, so a multi-line
command is one event and the next command's start carries the status.
"""

from __future__ import annotations

from typing import Any

from ecap.capture.events import COMMAND
from ecap.capture.modules._shell import ShellRecords, delta
from ecap.capture.modules.interface import CaptureModule, Hook, HookTarget, Probe, RecordContext

HOOKS = (
    Hook("readline_internal_teardown", "bash_line", plaintext=True, required=True),
    Hook("read_command", "bash_command_start", "bash_command_read", plaintext=True, required=True),
)
GLOBALS = ("rl_line_buffer", "rl_end", "last_command_exit_value")


def resolve(pid: int, options: dict[str, Any]) -> HookTarget:
    """The bash executable of ``pid`` and the probes, with the globals' distances."""
    from ecap import procfs
    from ecap.capture.modules._libraries import stable_exe_path
    from ecap.elf import NotAnElf, open_elf
    from ecap.errors import UsageError

    exe = procfs.exe(pid)
    host_path = procfs.PROC / str(pid) / "exe"
    try:
        elf = open_elf(host_path)
        funcs = elf.find_functions(h.function for h in HOOKS)
        data = elf.data_addresses(GLOBALS)
    except NotAnElf:
        funcs, data = {}, {}
    missing = [h.function for h in HOOKS if h.function not in funcs]
    missing += [g for g in GLOBALS if g not in data]
    if missing or exe is None:
        raise UsageError(
            f"process {pid} ({procfs.comm(pid)!r}) is not a bash with readline: its "
            f"executable defines no {', '.join(missing) or 'executable'}",
            hint="capture bash needs an interactive bash (Debian's /bin/bash links readline)",
        )
    teardown, read_command = funcs["readline_internal_teardown"], funcs["read_command"]
    line_cookie = delta(data["rl_line_buffer"], teardown.vaddr) | (
        delta(data["rl_end"], teardown.vaddr) << 32
    )
    status_cookie = delta(data["last_command_exit_value"], read_command.vaddr)
    probes = (
        Probe("readline_internal_teardown", teardown.file_offset, "bash_line", False, line_cookie),
        Probe("read_command", read_command.file_offset, "bash_command_start", False, status_cookie),
        Probe("read_command", read_command.file_offset, "bash_command_read", True, 0),
    )
    offsets = {name: sym.file_offset for name, sym in funcs.items()}
    return HookTarget(pid, stable_exe_path(pid, exe), exe, "executable", None, probes, offsets)


def _records(ctx: RecordContext) -> ShellRecords:
    return ShellRecords(ctx, "bash", lambda raw, _truncated: raw)


MODULE = CaptureModule(
    name="bash",
    summary="interactive bash: every command line read (multi-line as one), exit status",
    classification="shell",
    bpf_object="shell",
    hooks=HOOKS,
    emits=frozenset({COMMAND}),
    identity="shell process",
    resolve=resolve,
    records=_records,
)
