/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* snat.h: SNAT (ipvsadm -J with -H MATCH): LAN hosts reach the WAN through
 * mbx's WAN address. A match service is a rule over traffic not addressed
 * to mbx; a new flow that matches gets a WAN address (the service's "real
 * servers", scheduled as usual) and a port from the local range, exactly as
 * Full-NAT picks a LIP and port, with the flow's own destination as the
 * "real server". Replies come to the WAN address and are translated back. */
#ifndef MBX_SNAT_H
#define MBX_SNAT_H

#include "maps.h"
#include "parse.h"

#define SNAT_RULES 16
#define SNAT_FAMILY 0xff /* svc_key.family of a match service */

struct snat_rule {
	__u32 src_lo, src_hi; /* host order; 0/0xffffffff: any */
	__u32 dst_lo, dst_hi;
	__u32 iif, oif; /* 0: any */
	__u32 svc_hash; /* svc_key.addr[0] of the match service */
	__u8 proto;
	__u8 pad[3];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SNAT_RULES);
	__type(key, __u32);
	__type(value, struct snat_rule);
} snat_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct conn);
} conn_scratch SEC(".maps");

static __always_inline int snat_rule_matches(const struct snat_rule *r, const struct pkt *p, __u32 ifindex)
{
	__u32 s = bpf_ntohl(p->key.saddr), d = bpf_ntohl(p->key.daddr);
	return r->proto == p->key.proto && s >= r->src_lo && s <= r->src_hi &&
	       d >= r->dst_lo && d <= r->dst_hi && (!r->iif || r->iif == ifindex);
}

/* The first rule whose cheap conditions (protocol, ranges, iif) match, or
 * NULL. oif needs a route lookup and is checked for new flows only. */
static __always_inline struct snat_rule *snat_match(const struct config *cfg, const struct pkt *p,
						    __u32 ifindex)
{
	for (__u32 i = 0; i < SNAT_RULES; i++) {
		if (i >= cfg->snat_rules)
			break;
		__u32 k = i;
		struct snat_rule *r = bpf_map_lookup_elem(&snat_rules, &k);
		if (r && snat_rule_matches(r, p, ifindex))
			return r;
	}
	return 0;
}

/* The service of a rule, once the new flow's egress is known to fit oif. */
static __always_inline struct svc *snat_service(struct xdp_md *ctx, const struct snat_rule *r,
						 const struct pkt *p)
{
	if (r->oif) {
		struct bpf_fib_lookup fib = {};
		fib.family = AF_INET_;
		fib.ifindex = ctx->ingress_ifindex;
		fib.ipv4_src = p->key.saddr;
		fib.ipv4_dst = p->key.daddr;
		int rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0); /* as forwarded from the ingress */
		if ((rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH) || fib.ifindex != r->oif)
			return 0;
	}
	struct svc_key sk = {};
	sk.addr[0] = r->svc_hash;
	sk.proto = r->proto;
	sk.family = SNAT_FAMILY;
	return bpf_map_lookup_elem(&services, &sk);
}

#endif
