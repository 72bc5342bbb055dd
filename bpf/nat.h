/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* nat.h: address/port rewrite and transmission (fib lookup, TX/redirect). */
#ifndef MBX_NAT_H
#define MBX_NAT_H

#include "maps.h"
#include "parse.h"
#include "csum.h"

/* Fills the checksum deltas of c for packets whose tuple is k. */
static __always_inline void conn_set_csum(struct conn *c, const struct flow_key *k)
{
	__u32 d = 0;
	d = csum_add_diff32(d, k->saddr, c->saddr);
	d = csum_add_diff32(d, k->daddr, c->daddr);
	c->csum_l3 = d;
	d = csum_add_diff16(d, k->sport, c->sport);
	d = csum_add_diff16(d, k->dport, c->dport);
	c->csum_l4 = d;
}

static __always_inline void rewrite_ipv4(struct pkt *p, const struct conn *c)
{
	struct iphdr *ip = p->ip4;
	ip->saddr = c->saddr;
	ip->daddr = c->daddr;
	csum_apply(&ip->check, c->csum_l3);
	/* sport and dport are the first 4 bytes of both TCP and UDP headers. */
	__u16 *ports = p->l4;
	ports[0] = c->sport;
	ports[1] = c->dport;
	if (p->key.proto == IPPROTO_TCP)
		csum_apply(p->l4_csum, c->csum_l4);
	else if (p->l4_csum)
		csum_apply_udp(p->l4_csum, c->csum_l4);
}

static __always_inline int xmit_to(struct xdp_md *ctx, struct pkt *p, __u32 out,
				   const __u8 *dmac, const __u8 *smac)
{
	__builtin_memcpy(p->eth->h_dest, dmac, ETH_ALEN);
	__builtin_memcpy(p->eth->h_source, smac, ETH_ALEN);
	if (out == ctx->ingress_ifindex) {
		count(CNT_TX);
		return XDP_TX;
	}
	count(CNT_REDIRECT);
	return bpf_redirect_map(&tx_ports, out, XDP_PASS);
}

/* Sends the rewritten packet where the kernel's FIB says. The answer is
 * memoized in the connection (a fib lookup costs more than the rest of the
 * fast path) and trusted only while the kernel's routing/neighbour state is
 * unchanged (cfg->fib_gen, bumped by Go from netlink events) and for at most
 * cfg->fib_max_age. Anything the fast path cannot finish (neighbour unknown,
 * no route, MTU) is handed to the kernel as rewritten, which resolves or
 * answers as a router would; such results are never memoized. */
static __always_inline int xmit_ipv4(struct xdp_md *ctx, struct pkt *p, struct conn *c,
				     const struct config *cfg, __u64 now)
{
	__u32 stamp = (__u32)(now >> 20);
	if (c->nh_gen == cfg->fib_gen && c->nh_in == ctx->ingress_ifindex && c->nh_out &&
	    stamp - c->nh_stamp < cfg->fib_max_age)
		return xmit_to(ctx, p, c->nh_out, c->nh_dmac, c->nh_smac);

	struct bpf_fib_lookup fib = {};
	fib.family = AF_INET_;
	fib.l4_protocol = p->key.proto;
	fib.tot_len = p->ip_len;
	fib.ifindex = ctx->ingress_ifindex;
	fib.ipv4_src = p->ip4->saddr;
	fib.ipv4_dst = p->ip4->daddr;

	int rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		c->nh_in = ctx->ingress_ifindex;
		c->nh_out = fib.ifindex;
		c->nh_stamp = stamp;
		c->nh_gen = cfg->fib_gen;
		__builtin_memcpy(c->nh_dmac, fib.dmac, ETH_ALEN);
		__builtin_memcpy(c->nh_smac, fib.smac, ETH_ALEN);
		return xmit_to(ctx, p, fib.ifindex, fib.dmac, fib.smac);
	}
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		count(CNT_PASS_NO_NEIGH);
		return XDP_PASS;
	}
	count(CNT_PASS_FIB);
	return XDP_PASS;
}

#endif
