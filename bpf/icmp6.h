/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* icmp6.h: mbx's own "packet too big" (RFC 4443) for an IPv6 packet that
 * will not fit its egress after translation or encapsulation (nat6.h
 * answers with it, and translates ICMPv6 errors about connections). */
#ifndef MBX_ICMP6_H
#define MBX_ICMP6_H

#include "lb6.h"

#define IPPROTO_ICMPV6_ 58
#define ICMP6_DST_UNREACH 1
#define ICMP6_PACKET_TOO_BIG 2
#define ICMP6_TIME_EXCEEDED 3
#define ICMP6_PARAM_PROB 4
/* mbx quotes the IPv6 header and 8 bytes (the ports and the TCP sequence
 * number): what a receiver needs to find the connection. */
#define ICMP6_QUOTE (40 + 8)

struct icmp6hdr_ {
	__u8 type;
	__u8 code;
	__u16 checksum;
	__u32 mtu;
};

/* reshape moves the packet's start by head bytes (negative: it grows at
 * the front) and cuts it to total bytes: 0, or -1 when it cannot take that
 * shape. Every packet pointer is stale after it. */
static __always_inline int reshape(struct xdp_md *ctx, int head, int total)
{
	if (bpf_xdp_adjust_head(ctx, head))
		return -1;
	long cut = (long)((void *)(long)ctx->data_end - (void *)(long)ctx->data) - total;
	if (cut < 0 || cut > 0xffff || (cut > 0 && bpf_xdp_adjust_tail(ctx, -(int)cut)))
		return -1;
	return 0;
}

/* The ICMPv6 checksum of a message of len bytes at msg between src and
 * dst (the pseudo header of RFC 8200 8.1). */
static __always_inline __u16 icmp6_csum(void *addrs, void *msg, __u32 len)
{
	__s64 a = bpf_csum_diff(0, 0, addrs, 32, 0);
	__s64 m = bpf_csum_diff(0, 0, msg, len, 0);
	__u64 s = (__u64)(__u32)a + (__u32)m + bpf_htonl(len) + bpf_htonl(IPPROTO_ICMPV6_);
	s = (s & 0xffffffff) + (s >> 32);
	s = (s & 0xffffffff) + (s >> 32);
	return ~csum_fold32((__u32)s);
}

/* mbx_icmp6_too_big answers the IPv6 packet in ctx with "packet too big"
 * (mtu) from its destination (a VIP or LIP of ours) to its sender, built in
 * place and sent back where it came from. A global function: the verifier
 * checks it once. */
__attribute__((noinline)) int mbx_icmp6_too_big(struct xdp_md *ctx, __u32 mtu)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *oeth = data;
	struct ipv6hdr *oip = (void *)(oeth + 1);
	if ((void *)(oip + 1) > data_end)
		goto drop;
	__u8 smac[ETH_ALEN], dmac[ETH_ALEN];
	__builtin_memcpy(smac, oeth->h_dest, ETH_ALEN);
	__builtin_memcpy(dmac, oeth->h_source, ETH_ALEN);
	struct in6_addr addrs[2]; /* source, destination: the pseudo header's order */
	__builtin_memcpy(&addrs[0], &oip->daddr, 16);
	__builtin_memcpy(&addrs[1], &oip->saddr, 16);

	/* [eth][ip6][l4 ...] becomes [eth][ip6][icmp6][quoted ip6][8 bytes]. */
	const int grow = sizeof(struct ipv6hdr) + sizeof(struct icmp6hdr_);
	if (reshape(ctx, -grow, sizeof(struct ethhdr) + grow + ICMP6_QUOTE))
		goto drop;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6 = (void *)(eth + 1);
	struct icmp6hdr_ *ic = (void *)(ip6 + 1);
	if ((void *)ic + sizeof(*ic) + ICMP6_QUOTE > data_end)
		goto drop;
	__builtin_memcpy(eth->h_dest, dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, smac, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IPV6);
	ip6->version = 6;
	ip6->priority = 0;
	ip6->flow_lbl[0] = ip6->flow_lbl[1] = ip6->flow_lbl[2] = 0;
	ip6->payload_len = bpf_htons(sizeof(*ic) + ICMP6_QUOTE);
	ip6->nexthdr = IPPROTO_ICMPV6_;
	ip6->hop_limit = 64;
	__builtin_memcpy(&ip6->saddr, &addrs[0], 16);
	__builtin_memcpy(&ip6->daddr, &addrs[1], 16);
	ic->type = ICMP6_PACKET_TOO_BIG;
	ic->code = 0;
	ic->checksum = 0;
	ic->mtu = bpf_htonl(mtu);
	ic->checksum = icmp6_csum(addrs, ic, sizeof(*ic) + ICMP6_QUOTE);
	count(CNT_ICMP_TOO_BIG);
	return XDP_TX;
drop:
	count(CNT_DROP_TOO_BIG);
	return XDP_DROP;
}

#endif
