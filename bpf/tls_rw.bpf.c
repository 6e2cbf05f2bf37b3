// SPDX-License-Identifier: GPL-2.0
/*
 * ecap capture of TLS library calls of the shape fn(conn, buf, len) -> n:
 * OpenSSL's SSL_write/SSL_read(_ex) (also BoringSSL and static builds), and the
 * same shape in GnuTLS and NSPR. Which call an attachment is (direction, where
 * the byte count comes from, the width of the return value) is its BPF cookie,
 * so one pair of programs serves every library and every function.
 *
 * Built by `make setup` (scripts/build_bpf.py: clang -target bpf, then libbpf's
 * gen_loader) and loaded at run time through bpf(2) alone (ecap.ebpf.loader):
 * no compiler, no tracefs. Only uprobes and raw tracepoints are used, both
 * allowed with CAP_BPF + CAP_PERFMON.
 *
 * PID scoping happens twice: user space attaches every uprobe with the target's
 * PID, and every program checks the thread-group id against `target_pids`
 * before touching anything (the raw syscall tracepoint is system-wide).
 *
 * Written for clang 14 and the 6.x verifier: explicit bounds on every length
 * handed to bpf_probe_read_user(), and the chunk loop is bpf_loop(), so the
 * program's size does not depend on --max-call-bytes.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <asm/ptrace.h>
#include <asm/unistd.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#include "capture_common.h"
#include "capture_socket.h"

struct call_frame {
	__u64 sp;        /* stack pointer at entry: the return is at sp + 8 */
	__u64 conn;
	__u64 buf;
	__u64 len_ptr;   /* size_t * of the _ex variants, 0 otherwise */
	__s32 fd;        /* socket fd seen by a syscall made inside this call */
	__u32 cookie;
};

/* Per thread, in task-local storage: no hash lookup on the hot path, and the
 * kernel frees it with the thread. */
struct thread_state {
	__u32 depth;               /* frames in use */
	__s32 last_read_fd1;       /* 1 + the socket read last outside any call, 0: none */
	struct call_frame frames[ECAP_CALL_DEPTH];
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct thread_state);
} threads SEC(".maps");

static __always_inline struct thread_state *thread_state(int create)
{
	return bpf_task_storage_get(&threads, bpf_get_current_task_btf(), 0,
				    create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
}

/* ------------------------------------------------------------ call frames */

static __always_inline void push_frame(struct pt_regs *ctx)
{
	__u64 cookie = bpf_get_attach_cookie(ctx);
	struct thread_state *ts = thread_state(1);
	if (!ts)
		return;
	/* A frame at or below this entry's stack pointer belongs to a call that has
	 * returned unseen (its return probe was not attached yet, or it unwound by
	 * longjmp): drop it, so a missed return never shifts later calls. */
	__u64 sp = PT_REGS_SP(ctx);
	__u32 depth = ts->depth;
	if (depth > ECAP_CALL_DEPTH)
		depth = 0;
#pragma unroll
	for (int i = ECAP_CALL_DEPTH - 1; i >= 0; i--) {
		if ((__u32)i + 1 == depth && ts->frames[i].sp <= sp)
			depth = i;
	}
	if (depth >= ECAP_CALL_DEPTH) {
		ts->depth = depth;
		stat_add(ECAP_STAT_DEEP_CALLS, 1);
		return;
	}
	ts->depth = depth + 1;
	struct call_frame *f = &ts->frames[depth];
	f->sp = sp;
	f->conn = PT_REGS_PARM1(ctx);
	f->buf = PT_REGS_PARM2(ctx);
	f->len_ptr = (cookie & ECAP_COOKIE_LEN_IN_ARG4) ? PT_REGS_PARM4(ctx) : 0;
	f->fd = -1;
	f->cookie = (__u32)cookie;
}

/* Pops the call returning now (its entry's stack pointer is this return's sp - 8)
 * into *out, with any frame above it; 0 when its entry was not seen. */
static __always_inline int pop_frame(struct pt_regs *ctx, struct thread_state *ts,
				     struct call_frame *out)
{
	__u64 entry_sp = PT_REGS_SP(ctx) - 8;
	__u32 depth = ts->depth;
#pragma unroll
	for (int i = ECAP_CALL_DEPTH - 1; i >= 0; i--) {
		if ((__u32)i >= depth)
			continue;
		if (ts->frames[i].sp == entry_sp) {
			*out = ts->frames[i];
			ts->depth = i;
			return 1;
		}
		if (ts->frames[i].sp > entry_sp)
			return 0;  /* an outer call's frame: this return's entry was not seen */
	}
	return 0;
}

/* The socket for a call that just returned: its own syscall, the library's record
 * of it, or (reads of memory-BIO users) the socket read just before. */
static __always_inline struct conn_state *call_conn(__u64 pid_tgid, struct thread_state *ts,
						    struct call_frame *f, int is_read)
{
	__s32 seen = f->fd;
	if (seen < 0 && is_read && ts->last_read_fd1 > 0) {
		struct conn_key key = { .tgid = pid_tgid >> 32, .conn = f->conn };
		struct conn_state *known = bpf_map_lookup_elem(&conns, &key);
		if (!known || known->fd < 0)
			seen = ts->last_read_fd1 - 1;
	}
	return conn_state(pid_tgid, f->conn, seen);
}

/* ------------------------------------------------------------ data calls */

SEC("uprobe")
int data_enter(struct pt_regs *ctx)
{
	if (!is_target(bpf_get_current_pid_tgid()))
		return 0;
	push_frame(ctx);
	return 0;
}

SEC("uretprobe")
int data_return(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!is_target(pid_tgid))
		return 0;
	struct thread_state *ts = thread_state(0);
	struct call_frame f;
	if (!ts || !pop_frame(ctx, ts, &f))
		return 0;
	__u8 kind = f.cookie & ECAP_COOKIE_KIND_MASK;
	/* Learn the socket even from calls that failed (a non-blocking SSL_read that
	 * wants more data still tells us which socket its SSL* sits on). */
	struct conn_state *st = call_conn(pid_tgid, ts, &f, kind == ECAP_KIND_READ);

	__u64 n = 0;
	if (f.cookie & ECAP_COOKIE_LEN_IN_ARG4) {
		if ((int)PT_REGS_RC(ctx) != 1 || !f.len_ptr ||
		    bpf_probe_read_user(&n, sizeof(n), (void *)f.len_ptr) < 0) {
			stat_add(ECAP_STAT_FAILED_CALLS, 1);
			return 0;
		}
	} else {
		/* int functions: the upper half of rax is garbage, so a -1 would
		 * read as 4294967295 through a long. */
		long ret = (f.cookie & ECAP_COOKIE_RET_LONG) ? (long)PT_REGS_RC(ctx)
							      : (long)(int)PT_REGS_RC(ctx);
		if (ret <= 0) {
			stat_add(ECAP_STAT_FAILED_CALLS, 1);
			return 0;
		}
		n = ret;
	}
	if (n == 0 || !st)
		return 0;
	send_conn_bytes(pid_tgid, st, kind, f.conn, f.buf, n);
	return 0;
}

/* ------------------------------------------------------ connection lifecycle */

SEC("uprobe")
int set_fd(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!is_target(pid_tgid))
		return 0;
	conn_state(pid_tgid, PT_REGS_PARM1(ctx), (__s32)PT_REGS_PARM2(ctx));
	return 0;
}

SEC("uprobe")
int handshake_enter(struct pt_regs *ctx)
{
	if (!is_target(bpf_get_current_pid_tgid()))
		return 0;
	push_frame(ctx);
	return 0;
}

SEC("uretprobe")
int handshake_return(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!is_target(pid_tgid))
		return 0;
	struct thread_state *ts = thread_state(0);
	struct call_frame f;
	if (!ts || !pop_frame(ctx, ts, &f))
		return 0;
	struct conn_state *st = call_conn(pid_tgid, ts, &f, 1);
	int ret = (int)PT_REGS_RC(ctx);
	int done = (f.cookie & ECAP_COOKIE_OK_IS_ZERO) ? ret == 0 : ret == 1;
	if (!done)
		return 0;  /* in progress (non-blocking) or failed: only completion is an event */
	emit_header(pid_tgid, ECAP_KIND_HANDSHAKE, f.conn, st ? st->fd : -1);
	return 0;
}

/* SSL_shutdown / SSL_free and their like: the connection object ends. */
SEC("uprobe")
int conn_end(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!is_target(pid_tgid))
		return 0;
	end_conn(pid_tgid, PT_REGS_PARM1(ctx));
	return 0;
}

/* --------------------------------------------------------- syscalls (raw tp)
 * Raw tracepoints need no tracefs (which is root-only), so the capture runs with
 * CAP_BPF + CAP_PERFMON alone. No kprobes exist on these kernels. */

/* A socket syscall: inside a library call it names that call's socket; outside,
 * a read remembers its socket for the next SSL_read on this thread. */
static __always_inline void note_fd(int fd, int is_read)
{
	if (!is_socket(fd))
		return;  /* eventfds, pipes, files (OpenSSL reads zoneinfo mid-handshake) */
	struct thread_state *ts = thread_state(0);
	if (ts && ts->depth > 0) {
		__u32 top = ts->depth - 1;
		if (top < ECAP_CALL_DEPTH)
			ts->frames[top].fd = fd;
		return;
	}
	if (is_read) {
		ts = ts ? ts : thread_state(1);
		if (ts)
			ts->last_read_fd1 = fd + 1;
	}
}

SEC("raw_tracepoint/sys_enter")
int sys_enter(struct bpf_raw_tracepoint_args *ctx)
{
	__u64 pid_tgid;
	int is_read;
	int fd = data_syscall_fd(ctx, &pid_tgid, &is_read);
	if (fd >= 0)
		note_fd(fd, is_read);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
