/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What every ecap capture object shares: the allow-list, the ring buffer and its
 * counters, the record header, the chunked copy of user memory into records, and
 * the scope programs (exec, fork, exit) that keep the allow-list true.
 *
 * Included by each bpf/<module>.bpf.c after the system headers; one definition of
 * each piece, so every module's records look the same to the Python engine.
 *
 * Scope: `target_pids` maps a thread-group id to ECAP_SCOPE_TARGET (named by the
 * token) or ECAP_SCOPE_DESCENDANT (forked from a target while the token grants
 * descendants: `follow_descendants`, set by user space at load). Fork and exit are
 * raw tracepoints (no kprobes on these kernels, no tracefs needed): a child joins
 * in the parent's fork, before it runs a single instruction, and leaves at exit.
 */
#ifndef ECAP_CAPTURE_COMMON_H
#define ECAP_CAPTURE_COMMON_H

/* Needs <linux/bpf.h>, <bpf/bpf_helpers.h> and <bpf/bpf_core_read.h> first. */
#include "capture_abi.h"

/* Set by user space before load (the loader copies them in; the map is frozen,
 * so the verifier sees constants). */
const volatile __u32 max_chunks = 16;         /* --max-call-bytes / ECAP_CHUNK */
const volatile __u64 wake_at_bytes = 1 << 20; /* wake the reader once this much is pending */
const volatile __u8 follow_descendants = 0;   /* the token grants the targets' descendants */
/* Not used at run time: keep the layouts in the object's BTF, whence the loader
 * file records them for the Python side. */
const struct ecap_threadinfo ecap_abi_threadinfo = {};

/* Only the fields the scope programs read; CO-RE relocates them (the ___ecap
 * flavour keeps this apart from any partial task_struct of the including file). */
struct task_struct___ecap {
	int pid;
	int tgid;
	int exit_code;
} __attribute__((preserve_access_index));

/* Authorized processes (the second PID check): tgid -> ECAP_SCOPE_*. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u8);
} target_pids SEC(".maps");

/* Per thread, in task-local storage (freed with the thread): was its name sent? */
struct ecap_thread_seen {
	__u32 announced;
};
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct ecap_thread_seen);
} thread_names SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ecap_record);
} scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ECAP_NSTATS);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

/* The size is set by user space at load (--ring-size). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 24);
} events SEC(".maps");

#define HDR_SIZE offsetof(struct ecap_record, data)

static __always_inline int is_target(__u64 pid_tgid)
{
	__u32 tgid = pid_tgid >> 32;
	return bpf_map_lookup_elem(&target_pids, &tgid) != 0;
}

static __always_inline void stat_add(__u32 idx, __u64 value)
{
	__u64 *slot = bpf_map_lookup_elem(&stats, &idx);
	if (slot)
		*slot += value;
}

/* Waking the reader for every record costs the traced process an IPI per call:
 * wake it when a good amount is pending; it also polls with a short timeout. */
static __always_inline __u64 wakeup_flags(void)
{
	return bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= wake_at_bytes
		       ? BPF_RB_FORCE_WAKEUP
		       : BPF_RB_NO_WAKEUP;
}

/* A thread's first record is preceded by who it is (uid, comm), once: not in
 * every record, so the per-call cost of those helpers is paid once per thread. */
static __always_inline void announce(__u64 pid_tgid)
{
	struct ecap_thread_seen *seen = bpf_task_storage_get(
		&thread_names, bpf_get_current_task_btf(), 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!seen || seen->announced)
		return;
	struct ecap_record *ev =
		bpf_ringbuf_reserve(&events, HDR_SIZE + sizeof(struct ecap_threadinfo), 0);
	if (!ev) {
		stat_add(ECAP_STAT_LOST_EVENTS, 1);
		return;  /* tried again with the next record */
	}
	ev->ts_ns = bpf_ktime_get_ns();
	ev->conn = 0;
	ev->stream_off = 0;
	ev->pid = pid_tgid >> 32;
	ev->tid = (__u32)pid_tgid;
	ev->fd = -1;
	ev->total = 0;
	ev->offset = 0;
	ev->kind = ECAP_KIND_THREAD;
	ev->flags = ECAP_FLAG_LAST;
	ev->family = 0;
	ev->source = 0;
	struct ecap_threadinfo *info = (struct ecap_threadinfo *)ev->data;
	__u64 uid_gid = bpf_get_current_uid_gid();
	info->uid = (__u32)uid_gid;
	info->gid = uid_gid >> 32;
	bpf_get_current_comm(&info->comm, sizeof(info->comm));
	ev->len = sizeof(*info);
	bpf_ringbuf_submit(ev, BPF_RB_NO_WAKEUP);
	seen->announced = 1;
}

/* Every record's header; the thread is named to user space first if it is new. */
static __always_inline void fill_header(struct ecap_record *ev, __u64 pid_tgid, __u8 kind,
					__u64 conn, __s32 fd)
{
	announce(pid_tgid);
	ev->ts_ns = bpf_ktime_get_ns();
	ev->conn = conn;
	ev->stream_off = 0;
	ev->pid = pid_tgid >> 32;
	ev->tid = (__u32)pid_tgid;
	ev->fd = fd;
	ev->total = 0;
	ev->offset = 0;
	ev->len = 0;
	ev->kind = kind;
	ev->flags = ECAP_FLAG_LAST;
	ev->family = 0;
	ev->source = 0;
}

/* A header-only record, from the session's module `source` (see capture_abi.h). */
static __always_inline void emit_header_as(__u64 pid_tgid, __u8 kind, __u64 conn, __s32 fd,
					   __u32 source)
{
	struct ecap_record *ev = bpf_ringbuf_reserve(&events, HDR_SIZE, 0);
	if (!ev) {
		stat_add(ECAP_STAT_LOST_EVENTS, 1);
		return;
	}
	fill_header(ev, pid_tgid, kind, conn, fd);
	ev->source = source;
	bpf_ringbuf_submit(ev, wakeup_flags());
}

static __always_inline void emit_header(__u64 pid_tgid, __u8 kind, __u64 conn, __s32 fd)
{
	emit_header_as(pid_tgid, kind, conn, fd, 0);
}

/* ------------------------------------------------- user memory into records */

struct chunk_ctx {
	__u64 buf;
	__u64 capture;   /* bytes to send: min(n, limit) */
	__u64 wake;
	__u8 truncated;
};

/* Sends `len` bytes (1..ECAP_CHUNK) at user address `src` as the record of this
 * call at offset `off`; the header is in this CPU's scratch record. The record that
 * reaches the end of what is captured is the call's last. */
static __always_inline void send_piece(struct chunk_ctx *c, __u64 off, __u64 src, __u64 len)
{
	__u32 zero = 0;
	struct ecap_record *ev = bpf_map_lookup_elem(&scratch, &zero);
	if (!ev)
		return;
	__u8 flags = 0;
	if (off + len >= c->capture)
		flags = ECAP_FLAG_LAST | (c->truncated ? ECAP_FLAG_TRUNCATED : 0);
	ev->offset = off;
	ev->len = len;
	ev->flags = flags;
	__u64 wake = flags ? c->wake : BPF_RB_NO_WAKEUP;

	if (len >= ECAP_CHUNK) {
		/* A full chunk is read straight into a reserved ring record: one copy
		 * instead of two for large calls. */
		struct ecap_record *r = bpf_ringbuf_reserve(&events, sizeof(*r), 0);
		if (!r) {
			stat_add(ECAP_STAT_LOST_EVENTS, 1);
			stat_add(ECAP_STAT_LOST_BYTES, ECAP_CHUNK);
			return;
		}
		__builtin_memcpy(r, ev, HDR_SIZE);
		if (bpf_probe_read_user(&r->data, ECAP_CHUNK, (void *)src) < 0) {
			/* Never ship what the failed read left in the record. */
			bpf_ringbuf_discard(r, BPF_RB_NO_WAKEUP);
			goto fault;
		}
		bpf_ringbuf_submit(r, wake);
		return;
	}
	/* The mask is a no-op for 1..ECAP_CHUNK-1 and gives the verifier its bound. */
	if (bpf_probe_read_user(&ev->data, len & (ECAP_CHUNK - 1), (void *)src) < 0)
		goto fault;
	if (bpf_ringbuf_output(&events, ev, HDR_SIZE + (len & (ECAP_CHUNK - 1)), wake) < 0) {
		stat_add(ECAP_STAT_LOST_EVENTS, 1);
		stat_add(ECAP_STAT_LOST_BYTES, len);
	}
	return;

fault:
	/* The bytes exist but are not readable now (a page not present): say so
	 * with a header-only record, so user space shows a counted gap. */
	stat_add(ECAP_STAT_FAULT_BYTES, len);
	ev->flags = flags | ECAP_FLAG_FAULT;
	if (bpf_ringbuf_output(&events, ev, HDR_SIZE, wake) < 0)
		stat_add(ECAP_STAT_LOST_EVENTS, 1);
}

/* One chunk of a call (index i). */
static long send_chunk(__u32 i, struct chunk_ctx *c)
{
	__u64 off = (__u64)i * ECAP_CHUNK;
	if (off >= c->capture)
		return 1;
	__u64 len = c->capture - off;
	if (len > ECAP_CHUNK)
		len = ECAP_CHUNK;
	send_piece(c, off, c->buf + off, len);
	return 0;
}

/* The call's header in this CPU's scratch record, and the copy's bounds; NULL when
 * there is no scratch record. */
static __always_inline struct ecap_record *start_call(struct chunk_ctx *c, __u64 pid_tgid,
						      __u8 kind, __u64 conn, __s32 fd,
						      __u64 stream_off, __u64 buf, __u64 n,
						      __u32 source)
{
	__u64 limit = (__u64)ECAP_CHUNK * max_chunks;
	c->buf = buf;
	c->capture = n > limit ? limit : n;
	c->truncated = n > limit;
	if (n > limit)
		stat_add(ECAP_STAT_TRUNCATED_BYTES, n - limit);
	__u32 zero = 0;
	struct ecap_record *ev = bpf_map_lookup_elem(&scratch, &zero);
	if (!ev)
		return 0;
	fill_header(ev, pid_tgid, kind, conn, fd);
	ev->source = source;
	ev->stream_off = stream_off;
	ev->total = n > 0xffffffffULL ? 0xffffffffU : (__u32)n;
	c->wake = wakeup_flags();
	return ev;
}

/* Sends n bytes at user address buf as one call's records of `kind` (chunks of
 * ECAP_CHUNK, at most max_chunks of them; the rest counted as truncated), from the
 * session's module `source`. A call of one chunk (most) needs no loop. */
static __always_inline void send_user_bytes_as(__u64 pid_tgid, __u8 kind, __u64 conn,
						__s32 fd, __u64 stream_off, __u64 buf, __u64 n,
						__u32 source)
{
	struct chunk_ctx c = {};
	struct ecap_record *ev =
		start_call(&c, pid_tgid, kind, conn, fd, stream_off, buf, n, source);
	if (!ev)
		return;
	if (c.capture < ECAP_CHUNK) {
		__u64 len = c.capture;  /* 0 for an empty call: still one (last) record */
		ev->len = len;
		ev->flags = ECAP_FLAG_LAST | (c.truncated ? ECAP_FLAG_TRUNCATED : 0);
		if (len && bpf_probe_read_user(&ev->data, len & (ECAP_CHUNK - 1), (void *)buf) < 0) {
			stat_add(ECAP_STAT_FAULT_BYTES, len);
			ev->flags |= ECAP_FLAG_FAULT;
			len = 0;
		}
		if (bpf_ringbuf_output(&events, ev, HDR_SIZE + (len & (ECAP_CHUNK - 1)), c.wake) < 0) {
			stat_add(ECAP_STAT_LOST_EVENTS, 1);
			stat_add(ECAP_STAT_LOST_BYTES, len);
		}
		return;
	}
	bpf_loop(ECAP_MAX_CHUNKS, send_chunk, &c, 0);
}

static __always_inline void send_user_bytes(__u64 pid_tgid, __u8 kind, __u64 conn, __s32 fd,
					    __u64 stream_off, __u64 buf, __u64 n)
{
	send_user_bytes_as(pid_tgid, kind, conn, fd, stream_off, buf, n, 0);
}

/* A vectored call: its bytes are the concatenation of an array of vectors, each
 * { void *base; 32-bit length } in 16 bytes (NSPR's PRIOVec; the low half of a
 * struct iovec's length, too). */
struct iov_ctx {
	struct chunk_ctx c;
	__u64 iov;       /* user address of the vector array */
	__u64 count;     /* vectors in it */
};

/* Where the copy of a vectored call is. In map memory, not in the loop context: a
 * stack value the callback updates is tracked precisely by the verifier, iteration
 * by iteration, past its instruction limit (see strlen_step). */
struct iov_cursor {
	__u64 off;       /* bytes of the call sent so far */
	__u64 vec;       /* current vector */
	__u64 vec_off;   /* bytes of it sent so far */
};
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct iov_cursor);
} iov_cursors SEC(".maps");

/* One piece: what is left of the current vector, at most a chunk. */
static long send_iov_piece(__u32 i, struct iov_ctx *v)
{
	__u32 zero = 0;
	struct iov_cursor *at = bpf_map_lookup_elem(&iov_cursors, &zero);
	if (!at || at->off >= v->c.capture || at->vec >= v->count || at->vec >= ECAP_MAX_IOV)
		return 1;
	struct { __u64 base; __u32 len; __u32 pad; } vec;
	if (bpf_probe_read_user(&vec, sizeof(vec), (void *)(v->iov + at->vec * 16)) < 0)
		return 1;  /* the vector array itself is unreadable: what is left is counted lost */
	if (at->vec_off >= vec.len) {
		at->vec++;
		at->vec_off = 0;
		return 0;
	}
	__u64 len = vec.len - at->vec_off;
	if (len > v->c.capture - at->off)
		len = v->c.capture - at->off;
	if (len > ECAP_CHUNK)
		len = ECAP_CHUNK;
	__u64 off = at->off;
	__u64 src = vec.base + at->vec_off;
	at->off = off + len;
	at->vec_off += len;
	send_piece(&v->c, off, src, len);
	return 0;
}

/* Sends the first n (> 0) bytes of `count` vectors at user address iov as one
 * call's records, as send_user_bytes_as does for one buffer (records need not be
 * chunk aligned: each says its offset in the call). */
static __always_inline void send_user_iov_as(__u64 pid_tgid, __u8 kind, __u64 conn, __s32 fd,
					     __u64 stream_off, __u64 iov, __u64 count, __u64 n,
					     __u32 source)
{
	struct iov_ctx v = { .iov = iov, .count = count };
	__u32 zero = 0;
	struct iov_cursor *at = bpf_map_lookup_elem(&iov_cursors, &zero);
	if (!at || !start_call(&v.c, pid_tgid, kind, conn, fd, stream_off, 0, n, source))
		return;
	at->off = 0;
	at->vec = 0;
	at->vec_off = 0;
	bpf_loop(ECAP_MAX_CHUNKS + ECAP_MAX_IOV, send_iov_piece, &v, 0);
}

/* Measures a NUL-terminated string chunk by chunk. The running length lives in
 * the scratch record (map memory), not in the loop context: a stack value the
 * callback updates would be tracked precisely by the verifier, iteration by
 * iteration, past its instruction limit. The result is at most one chunk past the
 * limit, so a longer string is counted as truncated. */
static long strlen_step(__u32 i, __u64 *src)
{
	__u32 zero = 0;
	struct ecap_record *rec = bpf_map_lookup_elem(&scratch, &zero);
	if (!rec)
		return 1;
	__u64 measured = rec->stream_off;
	long n = bpf_probe_read_user_str(rec->data, ECAP_CHUNK, (void *)(*src + measured));
	if (n <= 0)
		return 1;  /* unreadable: what was measured is what there is */
	if (n < ECAP_CHUNK) {
		rec->stream_off = measured + n - 1;
		return 1;
	}
	rec->stream_off = measured + ECAP_CHUNK - 1;
	return 0;
}

static __always_inline __u64 user_strlen(__u64 src)
{
	__u32 zero = 0;
	struct ecap_record *rec = bpf_map_lookup_elem(&scratch, &zero);
	if (!rec)
		return 0;
	rec->stream_off = 0;
	bpf_loop(ECAP_MAX_CHUNKS + 1, strlen_step, &src, 0);
	return rec->stream_off;
}

/* A small fixed-size struct as one record's data (struct ecap_* payloads). */
static __always_inline void emit_struct(__u64 pid_tgid, __u8 kind, __u64 conn, __s32 fd,
					const void *data, __u32 size)
{
	__u32 zero = 0;
	struct ecap_record *ev = bpf_map_lookup_elem(&scratch, &zero);
	if (!ev)
		return;
	fill_header(ev, pid_tgid, kind, conn, fd);
	if (size > 256)
		size = 256;
	bpf_probe_read_kernel(&ev->data, size & 511, data);
	ev->len = size;
	ev->total = size;
	if (bpf_ringbuf_output(&events, ev, HDR_SIZE + (size & 511), wakeup_flags()) < 0)
		stat_add(ECAP_STAT_LOST_EVENTS, 1);
}

/* ------------------------------------------------------------ scope programs */

/* A named target that execs is no longer the program the token named: it leaves
 * the allow-list at once, and user space decides (and journals) what happens
 * next. A descendant is covered by lineage, not by its program: it stays. */
SEC("raw_tracepoint/sched_process_exec")
int on_exec(struct bpf_raw_tracepoint_args *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32;
	__u8 *scope = bpf_map_lookup_elem(&target_pids, &tgid);
	if (!scope || *scope != ECAP_SCOPE_TARGET)
		return 0;
	bpf_map_delete_elem(&target_pids, &tgid);
	struct ecap_thread_seen *seen =
		bpf_task_storage_get(&thread_names, bpf_get_current_task_btf(), 0, 0);
	if (seen)
		seen->announced = 0;  /* a new program: its name is sent again */
	emit_header(pid_tgid, ECAP_KIND_EXEC, 0, -1);
	return 0;
}

/* sched_process_fork(parent, child) runs in the parent: the child joins the
 * allow-list before it runs. Threads (same thread group) are already covered. */
SEC("raw_tracepoint/sched_process_fork")
int on_fork(struct bpf_raw_tracepoint_args *ctx)
{
	if (!follow_descendants)
		return 0;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32;
	if (!bpf_map_lookup_elem(&target_pids, &tgid))
		return 0;
	struct task_struct___ecap *child = (struct task_struct___ecap *)ctx->args[1];
	__u32 child_tgid = BPF_CORE_READ(child, tgid);
	if (child_tgid == tgid)
		return 0;
	__u8 scope = ECAP_SCOPE_DESCENDANT;
	if (bpf_map_update_elem(&target_pids, &child_tgid, &scope, BPF_NOEXIST) == 0)
		emit_header(pid_tgid, ECAP_KIND_FORK, child_tgid, -1);
	return 0;
}

/* sched_process_exit(task) for each exiting thread: when the thread-group
 * leader of a covered process exits, it leaves the allow-list (its PID may be
 * reused by anyone) and user space learns its exit code (conn). */
SEC("raw_tracepoint/sched_process_exit")
int on_exit(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct___ecap *task = (struct task_struct___ecap *)ctx->args[0];
	__u32 pid = BPF_CORE_READ(task, pid);
	__u32 tgid = BPF_CORE_READ(task, tgid);
	if (pid != tgid || !bpf_map_lookup_elem(&target_pids, &tgid))
		return 0;
	bpf_map_delete_elem(&target_pids, &tgid);
	__u32 code = BPF_CORE_READ(task, exit_code);
	emit_header(((__u64)tgid << 32) | pid, ECAP_KIND_EXIT, code, -1);
	return 0;
}

#endif
