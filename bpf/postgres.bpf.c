// SPDX-License-Identifier: GPL-2.0
/*
 * ecap capture of PostgreSQL statements, through the simple and the extended
 * protocol, from functions Debian's postgres exports (it exports neither
 * exec_simple_query nor the exec_*_message functions of the extended protocol):
 *
 *   pq_getbyte()                      return: the type of the protocol message the
 *                                     backend is about to handle ('Q' simple query,
 *                                     'P' parse, 'B' bind, 'E' execute, ...)
 *   pgstat_report_activity(RUNNING, text)  entry: the statement text; every path
 *                                     that runs SQL reports it (simple query, and
 *                                     each of parse, bind and execute)
 *   EndCommand(qc, ...)               entry: a command completed: its tag and rows
 *   GetCommandTagName()               return, inside EndCommand: the tag's name
 *   errstart(elevel) / errcode(code) / EmitErrorReport()
 *                                     an ERROR (or worse) with its SQLSTATE, as sent
 *                                     to the client
 *   ReadyForQuery()                   entry: the message cycle ended (a simple
 *                                     query's end, or Sync)
 *   InitPostgres(db, oid, user, ...)  entry: a new backend's database and user
 *
 * A backend is one single-threaded process: state is per thread-group, and a
 * postmaster's backends are its descendants (covered with --with-descendants).
 * The cookie of errstart is the server's ERROR level (21 in PostgreSQL 14+).
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <asm/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#include "capture_common.h"

const struct ecap_completion ecap_abi_completion = {};
const struct ecap_login ecap_abi_login = {};

#define STATE_RUNNING 2  /* enum BackendState: UNDEFINED, IDLE, RUNNING, ... */

struct backend {
	__u32 message;     /* type byte of the message being handled */
	__u32 error_level; /* an error at or above ERROR is being raised */
	__u32 sqlstate;
	__u32 in_end_command;
	__u64 rows;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 10240);
	__type(key, __u64);
	__type(value, struct backend);
} backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ecap_login);
} login_scratch SEC(".maps");

static __always_inline struct backend *backend_of(__u64 pid_tgid)
{
	struct backend *b = bpf_map_lookup_elem(&backends, &pid_tgid);
	if (b)
		return b;
	struct backend fresh = {};
	bpf_map_update_elem(&backends, &pid_tgid, &fresh, BPF_NOEXIST);
	return bpf_map_lookup_elem(&backends, &pid_tgid);
}

SEC("uretprobe")
int pg_message(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!is_target(pid_tgid))
		return 0;
	struct backend *b = backend_of(pid_tgid);
	if (b)
		b->message = (__u32)PT_REGS_RC(ctx) & 0xff;
	return 0;
}

SEC("uprobe")
int pg_activity(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!is_target(pid_tgid))
		return 0;
	__u64 text = PT_REGS_PARM2(ctx);
	if ((int)PT_REGS_PARM1(ctx) != STATE_RUNNING || !text)
		return 0;
	struct backend *b = backend_of(pid_tgid);
	__u32 message = b ? b->message : 0;
	if (b) {
		b->error_level = 0;
		b->in_end_command = 0;
	}
	send_user_bytes(pid_tgid, ECAP_KIND_QUERY, 0, (__s32)message, 0, text, user_strlen(text));
	return 0;
}

/* EndCommand(const QueryCompletion *qc, dest, force_undecorated) */
SEC("uprobe")
int pg_end_command(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!is_target(pid_tgid))
		return 0;
	struct backend *b = backend_of(pid_tgid);
	if (!b)
		return 0;
	__u64 rows = 0;
	bpf_probe_read_user(&rows, sizeof(rows), (void *)(PT_REGS_PARM1(ctx) + 8));
	b->rows = rows;
	b->in_end_command = 1;
	return 0;
}

SEC("uretprobe")
int pg_tag_name(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct backend *b = bpf_map_lookup_elem(&backends, &pid_tgid);
	if (!b || !b->in_end_command)
		return 0;
	b->in_end_command = 0;
	struct ecap_completion done = { .rows = b->rows };
	bpf_probe_read_user_str(done.tag, sizeof(done.tag), (void *)PT_REGS_RC(ctx));
	emit_struct(pid_tgid, ECAP_KIND_COMPLETION, 0, -1, &done, sizeof(done));
	return 0;
}

/* errstart(elevel, domain); cookie: the server's ERROR level. */
SEC("uprobe")
int pg_errstart(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!is_target(pid_tgid))
		return 0;
	__u32 level = (__u32)PT_REGS_PARM1(ctx);
	if (level < (__u32)bpf_get_attach_cookie(ctx))
		return 0;  /* notices, warnings, logs: not an outcome */
	struct backend *b = backend_of(pid_tgid);
	if (b) {
		b->error_level = level;
		b->sqlstate = 0;
	}
	return 0;
}

SEC("uprobe")
int pg_errcode(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct backend *b = bpf_map_lookup_elem(&backends, &pid_tgid);
	if (b && b->error_level)
		b->sqlstate = (__u32)PT_REGS_PARM1(ctx);
	return 0;
}

SEC("uprobe")
int pg_error_report(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct backend *b = bpf_map_lookup_elem(&backends, &pid_tgid);
	if (!b || !b->error_level)
		return 0;
	b->error_level = 0;
	emit_header(pid_tgid, ECAP_KIND_SQL_ERROR, 0, (__s32)b->sqlstate);
	return 0;
}

SEC("uprobe")
int pg_ready(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!is_target(pid_tgid))
		return 0;
	emit_header(pid_tgid, ECAP_KIND_READY, 0, -1);
	return 0;
}

/* InitPostgres(in_dbname, dboid, username, useroid, ...) */
SEC("uprobe")
int pg_login(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!is_target(pid_tgid))
		return 0;
	__u64 user = PT_REGS_PARM3(ctx), db = PT_REGS_PARM1(ctx);
	if (!user && !db)
		return 0;  /* an auxiliary process, not a client's backend */
	__u32 zero = 0;
	struct ecap_login *login = bpf_map_lookup_elem(&login_scratch, &zero);
	if (!login)
		return 0;
	__builtin_memset(login, 0, sizeof(*login));
	if (user)
		bpf_probe_read_user_str(login->user, sizeof(login->user), (void *)user);
	if (db)
		bpf_probe_read_user_str(login->database, sizeof(login->database), (void *)db);
	emit_struct(pid_tgid, ECAP_KIND_LOGIN, 0, -1, login, sizeof(*login));
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
