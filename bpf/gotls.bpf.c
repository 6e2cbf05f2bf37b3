// SPDX-License-Identifier: GPL-2.0
/*
 * ecap capture of Go's crypto/tls: (*Conn).Write and (*Conn).Read, plaintext both
 * ways, in any Go program (static or PIE, with or without symbols: the Python side
 * finds the functions through .gopclntab); the secrets its handshakes derive
 * ((*Config).writeKeyLog) and, with packet_tap.h, the packets of its connections
 * (--format keylog, pcapng).
 *
 * Why it is not tls_rw:
 *
 * - Never a uretprobe. A uretprobe replaces the return address on the stack, and
 *   the Go runtime copies goroutine stacks (to grow or shrink them) and walks them
 *   for the GC and for tracebacks: a foreign return address there crashes the
 *   target. Results are read by plain uprobes on each RET instruction of the
 *   function (found with a disassembler in user space).
 * - Calls in flight are keyed by goroutine, not by thread: a Read parks when no
 *   data is there and resumes on whichever thread the scheduler picks. The
 *   goroutine is its runtime.g: register r14 in Go >= 1.17's register ABI, the
 *   thread-local slot the runtime keeps it in otherwise.
 * - The function's entry can run twice for one call: when the goroutine's stack
 *   is too small, the prologue calls runtime.morestack, which copies the stack and
 *   starts the function again from its first instruction. The second entry
 *   replaces the first (same goroutine, same call, arguments moved with the stack).
 *   The "entry" probe sits on the prologue's branch to morestack, which runs on
 *   both passes with the arguments still in their registers (or on the stack): the
 *   kernel emulates a branch, where it single-steps the first instruction.
 * - A buffer on the goroutine's stack moves when the stack is copied during the
 *   call; the return finds it where it is now (the runtime moves stack memory by
 *   the difference of the stacks' upper bounds).
 *
 * The socket behind a *tls.Conn: read through the structs (tls.Conn.conn ->
 * *net.TCPConn -> *net.netFD -> poll.FD.Sysfd) when user space found their
 * offsets in the binary's DWARF (the entry cookie says so); otherwise, and for
 * anything not a *net.TCPConn, from the socket syscalls the goroutine makes
 * inside the call (the raw sys_enter tracepoint, attached while some
 * connection's socket is unknown).
 *
 * Cookie layout: capture_abi.h (ECAP_GO_*).
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <asm/ptrace.h>
#include <asm/unistd.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#include "capture_common.h"
#include "packet_tap.h"
#include "capture_socket.h"

/* Where the thread's fs base is (CO-RE): Go keeps g just below it. */
struct thread_struct___go { unsigned long fsbase; } PA;
struct task_struct___go { struct thread_struct___go thread; } PA;

struct go_key {
	__u32 tgid;
	__u32 pad;
	__u64 g;         /* the goroutine: its runtime.g */
};

/* One call in flight on one goroutine. */
struct go_call {
	__u64 conn;      /* *tls.Conn */
	__u64 buf;
	__u64 len;
	__u64 stack_lo;  /* the goroutine's stack at entry (runtime.g.stack) */
	__u64 stack_hi;
	__s32 fd;        /* socket fd, -1 until known */
	__u32 cookie;
};

/* Data calls (Read, Write) and handshakes apart: a Write that must finish the
 * handshake first runs it inside, on the same goroutine. A server parks one
 * goroutine in Read per idle connection: room for that many, allocated as used. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, struct go_key);
	__type(value, struct go_call);
} go_calls SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct go_key);
	__type(value, struct go_call);
} go_handshakes SEC(".maps");

/* tgid -> the thread-local slot of g (8-byte units below fs), for the syscall
 * tracepoint (it has no cookie); written by the first probe that fires. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u32);
} go_tls_slot SEC(".maps");

static __always_inline __u32 tls_slot_of(__u64 cookie)
{
	return (cookie >> ECAP_GO_TLS_G_SHIFT) & ECAP_GO_TLS_G_MASK;
}

/* The current goroutine as the runtime keeps it in thread-local storage. */
static __always_inline __u64 tls_g(__u32 slot)
{
	struct task_struct___go *task = (struct task_struct___go *)bpf_get_current_task();
	__u64 fsbase = BPF_CORE_READ(task, thread.fsbase);
	__u64 g = 0;
	if (fsbase && slot)
		bpf_probe_read_user(&g, sizeof(g), (void *)(fsbase - 8 * (__u64)slot));
	return g;
}

static __always_inline __u64 current_g(struct pt_regs *ctx, __u64 cookie)
{
	if (cookie & ECAP_GO_STACK_ABI)
		return tls_g(tls_slot_of(cookie));
	return ctx->r14;  /* ABIInternal: r14 is g in every Go function */
}

static __always_inline void remember_tls_slot(__u64 pid_tgid, __u64 cookie)
{
	__u32 tgid = pid_tgid >> 32;
	__u32 slot = tls_slot_of(cookie);
	__u32 *known = bpf_map_lookup_elem(&go_tls_slot, &tgid);
	if (!known || *known != slot)
		bpf_map_update_elem(&go_tls_slot, &tgid, &slot, BPF_ANY);
}

static __always_inline __u64 stack_word(struct pt_regs *ctx, __u64 off)
{
	__u64 v = 0;
	bpf_probe_read_user(&v, sizeof(v), (void *)(PT_REGS_SP(ctx) + off));
	return v;
}

/* The receiver (*tls.Conn) at a function's entry. */
static __always_inline __u64 receiver(struct pt_regs *ctx, __u64 cookie)
{
	return (cookie & ECAP_GO_STACK_ABI) ? stack_word(ctx, 8) : ctx->rax;
}

/* The i-th result word at a RET (n of Read/Write, the error's itab...). */
static __always_inline __u64 result(struct pt_regs *ctx, __u64 cookie, int i)
{
	if (cookie & ECAP_GO_STACK_ABI) {
		__u64 at = ((cookie >> ECAP_GO_RESULTS_SHIFT) & ECAP_GO_RESULTS_MASK) * 8;
		return stack_word(ctx, at + 8 * i);
	}
	return i == 0 ? ctx->rax : ctx->rbx;
}

/* The socket fd of a *tls.Conn over a *net.TCPConn, read through the structs
 * (offsets in the cookie), or -1. */
static __always_inline __s32 fd_through_struct(struct pt_regs *ctx, __u64 conn, __u64 cookie)
{
	__u64 conn_off = ((cookie >> ECAP_GO_CONN_SHIFT) & ECAP_GO_CONN_MASK) * 8;
	__u64 netfd_off = ((cookie >> ECAP_GO_NETFD_SHIFT) & ECAP_GO_NETFD_MASK) * 8;
	__u64 sysfd_off = ((cookie >> ECAP_GO_SYSFD_SHIFT) & ECAP_GO_SYSFD_MASK) * 8;
	__u64 want_itab = bpf_get_func_ip(ctx) + (__s64)(__s32)(cookie >> ECAP_GO_ITAB_SHIFT);
	__u64 iface[2] = {};
	if (bpf_probe_read_user(iface, sizeof(iface), (void *)(conn + conn_off)) < 0 ||
	    iface[0] != want_itab || !iface[1])
		return -1;  /* not a *net.TCPConn: the syscalls will tell */
	__u64 netfd = 0;
	__s64 sysfd = -1;
	if (bpf_probe_read_user(&netfd, sizeof(netfd), (void *)(iface[1] + netfd_off)) < 0 ||
	    !netfd ||
	    bpf_probe_read_user(&sysfd, sizeof(sysfd), (void *)(netfd + sysfd_off)) < 0)
		return -1;
	if (sysfd < 0 || sysfd > 0x7fffffff || !is_socket((int)sysfd))
		return -1;
	return (__s32)sysfd;
}

/* Records a call at a function's entry; a second entry of the same call (after
 * runtime.morestack) overwrites the first. */
static __always_inline void enter_call(struct pt_regs *ctx, void *map, int data)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!is_target(pid_tgid))
		return;
	__u64 cookie = bpf_get_attach_cookie(ctx);
	remember_tls_slot(pid_tgid, cookie);
	struct go_key key = { .tgid = pid_tgid >> 32, .g = current_g(ctx, cookie) };
	if (!key.g)
		return;
	struct go_call call = { .fd = -1, .cookie = (__u32)cookie };
	call.conn = receiver(ctx, cookie);
	if (data) {
		if (cookie & ECAP_GO_STACK_ABI) {
			call.buf = stack_word(ctx, 16);
			call.len = stack_word(ctx, 24);
		} else {
			call.buf = ctx->rbx;
			call.len = ctx->rcx;
		}
		__u64 bounds[2] = {};
		bpf_probe_read_user(bounds, sizeof(bounds), (void *)key.g);  /* g.stack */
		call.stack_lo = bounds[0];
		call.stack_hi = bounds[1];
	}
	if ((cookie & ECAP_GO_FD_LAYOUT) && known_fd(pid_tgid, call.conn) < 0)
		call.fd = fd_through_struct(ctx, call.conn, cookie);
	bpf_map_update_elem(map, &key, &call, BPF_ANY);
}

/* Takes the call returning now off its goroutine; 0 when its entry was not seen. */
static __always_inline int leave_call(struct pt_regs *ctx, void *map, __u64 pid_tgid,
				      __u64 cookie, struct go_call *out)
{
	struct go_key key = { .tgid = pid_tgid >> 32, .g = current_g(ctx, cookie) };
	struct go_call *call = bpf_map_lookup_elem(map, &key);
	if (!call)
		return 0;
	*out = *call;
	bpf_map_delete_elem(map, &key);
	return 1;
}

/* ------------------------------------------------------------ data calls */

SEC("uprobe")
int go_data_enter(struct pt_regs *ctx)
{
	enter_call(ctx, &go_calls, 1);
	return 0;
}

/* At each RET of (*Conn).Read / (*Conn).Write: (n int, err error). */
SEC("uprobe")
int go_data_return(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!is_target(pid_tgid))
		return 0;
	__u64 cookie = bpf_get_attach_cookie(ctx);
	struct go_call c;
	if (!leave_call(ctx, &go_calls, pid_tgid, cookie, &c))
		return 0;
	__s64 n = (__s64)result(ctx, cookie, 0);
	/* Learn the socket even from calls that moved nothing. */
	struct conn_state *st = conn_state(pid_tgid, c.conn, c.fd);
	if (n <= 0) {
		if (result(ctx, cookie, 1))  /* a non-nil error */
			stat_add(ECAP_STAT_FAILED_CALLS, 1);
		return 0;
	}
	if ((__u64)n > c.len)
		n = c.len;
	/* The stack was copied during the call: a buffer on it moved by as much as
	 * the stack's upper bound did (runtime.copystack). */
	if (c.buf >= c.stack_lo && c.buf < c.stack_hi) {
		__u64 bounds[2] = {};
		struct go_key key = { .g = current_g(ctx, cookie) };
		if (bpf_probe_read_user(bounds, sizeof(bounds), (void *)key.g) == 0 &&
		    bounds[1] != c.stack_hi)
			c.buf += bounds[1] - c.stack_hi;
	}
	if (st)
		send_conn_bytes(pid_tgid, st, c.cookie & ECAP_COOKIE_KIND_MASK, c.conn, c.buf, n);
	return 0;
}

/* ------------------------------------------------------ connection lifecycle */

/* (*Conn).clientHandshake / serverHandshake: run only for a real handshake (the
 * public Handshake returns early once one is done). */
SEC("uprobe")
int go_handshake_enter(struct pt_regs *ctx)
{
	enter_call(ctx, &go_handshakes, 0);
	return 0;
}

/* At each RET of the handshake: (err error); nil is a finished handshake. */
SEC("uprobe")
int go_handshake_return(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!is_target(pid_tgid))
		return 0;
	__u64 cookie = bpf_get_attach_cookie(ctx);
	struct go_call c;
	if (!leave_call(ctx, &go_handshakes, pid_tgid, cookie, &c))
		return 0;
	struct conn_state *st = conn_state(pid_tgid, c.conn, c.fd);
	if (result(ctx, cookie, 0))
		return 0;  /* failed: only a finished handshake is an event */
	emit_header(pid_tgid, ECAP_KIND_HANDSHAKE, c.conn, st ? st->fd : c.fd);
	return 0;
}

/* (*Conn).Close entry: the connection object ends. */
SEC("uprobe")
int go_close(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!is_target(pid_tgid))
		return 0;
	end_conn(pid_tgid, receiver(ctx, bpf_get_attach_cookie(ctx)), 0);
	return 0;
}

/* ----------------------------------------------------------------- secrets */

/* crypto/tls.(*Config).writeKeyLog(label string, clientRandom, secret []byte):
 * every handshake calls it for each secret it derives (CLIENT_RANDOM for TLS 1.2,
 * the four traffic secrets for TLS 1.3), and only inside does it return when
 * Config.KeyLogWriter is nil — so its entry sees every secret of every program.
 * Go's register ABI (>= 1.17; user space refuses older builds): rax is the
 * *Config, the label string is (rbx, rcx), clientRandom (rdi, rsi, r8) and secret
 * (r9, r10, r11) as (pointer, length, capacity). The connection is the *tls.Conn of
 * the handshake running on this goroutine (writeKeyLog is called inside it). */
SEC("uprobe")
int go_secret(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!is_target(pid_tgid))
		return 0;
	__u64 cookie = bpf_get_attach_cookie(ctx);
	struct go_key key = { .tgid = pid_tgid >> 32, .g = current_g(ctx, cookie) };
	struct go_call *hs = bpf_map_lookup_elem(&go_handshakes, &key);
	__u64 conn = hs ? hs->conn : 0;
	__s32 fd = -1;
	if (hs)
		fd = hs->fd >= 0 ? hs->fd : known_fd(pid_tgid, conn);
	__s64 shift = (__s16)(cookie >> ECAP_SECRET_SHIFT_SHIFT);
	emit_secret(pid_tgid, conn, fd, cookie >> ECAP_COOKIE_SOURCE_SHIFT,
		    ctx->rbx, (__s64)(ctx->rcx & 0xffff), ctx->rsi == 32 ? ctx->rdi : 0,
		    ctx->r9 + shift, ctx->r10);
	return 0;
}

/* --------------------------------------------------------- syscalls (raw tp) */

/* A socket read or write made by a goroutine inside a Read, Write or handshake
 * names that call's socket. */
SEC("raw_tracepoint/sys_enter")
int sys_enter(struct bpf_raw_tracepoint_args *ctx)
{
	__u64 pid_tgid;
	int is_read;
	int fd = data_syscall_fd(ctx, &pid_tgid, &is_read);
	if (fd < 0)
		return 0;
	__u32 tgid = pid_tgid >> 32;
	__u32 *slot = bpf_map_lookup_elem(&go_tls_slot, &tgid);
	if (!slot)
		return 0;
	struct go_key key = { .tgid = tgid, .g = tls_g(*slot) };
	struct go_call *call = bpf_map_lookup_elem(&go_calls, &key);
	if (!call)
		call = bpf_map_lookup_elem(&go_handshakes, &key);
	if (call && call->fd < 0 && is_socket(fd))
		call->fd = fd;
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
