// SPDX-License-Identifier: GPL-2.0
/*
 * ecap capture of MariaDB / MySQL statements: each protocol command a server
 * thread dispatches, its text, and what really became of it.
 *
 * dispatch_command() is where every client command enters; its return value only
 * says whether to close the connection, so the outcome comes from the server's
 * diagnostics area, which every statement ends by setting: set_ok_status
 * (affected rows), set_eof_status (a result set was sent) or set_error_status
 * (the error number). Calls are tracked per thread (a frame matched by stack
 * pointer), so concurrent connections never overwrite each other's statement.
 *
 * The attach cookie of dispatch_command names its signature:
 *   0  MariaDB, MySQL <= 5.6: (enum_server_command, THD *, char *packet, uint length, ...)
 *   1  MySQL 5.7 / 8.0:       (THD *, const COM_DATA *, enum_server_command)
 * (COM_DATA's COM_QUERY / COM_STMT_PREPARE members start {const char *, uint};
 * COM_STMT_EXECUTE's with the statement id.)
 *
 * Sessions: general_log_print(THD *, COM_CONNECT, fmt, user, host, db) names the
 * account a connection logs in as (and starts its session afresh: a THD's address
 * is reused by the next connection); mysql_change_db(THD *, LEX_CSTRING *) that
 * succeeds (returns false) names its database.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <asm/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#include "capture_common.h"

const struct ecap_query_end ecap_abi_query_end = {};
const struct ecap_login ecap_abi_login = {};

#define COM_INIT_DB 2
#define COM_QUERY 3
#define COM_STMT_PREPARE 22
#define COM_STMT_EXECUTE 23
#define SIGNATURE_MYSQL57 1

struct statement {
	__u64 sp;         /* stack pointer at dispatch_command's entry */
	__u64 thd;
	__u64 started_ns;
	struct ecap_query_end end;
};

/* pid_tgid -> the command that thread is dispatching. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 10240);
	__type(key, __u64);
	__type(value, struct statement);
} statements SEC(".maps");

struct pending_db {
	__u64 sp;
	__u64 thd;
	__u64 name;       /* LEX_CSTRING * */
};

/* pid_tgid -> a mysql_change_db call in flight / the THD being authenticated. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 10240);
	__type(key, __u64);
	__type(value, struct pending_db);
} db_calls SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ecap_login);
} login_scratch SEC(".maps");

SEC("uprobe")
int my_dispatch(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!is_target(pid_tgid))
		return 0;
	__u64 thd, text = 0;
	__u32 command, length = 0, stmt_id = 0;
	if (bpf_get_attach_cookie(ctx) == SIGNATURE_MYSQL57) {
		thd = PT_REGS_PARM1(ctx);
		command = (__u32)PT_REGS_PARM3(ctx);
		__u64 data = PT_REGS_PARM2(ctx);
		if (command == COM_STMT_EXECUTE) {
			bpf_probe_read_user(&stmt_id, sizeof(stmt_id), (void *)data);
		} else {
			bpf_probe_read_user(&text, sizeof(text), (void *)data);
			bpf_probe_read_user(&length, sizeof(length), (void *)(data + 8));
		}
	} else {
		command = (__u32)PT_REGS_PARM1(ctx);
		thd = PT_REGS_PARM2(ctx);
		text = PT_REGS_PARM3(ctx);
		length = (__u32)PT_REGS_PARM4(ctx);
		if (command == COM_STMT_EXECUTE)
			bpf_probe_read_user(&stmt_id, sizeof(stmt_id), (void *)text);
	}
	if (command != COM_QUERY && command != COM_STMT_PREPARE && command != COM_STMT_EXECUTE &&
	    command != COM_INIT_DB)
		return 0;  /* ping, quit, statistics, close...: not statements */
	struct statement st = {
		.sp = PT_REGS_SP(ctx),
		.thd = thd,
		.started_ns = bpf_ktime_get_ns(),
		.end = { .command = command, .statement_id = stmt_id },
	};
	bpf_map_update_elem(&statements, &pid_tgid, &st, BPF_ANY);
	if (command != COM_STMT_EXECUTE && text)
		send_user_bytes(pid_tgid, ECAP_KIND_QUERY, thd, (__s32)command, 0, text, length);
	return 0;
}

SEC("uretprobe")
int my_dispatch_return(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!is_target(pid_tgid))
		return 0;
	struct statement *st = bpf_map_lookup_elem(&statements, &pid_tgid);
	if (!st || st->sp != PT_REGS_SP(ctx) - 8)
		return 0;  /* not the call whose entry was seen */
	st->end.duration_ns = bpf_ktime_get_ns() - st->started_ns;
	emit_struct(pid_tgid, ECAP_KIND_QUERY_END, st->thd, (__s32)st->end.command, &st->end,
		    sizeof(st->end));
	bpf_map_delete_elem(&statements, &pid_tgid);
	return 0;
}

/* Diagnostics_area::set_ok_status(this, affected_rows, last_insert_id, message) */
SEC("uprobe")
int my_ok(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct statement *st = bpf_map_lookup_elem(&statements, &pid_tgid);
	if (!st)
		return 0;
	st->end.outcome = ECAP_OUTCOME_OK;
	st->end.affected_rows = PT_REGS_PARM2(ctx);
	return 0;
}

/* Diagnostics_area::set_eof_status(this, THD *): a result set was sent. */
SEC("uprobe")
int my_eof(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct statement *st = bpf_map_lookup_elem(&statements, &pid_tgid);
	if (!st || st->end.outcome == ECAP_OUTCOME_ERROR)
		return 0;
	st->end.outcome = ECAP_OUTCOME_ROWS_SENT;
	return 0;
}

/* Diagnostics_area::set_error_status(this, sql_errno, ...) (every overload) */
SEC("uprobe")
int my_error(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct statement *st = bpf_map_lookup_elem(&statements, &pid_tgid);
	if (!st)
		return 0;
	st->end.outcome = ECAP_OUTCOME_ERROR;
	st->end.error = (__u32)PT_REGS_PARM2(ctx);
	return 0;
}

/* Prepared_statement::prepare(this, ...) / ::execute(this, ...): which prepared
 * statement object this command prepared or ran. */
SEC("uprobe")
int my_prepared(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct statement *st = bpf_map_lookup_elem(&statements, &pid_tgid);
	if (!st || st->end.statement)
		return 0;  /* the outermost one (a prepared statement may run others) */
	st->end.statement = PT_REGS_PARM1(ctx);
	return 0;
}

/* general_log_print(THD *, enum_server_command, const char *format, ...): at
 * login (COM_CONNECT) and COM_CHANGE_USER the server logs "user@host on db",
 * with user, host and database as the variadic arguments (rcx, r8, r9) — whether
 * or not the general log is on. */
#define COM_CONNECT 11
#define COM_CHANGE_USER 17
SEC("uprobe")
int my_login(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!is_target(pid_tgid))
		return 0;
	__u32 command = (__u32)PT_REGS_PARM2(ctx);
	if (command != COM_CONNECT && command != COM_CHANGE_USER)
		return 0;
	__u32 zero = 0;
	struct ecap_login *login = bpf_map_lookup_elem(&login_scratch, &zero);
	if (!login)
		return 0;
	__builtin_memset(login, 0, sizeof(*login));
	bpf_probe_read_user_str(login->user, sizeof(login->user), (void *)PT_REGS_PARM4(ctx));
	bpf_probe_read_user_str(login->host, sizeof(login->host), (void *)PT_REGS_PARM5(ctx));
	bpf_probe_read_user_str(login->database, sizeof(login->database),
				(void *)ctx->r9);  /* the sixth argument (x86-64) */
	emit_struct(pid_tgid, ECAP_KIND_LOGIN, PT_REGS_PARM1(ctx), -1, login, sizeof(*login));
	return 0;
}

/* mysql_change_db(THD *, const LEX_CSTRING *name, bool force) */
SEC("uprobe")
int my_change_db(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!is_target(pid_tgid))
		return 0;
	struct pending_db call = {
		.sp = PT_REGS_SP(ctx),
		.thd = PT_REGS_PARM1(ctx),
		.name = PT_REGS_PARM2(ctx),
	};
	bpf_map_update_elem(&db_calls, &pid_tgid, &call, BPF_ANY);
	return 0;
}

SEC("uretprobe")
int my_change_db_return(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct pending_db *call = bpf_map_lookup_elem(&db_calls, &pid_tgid);
	if (!call || call->sp != PT_REGS_SP(ctx) - 8)
		return 0;
	__u64 thd = call->thd, name = call->name;
	bpf_map_delete_elem(&db_calls, &pid_tgid);
	if (PT_REGS_RC(ctx) & 0xff)
		return 0;  /* it failed: the database did not change */
	__u64 str = 0, len = 0;
	bpf_probe_read_user(&str, sizeof(str), (void *)name);
	bpf_probe_read_user(&len, sizeof(len), (void *)(name + 8));
	if (len > 256)
		len = 256;
	send_user_bytes(pid_tgid, ECAP_KIND_DATABASE, thd, -1, 0, str, len);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
