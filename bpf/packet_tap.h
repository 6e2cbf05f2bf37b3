/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The packet tap: which TCP flows belong to the authorized processes, decided in
 * the kernel, and a socket filter that lets only their packets into ecap's packet
 * socket (--format keylog/pcapng).
 *
 * Why in the kernel: a connection's first packets (SYN, ClientHello) leave within
 * microseconds of connect(); a filter that user space rebuilt from the flows it
 * learned would always be late. Here a flow is added where it is born, in the
 * connecting process's own context, before its first packet reaches the tap:
 *
 *  - inet_sock_set_state(-> SYN_SENT) in an authorized process: the socket is
 *    remembered (`connecting`); its source port is not chosen yet;
 *  - net_dev_queue of a packet whose socket is in `connecting` (the SYN itself,
 *    still in that process's connect()): the flow is added from the socket, whose
 *    ports are known now, before the packet taps run in the same transmit;
 *  - inet_sock_set_state(-> ESTABLISHED) of such a socket, should no packet have
 *    been queued for it (e.g. a device without a queue): added then;
 *  - the library used a socket (flow_note, from the capture object's own
 *    socket discovery): connections that existed before the capture, accepted
 *    ones;
 *  - inet_sock_set_state(-> CLOSE): the flow is marked closed; its packets pass
 *    for ECAP_FLOW_LINGER_NS more (the last ACKs; user space still finds whose
 *    it was), then no more (its 4-tuple may be reused by anyone later).
 *
 * Flows are attributed by the socket, never by whatever task happens to run a
 * softirq. The filter runs on ecap's AF_PACKET socket (SOCK_DGRAM: the packet
 * starts at its network header) and drops each loopback packet's outgoing copy, so
 * a loopback packet is seen once.
 *
 * Include after capture_common.h and sockinfo.h. `track_flows` is set at load when
 * the output needs packets; otherwise every program here returns at once.
 */
#ifndef ECAP_PACKET_TAP_H
#define ECAP_PACKET_TAP_H

#include "sockinfo.h"

const volatile __u8 track_flows = 0;
const volatile __u32 loopback_ifindex = 1;

/* Not used at run time: keeps the layout in the object's BTF. */
const struct ecap_flow ecap_abi_flow = {};

#define TAP_TCP_SYN_SENT 2
#define TAP_TCP_ESTABLISHED 1
#define TAP_TCP_CLOSE 7
#define TAP_PACKET_OUTGOING 4
#define TAP_ETH_P_IP 0x0800
#define TAP_ETH_P_IPV6 0x86DD

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct ecap_sockinfo);
	__type(value, struct ecap_flow);
} flows SEC(".maps");

/* Sockets an authorized process is connecting (struct sock *) -> its tgid. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u32);
} connecting SEC(".maps");

struct sk_buff___tap { struct sock *sk; } __attribute__((preserve_access_index));

static __always_inline void flow_add(struct ecap_sockinfo *key, __u32 tgid, __u32 source)
{
	struct ecap_flow value = { .tgid = tgid, .source = source };
	bpf_map_update_elem(&flows, key, &value, BPF_ANY);
}

/* The library uses this socket (the capture object read its ends). */
static __always_inline void flow_note(struct ecap_sockinfo *info, __u64 pid_tgid)
{
	if (track_flows && info->family && info->lport && info->rport)
		flow_add(info, pid_tgid >> 32, ECAP_FLOW_LIBRARY);
}

static __always_inline void flow_from_sock(struct sock *sk, __u32 tgid)
{
	struct ecap_sockinfo key;
	if (read_sockinfo(sk, &key) && key.lport && key.rport)
		flow_add(&key, tgid, ECAP_FLOW_CONNECT);
}

SEC("raw_tracepoint/inet_sock_set_state")
int tap_sock_state(struct bpf_raw_tracepoint_args *ctx)
{
	if (!track_flows)
		return 0;
	struct sock *sk = (struct sock *)ctx->args[0];
	int newstate = (int)ctx->args[2];
	__u64 key = (__u64)sk;
	if (newstate == TAP_TCP_SYN_SENT) {
		__u64 pid_tgid = bpf_get_current_pid_tgid();
		if (!is_target(pid_tgid))
			return 0;
		__u32 tgid = pid_tgid >> 32;
		bpf_map_update_elem(&connecting, &key, &tgid, BPF_ANY);
		return 0;
	}
	__u32 *tgid = bpf_map_lookup_elem(&connecting, &key);
	if (tgid) {
		if (newstate == TAP_TCP_ESTABLISHED)
			flow_from_sock(sk, *tgid);
		bpf_map_delete_elem(&connecting, &key);
	}
	if (newstate == TAP_TCP_CLOSE) {
		struct ecap_sockinfo info;
		struct ecap_flow *flow = read_sockinfo(sk, &info) ? bpf_map_lookup_elem(&flows, &info) : 0;
		if (flow && !flow->closed_ns)
			flow->closed_ns = bpf_ktime_get_ns();
	}
	return 0;
}

SEC("raw_tracepoint/net_dev_queue")
int tap_dev_queue(struct bpf_raw_tracepoint_args *ctx)
{
	if (!track_flows)
		return 0;
	struct sk_buff___tap *skb = (struct sk_buff___tap *)ctx->args[0];
	__u64 key = (__u64)BPF_CORE_READ(skb, sk);
	if (!key)
		return 0;
	__u32 *tgid = bpf_map_lookup_elem(&connecting, &key);
	if (!tgid)
		return 0;
	flow_from_sock((struct sock *)key, *tgid);
	bpf_map_delete_elem(&connecting, &key);
	return 0;
}

static __always_inline int tap_live(struct ecap_flow *flow)
{
	return flow && (!flow->closed_ns || bpf_ktime_get_ns() - flow->closed_ns < ECAP_FLOW_LINGER_NS);
}

/* 1 when the packet's (src, dst) is a live flow in either orientation. */
static __always_inline int tap_match(struct ecap_sockinfo *key)
{
	if (tap_live(bpf_map_lookup_elem(&flows, key)))
		return 1;
	struct ecap_sockinfo swapped = {
		.family = key->family, .lport = key->rport, .rport = key->lport,
	};
	__builtin_memcpy(swapped.laddr, key->raddr, 16);
	__builtin_memcpy(swapped.raddr, key->laddr, 16);
	return tap_live(bpf_map_lookup_elem(&flows, &swapped));
}

SEC("socket")
int packet_filter(struct __sk_buff *skb)
{
	if (skb->pkt_type == TAP_PACKET_OUTGOING && skb->ifindex == loopback_ifindex)
		return 0;  /* the incoming copy of the same loopback packet is kept */
	struct ecap_sockinfo key;
	__builtin_memset(&key, 0, sizeof(key));
	__u16 ports[2];
	__u32 proto = __builtin_bswap16((__u16)skb->protocol);
	if (proto == TAP_ETH_P_IP) {
		__u8 head[20];
		if (bpf_skb_load_bytes(skb, 0, head, sizeof(head)) < 0)
			return 0;
		if (head[9] != 6 || ((head[6] & 0x1f) | head[7]))
			return 0;  /* not TCP, or a fragment past the first */
		__u32 ihl = (head[0] & 0xf) * 4;
		if (ihl < 20 || bpf_skb_load_bytes(skb, ihl & 0x3f, ports, 4) < 0)
			return 0;
		key.family = 2;
		__builtin_memcpy(key.laddr, &head[12], 4);
		__builtin_memcpy(key.raddr, &head[16], 4);
	} else if (proto == TAP_ETH_P_IPV6) {
		__u8 head[40];
		if (bpf_skb_load_bytes(skb, 0, head, sizeof(head)) < 0)
			return 0;
		if (head[6] != 6 || bpf_skb_load_bytes(skb, 40, ports, 4) < 0)
			return 0;  /* TCP right after the fixed header only */
		key.family = 10;
		__builtin_memcpy(key.laddr, &head[8], 16);
		__builtin_memcpy(key.raddr, &head[24], 16);
	} else {
		return 0;
	}
	key.lport = __builtin_bswap16(ports[0]);
	key.rport = __builtin_bswap16(ports[1]);
	return tap_match(&key) ? skb->len : 0;
}

#endif
