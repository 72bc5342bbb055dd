/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* nat.h: address/port rewrite and transmission (fib lookup, TX/redirect). */
#ifndef MBX_NAT_H
#define MBX_NAT_H

#include "maps.h"
#include "clock.h"
#include "parse.h"
#include "csum.h"
#include "hash.h"
#include "conn.h"

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
	if (!p->l4_csum)
		return; /* UDP without checksum */
	if (p->key.proto == IPPROTO_TCP)
		csum_apply(p->l4_csum, c->csum_l4);
	else
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

#ifndef BPF_FIB_LOOKUP_SRC
#define BPF_FIB_LOOKUP_SRC (1U << 4) /* Linux 6.7; Debian 12's headers predate it */
#endif
#define NH_OK -1
#define NH_TOO_BIG -2
#define IP_DF_ 0x4000

/* linux/icmp.h pulls in libc headers; the few definitions needed: */
#define ICMP_DEST_UNREACH 3
#define ICMP_FRAG_NEEDED 4 /* code of ICMP_DEST_UNREACH */
#define ICMP_TIME_EXCEEDED 11

struct icmphdr {
	__u8 type;
	__u8 code;
	__u16 checksum;
	__u16 unused;
	__u16 mtu; /* next-hop MTU for ICMP_FRAG_NEEDED */
};

/* ipv4_build writes a 20-byte IPv4 header (id 0) with its checksum. The
 * header is made in registers and stored as whole words: summed back from
 * the packet after byte stores, the checksum would wait for those stores
 * to reach the cache (parse.h's key_tail says why). The words are in
 * network order as a little-endian load sees them. */
static __always_inline void ipv4_build(struct iphdr *ip, __u8 tos, __u16 tot_len, __u16 frag_off,
				       __u8 ttl, __u8 proto, __u32 saddr, __u32 daddr)
{
	__u32 w0 = bpf_htonl(0x45000000 | (__u32)tos << 16 | tot_len);
	__u32 w1 = bpf_htonl(frag_off);
	__u32 w2 = bpf_htonl((__u32)ttl << 24 | (__u32)proto << 16);
	__u64 sum = (__u64)w0 + w1 + w2 + saddr + daddr;
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffffffff) + (sum >> 32);
	__u16 check = ~csum_fold32((__u32)sum);
	__u32 *h = (__u32 *)ip;
	h[0] = w0;
	h[1] = w1;
	h[2] = w2 | (__u32)check << 16; /* the checksum is bytes 10-11 */
	h[3] = saddr;
	h[4] = daddr;
}

/* mbx_icmp_too_big answers a packet that does not fit the egress with ICMP
 * "fragmentation needed" (RFC 1191) from address from to its sender, built in place of the
 * packet and sent back where it came from (XDP_TX to the previous hop's
 * MAC, as Katran does). The packet is quoted as the sender sent it. A
 * global function: the verifier checks it once, not at every call site. */
__attribute__((noinline)) int mbx_icmp_too_big(struct xdp_md *ctx, __u32 mtu, __u32 from)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *oeth = data;
	struct iphdr *oip = (void *)(oeth + 1);
	if ((void *)(oip + 1) > data_end || oip->ihl != 5)
		goto drop; /* IP options: quoting them is not worth it */
	__u8 smac[ETH_ALEN], dmac[ETH_ALEN];
	__builtin_memcpy(smac, oeth->h_dest, ETH_ALEN);
	__builtin_memcpy(dmac, oeth->h_source, ETH_ALEN);
	__u32 to = oip->saddr;
	if (!from) {
		/* Our address toward the sender. */
		struct bpf_fib_lookup fib = {};
		fib.family = AF_INET_;
		fib.ifindex = ctx->ingress_ifindex;
		fib.ipv4_dst = to;
		bpf_fib_lookup(ctx, &fib, sizeof(fib), BPF_FIB_LOOKUP_SRC | BPF_FIB_LOOKUP_OUTPUT);
		from = fib.ipv4_src ? fib.ipv4_src : oip->daddr;
	}

	/* [eth][ip][l4 ...] becomes [eth][ip][icmp][quoted ip][8 bytes]: the
	 * quote starts where the packet's IP header already is. */
	if (bpf_xdp_adjust_head(ctx, -(int)(sizeof(struct iphdr) + sizeof(struct icmphdr))))
		goto drop;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	const int hdrs = sizeof(struct ethhdr) + sizeof(struct iphdr) + sizeof(struct icmphdr);
	const int quote = sizeof(struct iphdr) + 8;
	long cut = (long)(data_end - data) - (hdrs + quote);
	if (cut < 0 || cut > 0xffff)
		goto drop;
	if (cut > 0 && bpf_xdp_adjust_tail(ctx, -(int)cut))
		goto drop;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct icmphdr *ic = (void *)(ip + 1);
	if ((void *)ic + sizeof(*ic) + quote > data_end)
		goto drop;
	__builtin_memcpy(eth->h_dest, dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, smac, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IP);
	ipv4_build(ip, 0, sizeof(*ip) + sizeof(*ic) + quote, 0, 64, IPPROTO_ICMP, from, to);
	ic->type = ICMP_DEST_UNREACH;
	ic->code = ICMP_FRAG_NEEDED;
	ic->checksum = 0;
	ic->unused = 0;
	ic->mtu = bpf_htons((__u16)mtu);
	__s64 sum = bpf_csum_diff(0, 0, (__be32 *)ic, sizeof(*ic) + quote, 0);
	ic->checksum = ~csum_fold32((__u32)sum);
	count(CNT_ICMP_TOO_BIG);
	return XDP_TX;
drop:
	count(CNT_DROP_TOO_BIG);
	return XDP_DROP;
}

/* next_hop finds where to send c's packets from src to dst. The answer is
 * memoized in the connection (a fib lookup costs more than the rest of the
 * fast path) with the egress MTU, and trusted only while the kernel's
 * routing/neighbour state is unchanged (cfg->fib_gen, bumped by Go from
 * netlink events) and for at most cfg->fib_max_age. It returns NH_OK with
 * c->nh_* filled; NH_TOO_BIG with *mtu when the route's MTU is smaller
 * than tot_len; or a verdict: what the fast path cannot finish (neighbour
 * unknown, no route) goes to the kernel, which resolves or answers as a
 * router would; such results are never memoized. A direct (DR, tunnel)
 * packet still carries the VIP as destination: handed to the kernel it
 * would be delivered locally, so it is dropped instead (Go keeps those
 * neighbours resolved, the client retransmits). */
static __always_inline int next_hop(struct xdp_md *ctx, struct pkt *p, struct conn *c,
				    const struct config *cfg, __u64 now, __u32 src, __u32 dst,
				    __u32 tot_len, int direct, __u32 *mtu)
{
	__u32 stamp = (__u32)(now >> 20);
	if (c->nh_gen == cfg->fib_gen && c->nh_in == ctx->ingress_ifindex && c->nh_out &&
	    (__s32)(stamp - c->nh_stamp) < (__s32)cfg->fib_max_age)
		return NH_OK;

	struct bpf_fib_lookup fib = {};
	fib.family = AF_INET_;
	fib.l4_protocol = p->key.proto;
	fib.tot_len = tot_len;
	fib.ifindex = ctx->ingress_ifindex;
	fib.ipv4_src = src;
	fib.ipv4_dst = dst;

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
			c->tun_saddr = fib.ipv4_src;
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

/* fits applies the egress MTU to a packet of len bytes that grows by
 * overhead: NH_OK, or the verdict for a packet that does not fit (ICMP
 * "fragmentation needed" when the sender forbade fragments). */
static __always_inline int fits(struct xdp_md *ctx, struct pkt *p, const struct conn *c,
				int v, __u32 mtu, __u32 overhead, int answer)
{
	if (v == NH_OK) {
		if (p->ip_len + overhead <= c->nh_mtu || !c->nh_mtu)
			return NH_OK;
		mtu = c->nh_mtu;
	}
	if (answer && (p->ip4->frag_off & bpf_htons(IP_DF_)) && p->eth == (void *)(long)ctx->data)
		/* The packet is gone (an ICMP now): only a final verdict may follow. */
		/* From the address the sender was talking to (ours); a NAT real
		 * server's reply is addressed to the client: from our address
		 * toward it (0: mbx_icmp_too_big looks it up). */
		return mbx_icmp_too_big(ctx, mtu - overhead,
					(c->flags & CONN_F_MASQ) && (c->flags & CONN_F_REPLY) ? 0 : p->ip4->daddr) == XDP_TX ? XDP_TX : XDP_DROP;
	return NH_TOO_BIG;
}

/* Full-NAT and NAT: the next hop and MTU for the translated packet, then
 * the rewrite and transmission. A packet the fast path cannot send goes to
 * the kernel translated: it resolves neighbours, routes, and fragments what
 * may be fragmented. */
static __always_inline int xmit_nat_(struct xdp_md *ctx, struct pkt *p, struct conn *c,
				     const struct config *cfg, __u64 now, int later_fragment, int answer)
{
	__u32 mtu = 0;
	int v = next_hop(ctx, p, c, cfg, now, c->saddr, c->daddr, p->ip_len, 0, &mtu);
	if (v == NH_OK || v == NH_TOO_BIG) {
		v = fits(ctx, p, c, v, mtu, 0, answer && !later_fragment);
		if (v == NH_TOO_BIG) {
			count(CNT_PASS_FIB);
			v = XDP_PASS;
		} else if (v != NH_OK) {
			return v; /* the ICMP answer */
		}
	}
	if (p->key.proto == IPPROTO_ICMP) {
		/* An echo (SNAT of a ping): the identifier is the port. */
		p->ip4->saddr = c->saddr;
		p->ip4->daddr = c->daddr;
		csum_apply(&p->ip4->check, c->csum_l3);
		__u16 *id = p->l4 + 4;
		__u16 nid = (c->flags & CONN_F_REPLY) ? c->dport : c->sport;
		if (p->l4_csum && (void *)(id + 1) <= (void *)(long)ctx->data_end) {
			csum_apply(p->l4_csum, csum_add_diff16(0, *id, nid));
			*id = nid;
		}
	} else if (later_fragment) {
		/* No transport header: the addresses and the IP checksum only. */
		p->ip4->saddr = c->saddr;
		p->ip4->daddr = c->daddr;
		csum_apply(&p->ip4->check, c->csum_l3);
	} else {
		rewrite_ipv4(p, c);
	}
	if (v != NH_OK)
		return v;
	return xmit_to(ctx, p, c->nh_out, c->nh_dmac, c->nh_smac);
}

static __always_inline int xmit_nat(struct xdp_md *ctx, struct pkt *p, struct conn *c,
				    const struct config *cfg, __u64 now, int later_fragment)
{
	return xmit_nat_(ctx, p, c, cfg, now, later_fragment, 1);
}

static __always_inline int xmit_nat_noanswer(struct xdp_md *ctx, struct pkt *p, struct conn *c,
					     const struct config *cfg, __u64 now, int later_fragment)
{
	return xmit_nat_(ctx, p, c, cfg, now, later_fragment, 0);
}

/* Sends an already rewritten packet (a translated ICMP error) on c's path. */
static __always_inline int xmit_ipv4(struct xdp_md *ctx, struct pkt *p, struct conn *c,
				     const struct config *cfg, __u64 now)
{
	__u32 mtu = 0;
	int v = next_hop(ctx, p, c, cfg, now, p->ip4->saddr, p->ip4->daddr, p->ip_len, 0, &mtu);
	if (v == NH_TOO_BIG) {
		count(CNT_PASS_FIB);
		return XDP_PASS;
	}
	if (v != NH_OK)
		return v;
	return xmit_to(ctx, p, c->nh_out, c->nh_dmac, c->nh_smac);
}

/* direct_hop is the next hop toward the real server of a DR or tunnel
 * connection, for a packet that grows by overhead: NH_OK, or the verdict
 * (a packet that does not fit is answered or dropped: XDP cannot fragment,
 * and handed to the kernel it would be delivered to the local VIP). */
static __always_inline int direct_hop(struct xdp_md *ctx, struct pkt *p, struct conn *c,
				      const struct config *cfg, __u64 now, __u32 src,
				      __u32 overhead, int answer)
{
	__u32 mtu = 0;
	int v = next_hop(ctx, p, c, cfg, now, src, c->daddr, p->ip_len + overhead, 1, &mtu);
	if (v != NH_OK && v != NH_TOO_BIG)
		return v;
	v = fits(ctx, p, c, v, mtu, overhead, answer);
	if (v == NH_TOO_BIG) {
		count(CNT_DROP_TOO_BIG);
		return XDP_DROP;
	}
	return v;
}

/* DR: the packet unchanged but for its MAC addresses, to the real server. */
static __always_inline int xmit_dr(struct xdp_md *ctx, struct pkt *p, struct conn *c,
				   const struct config *cfg, __u64 now, int answer)
{
	int v = direct_hop(ctx, p, c, cfg, now, p->ip4->saddr, 0, answer);
	if (v != NH_OK)
		return v;
	return xmit_to(ctx, p, c->nh_out, c->nh_dmac, c->nh_smac);
}

/* Tunnel: an outer IPv4 header (IPIP) to the real server. The outer source
 * is the egress address, or with `--tunnel-src PREFIX` an address of that
 * prefix chosen by the flow hash, so that receivers' RSS (which hashes the
 * outer header) spreads flows over their queues. A packet that no longer
 * fits gets "fragmentation needed" with the MTU minus the outer header. */
static __always_inline int xmit_tunnel(struct xdp_md *ctx, struct pkt *p, struct conn *c,
				       const struct config *cfg, __u64 now, int answer)
{
	__u32 inner_len = p->ip_len;
	int v = direct_hop(ctx, p, c, cfg, now, 0, sizeof(struct iphdr), answer);
	if (v != NH_OK)
		return v;
	__u32 saddr = c->tun_saddr;
	if (cfg->tun_src_mask) {
		/* The hash made with the connection (an entry of an older mbx
		 * has none): not a per-packet hash of the key. */
		__u32 h = c->flow_hash ? c->flow_hash : flow_hash(&p->key, cfg->hash_seed);
		saddr = cfg->tun_src_base | (bpf_htonl(h) & ~cfg->tun_src_mask);
	}
	__u8 tos = p->ip4->tos;
	/* Ethernet padding after a short packet would end up inside the frame
	 * after the inner packet: cut it first. */
	void *start = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	long pad = (long)(end - start) - (long)(sizeof(struct ethhdr) + inner_len);
	if (pad > 0 && pad < 64 && bpf_xdp_adjust_tail(ctx, -(int)pad)) {
		count(CNT_DROP_FIB);
		return XDP_DROP;
	}
	if (bpf_xdp_adjust_head(ctx, -(int)sizeof(struct iphdr))) {
		count(CNT_DROP_FIB);
		return XDP_DROP;
	}
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *o = (void *)(eth + 1);
	if ((void *)(o + 1) > data_end)
		return XDP_DROP;
	eth->h_proto = bpf_htons(ETH_P_IP);
	ipv4_build(o, tos, inner_len + sizeof(struct iphdr), 0, 64, IPPROTO_IPIP, saddr, c->daddr);
	p->eth = eth;
	return xmit_to(ctx, p, c->nh_out, c->nh_dmac, c->nh_smac);
}

/* How mbx_xmit sends a packet. */
#define XMIT_LATER_FRAGMENT 1 /* no transport header: addresses only */
#define XMIT_REWRITTEN 4      /* already translated (an ICMP error): send as is */

struct xmit_req {
	struct flow_key key; /* the packet's flow (ports of a later fragment from frag.h) */
	__u32 flags;
	__u32 pad;
};

/* mbx_xmit translates and sends a packet of connection c: every forwarding
 * mode's transmit path in one global function, which the verifier checks
 * once instead of at each of its callers (the load balancer, SNAT, later
 * fragments, ICMP errors). Packet pointers are derived anew from ctx: a
 * global function gets no pointers into the packet. */
__attribute__((noinline)) int mbx_xmit(struct xdp_md *ctx, struct conn *c, struct xmit_req *rq)
{
	if (!c || !rq)
		return XDP_DROP;
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct pkt p = {};
	p.eth = data;
	p.ip4 = (void *)(p.eth + 1);
	if ((void *)(p.ip4 + 1) > data_end)
		return XDP_DROP;
	p.ip_len = bpf_ntohs(p.ip4->tot_len);
	p.key = rq->key;
	struct config *cfg = get_config();
	if (!cfg)
		return XDP_DROP;
	__u64 now = mbx_now();
	/* No "fragmentation needed" answers from here (the fast path and
	 * SNAT answer inline): it keeps mbx_icmp_too_big off this call chain,
	 * whose stack adds up to the 512-byte limit. */
	if (c->flags & CONN_F_DR)
		return xmit_dr(ctx, &p, c, cfg, now, 0);
	if (c->flags & CONN_F_TUN)
		return xmit_tunnel(ctx, &p, c, cfg, now, 0);
	if (rq->flags & XMIT_REWRITTEN)
		return xmit_ipv4(ctx, &p, c, cfg, now);
	if (!(rq->flags & XMIT_LATER_FRAGMENT)) {
		__u32 hlen = p.ip4->ihl * 4;
		if (hlen < sizeof(struct iphdr) || hlen > 60)
			return XDP_DROP;
		void *l4 = (void *)p.ip4 + hlen;
		if (l4 + 20 <= data_end && p.key.proto == IPPROTO_TCP) {
			p.l4 = l4;
			p.l4_csum = l4 + 16;
		} else if (l4 + 8 <= data_end && p.key.proto == IPPROTO_UDP) {
			p.l4 = l4;
			__u16 *uc = l4 + 6;
			p.l4_csum = *uc ? uc : 0;
		} else {
			return XDP_DROP;
		}
	}
	return xmit_nat_noanswer(ctx, &p, c, cfg, now, rq->flags & XMIT_LATER_FRAGMENT);
}

/* send is how callers reach mbx_xmit. */
static __always_inline int send(struct xdp_md *ctx, struct conn *c, const struct flow_key *k, __u32 flags)
{
	struct xmit_req rq = {.key = *k, .flags = flags};
	return mbx_xmit(ctx, c, &rq);
}

#endif
