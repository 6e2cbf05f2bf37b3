"""Test (b)'s sniffer: a bcc program of our own on libssl SSL_write / SSL_read.

Attaches a uprobe on SSL_write (copying the start of each plaintext buffer to a
perf buffer, as sslsniff does) and a uretprobe on SSL_read the way bcc tools do
(perf "uprobe" PMU), prints one JSON line once attached, and sleeps until killed.
Its C functions have names longer than the kernel's 15 characters so the test can
check that the detector reads full names from BTF func_info.
"""

from __future__ import annotations

import ctypes as ct
import json
import os
import signal
import sys
import time

from bcc import BPF
from bcc.libbcc import lib
from bcc_corpus import attach_uprobe  # run as a script: its directory is on sys.path

LIBSSL = sys.argv[1] if len(sys.argv) > 1 else "/usr/lib/x86_64-linux-gnu/libssl.so.3"

PROGRAM = r"""
#include <uapi/linux/ptrace.h>
BPF_PERF_OUTPUT(tls_events);
struct chunk { u32 len; char data[64]; };
int probe_SSL_write_plaintext(struct pt_regs *ctx) {
    struct chunk c = {};
    c.len = (u32)PT_REGS_PARM3(ctx);
    bpf_probe_read_user(c.data, sizeof(c.data), (void *)PT_REGS_PARM2(ctx));
    tls_events.perf_submit(ctx, &c, sizeof(c));
    return 0;
}
int probe_SSL_read_plaintext(struct pt_regs *ctx) {
    u32 ret = (u32)PT_REGS_RC(ctx);
    tls_events.perf_submit(ctx, &ret, sizeof(ret));
    return 0;
}
"""

DETACH = lib.bpf_detach_uprobe
DETACH.restype = ct.c_int
DETACH.argtypes = [ct.c_char_p]
CLOSE = lib.bpf_close_perf_event_fd
CLOSE.argtypes = [ct.c_int]

b = BPF(text=PROGRAM)
attached: list[tuple[int, bytes]] = []


def attach(fn_name: str, func: str, ret: bool) -> None:
    fn = b.load_func(fn_name.encode(), BPF.KPROBE)
    fd = attach_uprobe(fn.fd, LIBSSL, func, ret=ret)
    attached.append((fd, f"{'r' if ret else 'p'}_ecaptest_{func}_{os.getpid()}".encode()))


def detach(*_: object) -> None:
    for fd, ev_name in attached:
        CLOSE(fd)
        DETACH(ev_name)
    sys.exit(0)


attach("probe_SSL_write_plaintext", "SSL_write", ret=False)
attach("probe_SSL_read_plaintext", "SSL_read", ret=True)
prog_ids = []
for name in (b"probe_SSL_write_plaintext", b"probe_SSL_read_plaintext"):
    with open(f"/proc/self/fdinfo/{b.funcs[name].fd}") as f:
        prog_ids += [int(ln.split()[1]) for ln in f if ln.startswith("prog_id:")]
print(json.dumps({"pid": os.getpid(), "prog_ids": prog_ids}), flush=True)
signal.signal(signal.SIGTERM, detach)
while True:
    time.sleep(3600)
