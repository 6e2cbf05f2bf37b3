// ecap TLS plaintext capture (OpenSSL API: libssl, BoringSSL, static OpenSSL).
//
// Compiled by bcc at run time with -D definitions from ecap/capture/probes.py:
//   ECAP_CHUNK       bytes of payload per ring-buffer record (power of two)
//   ECAP_MAX_CHUNKS  records per call; ECAP_CHUNK * ECAP_MAX_CHUNKS is the
//                    documented per-call limit, bytes beyond it are counted as
//                    truncated (in the event and in the per-CPU stats)
//   ECAP_RING_PAGES  ring buffer size in pages (power of two)
//   ECAP_WAKEUP_EVERY  wake the reader once per this many records per CPU
//
// PID scoping happens twice: userspace attaches every uprobe with the target's
// PID, and every program here also looks the thread-group id up in
// `target_pids` before touching anything, so a probe that fired for another
// process (or a syscall tracepoint, which is system-wide) copies nothing.
//
// Written for clang 14 and the 6.x verifier: no min() from kernel headers, and
// every length handed to bpf_probe_read_user() is clamped with an explicit
// bound the verifier can follow.
#include <uapi/linux/ptrace.h>

#define KIND_WRITE 1
#define KIND_READ 2
#define KIND_HANDSHAKE 3
#define KIND_SSL_END 4
#define KIND_CONNECT 5
#define KIND_CLOSE 6

#define FLAG_LAST 1       // last record of this call
#define FLAG_TRUNCATED 2  // the call had more bytes than the per-call limit

#define STAT_LOST_EVENTS 0
#define STAT_LOST_BYTES 1
#define STAT_TRUNCATED_BYTES 2
#define STAT_FAILED_CALLS 3
#define STAT_EVENTS 4
#define STAT_SINCE_WAKEUP 5
#define NSTATS 6

#define FN_WRITE 1
#define FN_READ 2
#define FN_WRITE_EX 3
#define FN_READ_EX 4

struct tls_event {
    u64 ts_ns;       // CLOCK_MONOTONIC at the call's return
    u64 ssl;         // SSL* (connection identity inside the process)
    u32 pid;
    u32 tid;
    u32 uid;
    s32 fd;          // socket fd, -1 when not (yet) known
    u32 total;       // real byte count of the call
    u32 offset;      // offset of this record's bytes within the call
    u32 len;         // payload bytes in this record
    u8 kind;
    u8 flags;
    u16 family;      // KIND_CONNECT: address family
    char comm[16];
    u8 data[ECAP_CHUNK];
};

#define EVENT_HDR_SIZE (sizeof(struct tls_event) - ECAP_CHUNK)

struct call_args {
    u64 ssl;
    u64 buf;
    u64 len_ptr;     // size_t* of the _ex variants, 0 otherwise
    s32 fd;          // socket fd seen by a syscall made inside this call
    u32 fn;
};

BPF_HASH(target_pids, u32, u8, 64);
BPF_HASH(active_calls, u64, struct call_args, 10240);
BPF_HASH(ssl_fds, u64, s32, 65536);
BPF_HASH(last_read_fd, u32, s32, 10240);
// (tgid << 32 | fd) of sockets: seeded by userspace from /proc/PID/fd, then kept
// current by connect/accept/close, so the read heuristic only ever names a socket.
BPF_HASH(socket_fds, u64, u8, 65536);
BPF_PERCPU_ARRAY(scratch, struct tls_event, 1);
BPF_PERCPU_ARRAY(stats, u64, NSTATS);
BPF_RINGBUF_OUTPUT(events, ECAP_RING_PAGES);

static __always_inline int is_target(u64 pid_tgid) {
    u32 tgid = pid_tgid >> 32;
    return target_pids.lookup(&tgid) != 0;
}

static __always_inline void stat_add(int idx, u64 value) {
    u64 *slot = stats.lookup(&idx);
    if (slot)
        *slot += value;
}

static __always_inline u64 wakeup_flags(void) {
    // Waking the reader for every record costs the traced process an IPI per
    // call; wake it every ECAP_WAKEUP_EVERY records per CPU (the reader also polls with a short timeout, so latency stays bounded).
    // (bcc 0.26 has no ringbuf_query wrapper, so count records per CPU.)
    int idx = STAT_SINCE_WAKEUP;
    u64 *since = stats.lookup(&idx);
    if (!since)
        return 0;
    *since += 1;
    if (*since < ECAP_WAKEUP_EVERY)
        return BPF_RB_NO_WAKEUP;
    *since = 0;
    return BPF_RB_FORCE_WAKEUP;
}

static __always_inline struct tls_event *new_event(u64 pid_tgid, u8 kind, u64 ssl, s32 fd) {
    int zero = 0;
    struct tls_event *ev = scratch.lookup(&zero);
    if (!ev)
        return 0;
    ev->ts_ns = bpf_ktime_get_ns();
    ev->ssl = ssl;
    ev->pid = pid_tgid >> 32;
    ev->tid = (u32)pid_tgid;
    ev->uid = (u32)bpf_get_current_uid_gid();
    ev->fd = fd;
    ev->total = 0;
    ev->offset = 0;
    ev->len = 0;
    ev->kind = kind;
    ev->flags = FLAG_LAST;
    ev->family = 0;
    bpf_get_current_comm(&ev->comm, sizeof(ev->comm));
    return ev;
}

static __always_inline void submit_header(struct tls_event *ev) {
    if (events.ringbuf_output(ev, EVENT_HDR_SIZE, wakeup_flags()) < 0)
        stat_add(STAT_LOST_EVENTS, 1);
    else
        stat_add(STAT_EVENTS, 1);
}

static __always_inline s32 fd_of(u64 ssl, s32 seen) {
    s32 *known = ssl_fds.lookup(&ssl);
    if (seen >= 0) {
        if (!known || *known != seen)
            ssl_fds.update(&ssl, &seen);
        return seen;
    }
    return known ? *known : -1;
}

// ---------------------------------------------------------------- entry probes

static __always_inline int enter_call(struct pt_regs *ctx, u32 fn, int has_len_ptr) {
    u64 pid_tgid = bpf_get_current_pid_tgid();
    if (!is_target(pid_tgid))
        return 0;
    struct call_args args = {};
    args.ssl = PT_REGS_PARM1(ctx);
    args.buf = PT_REGS_PARM2(ctx);
    args.len_ptr = has_len_ptr ? PT_REGS_PARM4(ctx) : 0;
    args.fd = -1;
    args.fn = fn;
    active_calls.update(&pid_tgid, &args);
    return 0;
}

int enter_ssl_write(struct pt_regs *ctx) { return enter_call(ctx, FN_WRITE, 0); }
int enter_ssl_read(struct pt_regs *ctx) { return enter_call(ctx, FN_READ, 0); }
int enter_ssl_write_ex(struct pt_regs *ctx) { return enter_call(ctx, FN_WRITE_EX, 1); }
int enter_ssl_read_ex(struct pt_regs *ctx) { return enter_call(ctx, FN_READ_EX, 1); }

// ---------------------------------------------------------------- return probes

static __always_inline int return_call(struct pt_regs *ctx) {
    u64 pid_tgid = bpf_get_current_pid_tgid();
    if (!is_target(pid_tgid))
        return 0;
    struct call_args *args = active_calls.lookup(&pid_tgid);
    if (!args)
        return 0;
    struct call_args a = *args;
    active_calls.delete(&pid_tgid);

    // The functions return int: the upper half of rax is garbage, so a -1
    // would read as 4294967295 through a long.
    int ret = (int)PT_REGS_RC(ctx);

    // Learn the socket even from calls that failed (a non-blocking SSL_read that
    // wants more data still tells us which socket its SSL* sits on).
    s32 fd = fd_of(a.ssl, a.fd);
    if (fd < 0 && (a.fn == FN_READ || a.fn == FN_READ_EX)) {
        // Memory-BIO users (node) read the socket themselves just before
        // handing the bytes to SSL_read: that read names the connection.
        u32 tid = (u32)pid_tgid;
        s32 *last = last_read_fd.lookup(&tid);
        if (last)
            fd = fd_of(a.ssl, *last);
    }

    u64 n = 0;
    if (a.fn == FN_WRITE_EX || a.fn == FN_READ_EX) {
        if (ret != 1 || !a.len_ptr) {
            stat_add(STAT_FAILED_CALLS, 1);
            return 0;
        }
        bpf_probe_read_user(&n, sizeof(n), (void *)a.len_ptr);
    } else {
        if (ret <= 0) {
            stat_add(STAT_FAILED_CALLS, 1);
            return 0;
        }
        n = ret;
    }
    if (n == 0)
        return 0;


    u64 limit = (u64)ECAP_CHUNK * ECAP_MAX_CHUNKS;
    u64 capture = n > limit ? limit : n;
    u32 total = n > 0xffffffffULL ? 0xffffffffU : (u32)n;
    if (n > limit)
        stat_add(STAT_TRUNCATED_BYTES, n - limit);

    u8 kind = (a.fn == FN_WRITE || a.fn == FN_WRITE_EX) ? KIND_WRITE : KIND_READ;
    struct tls_event *ev = new_event(pid_tgid, kind, a.ssl, fd);
    if (!ev)
        return 0;
    ev->total = total;
    u64 wake = wakeup_flags();

#pragma unroll
    for (int i = 0; i < ECAP_MAX_CHUNKS; i++) {
        u64 off = (u64)i * ECAP_CHUNK;
        if (off >= capture)
            break;
        u64 len = capture - off;
        u8 flags = 0;
        if (len > ECAP_CHUNK)
            len = ECAP_CHUNK;
        else
            flags = FLAG_LAST;
        if (flags && n > limit)
            flags |= FLAG_TRUNCATED;
        ev->offset = off;
        ev->len = len;
        ev->flags = flags;
        u64 flag_wake = flags & FLAG_LAST ? wake : BPF_RB_NO_WAKEUP;
        if (len == ECAP_CHUNK) {
            // A full chunk is read straight into a reserved ring record: one
            // copy instead of two (scratch, then ring) for large calls.
            struct tls_event *r = events.ringbuf_reserve(sizeof(struct tls_event));
            if (!r) {
                stat_add(STAT_LOST_EVENTS, 1);
                stat_add(STAT_LOST_BYTES, len);
                continue;
            }
            __builtin_memcpy(r, ev, EVENT_HDR_SIZE);
            bpf_probe_read_user(&r->data, ECAP_CHUNK, (void *)(a.buf + off));
            events.ringbuf_submit(r, flag_wake);
            stat_add(STAT_EVENTS, 1);
            continue;
        }
        // The mask is a no-op for 1..ECAP_CHUNK-1 and keeps the verifier's bound.
        bpf_probe_read_user(&ev->data, len & (ECAP_CHUNK - 1), (void *)(a.buf + off));
        u64 size = EVENT_HDR_SIZE + (len & (ECAP_CHUNK - 1));
        if (events.ringbuf_output(ev, size, flag_wake) < 0) {
            stat_add(STAT_LOST_EVENTS, 1);
            stat_add(STAT_LOST_BYTES, len);
        } else {
            stat_add(STAT_EVENTS, 1);
        }
    }
    return 0;
}

int return_ssl_write(struct pt_regs *ctx) { return return_call(ctx); }
int return_ssl_read(struct pt_regs *ctx) { return return_call(ctx); }

// ------------------------------------------------------- connection lifecycle

int enter_ssl_set_fd(struct pt_regs *ctx) {
    u64 pid_tgid = bpf_get_current_pid_tgid();
    if (!is_target(pid_tgid))
        return 0;
    u64 ssl = PT_REGS_PARM1(ctx);
    s32 fd = (s32)PT_REGS_PARM2(ctx);
    ssl_fds.update(&ssl, &fd);
    return 0;
}

int enter_ssl_do_handshake(struct pt_regs *ctx) {
    u64 pid_tgid = bpf_get_current_pid_tgid();
    if (!is_target(pid_tgid))
        return 0;
    struct call_args args = {};
    args.ssl = PT_REGS_PARM1(ctx);
    args.fd = -1;
    active_calls.update(&pid_tgid, &args);
    return 0;
}

int return_ssl_do_handshake(struct pt_regs *ctx) {
    u64 pid_tgid = bpf_get_current_pid_tgid();
    if (!is_target(pid_tgid))
        return 0;
    struct call_args *args = active_calls.lookup(&pid_tgid);
    if (!args)
        return 0;
    struct call_args a = *args;
    active_calls.delete(&pid_tgid);
    s32 fd = fd_of(a.ssl, a.fd);
    if (fd < 0) {
        u32 tid = (u32)pid_tgid;
        s32 *last = last_read_fd.lookup(&tid);
        if (last)
            fd = fd_of(a.ssl, *last);
    }
    if ((int)PT_REGS_RC(ctx) != 1)
        return 0;  // in progress (non-blocking) or failed: only completion is an event
    struct tls_event *ev = new_event(pid_tgid, KIND_HANDSHAKE, a.ssl, fd);
    if (ev)
        submit_header(ev);
    return 0;
}

int enter_ssl_end(struct pt_regs *ctx) {
    // SSL_shutdown / SSL_free: the connection ends for this SSL*.
    u64 pid_tgid = bpf_get_current_pid_tgid();
    if (!is_target(pid_tgid))
        return 0;
    u64 ssl = PT_REGS_PARM1(ctx);
    s32 *known = ssl_fds.lookup(&ssl);
    if (!known)
        return 0;  // never used for data or already reported
    struct tls_event *ev = new_event(pid_tgid, KIND_SSL_END, ssl, *known);
    ssl_fds.delete(&ssl);
    if (ev)
        submit_header(ev);
    return 0;
}

// ------------------------------------------------------- syscall tracepoints
// (kprobes do not exist on these kernels; syscall tracepoints do)

static __always_inline void note_fd(u64 pid_tgid, s32 fd, int is_read) {
    u64 key = (pid_tgid & 0xffffffff00000000ULL) | (u32)fd;
    if (!socket_fds.lookup(&key))
        return;  // eventfds, pipes, files (OpenSSL reads zoneinfo mid-handshake)
    struct call_args *args = active_calls.lookup(&pid_tgid);
    if (args) {
        args->fd = fd;  // a socket syscall made inside SSL_*: the socket of this SSL*
        return;
    }
    if (is_read) {
        u32 tid = (u32)pid_tgid;
        last_read_fd.update(&tid, &fd);
    }
}

#define FD_TRACEPOINT(name, is_read)                          \
    TRACEPOINT_PROBE(syscalls, name) {                        \
        u64 pid_tgid = bpf_get_current_pid_tgid();            \
        if (!is_target(pid_tgid))                             \
            return 0;                                         \
        note_fd(pid_tgid, (s32)args->fd, is_read);            \
        return 0;                                             \
    }

FD_TRACEPOINT(sys_enter_read, 1)
FD_TRACEPOINT(sys_enter_readv, 1)
FD_TRACEPOINT(sys_enter_recvfrom, 1)
FD_TRACEPOINT(sys_enter_recvmsg, 1)
FD_TRACEPOINT(sys_enter_write, 0)
FD_TRACEPOINT(sys_enter_writev, 0)
FD_TRACEPOINT(sys_enter_sendto, 0)
FD_TRACEPOINT(sys_enter_sendmsg, 0)

TRACEPOINT_PROBE(syscalls, sys_enter_connect) {
    u64 pid_tgid = bpf_get_current_pid_tgid();
    if (!is_target(pid_tgid))
        return 0;
    u64 key = (pid_tgid & 0xffffffff00000000ULL) | (u32)args->fd;
    u8 one = 1;
    socket_fds.update(&key, &one);
    struct tls_event *ev = new_event(pid_tgid, KIND_CONNECT, 0, (s32)args->fd);
    if (!ev)
        return 0;
    // Constant sizes only: 28 bytes is a sockaddr_in6, 16 a sockaddr_in (when
    // the 28-byte read would cross into an unmapped page).
    void *uaddr = (void *)args->uservaddr;
    if (bpf_probe_read_user(&ev->data, 28, uaddr) < 0 &&
        bpf_probe_read_user(&ev->data, 16, uaddr) < 0)
        return 0;
    ev->len = args->addrlen > 28 ? 28 : (u32)args->addrlen;
    ev->family = *(u16 *)ev->data;
    if (events.ringbuf_output(ev, EVENT_HDR_SIZE + 32, wakeup_flags()) < 0)
        stat_add(STAT_LOST_EVENTS, 1);
    else
        stat_add(STAT_EVENTS, 1);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_close) {
    u64 pid_tgid = bpf_get_current_pid_tgid();
    if (!is_target(pid_tgid))
        return 0;
    u64 key = (pid_tgid & 0xffffffff00000000ULL) | (u32)args->fd;
    if (!socket_fds.lookup(&key))
        return 0;  // only the end of a socket can end a connection
    socket_fds.delete(&key);
    struct tls_event *ev = new_event(pid_tgid, KIND_CLOSE, 0, (s32)args->fd);
    if (ev)
        submit_header(ev);
    return 0;
}

static __always_inline void note_accepted(long ret) {
    u64 pid_tgid = bpf_get_current_pid_tgid();
    if (ret < 0 || !is_target(pid_tgid))
        return;
    u64 key = (pid_tgid & 0xffffffff00000000ULL) | (u32)ret;
    u8 one = 1;
    socket_fds.update(&key, &one);
}

TRACEPOINT_PROBE(syscalls, sys_exit_accept) { note_accepted(args->ret); return 0; }
TRACEPOINT_PROBE(syscalls, sys_exit_accept4) { note_accepted(args->ret); return 0; }
