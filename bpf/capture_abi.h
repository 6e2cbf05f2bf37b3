/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The contract between ecap's capture programs and the Python engine: record
 * kinds, flags, counter slots, attach-cookie bits and the record layout.
 *
 * This header is the one definition. scripts/build_bpf.py runs it through the C
 * preprocessor and records every ECAP_* integer macro, and reads the layout of
 * struct ecap_record from the compiled object's BTF, into each loader file's
 * header; ecap.capture.abi reads them from there. Python never restates a value.
 */
#ifndef ECAP_CAPTURE_ABI_H
#define ECAP_CAPTURE_ABI_H

/* Payload bytes per ring record: a call is sent as numbered chunks of at most
 * this size (a per-CPU scratch value must stay under 32 KiB). */
#define ECAP_CHUNK 16384
/* Hard ceiling of --max-call-bytes; the loop is bounded by it. */
#define ECAP_MAX_CALL_BYTES 1048576
#define ECAP_MAX_CHUNKS (ECAP_MAX_CALL_BYTES / ECAP_CHUNK)

/* Record kinds (struct ecap_record.kind). */
#define ECAP_KIND_WRITE 1      /* plaintext the process sent */
#define ECAP_KIND_READ 2       /* plaintext the process received */
#define ECAP_KIND_HANDSHAKE 3  /* the library finished a handshake */
#define ECAP_KIND_CONN_END 4   /* the library ended a connection object */
#define ECAP_KIND_CONNECT 5    /* connect(2): data holds the sockaddr */
#define ECAP_KIND_CLOSE 6      /* close(2) of a socket */
#define ECAP_KIND_EXEC 7       /* a target called execve: it left the allow-list */
#define ECAP_KIND_SOCKET 8     /* a connection's socket learned: data is struct ecap_sockinfo */
#define ECAP_KIND_THREAD 9     /* a thread's first record: data is struct ecap_threadinfo */
#define ECAP_KIND_SECRET 10    /* a TLS secret the library derived: data is struct ecap_secret */
/* Scope (every object, capture_common.h). */
#define ECAP_KIND_FORK 16      /* a target forked: conn is the child, now a descendant */
#define ECAP_KIND_EXIT 17      /* a covered process exited: conn is its exit code (wait status) */
/* Shells (bpf/shell.bpf.c). */
#define ECAP_KIND_LINE 20      /* one line the shell read interactively (chunked text);
				* stream_off: its controlling tty, (major << 20) | minor */
#define ECAP_KIND_PROMPT 21    /* the shell starts reading a new command: data is struct ecap_prompt */
/* Databases (bpf/mysqld.bpf.c, bpf/postgres.bpf.c); conn is the server's session object. */
#define ECAP_KIND_QUERY 24     /* a statement's text (chunked); fd is the protocol command */
#define ECAP_KIND_QUERY_END 25 /* a statement finished: data is struct ecap_query_end */
#define ECAP_KIND_LOGIN 26     /* who a session is: data is struct ecap_login */
#define ECAP_KIND_DATABASE 27  /* the session's database changed: data is the name */
#define ECAP_KIND_COMPLETION 28 /* postgres: a command completed: data is struct ecap_completion */
#define ECAP_KIND_SQL_ERROR 29 /* postgres: an error was reported: fd is the encoded SQLSTATE */
#define ECAP_KIND_READY 30     /* postgres: ready for the next query (the end of a message cycle) */

/* Scope values of the allow-list (target_pids). */
#define ECAP_SCOPE_TARGET 1     /* named by the token */
#define ECAP_SCOPE_DESCENDANT 2 /* forked from a covered process (--with-descendants) */

/* Statement outcomes (struct ecap_query_end.outcome). */
#define ECAP_OUTCOME_UNKNOWN 0
#define ECAP_OUTCOME_OK 1
#define ECAP_OUTCOME_ERROR 2
#define ECAP_OUTCOME_ROWS_SENT 3 /* OK: a result set was sent (its rows are not counted here) */

/* Record flags. */
#define ECAP_FLAG_LAST 1       /* last record of this call */
#define ECAP_FLAG_TRUNCATED 2  /* the call moved more than the per-call limit */
#define ECAP_FLAG_FAULT 4      /* len bytes at offset could not be read: no data follows */

/* Per-CPU counters (the stats map): only what goes wrong is counted in the
 * kernel; records that arrive are counted by user space. */
#define ECAP_STAT_LOST_EVENTS 0     /* ring reservations that failed */
#define ECAP_STAT_LOST_BYTES 1      /* payload bytes in those records */
#define ECAP_STAT_TRUNCATED_BYTES 2 /* bytes beyond the per-call limit */
#define ECAP_STAT_FAILED_CALLS 3    /* calls that returned an error or would block */
#define ECAP_STAT_FAULT_BYTES 4     /* bytes of user memory that could not be read */
#define ECAP_STAT_DEEP_CALLS 5      /* calls nested deeper than ECAP_CALL_DEPTH: not captured */
#define ECAP_NSTATS 6

/* In-flight calls per thread: a data call may run a handshake inside it
 * (BoringSSL's SSL_write calls SSL_do_handshake); each gets its own frame. */
#define ECAP_CALL_DEPTH 4

/* Attach cookie: what one attachment of a shared program means. The same
 * programs serve every library of the shape fn(conn, buf, len) -> n. */
#define ECAP_COOKIE_KIND_MASK 0xff        /* ECAP_KIND_WRITE / _READ / _HANDSHAKE */
#define ECAP_COOKIE_LEN_IN_ARG4 0x100     /* n is *(size_t *)arg4, success is ret == 1 */
#define ECAP_COOKIE_RET_LONG 0x200        /* the return value is 64-bit (ssize_t) */
#define ECAP_COOKIE_OK_IS_ZERO 0x400      /* handshake: 0 means done (GnuTLS) */
#define ECAP_COOKIE_IOVEC 0x800           /* buf is an array of arg3 vectors (PR_Writev) */
#define ECAP_COOKIE_NSPR_LAYERS 0x1000    /* conn is an NSPR PRFileDesc*: only one whose layer
					   * chain holds the TLS layer is captured */
#define ECAP_COOKIE_FD_IN_PTR 0x2000      /* set_fd: arg2 is a pointer-sized transport value,
					   * a file descriptor only when it is a socket's number */
/* The upper half of a cookie says which of the session's modules made the attachment
 * (several modules can share one object in a session: `capture auto`); records carry
 * it in `source`. */
#define ECAP_COOKIE_SOURCE_SHIFT 32

/* Vectors of one vectored call the copy walks (NSPR's PR_MAX_IOVECTOR_SIZE). */
#define ECAP_MAX_IOV 16

/* TLS secrets (ECAP_KIND_SECRET): what a library hands its key-log function. */
#define ECAP_SECRET_MAX 64      /* bytes of a secret read (TLS uses 32 or 48) */
#define ECAP_SECRET_LABEL 40    /* bytes of its NSS key-log label read */
/* A secret probe's cookie. Bits 0-15 (tls_rw's secret_enter): where the client
 * random lies in the library's connection object (gotls's go_secret keeps Go's
 * cookie bits there: Go passes the client random as an argument). Bits 16-31: a
 * signed shift of the secret's address, 0 except under the UNSAFE test hook that
 * proves a wrong location is caught (ECAP_UNSAFE_TEST_SECRET_SHIFT). The upper half
 * is the source, as in every cookie. */
#define ECAP_SECRET_RANDOM_MASK 0xffff
#define ECAP_SECRET_SHIFT_SHIFT 16
#define ECAP_SECRET_SHIFT_LIMIT 32767  /* |shift| at most */

/* Packet tap (bpf/packet_tap.h): how a flow of an authorized process was learned. */
#define ECAP_FLOW_CONNECT 1     /* the process connected it (inet_sock_set_state) */
#define ECAP_FLOW_LIBRARY 2     /* the TLS library used the socket (pre-existing, accepted) */
#define ECAP_FLOW_LINGER_NS 2000000000ULL /* a closed flow's packets still pass this long */

/* Go crypto/tls (bpf/gotls.bpf.c): the attach cookie of each probe. Go code is
 * probed at function entries and at its RET instructions (never a uretprobe:
 * Go moves goroutine stacks, and a uretprobe's rewritten return address would
 * be copied with them).
 *   bits 0-7   record kind (ECAP_COOKIE_KIND_MASK): WRITE, READ, HANDSHAKE; 0 for Close
 *   bit 8      arguments and results on the stack (Go < 1.17), else in registers
 *   bits 10-15 where the runtime keeps the current goroutine (g) in thread-local
 *              storage, in 8-byte units below the fs base (stack ABI, syscalls)
 * At a RET (stack ABI): bits 16-23, the first result's distance from sp, in 8-byte units.
 * At an entry with ECAP_GO_FD_LAYOUT (offsets from DWARF, in 8-byte units):
 *   bits 16-21 tls.Conn.conn (the net.Conn interface)
 *   bits 22-26 *net.TCPConn -> its *net.netFD
 *   bits 27-31 net.netFD -> poll.FD.Sysfd
 *   bits 32-63 signed distance from the probe's address to the itab of
 *              *net.TCPConn as a net.Conn (only then is the fd read that way)
 * Entry probes sit on the branch of the function's stack-bound check, not on its
 * first instruction: they fire on the same passes, and the kernel emulates the
 * branch instead of single-stepping the compare (one trap instead of two). */
#define ECAP_GO_STACK_ABI 0x100
#define ECAP_GO_FD_LAYOUT 0x200
#define ECAP_GO_TLS_G_SHIFT 10
#define ECAP_GO_TLS_G_MASK 0x3f
#define ECAP_GO_RESULTS_SHIFT 16
#define ECAP_GO_RESULTS_MASK 0xff
#define ECAP_GO_CONN_SHIFT 16
#define ECAP_GO_CONN_MASK 0x3f
#define ECAP_GO_NETFD_SHIFT 22
#define ECAP_GO_NETFD_MASK 0x1f
#define ECAP_GO_SYSFD_SHIFT 27
#define ECAP_GO_SYSFD_MASK 0x1f
#define ECAP_GO_ITAB_SHIFT 32

/* The two ends of a TCP socket, read from the kernel's socket when a connection
 * object is first tied to it (so accepted and pre-existing connections have
 * their peer too, with no /proc lookup racing the socket's close). */
struct ecap_sockinfo {
	__u16 family;    /* AF_INET or AF_INET6 (other families: 0) */
	__u16 lport;     /* host byte order */
	__u16 rport;     /* host byte order */
	__u16 pad;
	__u8 laddr[16];  /* AF_INET: the first 4 bytes */
	__u8 raddr[16];
};

/* ECAP_KIND_SECRET: one secret as the library passed it to its key-log function.
 * Nothing here is trusted: user space proves the client random against the
 * connection's ClientHello and the secret against its records before writing it. */
struct ecap_secret {
	__u8 client_random[32];
	__u8 secret[ECAP_SECRET_MAX];
	__u32 secret_len;   /* as the library passed it (> ECAP_SECRET_MAX: not read) */
	__u32 random_read;  /* 1: the client random could be read */
	char label[ECAP_SECRET_LABEL];
};

/* A TCP flow of an authorized process (value of the packet tap's `flows` map,
 * whose key is the flow's struct ecap_sockinfo: local and remote end). */
struct ecap_flow {
	__u32 tgid;
	__u32 source;       /* ECAP_FLOW_* */
	__u64 closed_ns;    /* when its socket closed (0: open); kept a moment for the last packets */
};

/* Who a thread is, sent once per thread (not in every record: the per-call cost
 * of bpf_get_current_comm and the uid lookup is paid once). */
struct ecap_threadinfo {
	__u32 uid;
	__u32 gid;
	char comm[16];
};

/* The file name of a library whose code implements a TLS layer (the key of
 * tls_layer_libs in bpf/tls_rw.bpf.c): NUL-padded, cut at 31 bytes. */
struct ecap_layer_lib {
	char name[32];
};

/* ECAP_KIND_PROMPT: the status the shell holds as it starts reading a command
 * (the status of the command before); `context` says whether the reader is the
 * command line (0) or something else reading through the line editor. */
struct ecap_prompt {
	__s32 status;
	__u32 context;
};

/* ECAP_KIND_QUERY_END (mysqld): what the server did with one protocol command. */
struct ecap_query_end {
	__u64 duration_ns;
	__u64 affected_rows;
	__u64 statement;  /* the prepared statement object executed (0: none) */
	__u32 command;    /* protocol command (COM_QUERY, COM_STMT_EXECUTE...) */
	__u32 outcome;    /* ECAP_OUTCOME_* */
	__u32 error;      /* server error number when outcome is ERROR */
	__u32 statement_id; /* COM_STMT_EXECUTE: the client's statement id */
};

/* ECAP_KIND_LOGIN: the account a session authenticates as. */
struct ecap_login {
	char user[80];
	char host[64];
	char database[64];
};

/* ECAP_KIND_COMPLETION (postgres): one command's completion tag and row count. */
struct ecap_completion {
	__u64 rows;
	char tag[48];
};

struct ecap_record {
	__u64 ts_ns;      /* CLOCK_MONOTONIC at the call's return */
	__u64 conn;       /* the library's connection object (SSL*, session...) */
	__u64 stream_off; /* data: where this call starts in its direction of the connection
			   * (bytes the process moved since the capture first saw it) */
	__u32 pid;
	__u32 tid;
	__s32 fd;         /* socket fd, -1 when not (yet) known */
	__u32 total;      /* real byte count of the call */
	__u32 offset;     /* offset of this record's bytes within the call */
	__u32 len;        /* payload bytes in this record (bytes missing, with FLAG_FAULT) */
	__u8 kind;
	__u8 flags;
	__u16 family;     /* KIND_CONNECT: address family */
	__u32 source;     /* which of the session's modules sharing this object wrote it
			   * (ECAP_COOKIE_SOURCE_SHIFT); 0 for a session of one module */
	__u8 data[ECAP_CHUNK];
};

#endif
