// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* mbx.c: the XDP entry program. Order: parse -> connection table (both
 * directions) -> service lookup and scheduling for new flows -> rewrite ->
 * fib lookup -> TX/redirect. Verdicts are documented in docs/datapath.md. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "consts.h"
#include "maps.h"
#include "clock.h"
#include "parse.h"
#include "csum.h"
#include "hash.h"
#include "conn.h"
#include "nat.h"
#include "capture.h"
#include "bricks.h"
#include "icmp.h"
#include "frag.h"
#include "snat.h"
#include "monitor.h"
#include "inline.h"
#include "lb6.h"
#include "nat6.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

static __always_inline int is_local(const struct flow_key *k)
{
	struct local_key lk = {};
	lk.addr[0] = k->daddr;
	lk.family = AF_INET_;
	return bpf_map_lookup_elem(&local_addrs, &lk) != 0;
}

static __always_inline int maybe_local(const struct flow_key *k)
{
	__u32 low = bpf_ntohl(k->daddr) & 0xffff;
	__u32 word = low >> 6;
	__u64 *w = bpf_map_lookup_elem(&local_bits, &word);
	return w && (*w & (1ULL << (low & 63)));
}

/* Could this be a NAT real server's reply (its source one of them)? */
static __always_inline int maybe_nat_reply(const struct flow_key *k)
{
	__u32 low = bpf_ntohl(k->saddr) & 0xffff;
	__u32 word = low >> 6;
	__u64 *w = bpf_map_lookup_elem(&nat_src_bits, &word);
	return w && (*w & (1ULL << (low & 63)));
}

/* A real server removed (mode 0) or quiesced (weight 0): a SYN that reuses
 * a port of one of its connections is scheduled afresh, as IPVS's
 * conn_reuse_mode does for a destination of weight 0. */
static __always_inline int real_unusable(__u32 id)
{
	struct real *r = bpf_map_lookup_elem(&reals, &id);
	return !r || !r->mode || !r->weight;
}

static __always_inline void account(const struct conn *c, const struct pkt *p)
{
	count_real(c->real_id, c->flags & CONN_F_REPLY, p->ip_len);
}

/* A new flow to a service: pick the real server from the service's table
 * (computed in Go), then a LIP and local port derived from the flow hash,
 * probing until the reply entry can be inserted (collision check). */
#define NEW_CONN_OK -1

/* lc/wlc: the real server with the least IPVS overhead (active * 256 +
 * inactive, plus what was scheduled since the last sweep), per weight for
 * wlc; ties go to the first. The scan is a bpf_loop callback: verified once,
 * not once per iteration and branch. */
struct least_scan {
	__u32 base, len, weighted, best;
	__u64 best_ov, best_w;
};

static long least_step(__u32 i, void *data)
{
	struct least_scan *c = data;
	if (i >= c->len)
		return 1;
	__u32 id;
	if (slot_real(c->base + i, &id))
		return 1;
	struct real_load *l = bpf_map_lookup_elem(&loads, &id);
	struct real *r = bpf_map_lookup_elem(&reals, &id);
	if (!l || !r)
		return 0;
	__u64 ov = ((__u64)(l->active + l->recent) << 8) + l->inactive;
	__u64 w = c->weighted ? r->weight : 1;
	if (w == 0)
		return 0;
	/* ov / w < best_ov / best_w, without division */
	if (c->best_ov == ~0ULL || ov * c->best_w < c->best_ov * w) {
		c->best = i;
		c->best_ov = ov;
		c->best_w = w;
	}
	return 0;
}

static __always_inline __u32 pick_least(const struct svc *s)
{
	struct least_scan c = {
		.base = s->sched_base,
		.len = s->sched_len,
		.weighted = s->flags & SVC_F_WEIGHTED,
		.best_ov = ~0ULL,
		.best_w = 1,
	};
	bpf_loop(LEAST_MAX, least_step, &c, 0);
	return c.best;
}

/* pick_real chooses the real server of a new flow of service s (h: the
 * flow hash; src and dst: the client and virtual address, an IPv6 one
 * folded to a word): PICK_OK with *real_id, or a verdict. Shared by the
 * IPv4 and IPv6 load balancers. */
#define PICK_OK -1
static __always_inline int pick_real(const struct svc *s, const struct config *cfg, __u32 h,
				     __u32 src, __u32 dst, __u64 now, __u32 *real_id)
{
	struct real *rs;
	struct persist_key pk = {.svc_id = s->id, .client = src};
	if (s->persist_s) {
		/* A client seen within the persistence timeout keeps its real
		 * server, while that real server is still in the service. */
		struct persist_val *pv = bpf_map_lookup_elem(&persist, &pk);
		if (pv && (__s64)(now - pv->last_seen) < (__s64)s->persist_s * 1000000000LL) {
			*real_id = pv->real_id;
			rs = bpf_map_lookup_elem(&reals, real_id);
			if (rs && rs->mode) {
				pv->last_seen = now;
				goto picked;
			}
		}
	}
	__u32 n;
	switch (s->flags & PICK_MASK) {
	case PICK_SRC:
		n = sched_hash(src, cfg->hash_seed);
		break;
	case PICK_DST:
		n = sched_hash(dst, cfg->hash_seed);
		break;
	case PICK_FLOW:
		n = hash_final(h ^ SCHED_SALT);
		break;
	case PICK_LEAST:
		n = pick_least(s);
		break;
	default: {
		__u32 sid = s->id;
		__u32 *pos = bpf_map_lookup_elem(&sched_pos, &sid);
		if (!pos)
			return XDP_DROP;
		n = __sync_fetch_and_add(pos, 1);
	}
	}
	if (table_real(s, n % s->sched_len, real_id))
		return XDP_DROP;
	rs = bpf_map_lookup_elem(&reals, real_id);
	if (!rs) {
		count(CNT_DROP_NO_REAL);
		return XDP_DROP;
	}
	if (s->persist_s) {
		struct persist_val pv = {.real_id = *real_id, .last_seen = now};
		bpf_map_update_elem(&persist, &pk, &pv, BPF_ANY);
	}
picked:
	if ((s->flags & PICK_MASK) == PICK_LEAST) {
		struct real_load *l = bpf_map_lookup_elem(&loads, real_id);
		if (l)
			__sync_fetch_and_add(&l->recent, 1);
	}
	return PICK_OK;
}

/* Not inlined: the slow path gets its own stack frame. On success fills fc
 * with the client-side entry and returns NEW_CONN_OK, else a verdict. */
__attribute__((noinline)) int mbx_new_conn(const struct flow_key *key, const struct svc *s,
					   const struct config *cfg, __u64 now, struct conn *fc)
{
	/* A global function (verified once, not per caller): its pointer
	 * arguments may be NULL as far as the verifier knows. */
	if (!key || !s || !cfg || !fc)
		return XDP_DROP;
	if (s->sched_len == 0) {
		count(CNT_DROP_NO_REAL);
		return XDP_DROP;
	}
	__u32 h = flow_hash(key, cfg->hash_seed);
	__u32 real_id;
	int pv = pick_real(s, cfg, h, key->saddr, key->daddr, now, &real_id);
	if (pv != PICK_OK)
		return pv;
	struct real *rs = bpf_map_lookup_elem(&reals, &real_id);
	if (!rs)
		return XDP_DROP;
	__u8 state = key->proto == IPPROTO_TCP ? cfg->fsm[DIR_INPUT][0][TCPS_NONE] : UDP_STATE;
	fc->real_id = real_id;
	fc->svc_id = s->id;
	fc->state = state;
	fc->last_seen = now;
	fc->nh_out = 0;
	fc->flow_hash = h;
	if (rs->mode == FWD_DR || rs->mode == FWD_TUN) {
		/* One entry, client side only: replies do not come back through
		 * mbx. The packet keeps its addresses; daddr names the real server
		 * (next hop for DR, outer destination for the tunnel). */
		fc->saddr = key->saddr;
		fc->daddr = rs->addr[0];
		fc->sport = key->sport;
		fc->dport = key->dport;
		fc->flags = rs->mode == FWD_DR ? CONN_F_DR : CONN_F_TUN;
		fc->csum_l3 = fc->csum_l4 = 0;
		goto insert;
	}
	if (rs->mode == FWD_NAT) {
		/* The reply entry is keyed RS -> client and restores the VIP. */
		struct flow_key nk = {};
		nk.saddr = rs->addr[0];
		nk.daddr = key->saddr;
		nk.sport = rs->port ? rs->port : key->dport;
		nk.dport = key->sport;
		nk.proto = key->proto;
		fc->saddr = key->daddr;
		fc->daddr = key->saddr;
		fc->sport = key->dport;
		fc->dport = key->sport;
		fc->flags = CONN_F_REPLY | CONN_F_MASQ;
		conn_set_csum(fc, &nk);
		if (bpf_map_update_elem(&conns, &nk, fc, BPF_NOEXIST) != 0) {
			struct conn *old = bpf_map_lookup_elem(&conns, &nk);
			if (!old || conn_alive(cfg, old, &nk, now) ||
			    bpf_map_update_elem(&conns, &nk, fc, BPF_NOEXIST) != 0) {
				/* Another service's connection from this client port to
				 * this real server: replies could not be told apart. */
				count(CNT_DROP_NO_PORT);
				return XDP_DROP;
			}
		}
		fc->saddr = key->saddr;
		fc->daddr = nk.saddr;
		fc->sport = key->sport;
		fc->dport = nk.sport;
		fc->flags = CONN_F_MASQ;
		conn_set_csum(fc, key);
		goto insert;
	}
	int snat = rs->mode == FWD_SNAT;
	if (s->laddr_len == 0 && !snat) {
		count(CNT_DROP_NO_LADDR);
		return XDP_DROP;
	}
	__u32 range = (__u32)cfg->port_hi - cfg->port_lo + 1;

	/* The reply comes from the real server (for SNAT: the flow's own
	 * destination) to a LIP (for SNAT: the WAN address) and port. */
	struct flow_key rk = {};
	rk.saddr = snat ? key->daddr : rs->addr[0];
	rk.sport = snat ? key->dport : (rs->port ? rs->port : key->dport);
	rk.proto = key->proto;

	/* fc first holds the reply entry, then becomes the client-side entry:
	 * one conn on the stack keeps both frames under the 512-byte limit. */
	fc->saddr = key->daddr;
	fc->daddr = key->saddr;
	fc->sport = key->dport;
	fc->dport = key->sport;
	fc->flags = CONN_F_REPLY;

	int ok = 0;
#pragma clang loop unroll(disable)
	for (int i = 0; i < PORT_TRIES; i++) {
		__u32 cand = h + (__u32)i * PORT_CAND_STEP;
		__u32 li = s->laddr_base + (s->laddr_len ? cand % s->laddr_len : 0);
		if (snat) {
			rk.daddr = rs->addr[0];
		} else {
			struct laddr *la = bpf_map_lookup_elem(&laddrs, &li);
			if (!la)
				break;
			rk.daddr = la->addr[0];
		}
		rk.dport = bpf_htons((__u16)(cfg->port_lo + (cand >> 8) % range));
		conn_set_csum(fc, &rk);
		if (bpf_map_update_elem(&conns, &rk, fc, BPF_NOEXIST) == 0) {
			ok = 1;
			break;
		}
		struct conn *old = bpf_map_lookup_elem(&conns, &rk);
		if (old && !conn_alive(cfg, old, &rk, now)) {
			if (bpf_map_update_elem(&conns, &rk, fc, BPF_NOEXIST) == 0) {
				ok = 1;
				break;
			}
		}
		__u64 *cf = snat ? 0 : bpf_map_lookup_elem(&laddr_conflicts, &li);
		if (cf)
			*cf += 1;
	}
	if (!ok) {
		count(CNT_DROP_NO_PORT);
		return XDP_DROP;
	}

	fc->saddr = rk.daddr;
	fc->daddr = rk.saddr;
	fc->sport = rk.dport;
	fc->dport = rk.sport;
	fc->flags = 0;
	fc->nh_out = 0; /* no memoized next hop yet */
	conn_set_csum(fc, key);
insert:
	/* BPF_ANY: a racing CPU that scheduled the same SYN loses its entry
	 * pair's forward half; its reply half expires unused. */
	bpf_map_update_elem(&conns, key, fc, BPF_ANY);

	struct real_stats *st = bpf_map_lookup_elem(&stats, &real_id);
	if (st)
		st->conns++;
	count(CNT_CONN_NEW);
	return NEW_CONN_OK;
}

/* SNAT's outbound direction: a LAN host's packet that is not addressed to
 * mbx and matches a match service (snat.h). Kept out of process() so the
 * verifier explores it once, apart from the load balancer's paths. */
static __attribute__((noinline)) int snat_out(struct xdp_md *ctx, struct pkt *p, struct config *cfg)
{
	struct snat_rule *r = snat_match(cfg, p, ctx->ingress_ifindex);
	if (!r) {
		count(CNT_PASS_NOT_OURS);
		return XDP_PASS;
	}
	__u64 now = mbx_now();
	struct conn *c = bpf_map_lookup_elem(&conns, &p->key);
	if (c && conn_alive(cfg, c, &p->key, now)) {
		if ((__s64)(now - c->last_seen) > (1 << 20))
			c->last_seen = now;
		conn_track(cfg, c, p);
		account(c, p);
		return xmit_nat(ctx, p, c, cfg, now, 0);
	}
	struct svc *s = snat_service(ctx, r, p);
	if (!s || !is_new_syn(p)) {
		/* Not for SNAT after all (another egress), or mid-flow without
		 * state: the kernel's, as routed traffic. */
		count(CNT_PASS_NOT_OURS);
		return XDP_PASS;
	}
	/* The new entry's copy in per-CPU scratch: this frame sits between
	 * process() and the transmit path, and the stack is 512 bytes for all. */
	__u32 zero = 0;
	struct conn *fresh = bpf_map_lookup_elem(&conn_scratch, &zero);
	if (!fresh)
		return XDP_DROP;
	int v = mbx_new_conn(&p->key, s, cfg, now, fresh);
	if (v != NEW_CONN_OK)
		return v;
	account(fresh, p);
	return xmit_nat(ctx, p, fresh, cfg, now, 0);
}

/* Every packet: parse, find or make its connection, translate, send. */
static __always_inline int process(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct pkt p = {};

	switch (parse_ipv4(data, data_end, &p)) {
	case PARSE_OK:
		break;
	case PARSE_NOT_IP: {
		struct ethhdr *eth = data;
		if ((void *)(eth + 1) <= data_end && eth->h_proto == bpf_htons(ETH_P_IPV6)) {
			struct config *c6 = get_config();
			if (c6 && (c6->lb6 & LB6_V6))
				return VERDICT_LB6;
		}
		count(CNT_PASS_NOT_OURS);
		return XDP_PASS;
	}
	case PARSE_OTHER_L4:
		if (parse_icmp_echo(data_end, &p))
			break; /* a flow like any other (SNAT of pings) */
		if (p.key.proto == IPPROTO_ICMP && (maybe_local(&p.key) || maybe_nat_reply(&p.key))) {
			struct config *icfg = get_config();
			if (icfg) {
				int v = icmp_error(ctx, &p, icfg, mbx_now());
				/* Not an IPv4 connection's: perhaps a NAT64 one's. */
				if (v == XDP_PASS && (icfg->lb6 & LB6_NAT64))
					return VERDICT_LB6;
				return v;
			}
		}
		count(CNT_PASS_NOT_OURS);
		return XDP_PASS;
	case PARSE_BAD_L3:
		count(CNT_PASS_MALFORMED);
		return XDP_PASS;
	case PARSE_FRAGMENT:
		if (is_local(&p.key) || maybe_nat_reply(&p.key))
			return later_fragment(ctx, &p);
		count(CNT_PASS_NOT_OURS);
		return XDP_PASS;
	default: /* PARSE_BAD_L4 */
		if (is_local(&p.key)) {
			count(CNT_DROP_MALFORMED);
			return XDP_DROP;
		}
		count(CNT_PASS_MALFORMED);
		return XDP_PASS;
	}

	if (!maybe_local(&p.key) && !maybe_nat_reply(&p.key)) {
		struct config *scfg = get_config();
		if (scfg && scfg->snat_rules)
			return snat_out(ctx, &p, scfg);
		count(CNT_PASS_NOT_OURS);
		return XDP_PASS;
	}
	struct config *cfg = get_config();
	if (!cfg)
		return XDP_PASS;
	__u64 now = mbx_now();

	struct conn *c = bpf_map_lookup_elem(&conns, &p.key);
	if (c) {
		if (!conn_alive(cfg, c, &p.key, now)) {
			c = 0;
		} else if (!(c->flags & CONN_F_REPLY) && is_new_syn(&p) &&
			   p.key.proto == IPPROTO_TCP &&
			   (c->state == TCPS_TIME_WAIT || c->state == TCPS_CLOSE || real_unusable(c->real_id))) {
			/* The client reuses its port: schedule afresh, as IPVS's conn_reuse_mode. */
			conn_delete(c, &p.key);
			count(CNT_CONN_REUSE);
			c = 0;
		}
	}
	if (c) {
		/* Refresh at ~1 ms granularity: no cache-line write per packet. */
		if ((__s64)(now - c->last_seen) > (1 << 20))
			c->last_seen = now;
		conn_track(cfg, c, &p);
	} else {
		struct svc_key sk = {};
		sk.addr[0] = p.key.daddr;
		sk.port = p.key.dport;
		sk.proto = p.key.proto;
		sk.family = AF_INET_;
		struct svc *s = bpf_map_lookup_elem(&services, &sk);
		if (!s) {
			if (cfg->lb6 & LB6_NAT64)
				return VERDICT_LB6; /* perhaps a NAT64 reply */
			count(CNT_PASS_NOT_OURS);
			return XDP_PASS;
		}
		if (!is_new_syn(&p)) {
			count(CNT_DROP_NO_CONN);
			return XDP_DROP;
		}
		/* The new entry's copy lives in per-CPU scratch, not on the
		 * stack: the transmit path below needs the room. */
		__u32 zero = 0;
		struct conn *fresh = bpf_map_lookup_elem(&conn_scratch, &zero);
		if (!fresh)
			return XDP_DROP;
		int v = mbx_new_conn(&p.key, s, cfg, now, fresh);
		if (v != NEW_CONN_OK)
			return v;
		c = fresh;
	}
	account(c, &p);
	if (p.frag)
		frag_remember(&p);
	/* The fast path transmits inline (a call into mbx_xmit costs ~30 ns
	 * per packet); the rare paths share the global function. */
	if (c->flags & CONN_F_DR)
		return xmit_dr(ctx, &p, c, cfg, now, 1);
	if (c->flags & CONN_F_TUN)
		return xmit_tunnel(ctx, &p, c, cfg, now, 1);
	return xmit_nat(ctx, &p, c, cfg, now, 0);
}

SEC("xdp")
int mbx_xdp(struct xdp_md *ctx)
{
	__u32 ifindex = ctx->ingress_ifindex;
	struct capture_cfg *cap = capture_on(ifindex);
	int matched = 0;
	if (cap) {
		/* The filter sees the packet as received; its exit record (after
		 * translation) follows it even when the rewrite no longer matches. */
		matched = mbx_capture_filter(ctx);
		if (matched && (cap->points & CAPTURE_ENTRY))
			capture_emit(ctx, cap, CAPTURE_ENTRY, 0);
	}
	/* The stream monitor sees the packet as received. Passive, it never
	 * changes its fate; inline, it decides it (inline.h). */
	struct mon_iface *mi = monitor_on(ifindex);
	if (mi && (mi->flags & MON_F_INLINE)) {
		int v = mbx_inline(ctx);
		count_verdict(ifindex, v);
		if (cap && (cap->points & CAPTURE_EXIT) && matched)
			capture_emit(ctx, cap, CAPTURE_EXIT, v);
		return v;
	}
	if (mi)
		mbx_monitor(ctx, 0);
	struct brick_engine *engine = brick_engine_on(ifindex);
	int verdict = XDP_PASS;
	if (!engine || !(engine->flags & ENGINE_F_NO_LB))
		verdict = process(ctx);
	if (verdict == VERDICT_LB6) {
		/* An IPv6 service's packet (or a NAT64 reply): mbx_lb6 decides,
		 * counts and captures it as the code below would. */
		if (cap) {
			__u32 zero = 0;
			struct brick_scratch *s = bpf_map_lookup_elem(&brick_handoff, &zero);
			if (s)
				s->capture_matched = matched;
		}
		bpf_tail_call(ctx, &lb6_prog, 0);
		count(CNT_PASS_NOT_OURS);
		verdict = XDP_PASS;
	}
	if (verdict == XDP_PASS && engine) {
		/* What the load balancer leaves goes to the bricks (bricks.h). */
		if (cap) {
			__u32 zero = 0;
			struct brick_scratch *s = bpf_map_lookup_elem(&brick_handoff, &zero);
			if (s)
				s->capture_matched = matched;
		}
		bpf_tail_call(ctx, &brick_prog, 0);
	}
	count_verdict(ifindex, verdict);
	if (cap && (cap->points & CAPTURE_EXIT) && (matched || mbx_capture_filter(ctx)))
		capture_emit(ctx, cap, CAPTURE_EXIT, verdict);
	return verdict;
}

/* The brick engine (bricks.h), reached by tail call from mbx_xdp. */
SEC("xdp")
int mbx_bricks(struct xdp_md *ctx)
{
	__u32 ifindex = ctx->ingress_ifindex;
	struct brick_engine *engine = brick_engine_on(ifindex);
	int verdict = engine ? brick_walk(ctx, engine) : XDP_PASS;
	count_verdict(ifindex, verdict);
	struct capture_cfg *cap = capture_on(ifindex);
	if (cap && (cap->points & CAPTURE_EXIT)) {
		__u32 zero = 0;
		struct brick_scratch *s = bpf_map_lookup_elem(&brick_handoff, &zero);
		if (s && s->capture_matched)
			capture_emit(ctx, cap, CAPTURE_EXIT, verdict);
	}
	return verdict;
}

/* A datagram Go reassembled from the IP fragments mbx_monitor sent it,
 * run by Go with BPF_PROG_TEST_RUN (ingress_ifindex: where the fragments
 * arrived) through the same tracker. Never attached to an interface. */
SEC("xdp")
int mbx_monitor_reinject(struct xdp_md *ctx)
{
	mbx_monitor(ctx, 1);
	return XDP_DROP;
}

/* mbx_new_conn's twin for IPv6 services: the same scheduling (pick_real),
 * then DR/tunnel (one entry) or Full-NAT to a LIP of the real server's
 * family (IPv6, or IPv4 for NAT64) and a local port, probed as for IPv4. */
__attribute__((noinline)) int mbx_new_conn6(const struct flow6 *f, const struct svc *s,
					    const struct config *cfg, __u64 now, struct conn6 *fc)
{
	if (!f || !s || !cfg || !fc)
		return XDP_DROP;
	const struct flow_key6 *key = &f->key;
	if (s->sched_len == 0) {
		count(CNT_DROP_NO_REAL);
		return XDP_DROP;
	}
	__u32 h = flow_hash6(key, f->daddr, cfg->hash_seed);
	__u32 real_id;
	int pv = pick_real(s, cfg, h, fold6(key->saddr), fold6(f->daddr), now, &real_id);
	if (pv != PICK_OK)
		return pv;
	struct real *rs = bpf_map_lookup_elem(&reals, &real_id);
	if (!rs)
		return XDP_DROP;
	fc->real_id = real_id;
	fc->svc_id = s->id;
	fc->state = key->proto == IPPROTO_TCP ? cfg->fsm[DIR_INPUT][0][TCPS_NONE] : UDP_STATE;
	fc->last_seen = now;
	fc->nh_out = 0;
	fc->flow_hash = h;
	if (rs->mode == FWD_DR || rs->mode == FWD_TUN) {
		__builtin_memcpy(fc->saddr, key->saddr, 16);
		__builtin_memcpy(fc->daddr, rs->addr, 16);
		fc->sport = key->sport;
		fc->dport = key->dport;
		fc->flags = rs->mode == FWD_DR ? CONN_F_DR : CONN_F_TUN;
		fc->out_family = AF_INET6_;
		fc->twin_lid = LID_NONE; /* replies do not come back through mbx */
		fc->csum_l4 = 0;
		goto insert;
	}
	if (rs->mode != FWD_FNAT) {
		count(CNT_DROP_NO_REAL); /* Go refuses other modes for IPv6 */
		return XDP_DROP;
	}
	if (s->laddr_len == 0) {
		count(CNT_DROP_NO_LADDR);
		return XDP_DROP;
	}
	__u32 range = (__u32)cfg->port_hi - cfg->port_lo + 1;
	__u8 out = rs->family == AF_INET_ ? AF_INET_ : AF_INET6_;

	/* The reply comes from the real server to a LIP and port, in the
	 * real server's family. fc holds the reply entry first (nat.h). */
	__u32 zero = 0;
	struct flow6 *r = bpf_map_lookup_elem(&key6_scratch, &zero);
	if (!r)
		return XDP_DROP;
	struct flow_key6 *rk = &r->key;
	__builtin_memset(r, 0, sizeof(*r));
	__builtin_memcpy(rk->saddr, rs->addr, 16);
	rk->sport = rs->port ? rs->port : key->dport;
	rk->proto = key->proto;
	rk->family = out;
	__builtin_memcpy(fc->saddr, f->daddr, 16);
	__builtin_memcpy(fc->daddr, key->saddr, 16);
	fc->sport = key->dport;
	fc->dport = key->sport;
	fc->flags = CONN_F_REPLY;
	fc->out_family = AF_INET6_;
	fc->twin_lid = key->lid;

	int ok = 0;
#pragma clang loop unroll(disable)
	for (int i = 0; i < PORT_TRIES; i++) {
		__u32 cand = h + (__u32)i * PORT_CAND_STEP;
		__u32 li = s->laddr_base + cand % s->laddr_len;
		struct laddr *la = bpf_map_lookup_elem(&laddrs, &li);
		if (!la)
			break;
		__builtin_memcpy(r->daddr, la->addr, 16);
		rk->lid = local6_find(r->daddr, out);
		if (rk->lid == LID_NONE)
			break; /* not placed in local6 (Go places every LIP first) */
		rk->dport = bpf_htons((__u16)(cfg->port_lo + (cand >> 8) % range));
		conn6_set_csum(fc, rk, r->daddr);
		if (bpf_map_update_elem(&conns6, rk, fc, BPF_NOEXIST) == 0) {
			ok = 1;
			break;
		}
		struct conn6 *old = bpf_map_lookup_elem(&conns6, rk);
		if (old && !conn6_alive(cfg, old, rk, now) &&
		    bpf_map_update_elem(&conns6, rk, fc, BPF_NOEXIST) == 0) {
			ok = 1;
			break;
		}
		__u64 *cf = bpf_map_lookup_elem(&laddr_conflicts, &li);
		if (cf)
			*cf += 1;
	}
	if (!ok) {
		count(CNT_DROP_NO_PORT);
		return XDP_DROP;
	}
	__builtin_memcpy(fc->saddr, r->daddr, 16);
	__builtin_memcpy(fc->daddr, rk->saddr, 16);
	fc->sport = rk->dport;
	fc->dport = rk->sport;
	fc->flags = 0;
	fc->out_family = out;
	fc->twin_lid = rk->lid;
	fc->nh_out = 0;
	conn6_set_csum(fc, key, f->daddr);
insert:
	bpf_map_update_elem(&conns6, key, fc, BPF_ANY);
	struct real_stats *st = bpf_map_lookup_elem(&stats, &real_id);
	if (st)
		st->conns++;
	count(CNT_CONN_NEW);
	return NEW_CONN_OK;
}

/* frag6_place gives a later IPv6 fragment its first one's ports, so it
 * follows that flow (frag.h's policy): PLACED, or the verdict for one that
 * cannot be placed: DROP when it is for a VIP/LIP (the kernel would
 * reassemble it for a local socket that does not exist), else PASS. Not
 * inlined: its key stays off process6's frame. */
#define PLACED -1
static __attribute__((noinline)) int frag6_place(struct pkt6 *p)
{
	if (frag6_ports(p) == 0)
		return PLACED;
	if (p->key.lid != LID_NONE) {
		count(CNT_DROP_FRAGMENT);
		return XDP_DROP;
	}
	count(CNT_PASS_NOT_OURS);
	return XDP_PASS;
}

/* process() for IPv6 services and NAT64 replies. */
static __always_inline int process6(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct pkt6 p = {};

	int r = parse6(data, data_end, &p);
	if (r == PARSE_FRAGMENT && p.ip6) {
		int fv = frag6_place(&p);
		if (fv != PLACED)
			return fv;
		r = PARSE_OK; /* on with its flow; p.l4 stays NULL */
	}
	if (r == PARSE_OTHER_L4 && p.eth && p.eth->h_proto == bpf_htons(ETH_P_IP)) {
		/* From mbx_xdp: an ICMPv4 error no IPv4 connection claimed. */
		struct config *icfg = get_config();
		if (icfg) {
			int v = icmp46_error(ctx, icfg, mbx_now());
			if (v != XDP_PASS)
				return v;
		}
		/* (The call may have moved the packet: no pointer into it after.) */
		count(CNT_PASS_NOT_OURS);
		return XDP_PASS;
	}
	if (r == PARSE_OTHER_L4 && p.eth && p.eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		/* An ICMPv6 error about a connection (icmp6_error), or the
		 * kernel's (neighbour discovery, echo, ...). */
		struct config *icfg = get_config();
		if (icfg) {
			__u64 inow = mbx_now();
			int v = icmp6_error(ctx, icfg, inow);
			if (v == XDP_PASS && (icfg->lb6 & LB6_NAT64))
				v = icmp64_error(ctx, icfg, inow);
			if (v != XDP_PASS)
				return v;
		}
	}
	if (r != PARSE_OK) {
		if (r == PARSE_BAD_L4 && p.key.family == AF_INET6_ && p.key.lid != LID_NONE) {
			count(CNT_DROP_MALFORMED);
			return XDP_DROP;
		}
		count(r == PARSE_BAD_L3 || r == PARSE_BAD_L4 ? CNT_PASS_MALFORMED : CNT_PASS_NOT_OURS);
		return XDP_PASS;
	}
	if (p.key.lid == LID_NONE) {
		/* Not to a VIP or LIP: no connection or service can be its. */
		count(CNT_PASS_NOT_OURS);
		return XDP_PASS;
	}
	struct config *cfg = get_config();
	if (!cfg)
		return XDP_PASS;
	__u64 now = mbx_now();

	struct conn6 *c = bpf_map_lookup_elem(&conns6, &p.key);
	if (c) {
		if (!conn6_alive(cfg, c, &p.key, now)) {
			c = 0;
		} else if (!(c->flags & CONN_F_REPLY) && is_new_syn6(&p) && p.key.proto == IPPROTO_TCP &&
			   (c->state == TCPS_TIME_WAIT || c->state == TCPS_CLOSE || real_unusable(c->real_id))) {
			conn6_delete(c, &p.key);
			count(CNT_CONN_REUSE);
			c = 0;
		}
	}
	if (c) {
		if ((__s64)(now - c->last_seen) > (1 << 20))
			c->last_seen = now;
		if (p.l4)
			conn6_track(cfg, c, &p);
		else
			count(CNT_FRAGMENT);
	} else {
		if (!p.l4) {
			count(CNT_DROP_FRAGMENT); /* a later fragment whose connection is gone */
			return XDP_DROP;
		}
		if (!p.ip6) {
			count(CNT_PASS_NOT_OURS); /* IPv4, and not a NAT64 reply */
			return XDP_PASS;
		}
		struct svc_key sk = {};
		__builtin_memcpy(sk.addr, p.daddr, 16);
		sk.port = p.key.dport;
		sk.proto = p.key.proto;
		sk.family = AF_INET6_;
		struct svc *s = bpf_map_lookup_elem(&services, &sk);
		if (!s) {
			count(CNT_PASS_NOT_OURS);
			return XDP_PASS;
		}
		if (!is_new_syn6(&p)) {
			count(CNT_DROP_NO_CONN);
			return XDP_DROP;
		}
		__u32 zero = 0;
		struct conn6 *fresh = bpf_map_lookup_elem(&conn6_scratch, &zero);
		if (!fresh)
			return XDP_DROP;
		int v = mbx_new_conn6(&p.f, s, cfg, now, fresh);
		if (v != NEW_CONN_OK)
			return v;
		c = fresh;
	}
	account6(c, &p);
	if (p.frag == FRAG_FIRST)
		frag6_remember(&p);
	if (c->flags & CONN_F_DR)
		return xmit_dr6(ctx, &p, c, cfg, now);
	if (c->flags & CONN_F_TUN)
		return xmit_tunnel6(ctx, &p, c, cfg, now);
	return xmit_fnat6(ctx, &p, c, cfg, now);
}

/* The IPv6 load balancer (lb6.h), reached by tail call from mbx_xdp. */
SEC("xdp")
int mbx_lb6(struct xdp_md *ctx)
{
	__u32 ifindex = ctx->ingress_ifindex;
	int verdict = process6(ctx);
	struct brick_engine *engine = brick_engine_on(ifindex);
	if (verdict == XDP_PASS && engine)
		bpf_tail_call(ctx, &brick_prog, 0);
	count_verdict(ifindex, verdict);
	struct capture_cfg *cap = capture_on(ifindex);
	if (cap && (cap->points & CAPTURE_EXIT)) {
		__u32 zero = 0;
		struct brick_scratch *s = bpf_map_lookup_elem(&brick_handoff, &zero);
		if (s && s->capture_matched)
			capture_emit(ctx, cap, CAPTURE_EXIT, verdict);
	}
	return verdict;
}
