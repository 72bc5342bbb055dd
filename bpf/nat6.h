/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* nat6.h: transmission for IPv6 services (lb6.h): the next hop, the
 * Full-NAT rewrite, NAT64's header translation both ways (RFC 7915's
 * field mapping), the ip6ip6 tunnel, "packet too big" answers for what does
 * not fit (ICMPv4 "fragmentation needed" to a NAT64 real server), and the
 * translation of ICMPv6 errors about a connection. */
#ifndef MBX_NAT6_H
#define MBX_NAT6_H

#include "lb6.h"
#include "icmp6.h"

/* next_hop6 is nat.h's next_hop for conn6 and either family: NH_OK with
 * c->nh_* filled (memoized under the same rules), NH_TOO_BIG, or a verdict. */
static __always_inline int next_hop6(struct xdp_md *ctx, struct conn6 *c, const struct config *cfg,
				     __u64 now, __u8 family, const __u32 *src, const __u32 *dst,
				     __u32 tot_len, __u8 proto, int direct, __u32 *mtu)
{
	__u32 stamp = (__u32)(now >> 20);
	if (c->nh_gen == cfg->fib_gen && c->nh_in == ctx->ingress_ifindex && c->nh_out &&
	    (__s32)(stamp - c->nh_stamp) < (__s32)cfg->fib_max_age) {
		if (c->nh_mtu && tot_len > c->nh_mtu) {
			*mtu = c->nh_mtu;
			return NH_TOO_BIG;
		}
		return NH_OK;
	}
	struct bpf_fib_lookup fib = {};
	fib.family = family;
	fib.l4_protocol = proto;
	fib.tot_len = tot_len;
	fib.ifindex = ctx->ingress_ifindex;
	if (family == AF_INET_) {
		fib.ipv4_src = src[0];
		fib.ipv4_dst = dst[0];
	} else {
		__builtin_memcpy(fib.ipv6_src, src, 16);
		__builtin_memcpy(fib.ipv6_dst, dst, 16);
	}
	int rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), direct ? BPF_FIB_LOOKUP_SRC : 0);
	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		__u32 m = 0;
		bpf_check_mtu(ctx, fib.ifindex, &m, 0, 0);
		c->nh_mtu = m > 0xffff ? 0xffff : m;
		c->nh_in = ctx->ingress_ifindex;
		c->nh_out = fib.ifindex;
		c->nh_stamp = stamp;
		c->nh_gen = cfg->fib_gen;
		__builtin_memcpy(c->nh_dmac, fib.dmac, ETH_ALEN);
		__builtin_memcpy(c->nh_smac, fib.smac, ETH_ALEN);
		if (direct)
			__builtin_memcpy(c->tun_saddr, fib.ipv6_src, 16);
		return NH_OK;
	}
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED) {
		*mtu = fib.mtu_result;
		return NH_TOO_BIG;
	}
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		if (direct) {
			count(CNT_DROP_NO_NEIGH);
			return XDP_DROP;
		}
		count(CNT_PASS_NO_NEIGH);
		return XDP_PASS;
	}
	if (direct) {
		count(CNT_DROP_FIB);
		return XDP_DROP;
	}
	count(CNT_PASS_FIB);
	return XDP_PASS;
}

static __always_inline int xmit6_to(struct xdp_md *ctx, __u32 out, const __u8 *dmac, const __u8 *smac)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	__builtin_memcpy(eth->h_dest, dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, smac, ETH_ALEN);
	if (out == ctx->ingress_ifindex) {
		count(CNT_TX);
		return XDP_TX;
	}
	count(CNT_REDIRECT);
	return bpf_redirect_map(&tx_ports, out, XDP_PASS);
}

/* The ports and the L4 checksum (the address part of the delta covers
 * the pseudo header, whatever the families). */
static __always_inline void rewrite_l4_6(struct pkt6 *p, const struct conn6 *c)
{
	__u16 *ports = p->l4;
	if (!ports)
		return; /* a later fragment: no transport header */
	ports[0] = c->sport;
	ports[1] = c->dport;
	if (!p->l4_csum)
		return;
	if (p->key.proto == IPPROTO_TCP)
		csum_apply(p->l4_csum, c->csum_l4);
	else
		csum_apply_udp(p->l4_csum, c->csum_l4);
}

/* IPv6 -> IPv4 (a NAT64 client's packet toward its IPv4 real server): the
 * 40-byte header becomes a 20-byte one in place (the Ethernet header moves
 * up by 20 bytes). DF is set: the path's MTU is discovered, not fragmented. */
static __always_inline int translate_6to4(struct xdp_md *ctx, struct pkt6 *p, const struct conn6 *c)
{
	struct ipv6hdr *ip6 = p->ip6;
	__u8 tos = (ip6->priority << 4) | (ip6->flow_lbl[0] >> 4);
	__u8 ttl = ip6->hop_limit;
	__u16 plen = bpf_ntohs(ip6->payload_len);
	struct ethhdr eth = *p->eth;
	rewrite_l4_6(p, c);
	if (bpf_xdp_adjust_head(ctx, (int)(sizeof(struct ipv6hdr) - sizeof(struct iphdr))))
		return -1;
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *neth = data;
	struct iphdr *ip = (void *)(neth + 1);
	if ((void *)(ip + 1) > data_end)
		return -1;
	__builtin_memcpy(neth, &eth, sizeof(eth));
	neth->h_proto = bpf_htons(ETH_P_IP);
	ipv4_build(ip, tos, plen + sizeof(struct iphdr), IP_DF_, ttl, p->key.proto, c->saddr[0], c->daddr[0]);
	return 0;
}

/* IPv4 -> IPv6 (a NAT64 real server's reply toward the IPv6 client). IPv4
 * options and UDP without a checksum are refused (the caller drops):
 * RFC 7915 allows either. */
static __always_inline int translate_4to6(struct xdp_md *ctx, struct pkt6 *p, const struct conn6 *c)
{
	struct iphdr *ip = p->ip4;
	if (p->l3_len != sizeof(struct iphdr) || !p->l4_csum)
		return -1;
	__u8 tos = ip->tos;
	__u8 ttl = ip->ttl;
	__u16 plen = p->ip_len - sizeof(struct iphdr);
	struct ethhdr eth = *p->eth;
	rewrite_l4_6(p, c);
	/* Ethernet padding after a short IPv4 packet would trail the IPv6 one. */
	long pad = (long)((void *)(long)ctx->data_end - (void *)(long)ctx->data) -
		   (long)(sizeof(struct ethhdr) + p->ip_len);
	if (pad > 0 && pad < 64 && bpf_xdp_adjust_tail(ctx, -(int)pad))
		return -1;
	if (bpf_xdp_adjust_head(ctx, -(int)(sizeof(struct ipv6hdr) - sizeof(struct iphdr))))
		return -1;
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *neth = data;
	struct ipv6hdr *ip6 = (void *)(neth + 1);
	if ((void *)(ip6 + 1) > data_end)
		return -1;
	__builtin_memcpy(neth, &eth, sizeof(eth));
	neth->h_proto = bpf_htons(ETH_P_IPV6);
	ip6->version = 6;
	ip6->priority = tos >> 4;
	ip6->flow_lbl[0] = (tos & 0xf) << 4;
	ip6->flow_lbl[1] = 0;
	ip6->flow_lbl[2] = 0;
	ip6->payload_len = bpf_htons(plen);
	ip6->nexthdr = p->key.proto;
	ip6->hop_limit = ttl;
	__builtin_memcpy(&ip6->saddr, c->saddr, 16);
	__builtin_memcpy(&ip6->daddr, c->daddr, 16);
	return 0;
}

/* Full-NAT of an IPv6 service: v6 -> v6, or NAT64 either way. Like
 * nat.h's xmit_nat, a packet whose next hop the fast path cannot finish
 * goes to the kernel translated. */
static __always_inline int xmit_fnat6(struct xdp_md *ctx, struct pkt6 *p, struct conn6 *c,
				      const struct config *cfg, __u64 now)
{
	__u32 len = p->ip_len;
	__u8 in_family = p->key.family;
	if (in_family != c->out_family)
		len = in_family == AF_INET6_ ? len - 20 : len + 20;
	__u32 mtu = 0;
	int v = next_hop6(ctx, c, cfg, now, c->out_family, c->saddr, c->daddr, len, p->key.proto, 0, &mtu);
	if (v == NH_TOO_BIG) {
		/* XDP cannot fragment: tell the sender, in its own family and
		 * for its own packet size (the difference of the headers). */
		if (p->ip6)
			return mbx_icmp6_too_big(ctx, mtu + p->ip_len - len);
		if (p->ip4 && (p->ip4->frag_off & bpf_htons(IP_DF_)))
			return mbx_icmp_too_big(ctx, mtu - (len - p->ip_len), p->ip4->daddr) == XDP_TX ? XDP_TX : XDP_DROP;
		count(CNT_DROP_TOO_BIG);
		return XDP_DROP;
	}
	/* Branches on the header pointers (not the family byte): the verifier
	 * knows which one the parser set. */
	int bad = 0;
	if (p->ip6 && c->out_family == AF_INET6_) {
		__builtin_memcpy(&p->ip6->saddr, c->saddr, 16);
		__builtin_memcpy(&p->ip6->daddr, c->daddr, 16);
		rewrite_l4_6(p, c);
	} else if (p->frag) {
		bad = 1; /* NAT64 of fragments is not built (counted, dropped) */
	} else if (p->ip6) {
		bad = translate_6to4(ctx, p, c);
	} else if (p->ip4 && c->out_family == AF_INET6_) {
		bad = translate_4to6(ctx, p, c);
	} else {
		bad = 1; /* IPv4 to IPv4 is mbx_xdp's */
	}
	if (bad) {
		count(CNT_DROP_MALFORMED);
		return XDP_DROP;
	}
	if (v != NH_OK)
		return v;
	return xmit6_to(ctx, c->nh_out, c->nh_dmac, c->nh_smac);
}

/* DR: the packet unchanged but for its MAC addresses. The packet carries
 * the VIP: a next hop the fast path cannot use is a drop (nat.h). */
static __always_inline int xmit_dr6(struct xdp_md *ctx, struct pkt6 *p, struct conn6 *c,
				    const struct config *cfg, __u64 now)
{
	__u32 mtu = 0;
	int v = next_hop6(ctx, c, cfg, now, AF_INET6_, p->key.saddr, c->daddr, p->ip_len, p->key.proto, 1, &mtu);
	if (v == NH_TOO_BIG)
		return mbx_icmp6_too_big(ctx, mtu);
	if (v != NH_OK)
		return v;
	return xmit6_to(ctx, c->nh_out, c->nh_dmac, c->nh_smac);
}

/* ip6ip6 (RFC 2473) to the real server, from the egress address. The flow
 * label carries the flow hash, so receivers that hash it spread flows. */
static __always_inline int xmit_tunnel6(struct xdp_md *ctx, struct pkt6 *p, struct conn6 *c,
					const struct config *cfg, __u64 now)
{
	if (!p->ip6)
		return XDP_DROP;
	__u32 inner_len = p->ip_len;
	__u32 mtu = 0;
	/* The lookup picks the outer source (BPF_FIB_LOOKUP_SRC); the inner
	 * source given only matters to source-based routing rules. */
	int v = next_hop6(ctx, c, cfg, now, AF_INET6_, p->key.saddr, c->daddr, inner_len + sizeof(struct ipv6hdr),
			  IPPROTO_IPV6_, 1, &mtu);
	if (v == NH_TOO_BIG) /* the client learns the MTU minus the outer header */
		return mbx_icmp6_too_big(ctx, mtu - sizeof(struct ipv6hdr));
	if (v != NH_OK)
		return v;
	/* Hashed once, when the connection was made: the hash of a 40-byte
	 * key is a long dependent chain, too dear per packet. An entry made
	 * by an older mbx (adopted pinned maps) has none yet. */
	__u32 label = (c->flow_hash ? c->flow_hash : flow_hash6(&p->key, p->daddr, cfg->hash_seed)) & 0xfffff;
	__u8 tc = (p->ip6->priority << 4) | (p->ip6->flow_lbl[0] >> 4);
	void *start = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	long pad = (long)(end - start) - (long)(sizeof(struct ethhdr) + inner_len);
	if (pad > 0 && pad < 64 && bpf_xdp_adjust_tail(ctx, -(int)pad)) {
		count(CNT_DROP_FIB);
		return XDP_DROP;
	}
	if (bpf_xdp_adjust_head(ctx, -(int)sizeof(struct ipv6hdr))) {
		count(CNT_DROP_FIB);
		return XDP_DROP;
	}
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct ipv6hdr *o = (void *)(eth + 1);
	if ((void *)(o + 1) > data_end)
		return XDP_DROP;
	eth->h_proto = bpf_htons(ETH_P_IPV6);
	o->version = 6;
	o->priority = tc >> 4;
	o->flow_lbl[0] = ((tc & 0xf) << 4) | (label >> 16);
	o->flow_lbl[1] = label >> 8;
	o->flow_lbl[2] = label;
	o->payload_len = bpf_htons(inner_len);
	o->nexthdr = IPPROTO_IPV6_;
	o->hop_limit = 64;
	__builtin_memcpy(&o->saddr, c->tun_saddr, 16);
	__builtin_memcpy(&o->daddr, c->daddr, 16);
	return xmit6_to(ctx, c->nh_out, c->nh_dmac, c->nh_smac);
}

/* memo_xmit sends a translated ICMP error on c's memoized next hop (the
 * error arrived where c's packets do and goes where they go); without a
 * fresh one the kernel routes it. No fib lookup here: its 64-byte
 * argument would not fit beside mbx_lb6's frame. */
static __always_inline int memo_xmit(struct xdp_md *ctx, const struct conn6 *c, const struct config *cfg, __u64 now)
{
	__u32 stamp = (__u32)(now >> 20);
	if (c->nh_gen == cfg->fib_gen && c->nh_in == ctx->ingress_ifindex && c->nh_out &&
	    (__s32)(stamp - c->nh_stamp) < (__s32)cfg->fib_max_age)
		return xmit6_to(ctx, c->nh_out, c->nh_dmac, c->nh_smac);
	count(CNT_PASS_FIB);
	return XDP_PASS;
}

/* RFC 7915's ICMP mapping, for the errors mbx translates (other codes of
 * a known type map to the type's most general code). */
static __always_inline int icmp4to6_type(__u8 type, __u8 code, __u8 *t6, __u8 *c6)
{
	if (type == ICMP_TIME_EXCEEDED) {
		*t6 = ICMP6_TIME_EXCEEDED;
		*c6 = code;
		return 0;
	}
	if (type != ICMP_DEST_UNREACH)
		return -1;
	*t6 = ICMP6_DST_UNREACH;
	switch (code) {
	case ICMP_FRAG_NEEDED:
		*t6 = ICMP6_PACKET_TOO_BIG;
		*c6 = 0;
		break;
	case 3: /* port unreachable */
		*c6 = 4;
		break;
	case 9:
	case 10:
	case 13: /* administratively prohibited */
		*c6 = 1;
		break;
	default: /* net, host, ... unreachable: no route */
		*c6 = 0;
	}
	return 0;
}

static __always_inline int icmp6to4_type(__u8 type, __u8 code, __u8 *t4, __u8 *c4)
{
	switch (type) {
	case ICMP6_TIME_EXCEEDED:
		*t4 = ICMP_TIME_EXCEEDED;
		*c4 = code;
		return 0;
	case ICMP6_PACKET_TOO_BIG:
		*t4 = ICMP_DEST_UNREACH;
		*c4 = ICMP_FRAG_NEEDED;
		return 0;
	case ICMP6_DST_UNREACH:
		*t4 = ICMP_DEST_UNREACH;
		*c4 = code == 4 ? 3 : code == 1 ? 10 : 1; /* port; prohibited; host */
		return 0;
	}
	return -1;
}

/* The quoted transport header's first 8 bytes: the ports and what follows. */
struct quote8 {
	__u16 sport;
	__u16 dport;
	__u32 rest;
};

/* icmp46_error: an ICMPv4 error about a NAT64 connection's IPv4 packet
 * (LIP -> real server), from the IPv4 side, becomes the ICMPv6 error the
 * IPv6 client gets about its own packet (RFC 7915 4.2): from the VIP,
 * quoting the client's packet as it was (IPv6 header and 8 bytes);
 * "fragmentation needed" becomes "packet too big" with the MTU plus 20. */
static __attribute__((noinline)) int icmp46_error(struct xdp_md *ctx, const struct config *cfg, __u64 now)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct icmphdr *ic = (void *)(ip + 1);
	struct iphdr *qip = (void *)(ic + 1);
	struct quote8 *ql4 = (void *)(qip + 1);
	if ((void *)(ql4 + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5 ||
	    ip->protocol != IPPROTO_ICMP || qip->ihl != 5)
		return XDP_PASS;
	if (qip->protocol != IPPROTO_TCP && qip->protocol != IPPROTO_UDP)
		return XDP_PASS;
	__u8 t6, c6;
	if (icmp4to6_type(ic->type, ic->code, &t6, &c6))
		return XDP_PASS;
	struct flow_key6 k;
	__u32 ks[4] = {qip->daddr}, kd[4] = {qip->saddr};
	if (key6_make(&k, ks, kd, ql4->dport, ql4->sport, qip->protocol, AF_INET_))
		return XDP_PASS;
	struct conn6 *c = bpf_map_lookup_elem(&conns6, &k);
	if (!c || c->out_family != AF_INET6_ || !(c->flags & CONN_F_REPLY))
		return XDP_PASS;
	count(CNT_ICMP_ERROR);
	/* Everything the new packet needs, read before it is built over this one. */
	__u32 mtu = bpf_ntohs(ic->mtu);
	mtu = mtu ? mtu + 20 : 1280;
	__u16 qplen = bpf_ntohs(qip->tot_len) - sizeof(struct iphdr);
	__u8 qttl = qip->ttl, qtos = qip->tos, qproto = qip->protocol;
	struct quote8 q = *ql4;
	q.sport = c->dport; /* the client's port */
	q.dport = c->sport; /* the VIP's */
	__u8 smac[ETH_ALEN], dmac[ETH_ALEN];
	__builtin_memcpy(smac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(dmac, eth->h_dest, ETH_ALEN);

	/* [eth][ip4][icmp][qip4][8] (70 bytes and more) becomes
	 * [eth][ip6][icmp6][qip6][8] (110 bytes). */
	const int total = sizeof(struct ethhdr) + 2 * sizeof(struct ipv6hdr) + sizeof(struct icmp6hdr_) + sizeof(q);
	if (reshape(ctx, -(int)(2 * (sizeof(struct ipv6hdr) - sizeof(struct iphdr))), total))
		return XDP_DROP;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	struct ethhdr *neth = data;
	struct ipv6hdr *o = (void *)(neth + 1);
	struct icmp6hdr_ *nic = (void *)(o + 1);
	struct ipv6hdr *nq = (void *)(nic + 1);
	struct quote8 *nql4 = (void *)(nq + 1);
	if ((void *)(nql4 + 1) > data_end)
		return XDP_DROP;
	__builtin_memcpy(neth->h_dest, dmac, ETH_ALEN);
	__builtin_memcpy(neth->h_source, smac, ETH_ALEN);
	neth->h_proto = bpf_htons(ETH_P_IPV6);
	__builtin_memset(o, 0, sizeof(*o));
	o->version = 6;
	o->payload_len = bpf_htons(sizeof(*nic) + sizeof(*nq) + sizeof(q));
	o->nexthdr = IPPROTO_ICMPV6_;
	o->hop_limit = 64;
	__builtin_memcpy(&o->saddr, c->saddr, 16);
	__builtin_memcpy(&o->daddr, c->daddr, 16);
	nic->type = t6;
	nic->code = c6;
	nic->checksum = 0;
	nic->mtu = t6 == ICMP6_PACKET_TOO_BIG ? bpf_htonl(mtu) : 0;
	__builtin_memset(nq, 0, sizeof(*nq));
	nq->version = 6;
	nq->priority = qtos >> 4;
	nq->flow_lbl[0] = (qtos & 0xf) << 4;
	nq->payload_len = bpf_htons(qplen);
	nq->nexthdr = qproto;
	nq->hop_limit = qttl;
	__builtin_memcpy(&nq->saddr, c->daddr, 16);
	__builtin_memcpy(&nq->daddr, c->saddr, 16);
	*nql4 = q;
	nic->checksum = icmp6_csum(&o->saddr, nic, sizeof(*nic) + sizeof(*nq) + sizeof(q));
	return memo_xmit(ctx, c, cfg, now);
}

/* icmp64_error: an ICMPv6 error from the IPv6 side about a NAT64 reply
 * (VIP -> client, as mbx translated it) becomes the ICMPv4 error the IPv4
 * real server gets about its own packet (RFC 7915 5.2): from the LIP,
 * quoting its packet (IPv4 header and 8 bytes); "packet too big" becomes
 * "fragmentation needed" with the MTU minus 20. The client's entry (keyed
 * by the reversed quote) leads to the real server. */
static __attribute__((noinline)) int icmp64_error(struct xdp_md *ctx, const struct config *cfg, __u64 now)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6 = (void *)(eth + 1);
	struct icmp6hdr_ *ic = (void *)(ip6 + 1);
	struct ipv6hdr *q = (void *)(ic + 1);
	struct quote8 *ql4 = (void *)(q + 1);
	if ((void *)(ql4 + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IPV6) || ip6->nexthdr != IPPROTO_ICMPV6_)
		return XDP_PASS;
	if (q->nexthdr != IPPROTO_TCP && q->nexthdr != IPPROTO_UDP)
		return XDP_PASS;
	__u8 t4, c4;
	if (icmp6to4_type(ic->type, ic->code, &t4, &c4))
		return XDP_PASS;
	struct flow_key6 k;
	if (key6_make(&k, (__u32 *)&q->daddr, (__u32 *)&q->saddr, ql4->dport, ql4->sport, q->nexthdr, AF_INET6_))
		return XDP_PASS;
	struct conn6 *c = bpf_map_lookup_elem(&conns6, &k);
	if (!c || c->out_family != AF_INET_ || (c->flags & CONN_F_REPLY))
		return XDP_PASS;
	count(CNT_ICMP_ERROR);
	__u32 mtu = bpf_ntohl(ic->mtu);
	mtu = mtu > 20 + 68 ? mtu - 20 : 68;
	__u16 qtot = bpf_ntohs(q->payload_len) + sizeof(struct iphdr);
	__u8 qttl = q->hop_limit, qproto = q->nexthdr;
	__u8 qtos = (q->priority << 4) | (q->flow_lbl[0] >> 4);
	struct quote8 ql = *ql4;
	ql.sport = c->dport; /* the real server's port */
	ql.dport = c->sport; /* the LIP's */
	__u8 smac[ETH_ALEN], dmac[ETH_ALEN];
	__builtin_memcpy(smac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(dmac, eth->h_dest, ETH_ALEN);

	/* [eth][ip6][icmp6][qip6][8] becomes [eth][ip4][icmp][qip4][8] (70 bytes). */
	const int total = sizeof(struct ethhdr) + 2 * sizeof(struct iphdr) + sizeof(struct icmphdr) + sizeof(ql);
	if (reshape(ctx, (int)(2 * (sizeof(struct ipv6hdr) - sizeof(struct iphdr))), total))
		return XDP_DROP;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	struct ethhdr *neth = data;
	struct iphdr *o = (void *)(neth + 1);
	struct icmphdr *nic = (void *)(o + 1);
	struct iphdr *nq = (void *)(nic + 1);
	struct quote8 *nql4 = (void *)(nq + 1);
	if ((void *)(nql4 + 1) > data_end)
		return XDP_DROP;
	__builtin_memcpy(neth->h_dest, dmac, ETH_ALEN);
	__builtin_memcpy(neth->h_source, smac, ETH_ALEN);
	neth->h_proto = bpf_htons(ETH_P_IP);
	ipv4_build(o, 0, total - sizeof(struct ethhdr), 0, 64, IPPROTO_ICMP, c->saddr[0], c->daddr[0]);
	nic->type = t4;
	nic->code = c4;
	nic->checksum = 0;
	nic->unused = 0;
	nic->mtu = t4 == ICMP_DEST_UNREACH && c4 == ICMP_FRAG_NEEDED ? bpf_htons((__u16)mtu) : 0;
	ipv4_build(nq, qtos, qtot, IP_DF_, qttl, qproto, c->daddr[0], c->saddr[0]);
	*nql4 = ql;
	__s64 sum = bpf_csum_diff(0, 0, (__be32 *)nic, sizeof(*nic) + sizeof(*nq) + sizeof(ql), 0);
	nic->checksum = ~csum_fold32((__u32)sum);
	return memo_xmit(ctx, c, cfg, now);
}

static __always_inline int is_icmp6_error(__u8 type)
{
	return type >= ICMP6_DST_UNREACH && type <= ICMP6_PARAM_PROB;
}

/* icmp6_error translates an ICMPv6 error about an IPv6 Full-NAT
 * connection (the quoted packet is one mbx sent, after translation) and
 * sends it to the quoted packet's original sender, as icmp.h does for
 * IPv4. NAT64's errors cross families in icmp46_error and icmp64_error. */
static __attribute__((noinline)) int icmp6_error(struct xdp_md *ctx, const struct config *cfg, __u64 now)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6 = (void *)(eth + 1);
	struct icmp6hdr_ *ic = (void *)(ip6 + 1);
	struct ipv6hdr *q = (void *)(ic + 1);
	__u16 *ports = (void *)(q + 1);
	if ((void *)(ports + 4) > data_end || ip6->nexthdr != IPPROTO_ICMPV6_ || !is_icmp6_error(ic->type))
		return XDP_PASS;
	if (q->nexthdr != IPPROTO_TCP && q->nexthdr != IPPROTO_UDP)
		return XDP_PASS;
	struct flow_key6 k;
	if (key6_make(&k, (__u32 *)&q->daddr, (__u32 *)&q->saddr, ports[1], ports[0], q->nexthdr, AF_INET6_))
		return XDP_PASS;
	struct conn6 *c = bpf_map_lookup_elem(&conns6, &k);
	if (!c || (c->flags & (CONN_F_DR | CONN_F_TUN)))
		return XDP_PASS;
	if (c->out_family != AF_INET6_)
		return XDP_PASS; /* NAT64: icmp64_error's */
	count(CNT_ICMP_ERROR);

	/* The quoted packet before translation is c's rewrite reversed; the
	 * error goes from c's source to c's destination (nat.h's icmp.h). */
	__u32 dmsg = 0, dl4 = 0;
#pragma unroll
	for (int i = 0; i < 4; i++) {
		__u32 *qs = (__u32 *)&q->saddr + i, *qd = (__u32 *)&q->daddr + i;
		__u32 *os = (__u32 *)&ip6->saddr + i, *od = (__u32 *)&ip6->daddr + i;
		dl4 = csum_add_diff32(dl4, *qs, c->daddr[i]);
		dl4 = csum_add_diff32(dl4, *qd, c->saddr[i]);
		/* The outer addresses are the pseudo header's. */
		dmsg = csum_add_diff32(dmsg, *os, c->saddr[i]);
		dmsg = csum_add_diff32(dmsg, *od, c->daddr[i]);
		*qs = c->daddr[i];
		*qd = c->saddr[i];
		*os = c->saddr[i];
		*od = c->daddr[i];
	}
	dmsg += dl4; /* the quoted addresses are in the message too */
	dl4 = csum_add_diff16(dl4, ports[0], c->dport);
	dl4 = csum_add_diff16(dl4, ports[1], c->sport);
	dmsg = csum_add_diff16(dmsg, ports[0], c->dport);
	dmsg = csum_add_diff16(dmsg, ports[1], c->sport);
	ports[0] = c->dport;
	ports[1] = c->sport;
	/* The quoted TCP/UDP checksum, when quoted. */
	__u16 *l4c = q->nexthdr == IPPROTO_TCP ? (void *)ports + 16 : (void *)ports + 6;
	if ((void *)(l4c + 1) <= data_end) {
		__u16 old = *l4c;
		if (q->nexthdr == IPPROTO_TCP)
			csum_apply(l4c, dl4);
		else
			csum_apply_udp(l4c, dl4);
		dmsg = csum_add_diff16(dmsg, old, *l4c);
	}
	csum_apply(&ic->checksum, dmsg);

	__u32 len = sizeof(struct ipv6hdr) + bpf_ntohs(ip6->payload_len);
	__u32 mtu = 0;
	int v = next_hop6(ctx, c, cfg, now, AF_INET6_, c->saddr, c->daddr, len, IPPROTO_ICMPV6_, 0, &mtu);
	if (v == NH_TOO_BIG) {
		count(CNT_PASS_FIB);
		return XDP_PASS;
	}
	if (v != NH_OK)
		return v;
	return xmit6_to(ctx, c->nh_out, c->nh_dmac, c->nh_smac);
}

#endif
