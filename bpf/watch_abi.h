/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The record ecap-detect watch's event program writes (bpf/watch_events.bpf.c),
 * defined once: scripts/build_bpf.py copies these macros and the struct's BTF
 * layout into the loader file, and ecap.detect.watch_bpf reads them from there.
 */
#ifndef ECAP_WATCH_ABI_H
#define ECAP_WATCH_ABI_H

#define ECAP_WATCH_KIND_BPF 1        /* bpf(2): a command that attaches, detaches or pins */
#define ECAP_WATCH_KIND_PERF_OPEN 2  /* perf_event_open(2) */
#define ECAP_WATCH_KIND_SET_BPF 3    /* ioctl(PERF_EVENT_IOC_SET_BPF) */

struct ecap_watch_event {
	__u64 ktime_ns; /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u32 tgid;
	__u32 tid;
	__u32 kind;
	__u32 cmd;
	__s64 ret;
	char comm[16];
};

#endif
