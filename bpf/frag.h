/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* frag.h: IPv4 fragments of load-balanced traffic follow their flow. The
 * first fragment carries the ports: it is scheduled and translated like any
 * packet, and its (addresses, IP id, protocol) is remembered with the ports.
 * Later fragments find the ports there, then the connection, and get the
 * same addresses (their data has no transport header to rewrite; the first
 * fragment's checksum update covers the whole datagram). A later fragment
 * that arrives before its first one cannot be placed and is dropped
 * (counted): mbx does not reassemble, as Katran does not. */
#ifndef MBX_FRAG_H
#define MBX_FRAG_H

#include "maps.h"
#include "clock.h"
#include "parse.h"
#include "conn.h"
#include "nat.h"

struct frag_key {
	__u32 saddr;
	__u32 daddr;
	__u16 id;
	__u8 proto;
	__u8 pad;
};

struct frag_ports {
	__u16 sport;
	__u16 dport;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct frag_key);
	__type(value, struct frag_ports);
} frags SEC(".maps");

static __always_inline void frag_remember(const struct pkt *p)
{
	struct frag_key fk = {.saddr = p->key.saddr, .daddr = p->key.daddr,
			      .id = p->ip4->id, .proto = p->key.proto};
	struct frag_ports fp = {.sport = p->key.sport, .dport = p->key.dport};
	bpf_map_update_elem(&frags, &fk, &fp, BPF_ANY);
}

/* A later fragment: its flow's connection, or a drop. */
static __attribute__((noinline)) int later_fragment(struct xdp_md *ctx, struct pkt *p)
{
	struct iphdr *ip = p->ip4;
	if (!ip)
		return XDP_DROP;
	struct frag_key fk = {.saddr = ip->saddr, .daddr = ip->daddr, .id = ip->id, .proto = ip->protocol};
	struct frag_ports *fp = bpf_map_lookup_elem(&frags, &fk);
	struct config *cfg = get_config();
	if (!fp || !cfg) {
		count(CNT_DROP_FRAGMENT);
		return XDP_DROP;
	}
	p->key.sport = fp->sport;
	p->key.dport = fp->dport;
	__u64 now = mbx_now();
	struct conn *c = bpf_map_lookup_elem(&conns, &p->key);
	if (!c || !conn_alive(cfg, c, &p->key, now)) {
		count(CNT_DROP_FRAGMENT);
		return XDP_DROP;
	}
	count(CNT_FRAGMENT);
	return send(ctx, c, &p->key, XMIT_LATER_FRAGMENT);
}

#endif
