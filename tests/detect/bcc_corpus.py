"""Real bcc programs for the detector's corpus tests: sniffers that avoid the usual names.

Each mode loads and attaches one program the way an attacker would, prints one
JSON line (``pid``, ``prog_ids`` and mode-specific facts) once it is in place, and
then sleeps until killed — or exits, when leaving the program behind is the point:

* ``evp`` / ``evp-counter`` — uprobe on libcrypto's ``EVP_EncryptUpdate`` copying
  its input (every TLS record's plaintext on its way into the cipher) / counting;
* ``write-tp`` / ``write-tp-counter`` — the ``syscalls:sys_enter_write`` tracepoint
  copying every written buffer to a perf buffer / counting (no uprobe at all);
* ``pin PATH`` — a sniffer program loaded, pinned in bpffs, never attached; exits;
* ``unheld`` — a sniffer on ``SSL_write_ex`` whose perf-event, program and map fds
  are sent over a unix socket (SCM_RIGHTS) and never received; the socket's other
  end goes to a ``sleep``, and the loader exits without bcc's clean-up;
* ``symlink PATH`` — a sniffer on ``SSL_write`` attached through PATH (a symlink);
* ``tc`` — a TC program on ``lo`` (tcx ingress link) copying packets to user space;
* ``sockfilter`` — the same tap as a socket filter on a raw packet socket on ``lo``;
* ``xdp`` — an XDP program on ``lo`` (generic mode, XDP link) copying packets out.

Usage: bcc_corpus.py MODE [ARG]
"""

from __future__ import annotations

import ctypes as ct
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time

from bcc import BPF
from bcc.libbcc import lib

from ecap.detect import bpfsys
from ecap.elf import open_elf

LIBSSL = "/usr/lib/x86_64-linux-gnu/libssl.so.3"
LIBCRYPTO = "/usr/lib/x86_64-linux-gnu/libcrypto.so.3"

SNIFF_ARG = r"""
#include <uapi/linux/ptrace.h>
BPF_PERF_OUTPUT(chunks);
struct chunk { u32 pid; u32 len; char data[128]; };
BPF_PERCPU_ARRAY(scratch, struct chunk, 1);
int probe_copy_arg(struct pt_regs *ctx) {
    u32 zero = 0;
    struct chunk *c = scratch.lookup(&zero);
    if (!c)
        return 0;
    c->pid = bpf_get_current_pid_tgid() >> 32;
    c->len = (u32)ARG_LEN;
    bpf_probe_read_user(c->data, sizeof(c->data), (void *)ARG_BUF);
    chunks.perf_submit(ctx, c, sizeof(*c));
    return 0;
}
"""
COUNT_CALLS = r"""
#include <uapi/linux/ptrace.h>
BPF_HASH(calls, u32, u64);
int probe_count_calls(struct pt_regs *ctx) {
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    calls.increment(pid);
    return 0;
}
"""
WRITE_TP = r"""
BPF_PERF_OUTPUT(writes);
struct chunk { u32 pid; u32 len; char data[128]; };
BPF_PERCPU_ARRAY(scratch, struct chunk, 1);
TRACEPOINT_PROBE(syscalls, sys_enter_write) {
    u32 zero = 0;
    struct chunk *c = scratch.lookup(&zero);
    if (!c)
        return 0;
    c->pid = bpf_get_current_pid_tgid() >> 32;
    c->len = args->count;
    bpf_probe_read_user(c->data, sizeof(c->data), args->buf);
    writes.perf_submit(args, c, sizeof(*c));
    return 0;
}
"""
WRITE_TP_COUNTER = r"""
BPF_HASH(writes_by_pid, u32, u64);
TRACEPOINT_PROBE(syscalls, sys_enter_write) {
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    writes_by_pid.increment(pid);
    return 0;
}
"""
TC_TAP = r"""
BPF_PERF_OUTPUT(packets);
int tap_packets(struct __sk_buff *skb) {
    u32 len = skb->len;
    packets.perf_submit_skb(skb, skb->len, &len, sizeof(len));
    return -1; /* TCX_NEXT: let the packet go on */
}
"""

SSL_ARGS = ["-DARG_BUF=PT_REGS_PARM2(ctx)", "-DARG_LEN=PT_REGS_PARM3(ctx)"]  # SSL_write(s, buf, n)
EVP_ARGS = ["-DARG_BUF=PT_REGS_PARM4(ctx)", "-DARG_LEN=PT_REGS_PARM5(ctx)"]

# bcc 0.26's Python attach_uprobe passes six of libbcc's seven arguments (a garbage
# ref_ctr_offset breaks other uprobes on the same function): call libbcc directly.
ATTACH = lib.bpf_attach_uprobe
ATTACH.restype = ct.c_int
ATTACH.argtypes = [ct.c_int, ct.c_int, ct.c_char_p, ct.c_char_p, ct.c_uint64, ct.c_int, ct.c_uint32]


def attach_uprobe(prog_fd: int, path: str, function: str, *, ret: bool = False) -> int:
    """A perf-PMU uprobe on ``path:function`` (path as given: may be a symlink); its fd."""
    offset = open_elf(path).find_functions([function])[function].file_offset
    name = f"{'r' if ret else 'p'}_ecaptest_{function}_{os.getpid()}".encode()
    fd = ATTACH(prog_fd, 1 if ret else 0, name, path.encode(), offset, -1, 0)
    if fd < 0:
        raise OSError(ct.get_errno(), f"bpf_attach_uprobe {function}")
    return fd


def prog_id(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("prog_id:"))


def ready(**facts: object) -> None:
    print(json.dumps({"pid": os.getpid(), **facts}), flush=True)


def sleep_forever() -> None:
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    while True:
        time.sleep(3600)


def uprobe_mode(
    source: str, fn_name: str, path: str, function: str, cflags: list[str] | None = None
) -> None:
    b = BPF(text=source, cflags=cflags or [])
    fn = b.load_func(fn_name.encode(), BPF.KPROBE)
    attach_uprobe(fn.fd, path, function)
    ready(prog_ids=[prog_id(fn.fd)])
    sleep_forever()


def tracepoint_mode(source: str) -> None:
    b = BPF(text=source)  # TRACEPOINT_PROBE attaches itself
    ready(prog_ids=[prog_id(fn.fd) for fn in b.funcs.values()])
    sleep_forever()


def pin_mode(path: str) -> None:
    b = BPF(text=SNIFF_ARG, cflags=SSL_ARGS)
    fn = b.load_func(b"probe_copy_arg", BPF.KPROBE)
    bpfsys.obj_pin(fn.fd, path)
    ready(prog_ids=[prog_id(fn.fd)], pinned=path)
    os._exit(0)  # the pin keeps the program (and its maps) loaded


def unheld_mode() -> None:
    b = BPF(text=SNIFF_ARG, cflags=SSL_ARGS)
    fn = b.load_func(b"probe_copy_arg", BPF.KPROBE)
    perf_fd = attach_uprobe(fn.fd, LIBSSL, "SSL_write_ex")
    fds = [perf_fd, fn.fd, b["chunks"].map_fd, b["scratch"].map_fd]
    keeper, sender = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    sender.sendmsg(
        [b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))]
    )
    sleeper = subprocess.Popen(["sleep", "600"], pass_fds=[keeper.fileno()], start_new_session=True)
    ready(prog_ids=[prog_id(fn.fd)], sleeper=sleeper.pid)
    os._exit(0)  # skip bcc's atexit clean-up: it would disable and close the probe


def tc_mode() -> None:
    b = BPF(text=TC_TAP)
    fn = b.load_func(b"tap_packets", BPF.SCHED_CLS)
    attr = ct.create_string_buffer(64)
    struct.pack_into("<IIII", attr, 0, fn.fd, socket.if_nametoindex("lo"), 46, 0)  # TCX_INGRESS
    link = bpfsys.bpf(28, attr)  # BPF_LINK_CREATE
    ready(prog_ids=[prog_id(fn.fd)], link_fd=link, ifname="lo")
    sleep_forever()


XDP_TAP = r"""
#include <uapi/linux/bpf.h>
BPF_PERF_OUTPUT(frames);
int tap_frames(struct xdp_md *ctx) {
    u32 len = ctx->data_end - ctx->data;
    frames.perf_submit_skb(ctx, len, &len, sizeof(len));
    return XDP_PASS;
}
"""


def xdp_mode() -> None:
    b = BPF(text=XDP_TAP)
    fn = b.load_func(b"tap_frames", BPF.XDP)
    attr = ct.create_string_buffer(64)
    # BPF_LINK_CREATE: prog, ifindex, attach type BPF_XDP (37), flags XDP_FLAGS_SKB_MODE (2)
    struct.pack_into("<IIII", attr, 0, fn.fd, socket.if_nametoindex("lo"), 37, 2)
    link = bpfsys.bpf(28, attr)
    ready(prog_ids=[prog_id(fn.fd)], link_fd=link, ifname="lo")
    sleep_forever()


def sockfilter_mode() -> None:
    b = BPF(text=TC_TAP.replace("return -1; /* TCX_NEXT: let the packet go on */", "return 0;"))
    fn = b.load_func(b"tap_packets", BPF.SOCKET_FILTER)
    BPF.attach_raw_socket(fn, "lo")  # an AF_PACKET socket with the program attached
    ready(prog_ids=[prog_id(fn.fd)], socket_fd=fn.sock)
    sleep_forever()


def main() -> None:
    mode = sys.argv[1]
    arg = sys.argv[2] if len(sys.argv) > 2 else None
    if mode == "evp":  # EVP_EncryptUpdate(ctx, out, outl, in, inl)
        uprobe_mode(SNIFF_ARG, "probe_copy_arg", LIBCRYPTO, "EVP_EncryptUpdate", EVP_ARGS)
    elif mode == "evp-counter":
        uprobe_mode(COUNT_CALLS, "probe_count_calls", LIBCRYPTO, "EVP_EncryptUpdate")
    elif mode == "ssl-counter":
        uprobe_mode(COUNT_CALLS, "probe_count_calls", LIBSSL, "SSL_write")
    elif mode == "write-tp":
        tracepoint_mode(WRITE_TP)
    elif mode == "write-tp-counter":
        tracepoint_mode(WRITE_TP_COUNTER)
    elif mode == "pin":
        pin_mode(str(arg))
    elif mode == "unheld":
        unheld_mode()
    elif mode == "symlink":
        uprobe_mode(SNIFF_ARG, "probe_copy_arg", str(arg), "SSL_write", SSL_ARGS)
    elif mode == "tc":
        tc_mode()
    elif mode == "sockfilter":
        sockfilter_mode()
    elif mode == "xdp":
        xdp_mode()
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
