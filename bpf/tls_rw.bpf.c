// SPDX-License-Identifier: GPL-2.0
/*
 * ecap capture of TLS library calls of the shape fn(conn, buf, len) -> n:
 * OpenSSL's SSL_write/SSL_read(_ex) (also BoringSSL and static builds), GnuTLS's
 * gnutls_record_send(2)/recv(_seq), NSPR's PR_Write/PR_Read/PR_Send/PR_Recv (and
 * PR_Writev, whose buffer is a vector array). Which call an attachment is
 * (direction, where the byte count comes from, the width of the return value, a
 * vectored buffer, an NSPR descriptor to check) is its BPF cookie, so one pair of
 * programs serves every library and every function; the cookie's upper half says
 * which of the session's modules attached it (`capture auto` runs several).
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
#include "packet_tap.h"
#include "capture_socket.h"

struct vm_area_struct { struct file *vm_file; } PA;

/* Not used at run time: keeps the layout in the object's BTF, whence the loader
 * file records it for the Python side. */
const struct ecap_layer_lib ecap_abi_layer_lib = {};

struct call_frame {
	__u64 sp;        /* stack pointer at entry: the return is at sp + 8 */
	__u64 conn;
	__u64 buf;
	__u64 arg;       /* size_t * of the _ex variants, the vector count of a vectored
			  * call, 0 otherwise */
	__u64 cookie;
	__s32 fd;        /* socket fd seen by a syscall made inside this call */
	__u32 pad;
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

/* Names of the files whose code implements a TLS layer of NSPR (NSS's libssl3.so,
 * or libnss3.so where NSS is built into one library): filled by user space from
 * what the module resolved. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__type(key, struct ecap_layer_lib);
	__type(value, __u8);
} tls_layer_libs SEC(".maps");

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
	/* Both read unconditionally: the verifier refuses a context pointer the
	 * compiler moved to pick one of them. */
	__u64 arg3 = PT_REGS_PARM3(ctx), arg4 = PT_REGS_PARM4(ctx);
	f->arg = (cookie & ECAP_COOKIE_LEN_IN_ARG4) ? arg4 : (cookie & ECAP_COOKIE_IOVEC) ? arg3 : 0;
	f->fd = -1;
	f->cookie = cookie;
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

/* The target's call returning now, popped into *f with the thread's state; NULL
 * when the process is not a target or the call's entry was not seen. */
static __always_inline struct thread_state *returning_call(struct pt_regs *ctx, __u64 pid_tgid,
							   struct call_frame *f)
{
	if (!is_target(pid_tgid))
		return 0;
	struct thread_state *ts = thread_state(0);
	if (!ts || !pop_frame(ctx, ts, f))
		return 0;
	return ts;
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

/* ---------------------------------------------------- NSPR layer chains
 * An NSPR descriptor is a stack of layers (prio.h, stable public ABI): a
 * PRFileDesc starts { methods, secret, lower, higher, ... } and its PRIOMethods
 * { file_type, close, read, write, ... }. PR_Write and its kin serve files, pipes
 * and plain sockets as well as TLS: only a descriptor with the TLS layer in its
 * chain is captured, the TLS layer being the one whose write method is code of a
 * file named in tls_layer_libs. The verdict is kept with the connection state
 * and made again when the top layer's methods change (a layer pushed later:
 * STARTTLS), so the chain is walked once per descriptor, not per call. */
#define NSPR_FD_LOWER 16
#define NSPR_METHODS_WRITE 24
#define NSPR_DESC_SOCKET_TCP 2
#define NSPR_LAYER_DEPTH 8

struct layer_code_ctx {
	int found;
};

static long layer_code_file(struct task_struct *task, struct vm_area_struct *vma,
			    struct layer_code_ctx *c)
{
	struct file *file = BPF_CORE_READ(vma, vm_file);
	if (!file)
		return 0;
	struct ecap_layer_lib key = {};
	const unsigned char *name = BPF_CORE_READ(file, f_path.dentry, d_name.name);
	if (bpf_probe_read_kernel_str(key.name, sizeof(key.name), name) < 0)
		return 0;
	c->found = bpf_map_lookup_elem(&tls_layer_libs, &key) != 0;
	return 0;
}

/* What the chain under `desc` is: LAYERS_TLS (a layer of it is the TLS layer),
 * LAYERS_PLAIN (none is), or LAYERS_UNKNOWN (cannot tell now: the process's memory
 * map is being changed, and bpf_find_vma only tries its lock).
 *
 * A global function: the verifier checks it once, on its own, instead of within
 * every path of the program that calls it. */
__noinline int nspr_chain_verdict(__u64 desc)
{
	struct task_struct *task = bpf_get_current_task_btf();
	int undecided = 0;
	for (int i = 0; i < NSPR_LAYER_DEPTH; i++) {
		__u64 methods = 0, write_fn = 0;
		if (!desc || bpf_probe_read_user(&methods, sizeof(methods), (void *)desc) < 0 ||
		    !methods ||
		    bpf_probe_read_user(&write_fn, sizeof(write_fn),
					(void *)(methods + NSPR_METHODS_WRITE)) < 0)
			break;
		struct layer_code_ctx c = {};
		if (bpf_find_vma(task, write_fn, layer_code_file, &c, 0) == -16 /* EBUSY */)
			undecided = 1;
		else if (c.found)
			return LAYERS_TLS;
		if (bpf_probe_read_user(&desc, sizeof(desc), (void *)(desc + NSPR_FD_LOWER)) < 0)
			break;
	}
	return undecided ? LAYERS_UNKNOWN : LAYERS_PLAIN;
}

/* When the chain cannot be checked now: a layered descriptor over a TCP socket
 * passes (never a file or a pipe); the verdict is not kept. */
__noinline int nspr_layered_tcp(__u64 desc)
{
	__u64 lower = 0, methods = 0;
	int layers = 0;
	for (int i = 0; i < NSPR_LAYER_DEPTH; i++) {
		if (bpf_probe_read_user(&lower, sizeof(lower), (void *)(desc + NSPR_FD_LOWER)) < 0)
			return 0;
		if (!lower)
			break;
		desc = lower;
		layers++;
	}
	__s32 file_type = 0;
	if (bpf_probe_read_user(&methods, sizeof(methods), (void *)desc) < 0 || !methods ||
	    bpf_probe_read_user(&file_type, sizeof(file_type), (void *)methods) < 0)
		return 0;
	return layers > 0 && file_type == NSPR_DESC_SOCKET_TCP;
}

/* Is this NSPR descriptor TLS? */
static __always_inline int nspr_is_tls(__u64 pid_tgid, __u64 desc)
{
	__u64 methods = 0;
	if (bpf_probe_read_user(&methods, sizeof(methods), (void *)desc) < 0)
		return 0;
	struct conn_key key = { .tgid = pid_tgid >> 32, .conn = desc };
	struct conn_state *st = bpf_map_lookup_elem(&conns, &key);
	if (st && st->layers != LAYERS_UNKNOWN && st->top_methods == methods)
		return st->layers == LAYERS_TLS;
	int verdict = nspr_chain_verdict(desc);
	if (verdict == LAYERS_UNKNOWN)
		return nspr_layered_tcp(desc);
	if (!st) {
		struct conn_state fresh = { .fd = -1 };
		bpf_map_update_elem(&conns, &key, &fresh, BPF_NOEXIST);
		st = bpf_map_lookup_elem(&conns, &key);
	}
	if (st) {
		st->layers = verdict;
		st->top_methods = methods;
	}
	return verdict == LAYERS_TLS;
}

/* ------------------------------------------------------------ data calls */

/* The entry of every probed call (data and handshake): its arguments, kept for the
 * return probe, which knows the result. */
SEC("uprobe")
int call_enter(struct pt_regs *ctx)
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
	struct call_frame f;
	struct thread_state *ts = returning_call(ctx, pid_tgid, &f);
	if (!ts)
		return 0;
	if ((f.cookie & ECAP_COOKIE_NSPR_LAYERS) && !nspr_is_tls(pid_tgid, f.conn))
		return 0;  /* a file, a pipe, a plain socket: not TLS, never captured */
	__u8 kind = f.cookie & ECAP_COOKIE_KIND_MASK;
	/* Learn the socket even from calls that failed (a non-blocking SSL_read that
	 * wants more data still tells us which socket its SSL* sits on). */
	struct conn_state *st = call_conn(pid_tgid, ts, &f, kind == ECAP_KIND_READ);

	__u64 n = 0;
	if (f.cookie & ECAP_COOKIE_LEN_IN_ARG4) {
		if ((int)PT_REGS_RC(ctx) != 1 || !f.arg ||
		    bpf_probe_read_user(&n, sizeof(n), (void *)f.arg) < 0) {
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
	__u64 stream_off = advance_stream(st, kind, n);
	if (!copy_plaintext)
		return 0;
	__u32 source = f.cookie >> ECAP_COOKIE_SOURCE_SHIFT;
	if (f.cookie & ECAP_COOKIE_IOVEC)
		send_user_iov_as(pid_tgid, kind, f.conn, st->fd, stream_off, f.buf, f.arg, n, source);
	else
		send_user_bytes_as(pid_tgid, kind, f.conn, st->fd, stream_off, f.buf, n, source);
	return 0;
}

/* ------------------------------------------------------ connection lifecycle */

/* The library is told its connection's socket: SSL_set_fd(ssl, fd),
 * gnutls_transport_set_int2(session, fd, fd), gnutls_transport_set_ptr(session,
 * ptr) where the pointer is the socket's number (FD_IN_PTR). */
SEC("uprobe")
int set_fd(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!is_target(pid_tgid))
		return 0;
	__u64 arg = PT_REGS_PARM2(ctx);
	if ((bpf_get_attach_cookie(ctx) & ECAP_COOKIE_FD_IN_PTR) &&
	    (arg > 0x7fffffff || !is_socket((int)arg)))
		return 0;  /* a real pointer: the application moves the bytes itself */
	conn_state(pid_tgid, PT_REGS_PARM1(ctx), (__s32)arg);
	return 0;
}

SEC("uretprobe")
int handshake_return(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct call_frame f;
	struct thread_state *ts = returning_call(ctx, pid_tgid, &f);
	if (!ts)
		return 0;
	struct conn_state *st = call_conn(pid_tgid, ts, &f, 1);
	int ret = (int)PT_REGS_RC(ctx);
	int done = (f.cookie & ECAP_COOKIE_OK_IS_ZERO) ? ret == 0 : ret == 1;
	if (!done)
		return 0;  /* in progress (non-blocking) or failed: only completion is an event */
	emit_header_as(pid_tgid, ECAP_KIND_HANDSHAKE, f.conn, st ? st->fd : -1,
		       f.cookie >> ECAP_COOKIE_SOURCE_SHIFT);
	return 0;
}

/* SSL_shutdown / SSL_free and their like: the connection object ends. */
SEC("uprobe")
int conn_end(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!is_target(pid_tgid))
		return 0;
	end_conn(pid_tgid, PT_REGS_PARM1(ctx),
		 bpf_get_attach_cookie(ctx) >> ECAP_COOKIE_SOURCE_SHIFT);
	return 0;
}

/* ----------------------------------------------------------------- secrets */

/* The library's key-log function, fn(conn, label, secret, secret_len) — OpenSSL's
 * ssl_log_secret, GnuTLS's _gnutls_call_keylog_func — called for every secret it
 * derives whether or not a key log is configured. The cookie says where the client
 * random lies in the connection object (ECAP_SECRET_RANDOM_MASK). The length is
 * taken as 32 bits: GnuTLS passes an `unsigned` (the upper half of the register is
 * undefined), OpenSSL a size_t that never exceeds 64. */
SEC("uprobe")
int secret_enter(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!is_target(pid_tgid))
		return 0;
	__u64 cookie = bpf_get_attach_cookie(ctx);
	__u64 conn = PT_REGS_PARM1(ctx);
	__s64 shift = (__s16)(cookie >> ECAP_SECRET_SHIFT_SHIFT);
	struct conn_key key = { .tgid = pid_tgid >> 32, .conn = conn };
	struct conn_state *known = bpf_map_lookup_elem(&conns, &key);
	emit_secret(pid_tgid, conn, known ? known->fd : -1, cookie >> ECAP_COOKIE_SOURCE_SHIFT,
		    PT_REGS_PARM2(ctx), -1, conn + (cookie & ECAP_SECRET_RANDOM_MASK),
		    PT_REGS_PARM3(ctx) + shift, (__u32)PT_REGS_PARM4(ctx));
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
