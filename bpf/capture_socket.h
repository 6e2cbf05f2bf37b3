/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Connections and their sockets, for the capture objects whose records are calls
 * on a library connection object (tls_rw: OpenSSL, GnuTLS, NSPR; gotls: Go's
 * crypto/tls): the socket behind an fd, both ends of a TCP socket read from the
 * kernel, the per-process table of connection objects with their socket and
 * stream positions, and the connect(2) record. One definition, so every such
 * module names its peers the same way.
 *
 * Included after capture_common.h (and after packet_tap.h when the object has the
 * packet tap: then every socket learned here also names a flow to capture).
 */
#ifndef ECAP_CAPTURE_SOCKET_H
#define ECAP_CAPTURE_SOCKET_H

#include "sockinfo.h"

#define PA __attribute__((preserve_access_index))
#define S_IFMT 00170000
#define S_IFSOCK 0140000

/* Kernel structures, only the fields used; relocated against the running
 * kernel's BTF by the loader (CO-RE). */
struct inode { unsigned short i_mode; } PA;
struct qstr { const unsigned char *name; } PA;
struct dentry { struct qstr d_name; } PA;
struct path { struct dentry *dentry; } PA;
struct file { struct inode *f_inode; void *private_data; struct path f_path; } PA;
struct socket { struct sock *sk; } PA;
struct fdtable { unsigned int max_fds; struct file **fd; } PA;
struct files_struct { struct fdtable *fdt; } PA;
struct task_struct { struct files_struct *files; } PA;

/* Not used at run time: keeps the layouts in the object's BTF, whence the loader
 * file records them for the Python side. */
const struct ecap_sockinfo ecap_abi_sockinfo = {};
const struct ecap_secret ecap_abi_secret = {};

/* Set by user space at load: 0 when the output needs no plaintext (keylog, pcapng:
 * the secrets and the packets are the product), so none leaves the process. */
const volatile __u8 copy_plaintext = 1;

struct conn_key {
	__u32 tgid;
	__u32 pad;
	__u64 conn;
};

#define LAYERS_UNKNOWN 0
#define LAYERS_TLS 1
#define LAYERS_PLAIN 2

struct conn_state {
	__s32 fd;        /* socket fd, -1 until known */
	__u32 layers;    /* NSPR descriptors (tls_rw): LAYERS_* verdict on its layer chain */
	__u64 pos[2];    /* bytes written [0] and read [1] so far, for stream_off */
	__u64 top_methods; /* NSPR: the top layer's methods when the verdict was made */
};

/* (tgid, connection object) -> its socket and stream positions. Keyed by process
 * too: forked workers share heap addresses, so the same SSL* names different
 * connections in different processes. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct conn_key);
	__type(value, struct conn_state);
} conns SEC(".maps");

/* This process's open file behind fd, or 0. */
static __always_inline struct file *file_of(int fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	if (!fdt || fd < 0 || (unsigned int)fd >= BPF_CORE_READ(fdt, max_fds))
		return 0;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *file = 0;
	if (bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]) < 0)
		return 0;
	return file;
}

static __always_inline int is_socket_file(struct file *file)
{
	return file && (BPF_CORE_READ(file, f_inode, i_mode) & S_IFMT) == S_IFSOCK;
}

static __always_inline int is_socket(int fd)
{
	return is_socket_file(file_of(fd));
}

/* Tell user space both ends of the socket a connection object now uses. */
static __always_inline void emit_socket(__u64 pid_tgid, __u64 conn, int fd)
{
	struct file *file = file_of(fd);
	if (!is_socket_file(file))
		return;
	struct socket *sock = BPF_CORE_READ(file, private_data);
	struct sock *sk = BPF_CORE_READ(sock, sk);
	if (!sk)
		return;
	struct ecap_record *ev =
		bpf_ringbuf_reserve(&events, HDR_SIZE + sizeof(struct ecap_sockinfo), 0);
	if (!ev) {
		stat_add(ECAP_STAT_LOST_EVENTS, 1);
		return;
	}
	fill_header(ev, pid_tgid, ECAP_KIND_SOCKET, conn, fd);
	struct ecap_sockinfo *info = (struct ecap_sockinfo *)ev->data;
	read_sockinfo(sk, info);
#ifdef ECAP_PACKET_TAP_H
	flow_note(info, pid_tgid);
#endif
	ev->len = sizeof(*info);
	bpf_ringbuf_submit(ev, BPF_RB_NO_WAKEUP);
}

/* The state of a connection object in this process (created on first sight), with
 * its socket updated when this call saw one; a newly learned socket is described
 * to user space once. One map lookup on the hot path. */
static __always_inline struct conn_state *conn_state(__u64 pid_tgid, __u64 conn, __s32 seen)
{
	struct conn_key key = { .tgid = pid_tgid >> 32, .conn = conn };
	struct conn_state *st = bpf_map_lookup_elem(&conns, &key);
	if (!st) {
		struct conn_state fresh = { .fd = seen };
		bpf_map_update_elem(&conns, &key, &fresh, BPF_NOEXIST);
		st = bpf_map_lookup_elem(&conns, &key);
		if (st && seen >= 0)
			emit_socket(pid_tgid, conn, seen);
		return st;
	}
	if (seen >= 0 && st->fd != seen) {
		st->fd = seen;
		emit_socket(pid_tgid, conn, seen);
	}
	return st;
}

/* Where a call's n bytes start in their direction of the connection's stream; the
 * position moves past them (also when the bytes themselves are not sent). */
static __always_inline __u64 advance_stream(struct conn_state *st, __u8 kind, __u64 n)
{
	int is_read = kind == ECAP_KIND_READ;
	__u64 stream_off = st->pos[is_read];
	st->pos[is_read] = stream_off + n;
	return stream_off;
}

/* One call's plaintext on a connection: its stream position, then the bytes
 * (none when the output needs no plaintext). */
static __always_inline void send_conn_bytes(__u64 pid_tgid, struct conn_state *st, __u8 kind,
					    __u64 conn, __u64 buf, __u64 n)
{
	__u64 stream_off = advance_stream(st, kind, n);
	if (copy_plaintext)
		send_user_bytes(pid_tgid, kind, conn, st->fd, stream_off, buf, n);
}

/* ------------------------------------------------------------ secrets */

/* One secret as a library hands it to its key-log function: the ECAP_KIND_SECRET
 * record (struct ecap_secret), read as found — user space proves each secret
 * against the wire before it is written anywhere. `label_len` < 0: the label is a
 * C string; otherwise its length (a Go string has no NUL). `random`: the 32-byte
 * client random's address (0: not known). */
static __always_inline void emit_secret(__u64 pid_tgid, __u64 conn, __s32 fd, __u32 source,
					__u64 label, __s64 label_len, __u64 random,
					__u64 secret, __u64 secret_len)
{
	__u32 zero = 0;
	struct ecap_record *ev = bpf_map_lookup_elem(&scratch, &zero);
	if (!ev)
		return;
	fill_header(ev, pid_tgid, ECAP_KIND_SECRET, conn, fd);
	ev->source = source;
	struct ecap_secret *s = (struct ecap_secret *)ev->data;
	__builtin_memset(s, 0, sizeof(*s));
	s->secret_len = secret_len > 0xffffffffULL ? 0xffffffffU : (__u32)secret_len;
	if (random && bpf_probe_read_user(s->client_random, sizeof(s->client_random),
					  (void *)random) == 0)
		s->random_read = 1;
	if (secret_len > 0 && secret_len <= ECAP_SECRET_MAX)
		bpf_probe_read_user(s->secret, secret_len & (2 * ECAP_SECRET_MAX - 1), (void *)secret);
	if (label_len < 0) {
		bpf_probe_read_user_str(s->label, sizeof(s->label), (void *)label);
	} else if (label_len > 0) {
		__u32 n = label_len < ECAP_SECRET_LABEL - 1 ? (__u32)label_len : ECAP_SECRET_LABEL - 1;
		bpf_probe_read_user(s->label, n & 63, (void *)label);  /* n < 40: the mask bounds it */
	}
	ev->len = sizeof(*s);
	ev->total = sizeof(*s);
	if (bpf_ringbuf_output(&events, ev, HDR_SIZE + sizeof(*s), wakeup_flags()) < 0)
		stat_add(ECAP_STAT_LOST_EVENTS, 1);
}

/* The socket fd this process's connection object is known to use, or -1. */
static __always_inline __s32 known_fd(__u64 pid_tgid, __u64 conn)
{
	struct conn_key key = { .tgid = pid_tgid >> 32, .conn = conn };
	struct conn_state *st = bpf_map_lookup_elem(&conns, &key);
	return st ? st->fd : -1;
}

/* The library ended a connection object: forget it and tell user space (``source``:
 * which of the session's modules sharing the object it belongs to). */
static __always_inline void end_conn(__u64 pid_tgid, __u64 conn, __u32 source)
{
	struct conn_key key = { .tgid = pid_tgid >> 32, .conn = conn };
	struct conn_state *known = bpf_map_lookup_elem(&conns, &key);
	if (!known)
		return;  /* never used for data, or already reported */
	__s32 fd = known->fd;
	__u32 layers = known->layers;
	bpf_map_delete_elem(&conns, &key);
	if (layers == LAYERS_PLAIN)
		return;  /* an NSPR file or plain socket: never a connection */
	emit_header_as(pid_tgid, ECAP_KIND_CONN_END, conn, fd, source);
}

/* ------------------------------------------------------------ syscalls */

#define SYSCALL_OTHER 0
#define SYSCALL_READ 1     /* read, readv, recvfrom, recvmsg: arg0 is the fd */
#define SYSCALL_WRITE 2    /* write, writev, sendto, sendmsg: arg0 is the fd */
#define SYSCALL_CONNECT 3
#define SYSCALL_CLOSE 4

/* What a system call (raw sys_enter id) is to a capture: cheap for every other
 * syscall on the host. */
static __always_inline int syscall_class(long id)
{
	switch (id) {
	case __NR_read:
	case __NR_readv:
	case __NR_recvfrom:
	case __NR_recvmsg:
		return SYSCALL_READ;
	case __NR_write:
	case __NR_writev:
	case __NR_sendto:
	case __NR_sendmsg:
		return SYSCALL_WRITE;
	case __NR_connect:
		return SYSCALL_CONNECT;
	case __NR_close:
		return SYSCALL_CLOSE;
	}
	return SYSCALL_OTHER;
}

static __always_inline void note_connect(__u64 pid_tgid, int fd, __u64 uaddr, __u64 addrlen)
{
	__u32 zero = 0;
	struct ecap_record *ev = bpf_map_lookup_elem(&scratch, &zero);
	if (!ev)
		return;
	fill_header(ev, pid_tgid, ECAP_KIND_CONNECT, 0, fd);
	/* Constant sizes only: 28 bytes is a sockaddr_in6, 16 a sockaddr_in (when
	 * the 28-byte read would cross into an unmapped page). */
	if (bpf_probe_read_user(&ev->data, 28, (void *)uaddr) < 0 &&
	    bpf_probe_read_user(&ev->data, 16, (void *)uaddr) < 0)
		return;
	ev->len = addrlen > 28 ? 28 : (__u32)addrlen;
	ev->family = *(__u16 *)ev->data;
	if (bpf_ringbuf_output(&events, ev, HDR_SIZE + 32, wakeup_flags()) < 0)
		stat_add(ECAP_STAT_LOST_EVENTS, 1);
}

/* connect(2) and close(2) of a target: the peer of a connection (exact, even for
 * a socket that closes at once) and the end of a socket. Returns 1 when the
 * syscall was one of them. */
static __always_inline int note_connect_or_close(__u64 pid_tgid, int class, struct pt_regs *regs)
{
	unsigned long arg0 = 0, arg1 = 0, arg2 = 0;
	if (class == SYSCALL_CLOSE) {
		bpf_probe_read_kernel(&arg0, sizeof(arg0), &regs->rdi);
		if (is_socket((int)arg0))  /* only the end of a socket ends a connection */
			emit_header(pid_tgid, ECAP_KIND_CLOSE, 0, (int)arg0);
		return 1;
	}
	if (class != SYSCALL_CONNECT)
		return 0;
	bpf_probe_read_kernel(&arg0, sizeof(arg0), &regs->rdi);
	bpf_probe_read_kernel(&arg1, sizeof(arg1), &regs->rsi);
	bpf_probe_read_kernel(&arg2, sizeof(arg2), &regs->rdx);
	note_connect(pid_tgid, (int)arg0, arg1, arg2);
	return 1;
}

/* A module's raw sys_enter starts here: a target's connect and close are recorded;
 * for a target's read or write (*is_read says which) the fd is returned, for
 * anything else -1. */
static __always_inline int data_syscall_fd(struct bpf_raw_tracepoint_args *ctx,
					   __u64 *pid_tgid, int *is_read)
{
	int class = syscall_class((long)ctx->args[1]);
	if (class == SYSCALL_OTHER)
		return -1;  /* cheap for every other syscall on the host */
	*pid_tgid = bpf_get_current_pid_tgid();
	if (!is_target(*pid_tgid))
		return -1;
	struct pt_regs *regs = (struct pt_regs *)ctx->args[0];
	if (note_connect_or_close(*pid_tgid, class, regs))
		return -1;
	unsigned long arg0 = 0;
	bpf_probe_read_kernel(&arg0, sizeof(arg0), &regs->rdi);
	*is_read = class == SYSCALL_READ;
	return (int)arg0;
}

#endif
