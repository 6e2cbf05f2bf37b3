// SPDX-License-Identifier: GPL-2.0
/*
 * ecap capture of interactive shells: every line bash or zsh reads through its
 * line editor, and the status each command left behind.
 *
 * User space turns the records into commands: the lines a shell reads between
 * two PROMPT records are one command (a multi-line `if`, a heredoc, a `\`
 * continuation), and the next PROMPT carries that command's exit status (exec
 * and exit end a command too: capture_common.h's EXEC and EXIT records).
 *
 * Where the data is, per shell (the attach cookie says where the globals are, as
 * signed distances from the probed function, so one link serves every process
 * running the same file, PIE or not — bpf_get_func_ip() is the function's
 * address in the process the probe fired in):
 *
 * bash (readline linked statically, everything in /bin/bash):
 *   read_command()                    entry: a command begins; last_command_exit_value
 *                                     is the previous one's status
 *   read_command()                    return: the command's text is complete; lines
 *                                     read after it belong to the running command
 *                                     (`read -e`), not to the command line
 *   readline_internal_teardown(eof)   entry: the line is in rl_line_buffer (rl_end
 *                                     bytes). Unlike a return probe on readline(),
 *                                     this also fires for the call that was already
 *                                     waiting for keystrokes when the capture attached.
 * zsh (the line editor is the zsh/zle module, zle.so):
 *   zleread(.., context, ..)          entry with context 0 (ZLCON_LINE_START): a
 *                                     command begins; lastval (in /bin/zsh, read
 *                                     through zle.so's GOT) is the previous status
 *   zlegetline()                      return, when called from zleread itself (the
 *                                     return address is inside zleread) and the line
 *                                     editor is reading a command line (zlecontext 0
 *                                     or 1): the finished line, metafied, with the
 *                                     newline zleread appended. Completion, history
 *                                     and widgets also call zlegetline: never from
 *                                     zleread, so they are not command lines.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <asm/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#include "capture_common.h"

/* The controlling terminal, relocated against the running kernel (CO-RE). */
struct tty_driver___ecap { int major; int minor_start; } __attribute__((preserve_access_index));
struct tty_struct___ecap {
	struct tty_driver___ecap *driver;
	int index;
} __attribute__((preserve_access_index));
struct signal_struct___ecap { struct tty_struct___ecap *tty; } __attribute__((preserve_access_index));
struct task_struct___shell { struct signal_struct___ecap *signal; } __attribute__((preserve_access_index));

/* The shell's controlling terminal as (major << 20) | minor, 0 when it has none:
 * read here, with the line, because the shell may be gone by the time user space
 * could look at /proc. */
static __always_inline __u64 terminal(void)
{
	struct task_struct___shell *task = (struct task_struct___shell *)bpf_get_current_task();
	struct tty_struct___ecap *tty = BPF_CORE_READ(task, signal, tty);
	if (!tty)
		return 0;
	__u32 major = BPF_CORE_READ(tty, driver, major);
	__u32 minor = BPF_CORE_READ(tty, driver, minor_start) + BPF_CORE_READ(tty, index);
	return ((__u64)major << 20) | minor;
}

/* Not used at run time: keeps the layout in the object's BTF. */
const struct ecap_prompt ecap_abi_prompt = {};

#define SHELL_UNKNOWN 0   /* no command boundary seen yet (the capture attached mid-line) */
#define SHELL_READING 1   /* reading a command */
#define SHELL_RUNNING 2   /* the command is complete and running */

struct shell_state {
	__u32 phase;      /* SHELL_* */
	__u32 pad;
	__u64 getline_sp; /* zsh: stack pointer of the zlegetline call that returns a line */
};

/* pid_tgid -> where the shell is (LRU: a shell that died cannot pin a slot). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct shell_state);
} shells SEC(".maps");

static __always_inline struct shell_state *state_of(__u64 pid_tgid)
{
	struct shell_state *st = bpf_map_lookup_elem(&shells, &pid_tgid);
	if (st)
		return st;
	struct shell_state fresh = {};
	bpf_map_update_elem(&shells, &pid_tgid, &fresh, BPF_NOEXIST);
	return bpf_map_lookup_elem(&shells, &pid_tgid);
}

/* The runtime address of something `delta` bytes from the probed function. */
static __always_inline __u64 near_func(void *ctx, __s32 delta)
{
	return bpf_get_func_ip(ctx) + (__s64)delta;
}

static __always_inline void emit_prompt(__u64 pid_tgid, __s32 status, __u32 context)
{
	struct ecap_prompt p = { .status = status, .context = context };
	emit_struct(pid_tgid, ECAP_KIND_PROMPT, 0, -1, &p, sizeof(p));
}

/* ------------------------------------------------------------------- bash */

/* read_command entry. cookie: distance to last_command_exit_value (int). */
SEC("uprobe")
int bash_command_start(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!is_target(pid_tgid))
		return 0;
	__s32 status = -1;
	bpf_probe_read_user(&status, sizeof(status),
			    (void *)near_func(ctx, (__s32)bpf_get_attach_cookie(ctx)));
	struct shell_state *st = state_of(pid_tgid);
	if (st)
		st->phase = SHELL_READING;
	emit_prompt(pid_tgid, status, 0);
	return 0;
}

/* read_command return: the command line is complete. */
SEC("uretprobe")
int bash_command_read(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!is_target(pid_tgid))
		return 0;
	struct shell_state *st = state_of(pid_tgid);
	if (st)
		st->phase = SHELL_RUNNING;
	return 0;
}

/* readline_internal_teardown(int eof) entry. cookie: distance to rl_line_buffer
 * (char *) in the low 32 bits, to rl_end (int) in the high 32 bits. */
SEC("uprobe")
int bash_line(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!is_target(pid_tgid))
		return 0;
	if ((int)PT_REGS_PARM1(ctx))
		return 0;  /* EOF (Ctrl-D): readline returns NULL, no line */
	struct shell_state *st = state_of(pid_tgid);
	if (st && st->phase == SHELL_RUNNING)
		return 0;  /* a running command reading input (read -e), not the command line */
	__u64 cookie = bpf_get_attach_cookie(ctx);
	__u64 buf = 0;
	__s32 len = 0;
	bpf_probe_read_user(&buf, sizeof(buf), (void *)near_func(ctx, (__s32)cookie));
	bpf_probe_read_user(&len, sizeof(len), (void *)near_func(ctx, (__s32)(cookie >> 32)));
	if (!buf || len < 0)
		return 0;
	send_user_bytes(pid_tgid, ECAP_KIND_LINE, 0, -1, terminal(), buf, (__u64)len);
	return 0;
}

/* -------------------------------------------------------------------- zsh */

/* zleread(lp, rp, flags, context, init, finish) entry. cookie: distance to the
 * GOT slot of zle.so that holds &lastval (lastval lives in /bin/zsh). */
SEC("uprobe")
int zsh_command_start(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!is_target(pid_tgid))
		return 0;
	__u32 context = (__u32)PT_REGS_PARM4(ctx);
	struct shell_state *st = state_of(pid_tgid);
	if (context != 0) {
		if (st && context > 1)
			st->phase = SHELL_RUNNING;  /* select / vared: not the command line */
		return 0;
	}
	__u64 lastval = 0;
	__s32 status = -1;
	bpf_probe_read_user(&lastval, sizeof(lastval),
			    (void *)near_func(ctx, (__s32)bpf_get_attach_cookie(ctx)));
	if (lastval)
		bpf_probe_read_user(&status, sizeof(status), (void *)lastval);
	if (st)
		st->phase = SHELL_READING;
	emit_prompt(pid_tgid, status, context);
	return 0;
}

/* zlegetline entry. cookie: bits 0-31 distance to zlecontext (int), bits 32-55
 * distance to zleread (signed 24 bits), bits 56-63 zleread's size / 16. */
SEC("uprobe")
int zsh_getline_enter(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!is_target(pid_tgid))
		return 0;
	__u64 cookie = bpf_get_attach_cookie(ctx);
	__s32 to_zleread = ((__s32)((cookie >> 32) << 8)) >> 8;  /* sign-extend 24 bits */
	__u64 zleread = near_func(ctx, to_zleread);
	__u64 size = (cookie >> 56) * 16;
	__u64 ret_addr = 0;
	bpf_probe_read_user(&ret_addr, sizeof(ret_addr), (void *)PT_REGS_SP(ctx));
	if (ret_addr <= zleread || ret_addr >= zleread + size)
		return 0;
	__s32 context = -1;
	bpf_probe_read_user(&context, sizeof(context), (void *)near_func(ctx, (__s32)cookie));
	if (context != 0 && context != 1)
		return 0;  /* ZLCON_SELECT / ZLCON_VARED: a reply, not a command line */
	struct shell_state *st = state_of(pid_tgid);
	if (st)
		st->getline_sp = PT_REGS_SP(ctx);
	return 0;
}

/* zlegetline return: rax is the line (metafied, "\n"-terminated, NUL-ended). */
SEC("uretprobe")
int zsh_line(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!is_target(pid_tgid))
		return 0;
	struct shell_state *st = bpf_map_lookup_elem(&shells, &pid_tgid);
	if (!st || !st->getline_sp || st->getline_sp != PT_REGS_SP(ctx) - 8)
		return 0;
	st->getline_sp = 0;
	__u64 line = PT_REGS_RC(ctx);
	if (!line)
		return 0;
	send_user_bytes(pid_tgid, ECAP_KIND_LINE, 0, -1, terminal(), line, user_strlen(line));
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
