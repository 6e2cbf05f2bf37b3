"""``capture gotls``: Go's ``crypto/tls`` — ``(*Conn).Write`` and ``(*Conn).Read``.

Go programs link crypto/tls into their own executable, with no exported symbols
and often stripped (``-ldflags=-s -w``) or PIE. The functions are found through
``.gopclntab`` (:mod:`ecap.gopclntab`, the reader the detector uses), which
stripping keeps; the same table gives each function's end, and capstone finds its
return instructions in between, and the branch of its stack check where the entry
probe goes (:mod:`ecap.gobinary`). What the kernel side does with them, and why
never a uretprobe, is in ``bpf/gotls.bpf.c``.

The calling convention comes from the binary's build info (Go ≥ 1.17 on amd64:
registers; older: the stack), checked against the function's own prologue. The
socket of a connection is read through the structs when the binary has DWARF
(``tls.Conn.conn`` → ``*net.TCPConn`` → ``*net.netFD`` → ``poll.FD.Sysfd``, offsets
from DWARF, the ``*net.TCPConn`` itab from ``.symtab``); a stripped binary has
neither, and the socket is learned from the syscalls the call makes (the same
fd-from-syscall path the ``tls`` module uses for libraries that do not say).
"""

from __future__ import annotations

from typing import Any

from ecap.capture.events import CONNECTION, DATA, HANDSHAKE
from ecap.capture.modules.interface import CaptureModule, Hook, HookTarget, Probe, SecretSource

WRITE = "crypto/tls.(*Conn).Write"
READ = "crypto/tls.(*Conn).Read"
HOOKS = (
    Hook(WRITE, "go_data_enter", kind="write", plaintext=True, required=True,
         at_returns="go_data_return"),
    # The linker drops a method nothing calls: a program that only writes has no
    # Read. Either data function makes a Go program one this module captures.
    Hook(READ, "go_data_enter", kind="read", plaintext=True, at_returns="go_data_return"),
    Hook("crypto/tls.(*Conn).clientHandshake", "go_handshake_enter", kind="handshake",
         at_returns="go_handshake_return"),
    Hook("crypto/tls.(*Conn).serverHandshake", "go_handshake_enter", kind="handshake",
         at_returns="go_handshake_return"),
    Hook("crypto/tls.(*Conn).Close", "go_close"),
)  # fmt: skip

STACK_RESULTS = {
    WRITE: 40,  # (c *Conn, b []byte) (n int, err error): n at sp+8+8+24
    READ: 40,
    # Go < 1.17 (the only stack-ABI releases): clientHandshake() (err error)
    "crypto/tls.(*Conn).clientHandshake": 16,
    "crypto/tls.(*Conn).serverHandshake": 16,
}
"""Stack ABI: where the first result is at a RET, as a distance from sp."""

FD_PATH = (
    ("crypto/tls.Conn", "conn"),
    ("net.TCPConn", "conn"),
    ("net.conn", "fd"),
    ("net.netFD", "pfd"),
    ("internal/poll.FD", "Sysfd"),
)
"""The DWARF members from a *tls.Conn to its socket's fd."""
TCPCONN_ITABS = ("go.itab.*net.TCPConn,net.Conn", "go:itab.*net.TCPConn,net.Conn")
"""The itab that says a net.Conn is a *net.TCPConn (renamed ``go:`` in Go 1.22)."""

KEY_LOG = "crypto/tls.(*Config).writeKeyLog"
"""Where every handshake hands each secret it derives, with the client random.

``(c *Config) writeKeyLog(label string, clientRandom, secret []byte) error`` is
called by the client and server handshakes for CLIENT_RANDOM (TLS 1.2) and the
four traffic secrets (TLS 1.3) unconditionally: the ``KeyLogWriter == nil`` test
is its first statement, inside (read in Go's src/crypto/tls, common.go and the
handshake_*.go callers). It is too big to inline (fmt.Sprintf, a mutex), so it is
a function of its own in every binary that does TLS; a program whose linker
dropped it cannot give secrets. Go derives no EXPORTER_SECRET line."""
KEY_LOG_RELEASES = ((1, 17), (1, 23))
"""Go releases whose writeKeyLog signature and register ABI ecap reads (the same
from 1.17, the first register-ABI release, through 1.23 in Go's source; proven on
the wire here with Debian's go1.19). Anything else fails closed for keys."""


def _go_program(pid: int) -> tuple[Any, Any, Any]:
    """(ElfImage, function table, executable path) of a Go process; raises
    UsageError when it is not one that uses crypto/tls."""
    from ecap import procfs
    from ecap.elf import NotAnElf, open_elf
    from ecap.errors import UsageError
    from ecap.gopclntab import go_functions

    exe = procfs.exe(pid)
    try:
        image = open_elf(procfs.PROC / str(pid) / "exe")
    except NotAnElf:
        image = None
    table = go_functions(image) if image is not None else None
    if table is None or not any(table.find(h.function) for h in HOOKS if h.plaintext):
        what = "is not a Go program" if table is None else "does not use Go's crypto/tls"
        raise UsageError(
            f"process {pid} ({procfs.comm(pid)!r}, {exe or '?'}) {what}",
            hint="capture gotls hooks crypto/tls.(*Conn).Read/Write in a Go executable; "
            "other TLS libraries have their own modules",
        )
    return image, table, exe


def detect(pid: int) -> bool:
    """A Go executable with crypto/tls (what ``resolve`` would accept)."""
    from ecap import procfs
    from ecap.errors import UsageError

    try:
        _go_program(pid)
    except (UsageError, procfs.ProcessGone, OSError):
        return False
    return True


def _convention(image: Any, table: Any) -> tuple[str, str]:
    """(calling convention, Go version) from the build info, checked against the
    prologue of Write (which says it too: r14 is g in ABIInternal)."""
    from ecap import gobinary
    from ecap.errors import UsageError

    info = gobinary.build_info(image)
    declared = gobinary.calling_convention(info) if info is not None else None
    seen = gobinary.prologue_convention(image, table.find(WRITE) or table.find(READ))
    version = info.version if info is not None else "Go version unknown"
    if declared and seen and declared != seen:
        raise UsageError(
            f"{version} says the {declared} calling convention, but its crypto/tls is compiled "
            f"for the {seen} one",
            hint="this Go build is not one ecap knows how to read; report it",
        )
    convention = declared or seen
    if convention is None:
        raise UsageError(
            f"cannot tell the calling convention of this Go program ({version})",
            hint="capture gotls supports amd64 Go binaries",
        )
    return convention, version


def _fd_layout(image: Any, abi: Any, probe_vaddr: int) -> int:
    """The entry cookie's path to the socket fd (ECAP_GO_FD_LAYOUT and its fields),
    0 when the binary has no DWARF or no *net.TCPConn itab (stripped)."""
    from ecap import gobinary

    offsets = gobinary.struct_offsets(image, FD_PATH)
    itabs = image.data_addresses(TCPCONN_ITABS)
    if offsets is None or not itabs:
        return 0
    itab = next(iter(itabs.values()))
    conn = offsets[("crypto/tls.Conn", "conn")]
    netfd = offsets[("net.TCPConn", "conn")] + offsets[("net.conn", "fd")]
    sysfd = offsets[("net.netFD", "pfd")] + offsets[("internal/poll.FD", "Sysfd")]
    fields = ((conn, abi.GO_CONN_SHIFT, abi.GO_CONN_MASK),
              (netfd, abi.GO_NETFD_SHIFT, abi.GO_NETFD_MASK),
              (sysfd, abi.GO_SYSFD_SHIFT, abi.GO_SYSFD_MASK))  # fmt: skip
    cookie = abi.GO_FD_LAYOUT
    for value, shift, mask in fields:
        if value % 8 or value // 8 > mask:
            return 0
        cookie |= (value // 8) << shift
    distance = itab - probe_vaddr
    if not -(1 << 31) <= distance < 1 << 31:
        return 0
    return cookie | ((distance & 0xFFFFFFFF) << abi.GO_ITAB_SHIFT)


def probes_for(image: Any, table: Any, convention: str) -> tuple[list[Probe], dict[str, int]]:
    """Every probe (returns first: a call entered before its returns are attached
    would leave a record behind) and, per hooked function, where its entry probe is."""
    from ecap import gobinary
    from ecap.capture import abi as abi_mod
    from ecap.errors import UsageError

    abi = abi_mod.of(MODULE.bpf_object)
    slot = gobinary.tls_g_slot(image, table.find("runtime.morestack"))
    if slot > abi.GO_TLS_G_MASK:
        raise UsageError(f"the Go runtime keeps g {8 * slot} bytes below fs: beyond ecap's reach")
    stack = convention == gobinary.STACK_ABI
    returns: list[Probe] = []
    entries: list[Probe] = []
    functions: dict[str, int] = {}
    for hook in HOOKS:
        fn = table.find(hook.function)
        if fn is None:
            continue
        # On the stack check's branch rather than the first instruction: the same
        # passes, one trap instead of two (gobinary.stack_check_branch).
        entry = gobinary.stack_check_branch(image, fn) or image.vaddr_to_offset(fn.entry)
        if entry is None:
            continue
        functions[hook.function] = entry
        base = abi.GO_STACK_ABI if stack else 0
        base |= slot << abi.GO_TLS_G_SHIFT
        if hook.kind:
            base |= getattr(abi, f"KIND_{hook.kind.upper()}")
        cookie = base
        if hook.kind in ("write", "read", "handshake"):
            # the itab's distance is from the probe (bpf_get_func_ip is its address)
            cookie |= _fd_layout(image, abi, image.offset_to_vaddr(entry))
        entries.append(Probe(hook.function, entry, hook.program, False, cookie))
        if hook.at_returns:
            at_ret = base
            if stack:
                at_ret |= (STACK_RESULTS[hook.function] // 8) << abi.GO_RESULTS_SHIFT
            try:
                rets = gobinary.return_offsets(image, fn)
            except gobinary.NotDisassembled as exc:
                raise UsageError(
                    f"cannot find where {hook.function} returns: {exc}",
                    hint="a uretprobe is never used on Go code; report this binary",
                ) from exc
            if not rets and hook.plaintext:
                raise UsageError(f"{hook.function} has no return instruction")
            returns += [Probe(hook.function, r, hook.at_returns, False, at_ret) for r in rets]
    return returns + entries, functions


def secret_probes(target: HookTarget, shift: int = 0) -> tuple[Probe, ...]:
    """The probe on ``writeKeyLog`` (program ``go_secret``, bpf/gotls.bpf.c): its
    cookie carries g's thread-local slot, like every gotls probe, and the UNSAFE
    test shift of the secret's address (ECAP_SECRET_SHIFT_SHIFT)."""
    from ecap import gobinary
    from ecap.capture import abi as abi_mod
    from ecap.capture.modules._keylog_function import SecretsUnavailable, secret_shift_bits
    from ecap.elf import NotAnElf, open_elf
    from ecap.gopclntab import go_functions

    (low_major, low_minor), (high_major, high_minor) = KEY_LOG_RELEASES
    needs = f"a Go {low_major}.{low_minor}-{high_major}.{high_minor} amd64 binary"

    def refuse(why: str) -> SecretsUnavailable:
        return SecretsUnavailable.of(target, why, needs)

    try:
        image = open_elf(target.path)
    except (NotAnElf, OSError) as exc:
        raise refuse(str(exc)) from exc
    table = go_functions(image)
    info = gobinary.build_info(image)
    release = info.release if info is not None else None
    if release is None or not KEY_LOG_RELEASES[0] <= release <= KEY_LOG_RELEASES[1]:
        raise refuse("ecap reads Go's secrets only from releases it was proven against")
    convention, _version = _convention(image, table)
    if convention == gobinary.STACK_ABI:
        raise refuse("it passes arguments on the stack (not the register ABI ecap reads)")
    fn = table.find(KEY_LOG)
    if fn is None:
        raise refuse(f"it has no {KEY_LOG} (the linker dropped it, or it was inlined)")
    entry = gobinary.stack_check_branch(image, fn) or image.vaddr_to_offset(fn.entry)
    if entry is None:
        raise refuse(f"{KEY_LOG} is not in the file")
    abi = abi_mod.of(MODULE.bpf_object)
    slot = gobinary.tls_g_slot(image, table.find("runtime.morestack"))
    cookie = (slot << abi.GO_TLS_G_SHIFT) | secret_shift_bits(abi, shift)
    return (Probe(KEY_LOG, entry, "go_secret", False, cookie),)


def resolve(pid: int, options: dict[str, Any]) -> HookTarget:
    """The Go executable of process ``pid`` and its probes."""
    from ecap import procfs
    from ecap.capture.modules._libraries import stable_exe_path

    image, table, exe = _go_program(pid)
    convention, version = _convention(image, table)
    probes, functions = probes_for(image, table, convention)
    return HookTarget(pid, stable_exe_path(pid, exe) if exe else procfs.PROC / str(pid) / "exe",
                      exe or "?", "executable", version, tuple(probes), functions)  # fmt: skip


MODULE = CaptureModule(
    name="gotls",
    summary="Go crypto/tls in any Go executable (stripped and PIE too; found via .gopclntab)",
    classification="tls",
    bpf_object="gotls",
    hooks=HOOKS,
    emits=frozenset({DATA, HANDSHAKE, CONNECTION}),
    identity="*tls.Conn",
    resolve=resolve,
    applies_to=detect,
    secrets=SecretSource(
        "Go 1.17-1.23 (register ABI): crypto/tls.(*Config).writeKeyLog, which every "
        "handshake calls for each secret whether or not a KeyLogWriter is set",
        secret_probes,
        exporter=False,
    ),
)
