/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* inline.h: the stream monitor inline between two interfaces (mOS's
 * nic_forward_table). Every packet an inline interface receives leaves by
 * its peer, unless Go drops it. A connection's first packet (and every
 * non-TCP packet) meets the monitor's stream filter: what it matches goes
 * to Go over AF_XDP, where the tracker and the handlers judge each packet
 * and send it on; the rest is redirected to the peer here and never leaves
 * the kernel. Go writes back per-connection decisions: drop the rest of a
 * connection here (a firewall's block), or forward it here (both sides
 * stopped monitoring). */
#ifndef MBX_INLINE_H
#define MBX_INLINE_H

#include "monitor.h"

#define INL_QUEUES 8 /* AF_XDP sockets per interface (receive queues) */

/* inl_flows values. */
#define INL_GO 1      /* to Go, every packet */
#define INL_FORWARD 2 /* to the peer, here: filtered out, or Go let it go */
#define INL_DROP 3    /* dropped here: Go blocked the connection */

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1 << 18);
	__type(key, struct mon_key);
	__type(value, __u32);
} inl_flows SEC(".maps");

/* Go's AF_XDP sockets, at (ifindex & 0xff) * INL_QUEUES + receive queue. */
struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 256 * INL_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} inl_xsks SEC(".maps");

static __always_inline int inl_act(struct xdp_md *ctx, struct mon_iface *mi, struct mon_stats *st, __u32 how)
{
	if (how == INL_DROP) {
		st->inl_dropped++;
		return XDP_DROP;
	}
	if (how == INL_GO) {
		__u32 key = (ctx->ingress_ifindex & 0xff) * INL_QUEUES + (ctx->rx_queue_index & (INL_QUEUES - 1));
		int v = bpf_redirect_map(&inl_xsks, key, XDP_DROP);
		if (v == XDP_REDIRECT)
			st->inl_to_go++;
		else
			st->inl_no_socket++; /* Go is not listening: fail closed */
		return v;
	}
	st->inl_forwarded++;
	return bpf_redirect(mi->peer, 0);
}

/* mbx_inline decides an inline interface's packet. A global function: the
 * verifier checks it once, apart from mbx_xdp. */
__attribute__((noinline)) int mbx_inline(struct xdp_md *ctx)
{
	if (!ctx)
		return XDP_DROP;
	struct mon_iface *mi = monitor_on(ctx->ingress_ifindex);
	struct mon_stats *st = mon_stats_get();
	__u32 zero = 0;
	struct mon_scratch *sc = bpf_map_lookup_elem(&mon_scratch, &zero);
	if (!mi || !st || !sc)
		return XDP_DROP;
	st->packets++;
	struct mon_pkt *p = &sc->p;
	__builtin_memset(p, 0, sizeof(*p));
	mon_parse((void *)(long)ctx->data, (void *)(long)ctx->data_end, p);
	if (!p->tcp) {
		/* Orphans (non-TCP, fragments, malformed) meet the filter one by
		 * one, as in the Go tracker. */
		if (p->frag)
			st->fragments++;
		else if (p->bad)
			st->malformed++;
		if (!mbx_monitor_filter(ctx)) {
			st->filtered++;
			return inl_act(ctx, mi, st, INL_FORWARD);
		}
		st->orphans++;
		return inl_act(ctx, mi, st, INL_GO);
	}
	st->tcp++;
	__u32 *how = bpf_map_lookup_elem(&inl_flows, &p->key);
	/* A SYN is judged afresh: the ports may be reused by a new connection
	 * (Go drops the old one's retransmitted SYN itself). */
	int syn = (p->flags & (TH_SYN | TH_ACK)) == TH_SYN;
	if (how && !syn)
		return inl_act(ctx, mi, st, *how);
	__u32 v = INL_GO;
	if (!mbx_monitor_filter(ctx)) {
		st->filtered++;
		v = INL_FORWARD;
	}
	bpf_map_update_elem(&inl_flows, &p->key, &v, BPF_ANY);
	return inl_act(ctx, mi, st, v);
}

#endif
