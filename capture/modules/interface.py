"""What a capture module is: what it hooks, how it finds it, what it emits.

One file per module in this package, each defining ``MODULE``. Everything outside
a module file is library-agnostic: the engine, the kernel side and the sinks
know hooks only as (program, file offset, cookie) and connections only as an
opaque object id. The hook list also feeds ``ecap-detect``'s classification and
the module name the token vocabulary.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class Hook:
    """One function a module probes, and what the probe does there."""

    function: str
    """Symbol name as the library exports it."""
    program: str
    """Entry program in the module's BPF object (``""``: the hook only has a return
    program)."""
    return_program: str | None = None
    """Return program (a uretprobe), None for entry-only hooks."""
    kind: str = ""
    """Record kind the cookie carries: ``write``, ``read``, ``handshake`` or ``""``."""
    flags: tuple[str, ...] = ()
    """Cookie flags, by their ``capture_abi.h`` names without ``ECAP_COOKIE_``
    (``LEN_IN_ARG4``, ``RET_LONG``, ``OK_IS_ZERO``)."""
    plaintext: bool = False
    """True when the function sees plaintext (the detector rates hooks on it)."""
    required: bool = False
    """The target is not this library unless it defines this function."""
    at_returns: str | None = None
    """Program attached by a plain uprobe on each of the function's return
    instructions, for code where a uretprobe is unsafe (Go: the runtime copies
    goroutine stacks, return address and all); the module finds those offsets."""


@dataclass(frozen=True)
class Probe:
    """One uprobe to attach: a program at a file offset, with its cookie."""

    function: str
    offset: int
    program: str
    retprobe: bool
    cookie: int


@dataclass(frozen=True)
class MapEntry:
    """A value a module puts in one of its BPF object's maps before attaching: what
    its programs must know about this target that no cookie can carry (NSS: the name
    of the library whose code is the TLS layer)."""

    map: str
    key: bytes
    value: bytes


@dataclass(frozen=True)
class HookTarget:
    """One file in one process to attach to, and the probes to put there."""

    pid: int
    path: Path
    """Host-reachable path of the file (through /proc/PID/root)."""
    display_path: str
    """The path as the process sees it (for humans and the journal)."""
    kind: str
    """``library``, ``executable`` or ``override``."""
    version: str | None
    """The library's version string, None when none was found."""
    probes: tuple[Probe, ...]
    functions: dict[str, int] = field(default_factory=dict)
    """Function name → file offset (the session header's record of what was hooked)."""
    map_entries: tuple[MapEntry, ...] = ()
    """Written into the object's maps before the probes are attached."""


@dataclass(frozen=True)
class RecordContext:
    """What a module's record handlers get from the engine for one session."""

    abi: Any
    """The object's :class:`ecap.capture.abi.Abi`: kinds, flags and the layouts of
    the module's payload structs (``abi.struct("ecap_prompt")``); live, it is the
    loaded object's, in ``replay`` the one the raw file recorded."""
    clock: Any
    """:class:`ecap.capture.records.Clock`: kernel timestamps → wall-clock time."""
    emit: Callable[[Any], None]
    """Hands an event (:mod:`ecap.capture.events`) to the session's sink."""
    max_call_bytes: int


class ModuleRecords(Protocol):
    """A module's own record kinds (a shell's lines, a server's statements), turned
    into events. The engine routes records of these kinds here and tells it when a
    process leaves the session, so a command or statement in progress is written
    with what became of it, never dropped."""

    handlers: dict[int, Callable[[Any], None]]
    """Record kind number → handler of a :class:`ecap.capture.records.Record`."""

    def process_left(self, pid: int, how: str, exit_code: int | None) -> None:
        """``pid`` exec'd (``how="exec"``) or exited (``"exit"``, with its wait status
        when the kernel reported it)."""

    def finish(self) -> None:
        """The capture stops: write what is still open."""

    def counts(self) -> dict[str, int]:
        """Events written, by kind (the summary's ``events``)."""


@dataclass(frozen=True)
class SecretSource:
    """How a module obtains a connection's TLS secrets (``--format keylog``/``pcapng``).

    The probes report each secret as an ``ECAP_KIND_SECRET`` record (struct
    ecap_secret: client random, label, secret). Nothing more is asked of a module:
    the engine proves every secret against the connection's packets (client random
    = the ClientHello's, the secret decrypts a record) before any sink sees it.
    """

    summary: str
    """How, in one line (doctor, ``--help``)."""
    probes: Callable[[HookTarget, int], tuple[Probe, ...]]
    """(a resolved target, the UNSAFE test shift of the secret's address, 0 normally)
    → the probes to add; raises :class:`ecap.errors.UsageError` (exit 2) naming the
    library and version it cannot read secrets from."""
    exporter: bool = True
    """Whether the library hands over an EXPORTER_SECRET in TLS 1.3 handshakes (Go
    never does): the proof releases a connection's packets once every secret its
    library derives was judged."""


@dataclass(frozen=True)
class ModuleOption:
    """A command-line option only this module takes (e.g. ``--libssl``)."""

    flag: str
    help: str
    metavar: str = "PATH"

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class CaptureModule:
    """One capture module."""

    name: str
    """``capture NAME`` and the token's module vocabulary."""
    summary: str
    """One line for ``--help``."""
    classification: str
    """What its hooks expose, for the detector: ``tls``, ``shell`` or ``database``."""
    bpf_object: str
    """Loader name under ``bpf/`` (``tls_rw`` → ``bpf/tls_rw.bpf.c``)."""
    hooks: tuple[Hook, ...]
    emits: frozenset[str]
    """Event kinds (:mod:`ecap.capture.events`) its sessions produce."""
    identity: str
    """What a connection is in this library (``SSL*``), for humans and the schema."""
    resolve: Callable[[int, dict[str, Any]], HookTarget]
    """(pid, module options) → where to attach in that process; raises
    :class:`ecap.errors.UsageError` naming what was looked for."""
    options: tuple[ModuleOption, ...] = ()
    records: Callable[[RecordContext], ModuleRecords] | None = None
    """Handlers of the module's own record kinds (None: the engine's data path only)."""
    secrets: SecretSource | None = None
    """How it gets TLS secrets; None: it cannot (``no_secrets`` says why)."""
    no_secrets: str = "it has no way to obtain TLS secrets"
    """Why ``keylog``/``pcapng`` are refused (exit 2) for this module, in one clause."""
    applies_to: Callable[[int], bool] | None = None
    """Does process ``pid`` use this module's library? ``capture auto`` asks every
    TLS module; None: the module applies when :attr:`resolve` finds its library."""
    select: Callable[[int], tuple[str, ...]] | None = None
    """A module that captures through others (``auto``): the names of the modules to
    capture process ``pid`` with; raises :class:`ecap.errors.UsageError` when none
    applies. Such a module has no hooks and no BPF object of its own."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group(f"{self.name} module")
        for opt in self.options:
            group.add_argument(opt.flag, metavar=opt.metavar, help=opt.help)

    def applies(self, pid: int) -> bool:
        """Whether ``capture auto`` should capture ``pid`` with this module: a TLS
        module whose library the process uses. A process that is gone raises
        :class:`ecap.procfs.ProcessGone`."""
        from ecap.errors import UsageError

        if self.select is not None or self.classification != "tls":
            return False
        if self.applies_to is not None:
            return self.applies_to(pid)
        try:
            self.resolve(pid, {})
        except UsageError:
            return False
        return True

    def plaintext_functions(self) -> tuple[str, ...]:
        return tuple(h.function for h in self.hooks if h.plaintext)

    def probes(self, offsets: dict[str, int]) -> tuple[Probe, ...]:
        """The probes for the hooked functions found at ``offsets`` (name → file
        offset), each with its cookie built from ``capture_abi.h``'s bits."""
        from ecap.capture import abi as abi_mod

        abi = abi_mod.of(self.bpf_object)
        out: list[Probe] = []
        for hook in self.hooks:
            offset = offsets.get(hook.function)
            if offset is None:
                continue
            cookie = getattr(abi, f"KIND_{hook.kind.upper()}") if hook.kind else 0
            for flag in hook.flags:
                cookie |= getattr(abi, f"COOKIE_{flag}")
            if hook.program:
                out.append(Probe(hook.function, offset, hook.program, False, cookie))
            if hook.return_program:
                out.append(Probe(hook.function, offset, hook.return_program, True, cookie))
        return tuple(out)
