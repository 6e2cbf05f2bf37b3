"""A tiny, real eBPF hooker for detector tests — no bcc, no clang.

Loads one of three hand-assembled programs (``--program``): ``sniff`` (the
default: copies 64 bytes from the hooked function's second argument with
``bpf_probe_read_user`` and sends them through a ring buffer — what a plaintext
sniffer does), ``counter`` (``r0 = 0; exit``, optionally referencing a ring-buffer
map: it reads nothing and sends nothing) or ``signal`` (calls
``bpf_send_signal(0)``, a harmless signal, to show the capability), opens a uprobe
through the perf "uprobe" PMU on ``FILE:FUNCTION`` and attaches it one of three
ways: ``ioctl`` (PERF_EVENT_IOC_SET_BPF, as bcc does), ``link`` (BPF_LINK_CREATE
on the perf event, as libbpf/cilium do) or ``multi`` (a uprobe_multi link).
With ``--pin PATH`` it pins the link in bpffs and exits, leaving the hook alive
with no process holding it. Otherwise it prints one JSON line and sleeps until
killed. ``--comm`` renames the process (the hostile-name test); ``--listen`` and
``--write-file`` give it somewhere to send what it collects. A target may be
``FILE:0xOFFSET`` (a hook with no symbol).

To stand in for an ecap capture, it can also do what ``ecap-audit capture`` does
from its own process: ``--gate TOKEN_FILE --gate-pid PID`` passes the real
authorization gate (journalling ``gate.granted`` with this PID), ``--grant-jti``
journals a grant without the gate (a capture granted before its token expired),
and ``--session-id`` journals ``capture.start`` with the loaded program ids.

Usage: hook_helper.py [--mode ioctl|link|multi] [--program sniff|counter|signal]
                      [--ret] [--pin PATH] [--comm NAME] [--listen] [--write-file PATH]
                      [--map-name NAME] [--gate TOKEN_FILE --gate-pid PID]
                      [--grant-jti JTI] [--session-id SID] FILE:FUNCTION [...]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import struct
import sys
import time
from pathlib import Path

from ecap.detect import bpfsys
from ecap.elf import open_elf

_NR_PERF_EVENT_OPEN = 298
PERF_EVENT_IOC_ENABLE = 0x2400
PERF_EVENT_IOC_SET_BPF = 0x40042408
PROG_TYPE_KPROBE = 2
MAP_TYPE_RINGBUF = 27
ATTACH_PERF_EVENT = 41
ATTACH_UPROBE_MULTI = 48
MAP_CREATE, PROG_LOAD, LINK_CREATE = 0, 5, 28

libc = ctypes.CDLL(None, use_errno=True)


def create_map(name: str) -> int:
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("<IIIII", attr, 0, MAP_TYPE_RINGBUF, 0, 0, 1 << 16, 0)
    struct.pack_into("16s", attr, 28, name.encode()[:15])
    return bpfsys.bpf(MAP_CREATE, attr)


FUNC_PROBE_READ_USER, FUNC_RINGBUF_OUTPUT, FUNC_SEND_SIGNAL = 112, 130, 109
PT_REGS_SI = 104  # offsetof(struct pt_regs, si): the second argument on x86-64


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, src << 4 | dst, off, imm)


def _ld_map(dst: int, map_fd: int) -> bytes:  # ld_imm64 with BPF_PSEUDO_MAP_FD
    return _insn(0x18, dst, 1, 0, map_fd) + _insn(0)


def program(kind: str, map_fd: int | None) -> bytes:
    """The instructions of one kind of test program."""
    exit_ = _insn(0xB7, 0) + _insn(0x95)  # r0 = 0; exit
    if kind == "sniff":
        assert map_fd is not None
        return (
            _insn(0xBF, 6, 1)  # r6 = ctx
            + _insn(0xBF, 1, 10)  # r1 = fp
            + _insn(0x07, 1, imm=-64)  # r1 += -64: a 64-byte stack buffer
            + _insn(0xB7, 2, imm=64)  # r2 = 64
            + _insn(0x79, 3, 6, PT_REGS_SI)  # r3 = ctx->si (the buffer argument)
            + _insn(0x85, imm=FUNC_PROBE_READ_USER)
            + _ld_map(1, map_fd)  # r1 = ring buffer
            + _insn(0xBF, 2, 10)
            + _insn(0x07, 2, imm=-64)  # r2 = the buffer
            + _insn(0xB7, 3, imm=64)
            + _insn(0xB7, 4, imm=0)
            + _insn(0x85, imm=FUNC_RINGBUF_OUTPUT)
            + exit_
        )
    if kind == "signal":
        return _insn(0xB7, 1, imm=0) + _insn(0x85, imm=FUNC_SEND_SIGNAL) + exit_
    return (_ld_map(1, map_fd) if map_fd is not None else b"") + exit_


def load_prog(name: str, map_fd: int | None, attach_type: int = 0, kind: str = "counter") -> int:
    insns = program(kind, map_fd)
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(65536)
    attr = ctypes.create_string_buffer(128)
    struct.pack_into(
        "<IIQQIIQ",
        attr,
        0,
        PROG_TYPE_KPROBE,
        len(insns) // 8,
        ctypes.addressof(code),
        ctypes.addressof(lic),
        1,
        len(log),
        ctypes.addressof(log),
    )
    struct.pack_into("16s", attr, 48, name.encode()[:15])
    struct.pack_into("<I", attr, 68, attach_type)
    try:
        return bpfsys.bpf(PROG_LOAD, attr)
    except OSError:
        sys.stderr.write(log.value.decode(errors="replace"))
        raise


def uprobe_event(path: str, offset: int, ret: bool) -> int:
    pmu = int(Path("/sys/bus/event_source/devices/uprobe/type").read_text())
    fmt = Path("/sys/bus/event_source/devices/uprobe/format/retprobe").read_text()
    bit = int(fmt.strip().split(":")[1])
    raw_path = ctypes.create_string_buffer(path.encode())
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("<IIQ", attr, 0, pmu, 112, (1 << bit) if ret else 0)
    struct.pack_into("<QQ", attr, 56, ctypes.addressof(raw_path), offset)
    syscall = libc.syscall
    syscall.restype = ctypes.c_long
    fd = syscall(
        ctypes.c_long(_NR_PERF_EVENT_OPEN),
        ctypes.c_void_p(ctypes.addressof(attr)),
        ctypes.c_int(-1),
        ctypes.c_int(0),
        ctypes.c_int(-1),
        ctypes.c_ulong(8),
    )
    if fd < 0:
        raise OSError(ctypes.get_errno(), "perf_event_open uprobe")
    return fd


def ioctl(fd: int, req: int, arg: int) -> None:
    if libc.ioctl(fd, ctypes.c_ulong(req), ctypes.c_ulong(arg)) < 0:
        raise OSError(ctypes.get_errno(), "ioctl")


def link_perf(prog_fd: int, perf_fd: int) -> int:
    attr = ctypes.create_string_buffer(64)
    struct.pack_into("<IIII", attr, 0, prog_fd, perf_fd, ATTACH_PERF_EVENT, 0)
    fd = bpfsys.bpf(LINK_CREATE, attr)
    ioctl(perf_fd, PERF_EVENT_IOC_ENABLE, 0)
    return fd


def link_multi(prog_fd: int, path: str, offsets: list[int], ret: bool) -> int:
    raw_path = ctypes.create_string_buffer(path.encode())
    offs = (ctypes.c_uint64 * len(offsets))(*offsets)
    attr = ctypes.create_string_buffer(64)
    struct.pack_into("<IIII", attr, 0, prog_fd, 0, ATTACH_UPROBE_MULTI, 0)
    struct.pack_into(
        "<QQQQIII",
        attr,
        16,
        ctypes.addressof(raw_path),
        ctypes.addressof(offs),
        0,
        0,
        len(offsets),
        1 if ret else 0,
        0,
    )
    return bpfsys.bpf(LINK_CREATE, attr)


def prog_id(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("prog_id:"):
                return int(line.split()[1])
    raise RuntimeError("no prog_id")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=("ioctl", "link", "multi"), default="ioctl")
    ap.add_argument("--ret", action="store_true")
    ap.add_argument("--pin")
    ap.add_argument("--comm")
    ap.add_argument("--map-name")
    ap.add_argument("--program", choices=("sniff", "counter", "signal"), default="sniff")
    ap.add_argument("--name", default="hook_helper")
    ap.add_argument("--best-effort", action="store_true", help="skip targets that fail")
    ap.add_argument("--listen", action="store_true", help="listen on 0.0.0.0 (a loot server)")
    ap.add_argument("--write-file", help="keep this file open for writing (a loot file)")
    ap.add_argument("--gate")
    ap.add_argument("--gate-pid", type=int)
    ap.add_argument("--grant-jti")
    ap.add_argument("--session-id")
    ap.add_argument("targets", nargs="+")
    args = ap.parse_args()
    import resource  # one perf fd per target: decoy tests ask for thousands

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    jti = args.grant_jti
    if args.gate:
        from ecap.authz.gate import authorize_capture

        token = Path(args.gate).read_text().strip()
        jti = authorize_capture(token, pids=[args.gate_pid], module="tls", mode="text").jti
    elif jti:
        from ecap.journal import Journal

        Journal().append("gate.granted", jti=jti, pids=[args.gate_pid], module="tls", mode="text")
    if args.comm:
        libc.prctl(15, ctypes.c_char_p(os.fsencode(args.comm)[:15]), 0, 0, 0)  # PR_SET_NAME
    map_name = args.map_name or ("hh_events" if args.program == "sniff" else None)
    map_fd = create_map(map_name) if map_name else None
    attach = ATTACH_UPROBE_MULTI if args.mode == "multi" else 0
    prog = load_prog(args.name, map_fd, attach, args.program)
    keep: list[int] = [prog]
    by_file: dict[str, list[int]] = {}
    for target in args.targets:
        path, func = target.rsplit(":", 1)
        if func.startswith("0x"):  # a bare offset: no symbol needed
            by_file.setdefault(path, []).append(int(func, 16))
            continue
        sym = open_elf(path).find_functions([func])[func]
        by_file.setdefault(path, []).append(sym.file_offset)
    links: list[int] = []
    for path, offsets in by_file.items():
        if args.mode == "multi":
            links.append(link_multi(prog, path, offsets, args.ret))
            continue
        for off in offsets:
            try:
                pfd = uprobe_event(path, off, args.ret)
            except OSError:
                if not args.best_effort:
                    raise
                continue  # an offset the kernel cannot probe (decoy lists)
            keep.append(pfd)
            if args.mode == "link":
                links.append(link_perf(prog, pfd))
            else:
                ioctl(pfd, PERF_EVENT_IOC_SET_BPF, prog)
                ioctl(pfd, PERF_EVENT_IOC_ENABLE, 0)
    if args.pin:
        bpfsys.obj_pin(links[0], args.pin)
        print(
            json.dumps({"pid": os.getpid(), "prog_ids": [prog_id(prog)], "pinned": args.pin}),
            flush=True,
        )
        return
    if args.session_id:
        from ecap.journal import Journal

        Journal().append(
            "capture.start",
            session_id=args.session_id,
            jti=jti,
            pids=[args.gate_pid],
            module="tls",
            prog_ids=[prog_id(prog)],
        )
    facts: dict = {"pid": os.getpid(), "prog_ids": [prog_id(prog)], "jti": jti}
    if args.listen:
        import socket

        server = socket.create_server(("0.0.0.0", 0))
        facts["port"] = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", facts["port"]))  # a connection out
        _accepted, _ = server.accept()  # kept open: the other end of the connection
        facts["client_port"] = client.getsockname()[1]
    if args.write_file:
        loot = open(args.write_file, "a")  # noqa: SIM115 (kept open until killed)
        facts["file"] = loot.name
    print(json.dumps(facts), flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
