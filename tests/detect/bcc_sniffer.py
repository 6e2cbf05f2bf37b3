"""Test (b)'s sniffer: a bcc program of our own on libssl SSL_write / SSL_read.

Attaches a uprobe on SSL_write and a uretprobe on SSL_read the way bcc tools do
(perf "uprobe" PMU), prints one JSON line once attached, and sleeps until killed.
Its C functions have names longer than the kernel's 15 characters so the test can
check that the detector reads full names from BTF func_info.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

from bcc import BPF

LIBSSL = sys.argv[1] if len(sys.argv) > 1 else "/usr/lib/x86_64-linux-gnu/libssl.so.3"

PROGRAM = r"""
#include <uapi/linux/ptrace.h>
BPF_PERF_OUTPUT(tls_events);
int probe_SSL_write_plaintext(struct pt_regs *ctx) {
    u32 len = (u32)PT_REGS_PARM3(ctx);
    tls_events.perf_submit(ctx, &len, sizeof(len));
    return 0;
}
int probe_SSL_read_plaintext(struct pt_regs *ctx) {
    u32 ret = (u32)PT_REGS_RC(ctx);
    tls_events.perf_submit(ctx, &ret, sizeof(ret));
    return 0;
}
"""

b = BPF(text=PROGRAM)
b.attach_uprobe(name=LIBSSL, sym="SSL_write", fn_name="probe_SSL_write_plaintext")
b.attach_uretprobe(name=LIBSSL, sym="SSL_read", fn_name="probe_SSL_read_plaintext")
ids = [b.funcs[n].fd for n in (b"probe_SSL_write_plaintext", b"probe_SSL_read_plaintext")]
prog_ids = []
for fd in ids:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        prog_ids += [int(ln.split()[1]) for ln in f if ln.startswith("prog_id:")]
print(json.dumps({"pid": os.getpid(), "prog_ids": prog_ids}), flush=True)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    time.sleep(3600)
