// SPDX-License-Identifier: GPL-2.0
/*
 * ecap-detect watch: learn, as it happens, that something on this host attached
 * or pinned a BPF program, opened a perf event, or put a BPF program on one.
 *
 * One raw tracepoint program on `sys_exit` (BPF_RAW_TRACEPOINT_OPEN: no tracefs,
 * no kprobes). At syscall exit the saved user registers still hold the syscall
 * number (orig_rax) and its arguments, and the tracepoint hands us the return
 * value, so a single program sees both what was asked and whether it worked:
 *
 *   bpf(2)              commands that attach, detach, replace or pin
 *                       (PROG_LOAD alone hooks nothing and is not reported)
 *   perf_event_open(2)  every successful open (a uprobe PMU event is the first
 *                       half of a bcc/bpftrace attachment)
 *   ioctl(2)            PERF_EVENT_IOC_SET_BPF only (the second half)
 *
 * Each becomes a fixed-size record in a ring buffer that ecap.detect.watch_bpf
 * reads; user space then re-runs the scan. The program copies no user memory:
 * it reads three saved registers and the task's name. The watcher's own tgid
 * (config[0]) is skipped so that its scans do not wake it.
 *
 * Built by `make setup` into a light-skeleton loader (scripts/build_bpf.py) and
 * loaded through ecap.ebpf; configuration and counters live in array maps.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <asm/unistd.h>
#include <bpf/bpf_helpers.h>

#if !defined(__TARGET_ARCH_x86)
#error "watch_events.bpf.c reads x86-64 syscall registers; port syscall_regs for this arch"
#endif

/* Kernel pt_regs on x86-64: the saved user registers at syscall entry (ABI-stable). */
struct syscall_regs {
	unsigned long r15, r14, r13, r12, bp, bx, r11, r10, r9, r8;
	unsigned long ax, cx, dx, si, di, orig_ax, ip, cs, flags, sp, ss;
};

#define PERF_EVENT_IOC_SET_BPF 0x40042408u

#include "watch_abi.h"

/* Not used at run time: keeps the record's layout in the object's BTF, whence the
 * loader file records it for the Python side. */
const struct ecap_watch_event ecap_abi_watch_event = {};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 16);
} events SEC(".maps");

/* [0]: tgid to ignore (the watcher itself) */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} config SEC(".maps");

/* [0]: events sent, [1]: events dropped because the ring was full */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline int interesting_bpf_cmd(__u32 cmd)
{
	switch (cmd) {
	case BPF_OBJ_PIN:
	case BPF_PROG_ATTACH:
	case BPF_PROG_DETACH:
	case BPF_RAW_TRACEPOINT_OPEN:
	case BPF_LINK_CREATE:
	case BPF_LINK_UPDATE:
	case BPF_LINK_DETACH:
		return 1;
	}
	return 0;
}

static __always_inline void count(__u32 index)
{
	__u64 *value = bpf_map_lookup_elem(&counters, &index);

	if (value)
		__sync_fetch_and_add(value, 1);
}

SEC("raw_tracepoint/sys_exit")
int watch_sys_exit(struct bpf_raw_tracepoint_args *ctx)
{
	struct syscall_regs *regs = (struct syscall_regs *)ctx->args[0];
	long ret = (long)ctx->args[1];
	unsigned long nr = 0, arg1 = 0, arg2 = 0;
	__u32 kind, cmd = 0, zero = 0;

	if (ret < 0)
		return 0;
	bpf_probe_read_kernel(&nr, sizeof(nr), &regs->orig_ax);
	if (nr == __NR_bpf) {
		bpf_probe_read_kernel(&arg1, sizeof(arg1), &regs->di);
		if (!interesting_bpf_cmd((__u32)arg1))
			return 0;
		kind = ECAP_WATCH_KIND_BPF;
		cmd = (__u32)arg1;
	} else if (nr == __NR_ioctl) {
		bpf_probe_read_kernel(&arg2, sizeof(arg2), &regs->si);
		if ((__u32)arg2 != PERF_EVENT_IOC_SET_BPF)
			return 0;
		kind = ECAP_WATCH_KIND_SET_BPF;
		cmd = (__u32)arg2;
	} else if (nr == __NR_perf_event_open) {
		kind = ECAP_WATCH_KIND_PERF_OPEN;
	} else {
		return 0;
	}

	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32;
	__u32 *ignore = bpf_map_lookup_elem(&config, &zero);

	if (ignore && *ignore == tgid)
		return 0;
	struct ecap_watch_event *ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);

	if (!ev) {
		count(1);
		return 0;
	}
	ev->ktime_ns = bpf_ktime_get_ns();
	ev->tgid = tgid;
	ev->tid = (__u32)pid_tgid;
	ev->kind = kind;
	ev->cmd = cmd;
	ev->ret = ret;
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
	bpf_ringbuf_submit(ev, 0);
	count(0);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
