// SPDX-License-Identifier: GPL-2.0
/* The floor of any uprobe-based capture: a program that only counts calls.
 * bench/bench_capture.py builds it with scripts/build_bpf.py and attaches it
 * exactly as ecap attaches its own programs (uprobe_multi, pid-scoped). */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} calls SEC(".maps");

SEC("uprobe")
int count_call(void *ctx)
{
	__u32 zero = 0;
	__u64 *c = bpf_map_lookup_elem(&calls, &zero);
	if (c)
		*c += 1;
	return 0;
}

SEC("uretprobe")
int count_return(void *ctx)
{
	return count_call(ctx);
}

char LICENSE[] SEC("license") = "GPL";
