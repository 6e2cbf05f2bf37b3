/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Both ends of a kernel TCP socket as struct ecap_sockinfo: what the capture tells
 * user space about a connection's socket, and the key of the packet tap's flows.
 * One definition, shared by the capture objects and bpf/packet_tap.h.
 *
 * Needs <linux/bpf.h>, <bpf/bpf_helpers.h>, <bpf/bpf_core_read.h> and
 * capture_abi.h first.
 */
#ifndef ECAP_SOCKINFO_H
#define ECAP_SOCKINFO_H

/* Only the fields used; relocated against the running kernel's BTF (CO-RE). */
struct in6_addr { union { __u8 u6_addr8[16]; } in6_u; } __attribute__((preserve_access_index));
struct sock_common {
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	__be16 skc_dport;
	__u16 skc_num;
	unsigned short skc_family;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
} __attribute__((preserve_access_index));
struct sock { struct sock_common __sk_common; } __attribute__((preserve_access_index));

/* Fills *info (zeroed first) from a socket; 0 when it is neither IPv4 nor IPv6. */
static __always_inline int read_sockinfo(struct sock *sk, struct ecap_sockinfo *info)
{
	__builtin_memset(info, 0, sizeof(*info));
	unsigned short family = BPF_CORE_READ(sk, __sk_common.skc_family);
	info->lport = BPF_CORE_READ(sk, __sk_common.skc_num);
	info->rport = __builtin_bswap16(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (family == 2) {  /* AF_INET */
		info->family = family;
		__be32 l = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
		__be32 r = BPF_CORE_READ(sk, __sk_common.skc_daddr);
		__builtin_memcpy(info->laddr, &l, 4);
		__builtin_memcpy(info->raddr, &r, 4);
		return 1;
	}
	if (family == 10) {  /* AF_INET6 */
		info->family = family;
		BPF_CORE_READ_INTO(&info->laddr, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
		BPF_CORE_READ_INTO(&info->raddr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
		return 1;
	}
	return 0;
}

#endif
