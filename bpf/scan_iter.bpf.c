// SPDX-License-Identifier: GPL-2.0
/*
 * ecap-detect's in-kernel walk: BPF iterators over every task's files, tasks and
 * memory maps, so a scan does not pay one readlink per fd (or one maps read per
 * process) from Python. Each program writes fixed-size records to the iterator's
 * seq_file; user space (ecap.detect.iterwalk) reads them with one read() loop.
 *
 * The file kinds are recognised exactly as `readlink /proc/PID/fd/N` names them:
 * an anon-inode file whose dentry is "bpf-prog", "bpf-map", "bpf-link"/"bpf_link"
 * or "[perf_event]". No kernel symbol addresses are needed, so nothing reads
 * /proc/kallsyms. Kernel structures are declared here with only the fields used;
 * libbpf relocates them against the running kernel's BTF (CO-RE).
 *
 * Built by `make setup` with clang -target bpf; see scripts/build-bpf.sh.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#define ANON_INODE_FS_MAGIC 0x09041934
#define PA __attribute__((preserve_access_index))
#define MAX_TREE_STEPS (1 << 20) /* moves per hooked file (~3 per memory area) */

struct seq_file;
struct bpf_iter_meta { struct seq_file *seq; };
struct ns_common { unsigned int inum; } PA;
struct mnt_namespace { struct ns_common ns; } PA;
struct nsproxy { struct mnt_namespace *mnt_ns; } PA;
struct mm_struct;
struct task_struct { int pid; int tgid; struct nsproxy *nsproxy; struct mm_struct *mm; } PA;
struct super_block { unsigned long s_magic; __u32 s_dev; } PA;
struct inode { unsigned long i_ino; struct super_block *i_sb; } PA;
struct qstr { __u32 len; const unsigned char *name; } PA;
struct dentry { struct qstr d_name; struct inode *d_inode; } PA;
struct path { struct dentry *dentry; } PA;
struct rb_node { unsigned long __rb_parent_color; struct rb_node *rb_right; struct rb_node *rb_left; } PA;
struct rb_root { struct rb_node *rb_node; } PA;
struct rb_root_cached { struct rb_root rb_root; struct rb_node *rb_leftmost; } PA;
struct address_space { struct rb_root_cached i_mmap; } PA;
struct file {
	struct path f_path;
	struct inode *f_inode;
	struct address_space *f_mapping;
	void *private_data;
} PA;
struct bpf_prog_aux { __u32 id; } PA;
struct bpf_prog { struct bpf_prog_aux *aux; } PA;
struct bpf_map { __u32 id; } PA;
struct bpf_link { __u32 id; enum bpf_link_type type; struct bpf_prog *prog; } PA;
struct bpf_perf_link { struct bpf_link link; struct file *perf_file; } PA;
struct list_head { struct list_head *next; } PA;
struct trace_event_call { int flags; } PA;
struct trace_probe_event { struct trace_event_call call; struct list_head probes; } PA;
struct trace_probe { struct list_head list; } PA;
struct trace_uprobe { struct path path; struct trace_probe tp; } PA;
struct perf_event { struct bpf_prog *prog; struct trace_event_call *tp_event; } PA;
struct vm_area_struct {
	struct mm_struct *vm_mm;
	struct { struct rb_node rb; } shared;
} PA;

struct bpf_iter__task_file {
	struct bpf_iter_meta *meta;
	struct task_struct *task;
	__u32 fd;
	struct file *file;
};
struct bpf_iter__task { struct bpf_iter_meta *meta; struct task_struct *task; };

/* Record layouts: keep in step with ecap/detect/kernel_walk.py. For uprobes (a
 * perf event, or a perf-event link), dev/ino name the inode the kernel hooked:
 * the path a probe was attached through may have been re-pointed since. */
enum fd_kind { KIND_PROG = 1, KIND_MAP = 2, KIND_LINK = 3, KIND_PERF = 4 };
struct fd_record {
	__u32 tgid; __u32 fd; __u32 kind; __u32 id; __u32 prog_id; __u32 dev; __u64 ino;
};
#define TRACE_EVENT_FL_UPROBE 64 /* 1 << TRACE_EVENT_FL_UPROBE_BIT */
struct task_record { __u32 tgid; __u32 mnt_ns; __u64 maps_files; };

/* counters[0]: files visited by task_files; counters[1]: hooked-file walks that
 * hit the step bound before finishing (their victims would be incomplete). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* The scanner's own fds on the hooked files: fd -> bit index (0..63). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} hooked_fds SEC(".maps");

/* Address spaces (mm_struct pointers) that map a hooked file -> bitmask of which. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, __u64);
} victim_mms SEC(".maps");

static __always_inline int name_is(const char *have, const char *want, int len)
{
	for (int i = 0; i < 12; i++) {
		if (i >= len)
			return 1;
		if (have[i] != want[i])
			return 0;
	}
	return 1;
}

/* Which BPF-related anon inode this file is, or 0. Pointers handed to an
 * iterator are BTF-typed, so the chain file->f_path.dentry->... is plain loads
 * (the verifier makes them fault-safe); only strings go through a helper. */
static __always_inline int fd_kind(struct file *file)
{
	struct dentry *dentry = file->f_path.dentry;
	__u32 len = dentry->d_name.len;
	char name[16] = {};

	if (len != 7 && len != 8 && len != 12)
		return 0;
	if (file->f_inode->i_sb->s_magic != ANON_INODE_FS_MAGIC)
		return 0;
	if (bpf_probe_read_kernel(name, 12, dentry->d_name.name) < 0)
		return 0;
	if (len == 8 && (name_is(name, "bpf-prog", 8)))
		return KIND_PROG;
	if (len == 7 && name_is(name, "bpf-map", 7))
		return KIND_MAP;
	if (len == 8 && (name_is(name, "bpf-link", 8) || name_is(name, "bpf_link", 8)))
		return KIND_LINK;
	if (len == 12 && name_is(name, "[perf_event]", 12))
		return KIND_PERF;
	return 0;
}

/* perf_event -> trace_event_call -> its trace_probe_event -> first trace_probe ->
 * the trace_uprobe holding it -> path.dentry->d_inode. Addresses from one read
 * are plain numbers to the verifier, so every step is a fault-safe kernel read. */
static __always_inline void uprobe_inode(__u64 event, struct fd_record *rec)
{
	__u64 call, tpe, first, tu, inode;

	call = (__u64)BPF_CORE_READ((struct perf_event *)event, tp_event);
	if (!call || !(BPF_CORE_READ((struct trace_event_call *)call, flags) & TRACE_EVENT_FL_UPROBE))
		return;
	tpe = call - bpf_core_field_offset(struct trace_probe_event, call);
	first = (__u64)BPF_CORE_READ((struct trace_probe_event *)tpe, probes.next);
	tu = first - bpf_core_field_offset(struct trace_probe, list) -
	     bpf_core_field_offset(struct trace_uprobe, tp);
	inode = (__u64)BPF_CORE_READ((struct trace_uprobe *)tu, path.dentry, d_inode);
	if (!inode)
		return;
	rec->ino = BPF_CORE_READ((struct inode *)inode, i_ino);
	rec->dev = BPF_CORE_READ((struct inode *)inode, i_sb, s_dev);
}

SEC("iter/task_file")
int task_files(struct bpf_iter__task_file *ctx)
{
	struct task_struct *task = ctx->task;
	struct file *file = ctx->file;
	struct fd_record rec = {};
	__u32 zero = 0;
	__u64 *seen;
	void *priv;

	if (!task || !file)
		return 0;
	seen = bpf_map_lookup_elem(&counters, &zero);
	if (seen)
		*seen += 1;
	rec.kind = fd_kind(file);
	if (!rec.kind)
		return 0;
	priv = file->private_data;
	switch (rec.kind) {
	case KIND_PROG:
		rec.id = BPF_CORE_READ((struct bpf_prog *)priv, aux, id);
		break;
	case KIND_MAP:
		rec.id = BPF_CORE_READ((struct bpf_map *)priv, id);
		break;
	case KIND_LINK:
		rec.id = BPF_CORE_READ((struct bpf_link *)priv, id);
		rec.prog_id = BPF_CORE_READ((struct bpf_link *)priv, prog, aux, id);
		if (BPF_CORE_READ((struct bpf_link *)priv, type) == BPF_LINK_TYPE_PERF_EVENT)
			uprobe_inode((__u64)BPF_CORE_READ((struct bpf_perf_link *)priv, perf_file,
							  private_data), &rec);
		break;
	case KIND_PERF:
		/* Only perf events with a program attached answer BPF_TASK_FD_QUERY. */
		if (!BPF_CORE_READ((struct perf_event *)priv, prog))
			return 0;
		rec.prog_id = BPF_CORE_READ((struct perf_event *)priv, prog, aux, id);
		rec.id = rec.prog_id;
		uprobe_inode((__u64)priv, &rec);
		break;
	}
	rec.tgid = task->tgid;
	rec.fd = ctx->fd;
	bpf_seq_write(ctx->meta->seq, &rec, sizeof(rec));
	return 0;
}

SEC("iter/task")
int tasks(struct bpf_iter__task *ctx)
{
	struct task_struct *task = ctx->task;
	struct task_record rec = {};
	__u64 mm, *mask;

	if (!task || task->pid != task->tgid)
		return 0;
	rec.tgid = task->tgid;
	rec.mnt_ns = task->nsproxy->mnt_ns->ns.inum;
	mm = (__u64)task->mm;
	if (mm) {
		mask = bpf_map_lookup_elem(&victim_mms, &mm);
		if (mask)
			rec.maps_files = *mask;
	}
	bpf_seq_write(ctx->meta->seq, &rec, sizeof(rec));
	return 0;
}

/* An in-order walk over a file's i_mmap interval tree: every memory area (in any
 * process) that maps the file, which is how uprobes find the processes to put
 * breakpoints in. Each bpf_loop step makes one move of a loop-free state machine
 * (cheap to verify); the tree is read without its lock, so every read is
 * fault-safe, the walk is bounded, and user space confirms each victim against
 * /proc/PID/maps. */
enum walk_state { WALK_EMIT, WALK_LEFTMOST, WALK_UP, WALK_DONE };

struct tree_walk {
	__u64 node;
	__u64 bit;
	__u64 shared_rb_offset;
	__u32 state;
};

static __always_inline __u64 rb_parent(__u64 node)
{
	return BPF_CORE_READ((struct rb_node *)node, __rb_parent_color) & ~3ULL;
}

static long tree_step(__u64 index, struct tree_walk *w)
{
	struct rb_node *node = (struct rb_node *)w->node;
	struct vm_area_struct *vma;
	__u64 next, parent, mm, mask, *old;

	switch (w->state) {
	case WALK_EMIT:
		/* outside BPF_CORE_READ: its access-index builtin would relocate w-> too */
		vma = (struct vm_area_struct *)(w->node - w->shared_rb_offset);
		mm = (__u64)BPF_CORE_READ(vma, vm_mm);
		if (mm) {
			old = bpf_map_lookup_elem(&victim_mms, &mm);
			mask = (old ? *old : 0) | w->bit;
			bpf_map_update_elem(&victim_mms, &mm, &mask, BPF_ANY);
		}
		next = (__u64)BPF_CORE_READ(node, rb_right);
		if (next) {
			w->node = next;
			w->state = WALK_LEFTMOST;
		} else {
			w->state = WALK_UP;
		}
		return 0;
	case WALK_LEFTMOST:
		next = (__u64)BPF_CORE_READ(node, rb_left);
		if (next)
			w->node = next;
		else
			w->state = WALK_EMIT;
		return 0;
	case WALK_UP:
		parent = rb_parent(w->node);
		if (!parent) {
			w->state = WALK_DONE;
			return 1;
		}
		if ((__u64)BPF_CORE_READ((struct rb_node *)parent, rb_right) != w->node)
			w->state = WALK_EMIT;
		w->node = parent;
		return 0;
	}
	return 1;
}

SEC("iter/task_file")
int hooked_files(struct bpf_iter__task_file *ctx)
{
	struct file *file = ctx->file;
	struct tree_walk walk = {};
	__u32 fd = ctx->fd, one = 1, *bit;
	__u64 *incomplete;

	if (!ctx->task || !file)
		return 0;
	bit = bpf_map_lookup_elem(&hooked_fds, &fd);
	if (!bit || *bit > 63)
		return 0;
	walk.bit = 1ULL << *bit;
	walk.node = (__u64)file->f_mapping->i_mmap.rb_leftmost;
	walk.shared_rb_offset = bpf_core_field_offset(struct vm_area_struct, shared.rb);
	walk.state = walk.node ? WALK_EMIT : WALK_DONE;
	bpf_loop(MAX_TREE_STEPS, tree_step, &walk, 0);
	if (walk.state != WALK_DONE) {
		incomplete = bpf_map_lookup_elem(&counters, &one);
		if (incomplete)
			*incomplete += 1;
	}
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
