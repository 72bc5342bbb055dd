/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* monitor.h: the stream monitor's tracker in XDP, the twin of
 * monitor/tracker.go (segment, stream.add/hold/drain): both sides' TCP
 * states as mOS simulates them, sequence tracking and retransmission
 * detection. Each packet's events are collected while the connection's
 * spin lock is held and then sent to Go in one ring-buffer record, only
 * when Go wants one of them (mon_iface.want); with MON_F_COPY the frame
 * rides along so Go can reassemble the payload (NEW_DATA, Peek). Flows
 * nobody asked about never leave the kernel.
 *
 * Connection state is one shared entry per connection (not per-CPU): the
 * two directions of a flow reach XDP on different CPUs (RSS is not
 * symmetric), so both must see one state; the spin lock keeps them in step.
 * IP fragments go to Go whole (MON_REC_FRAGMENT): Go reassembles the
 * datagram and runs it through this same tracker with BPF_PROG_TEST_RUN
 * (mbx_monitor_reinject), so fragmented flows are tracked like the rest
 * and only fragments cost work in Go. */
#ifndef MBX_MONITOR_H
#define MBX_MONITOR_H

#include <linux/ipv6.h>
#include "maps.h"
#include "clock.h"
#include "parse.h"

/* Event numbers: monitor.Event's. */
#define MON_EV_PKT_IN 1
#define MON_EV_CONN_START 2
#define MON_EV_REXMIT 3
#define MON_EV_STATE_CHANGE 4
#define MON_EV_CONN_END 5
#define MON_EV_NEW_DATA 6
#define MON_EV_ORPHAN 7
#define MON_EV_ERROR 8
#define MON_EV_DATA 15 /* marker: the payload goes to the stream here (Go raises NEW_DATA) */

/* An event in a record: type | hook | side | new state << 8. */
#define MON_HOOK_RECV 0x10
#define MON_SIDE_SERVER 0x20

/* TCP states: monitor.TCPState's. */
#define MS_CLOSED 0
#define MS_LISTEN 1
#define MS_SYN_SENT 2
#define MS_SYN_RCVD 3
#define MS_ESTABLISHED 4
#define MS_FIN_WAIT_1 5
#define MS_FIN_WAIT_2 6
#define MS_CLOSING 7
#define MS_TIME_WAIT 8
#define MS_CLOSE_WAIT 9
#define MS_LAST_ACK 10

#define MON_END_FIN 1
#define MON_END_RST 2
#define MON_END_TIMEOUT 3 /* set by Go's sweeper */

#define MON_MAX_EVENTS 16
#define MON_HOLDS 4 /* out-of-order ranges held per side (Go: a byte budget only) */
#define MON_SNAP 2048

#define MON_F_ON 0x1
#define MON_F_COPY 0x2 /* records carry the frame */
#define MON_F_INLINE 0x4 /* inline to mon_iface.peer (inline.h), no tracking here */

/* mon_rec.kind */
#define MON_REC_PACKET 0
#define MON_REC_FRAGMENT 1 /* an IP fragment, for Go to reassemble (no events) */
#define MON_REC_REINJECTED 2 /* a datagram Go reassembled (mbx_monitor_reinject) */

#define MON_MPLS_LABELS 4 /* labels stepped over at most; deeper stacks are orphans */


/* Connection key: the endpoints in a fixed order (a <= b), VLAN IDs. */
struct mon_key {
	__u32 a[4];
	__u32 b[4];
	__u16 aport;
	__u16 bport;
	__u16 vlan[2];
	__u8 nvlan;
	__u8 ipv6;
	__u8 pad[2];
};

struct mon_side {
	__u64 packets;
	__u64 bytes;
	__u64 delivered; /* in-order stream bytes */
	__u64 rexmits;
	__u32 isn;
	__u32 fin_seq;
	__u32 nxt;
	__u32 held_bytes;
	__u32 hold_lo[MON_HOLDS];
	__u32 hold_hi[MON_HOLDS];
	__u8 state;
	__u8 flags;
	__u8 syn_seen;
	__u8 fin_seen;
	__u8 started;
	__u8 nhold;
	__u8 pad[2];
};

struct mon_conn {
	struct bpf_spin_lock lock;
	__u32 pad0;
	__u64 id; /* 0: not yet initialised */
	__u64 start;
	__u64 last; /* mbx_now() (clock.h) */
	__u64 end;
	__u8 client_is_b;
	__u8 end_reason; /* 0 while open */
	__u8 midstream;
	__u8 pad[5];
	struct mon_side side[2]; /* [0] client, [1] server */
};

struct mon_iface {
	__u32 ifindex;
	__u32 flags;    /* MON_F_* */
	__u32 want;     /* 1 << event: what Go has handlers for */
	__u32 bufsize;  /* out-of-order bytes held per side at most */
	__u32 peer;     /* MON_F_INLINE: where packets leave */
	__u32 sample;   /* nonzero: track the connections whose key hashes below it */
};

struct mon_side_snap {
	__u64 packets;
	__u64 bytes;
	__u64 delivered;
	__u64 rexmits;
};

/* One ring-buffer record: a packet's events; the frame follows with
 * MON_F_COPY. */
struct mon_rec {
	__u64 conn_id;
	__u64 ts;    /* bpf_ktime_get_ns */
	__u64 start; /* the connection's first packet (coarse ns) */
	struct mon_key key;
	__u32 seq;
	__u32 ack;
	__u32 data_seq; /* sequence number of the payload's first byte */
	__u32 ifindex;
	__u16 pkt_len;
	__u16 cap_len;
	__u16 payload_off; /* in the copied frame */
	__u16 payload_len;
	__u8 tcp_flags;
	__u8 from_b;   /* the sender is key.b */
	__u8 client_is_b;
	__u8 kind; /* MON_REC_* */
	__u8 nev;
	__u8 end_reason;
	__u8 midstream;
	__u8 states[2];
	__u8 pad[7];
	__u16 ev[MON_MAX_EVENTS];
	struct mon_side_snap sides[2];
};

struct mon_rec_data {
	struct mon_rec h;
	__u8 frame[MON_SNAP];
};

/* Only for bpf2go (-type mon_rec): records live in the ring buffer. */
const struct mon_rec *mon_rec_type __attribute__((unused));

struct mon_stats {
	__u64 packets;
	__u64 tcp;
	__u64 orphans;
	__u64 filtered;
	__u64 fragments;
	__u64 malformed;
	__u64 conns;
	__u64 records;
	__u64 lost; /* records the ring buffer had no room for */
	__u64 full; /* new connections the table had no room for */
	/* Inline interfaces (inline.h). */
	__u64 inl_to_go;
	__u64 inl_forwarded;
	__u64 inl_dropped;
	__u64 inl_no_socket; /* for Go, but no socket was there */
	__u64 frag_big; /* fragments over MON_SNAP bytes: not sent to Go */
};

/* A plain hash: spin locks are not allowed in LRU maps. Go's sweeper
 * removes ended and idle connections; when the table is full, new
 * connections are not tracked (mon_stats.full). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 18);
	__type(key, struct mon_key);
	__type(value, struct mon_conn);
} mon_conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, struct mon_iface);
} mon_ifaces SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 24);
} mon_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mon_stats);
} mon_stat SEC(".maps");

/* A zeroed value to create connections from (never written). Plain
 * bytes: a value with a spin lock cannot be passed to a map update. */
struct mon_conn_bytes {
	__u8 b[sizeof(struct mon_conn)];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mon_conn_bytes);
} mon_zero SEC(".maps");

/* Connection ids. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} mon_ids SEC(".maps");

/* Connections Go stopped monitoring (Conn.StopMonitoring on both sides):
 * id -> 1. Looked up only when a record would be sent. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 16);
	__type(key, __u64);
	__type(value, __u8);
} mon_quiet SEC(".maps");

/* Replaced by the monitor's stream filter (filter.XDPFunction) when one is
 * set; must stay a global function. Built in: every connection. */
__attribute__((noinline)) int mbx_monitor_filter(struct xdp_md *ctx)
{
	volatile int match = 1;
	return ctx ? match : 0;
}

/* mon_sample_hash spreads connection keys (already in a fixed order, so
 * both directions agree) over 32 bits: independent multiplies, one fold. */
static __always_inline __u32 mon_sample_hash(const struct mon_key *k)
{
	__u64 h = (__u64)k->a[3] * 0xa0761d6478bd642fULL + (__u64)k->b[3] * 0xe7037ed1a0b428dbULL +
		  ((__u64)k->aport | (__u64)k->bport << 16) * 0x8ebc6af09c88c6e3ULL +
		  (__u64)(k->a[0] ^ k->a[1] ^ k->a[2]) * 0x589965cc75374cc3ULL +
		  (__u64)(k->b[0] ^ k->b[1] ^ k->b[2]) * 0x1d8e4e27c47d124fULL;
	h ^= h >> 32;
	h *= 0x9e3779b97f4a7c15ULL;
	return h >> 32;
}

static __always_inline struct mon_iface *monitor_on(__u32 ifindex)
{
	__u32 slot = ifindex & 0xff;
	struct mon_iface *mi = bpf_map_lookup_elem(&mon_ifaces, &slot);
	if (!mi || !(mi->flags & MON_F_ON) || mi->ifindex != ifindex)
		return 0;
	return mi;
}

/* The parsed packet. */
struct mon_pkt {
	struct mon_key key;
	__u32 seq;
	__u32 ack;
	__u16 payload_off;
	__u16 payload_len;
	__u8 flags;
	__u8 from_b;
	__u8 tcp; /* 1: a TCP segment; 0: an orphan */
	__u8 frag;
	__u8 bad;
};

static __always_inline int mon_addr_less(const __u32 *x, const __u32 *y)
{
#pragma unroll
	for (int i = 0; i < 4; i++) {
		__u32 a = bpf_ntohl(x[i]), b = bpf_ntohl(y[i]);
		if (a != b)
			return a < b;
	}
	return 0;
}

/* mon_parse: Ethernet, two VLAN tags at most, PPPoE or MPLS, IPv4 or IPv6
 * (with hop, routing and destination options headers), TCP. */
static __always_inline void mon_parse(void *data, void *data_end, struct mon_pkt *p)
{
	__u32 src[4] = {}, dst[4] = {};
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end) {
		p->bad = 1;
		return;
	}
	__u16 proto;
	void *l3 = vlan_walk(eth, data_end, &proto, p->key.vlan, &p->key.nvlan);
	if (!l3) {
		p->bad = 1;
		return;
	}
	if (proto == bpf_htons(ETH_P_PPP_SES)) {
		/* PPPoE session: 6-byte header, then PPP's protocol. */
		__u16 *ppp = l3 + 6;
		if ((void *)(ppp + 1) > data_end) {
			p->bad = 1;
			return;
		}
		if (*ppp == bpf_htons(0x0021))
			proto = bpf_htons(ETH_P_IP);
		else if (*ppp == bpf_htons(0x0057))
			proto = bpf_htons(ETH_P_IPV6);
		else
			return; /* not IP: an orphan */
		l3 = ppp + 1;
	}
	if (proto == bpf_htons(ETH_P_MPLS_UC) || proto == bpf_htons(ETH_P_MPLS_MC)) {
		/* Labels up to the bottom of the stack; the IP version follows. */
		int bos = 0;
#pragma unroll
		for (int i = 0; i < MON_MPLS_LABELS; i++) {
			__u8 *lbl = l3;
			if ((void *)(lbl + 4) > data_end) {
				p->bad = 1;
				return;
			}
			bos = lbl[2] & 1;
			l3 = lbl + 4;
			if (bos)
				break;
		}
		__u8 *ver = l3;
		if (!bos)
			return; /* deeper than MON_MPLS_LABELS: an orphan */
		if ((void *)(ver + 1) > data_end) {
			p->bad = 1;
			return;
		}
		if (*ver >> 4 == 4)
			proto = bpf_htons(ETH_P_IP);
		else if (*ver >> 4 == 6)
			proto = bpf_htons(ETH_P_IPV6);
		else
			return;
	}
	__u8 l4proto;
	void *l4;
	__u32 l4len;
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = l3;
		if ((void *)(ip + 1) > data_end || ip->version != 4 || ip->ihl < 5) {
			p->bad = 1;
			return;
		}
		__u32 hlen = ip->ihl * 4;
		__u16 tot = bpf_ntohs(ip->tot_len);
		if (tot < hlen || (void *)ip + tot > data_end) {
			p->bad = 1;
			return;
		}
		if (ip->frag_off & bpf_htons(0x3fff)) {
			p->frag = 1;
			return;
		}
		src[3] = ip->saddr;
		dst[3] = ip->daddr;
		l4proto = ip->protocol;
		l4 = (void *)ip + hlen;
		l4len = tot - hlen;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = l3;
		if ((void *)(ip6 + 1) > data_end) {
			p->bad = 1;
			return;
		}
		__u32 plen = bpf_ntohs(ip6->payload_len);
		l4 = ip6 + 1;
		if (l4 + plen > data_end) {
			p->bad = 1;
			return;
		}
		__builtin_memcpy(src, &ip6->saddr, 16);
		__builtin_memcpy(dst, &ip6->daddr, 16);
		p->key.ipv6 = 1;
		l4proto = ip6->nexthdr;
		void *end = l4 + plen;
#pragma unroll
		for (int i = 0; i < 4; i++) {
			if (l4proto == IPPROTO_FRAGMENT) {
				p->frag = 1;
				return;
			}
			if (l4proto != IPPROTO_HOPOPTS && l4proto != IPPROTO_ROUTING && l4proto != IPPROTO_DSTOPTS)
				break;
			__u8 *ext = l4;
			if ((void *)(ext + 2) > data_end) {
				p->bad = 1;
				return;
			}
			l4proto = ext[0];
			l4 = ext + (ext[1] + 1) * 8;
		}
		if (l4 > end) {
			p->bad = 1;
			return;
		}
		l4len = end - l4;
	} else {
		return; /* not IP: an orphan */
	}
	if (l4proto != IPPROTO_TCP)
		return;
	struct tcphdr *th = l4;
	if ((void *)(th + 1) > data_end || l4len < sizeof(*th)) {
		p->bad = 1;
		return;
	}
	__u32 thlen = th->doff * 4;
	if (th->doff < 5 || thlen > l4len) {
		p->bad = 1;
		return;
	}
	p->tcp = 1;
	p->flags = ((__u8 *)th)[13];
	p->seq = bpf_ntohl(th->seq);
	p->ack = bpf_ntohl(th->ack_seq);
	p->payload_off = (void *)th + thlen - data;
	p->payload_len = l4len - thlen;
	__u16 sport = bpf_ntohs(th->source), dport = bpf_ntohs(th->dest);
	int swap = mon_addr_less(dst, src) ||
		   (!mon_addr_less(src, dst) && dport < sport);
	p->from_b = swap;
	if (swap) {
		__builtin_memcpy(p->key.a, dst, 16);
		__builtin_memcpy(p->key.b, src, 16);
		p->key.aport = dport;
		p->key.bport = sport;
	} else {
		__builtin_memcpy(p->key.a, src, 16);
		__builtin_memcpy(p->key.b, dst, 16);
		p->key.aport = sport;
		p->key.bport = dport;
	}
}

/* A fresh load from map memory: the verifier then keeps no knowledge of
 * the value in a register across the state machine's branches, which
 * would otherwise split every later path in two (no state pruning). */
#define MON_FRESH(x) (*(volatile typeof(x) *)&(x))

/* The events of one packet, in the order they are raised. */
struct mon_evs {
	__u16 ev[MON_MAX_EVENTS];
	__u32 n;
	__u32 mask; /* 1 << type of each */
	__u32 rexmit;
	__u32 progressed;
};

static __always_inline void mon_raise(struct mon_evs *e, __u16 type, __u16 hook, int side, __u8 state)
{
	__u32 i = e->n;
	if (i >= MON_MAX_EVENTS)
		return;
	e->ev[i] = type | hook | ((side & 1) << 5) | ((__u16)state << 8);
	e->n = i + 1;
	e->mask |= 1u << (type == MON_EV_DATA ? MON_EV_NEW_DATA : type);
}

static __always_inline void mon_raise_both(struct mon_evs *e, __u16 type, int sender)
{
	mon_raise(e, type, 0, sender, 0);
	mon_raise(e, type, MON_HOOK_RECV, !sender, 0);
}

static __always_inline void mon_set_state(struct mon_conn *c, struct mon_evs *e, int side, __u8 st, __u16 hook)
{
	struct mon_side *s = &c->side[side & 1];
	if (MON_FRESH(s->state) == st)
		return;
	s->state = st;
	mon_raise(e, MON_EV_STATE_CHANGE, hook, side, st);
}

static __always_inline int seq_ge(__u32 a, __u32 b) { return (__s32)(a - b) >= 0; }

/* stream.drain: deliver held ranges the stream has reached. */
static __always_inline void mon_drain(struct mon_side *s, struct mon_evs *e)
{
#pragma unroll
	for (int pass = 0; pass < MON_HOLDS; pass++) {
		e->progressed = 0;
#pragma unroll
		for (int i = 0; i < MON_HOLDS; i++) {
			if (i >= MON_FRESH(s->nhold))
				break;
			__u32 lo = s->hold_lo[i], hi = s->hold_hi[i], nxt = s->nxt;
			if ((__s32)(lo - nxt) > 0)
				continue;
			if ((__s32)(hi - nxt) > 0) {
				s->delivered += hi - nxt;
				s->nxt = hi;
			}
			s->held_bytes -= hi - lo;
			__u32 last = (s->nhold - 1) & (MON_HOLDS - 1);
			s->hold_lo[i] = s->hold_lo[last];
			s->hold_hi[i] = s->hold_hi[last];
			s->nhold--;
			e->progressed = 1;
		}
		if (!MON_FRESH(e->progressed))
			break;
	}
}

/* stream.add: a segment's payload; returns whether any of it was seen
 * before (a retransmission). */
static __always_inline int mon_data(struct mon_side *s, struct mon_evs *e, int from, __u32 seq, __u32 len,
				    __u32 bufsize)
{
	if (!s->started) {
		s->started = 1;
		s->nxt = seq;
	}
	__u32 end = seq + len;
	__s32 d = seq - s->nxt;
	if (d > 0) {
		/* stream.hold */
		int rexmit = 0;
#pragma unroll
		for (int i = 0; i < MON_HOLDS; i++) {
			if (i >= s->nhold)
				break;
			__u32 lo = s->hold_lo[i], hi = s->hold_hi[i];
			if ((__s32)(end - lo) <= 0 || (__s32)(hi - seq) <= 0)
				continue;
			rexmit = 1;
			if ((__s32)(seq - lo) >= 0 && (__s32)(hi - end) >= 0)
				return 1;
		}
		if (s->held_bytes + len > bufsize || s->nhold >= MON_HOLDS) {
			mon_raise(e, MON_EV_ERROR, MON_HOOK_RECV, !from, 0);
			return rexmit;
		}
		__u32 n = s->nhold & (MON_HOLDS - 1);
		s->hold_lo[n] = seq;
		s->hold_hi[n] = end;
		s->nhold++;
		s->held_bytes += len;
		return rexmit;
	}
	if ((__s32)(end - s->nxt) <= 0)
		return 1;
	s->delivered += end - s->nxt;
	s->nxt = end;
	mon_drain(s, e);
	return d < 0;
}

static __always_inline void mon_end(struct mon_conn *c, struct mon_evs *e, __u8 reason, int from)
{
	c->end_reason = reason;
	c->end = c->last;
	/* stream.flush: what was held past holes is delivered at the end. */
#pragma unroll
	for (int s = 0; s < 2; s++) {
		c->side[s].delivered += c->side[s].held_bytes;
		c->side[s].held_bytes = 0;
		c->side[s].nhold = 0;
	}
	mon_raise_both(e, MON_EV_CONN_END, from);
}

static __always_inline int mon_done(__u8 s) { return s == MS_TIME_WAIT || s == MS_CLOSED; }

/* monitor.segment: one TCP packet of a live connection. Flags are read
 * fresh at each test (MON_FRESH) to keep the verifier's paths few. */
static __always_inline void mon_segment(struct mon_conn *c, struct mon_pkt *p, struct mon_evs *e,
					__u64 len, __u64 now, __u32 bufsize, int from)
{
	int to = !from;
	struct mon_side *snd = &c->side[from & 1];
	struct mon_side *rcv = &c->side[to & 1];
	snd->packets++;
	snd->bytes += len;
	snd->flags |= p->flags;
	c->last = now;
	mon_raise_both(e, MON_EV_PKT_IN, from);

	e->rexmit = 0;
	if (MON_FRESH(p->flags) & TH_SYN) {
		if (snd->syn_seen && snd->isn == p->seq)
			e->rexmit = 1;
		snd->syn_seen = 1;
		snd->isn = p->seq;
		if (!snd->started) {
			snd->started = 1;
			snd->nxt = p->seq + 1;
		}
	}

	/* The sender's own stack. */
	__u8 sar = MON_FRESH(p->flags) & (TH_SYN | TH_ACK | TH_RST);
	if (sar & TH_RST) {
		mon_set_state(c, e, from, MS_CLOSED, 0);
	} else if (sar == TH_SYN) {
		__u8 st = MON_FRESH(snd->state);
		if (st == MS_CLOSED || st == MS_LISTEN)
			mon_set_state(c, e, from, MS_SYN_SENT, 0);
	} else if (sar == (TH_SYN | TH_ACK)) {
		__u8 st = MON_FRESH(snd->state);
		if (st == MS_LISTEN || st == MS_CLOSED || st == MS_SYN_SENT)
			mon_set_state(c, e, from, MS_SYN_RCVD, 0);
	}

	/* Payload and FIN occupy sequence space. */
	if (MON_FRESH(p->payload_len) > 0) {
		mon_raise(e, MON_EV_DATA, MON_HOOK_RECV, to, 0);
		__u32 syn = (MON_FRESH(p->flags) >> 1) & 1;
		if (mon_data(snd, e, from, p->seq + syn, p->payload_len, bufsize))
			e->rexmit = 1;
	}
	if ((MON_FRESH(p->flags) & (TH_FIN | TH_RST)) == TH_FIN) {
		__u32 syn = (MON_FRESH(p->flags) >> 1) & 1;
		__u32 fin = p->seq + p->payload_len + syn;
		if (snd->fin_seen && snd->fin_seq == fin && MON_FRESH(p->payload_len) == 0)
			e->rexmit = 1;
		snd->fin_seen = 1;
		snd->fin_seq = fin;
		__u8 st = MON_FRESH(snd->state);
		if (st == MS_CLOSE_WAIT)
			mon_set_state(c, e, from, MS_LAST_ACK, 0);
		else if (st != MS_FIN_WAIT_1 && st != MS_FIN_WAIT_2 && st != MS_CLOSING && st != MS_TIME_WAIT &&
			 st != MS_LAST_ACK && st != MS_CLOSED)
			mon_set_state(c, e, from, MS_FIN_WAIT_1, 0);
	}
	if (MON_FRESH(e->rexmit)) {
		snd->rexmits++;
		mon_raise_both(e, MON_EV_REXMIT, from);
	}

	/* The receiver's stack. */
	if (MON_FRESH(p->flags) & TH_RST) {
		mon_set_state(c, e, to, MS_CLOSED, MON_HOOK_RECV);
		mon_end(c, e, MON_END_RST, from);
		return;
	}
	sar = MON_FRESH(p->flags) & (TH_SYN | TH_ACK);
	if (sar == TH_SYN) {
		__u8 st = MON_FRESH(rcv->state);
		if (st == MS_LISTEN || st == MS_CLOSED)
			mon_set_state(c, e, to, MS_SYN_RCVD, MON_HOOK_RECV);
	} else if (sar == (TH_SYN | TH_ACK)) {
		if (MON_FRESH(rcv->state) == MS_SYN_SENT)
			mon_set_state(c, e, to, MS_ESTABLISHED, MON_HOOK_RECV);
	}
	if (MON_FRESH(p->flags) & TH_ACK) {
		if (MON_FRESH(rcv->state) == MS_SYN_RCVD && rcv->syn_seen && seq_ge(p->ack, rcv->isn + 1) &&
		    !(MON_FRESH(p->flags) & TH_SYN))
			mon_set_state(c, e, to, MS_ESTABLISHED, MON_HOOK_RECV);
		if (rcv->fin_seen && seq_ge(p->ack, rcv->fin_seq + 1)) {
			__u8 st = MON_FRESH(rcv->state);
			if (st == MS_FIN_WAIT_1)
				mon_set_state(c, e, to, (MON_FRESH(p->flags) & TH_FIN) ? MS_TIME_WAIT : MS_FIN_WAIT_2,
					      MON_HOOK_RECV);
			else if (st == MS_CLOSING)
				mon_set_state(c, e, to, MS_TIME_WAIT, MON_HOOK_RECV);
			else if (st == MS_LAST_ACK)
				mon_set_state(c, e, to, MS_CLOSED, MON_HOOK_RECV);
		}
	}
	if (MON_FRESH(p->flags) & TH_FIN) {
		__u8 st = MON_FRESH(rcv->state);
		if (st == MS_ESTABLISHED || st == MS_SYN_RCVD || st == MS_SYN_SENT)
			mon_set_state(c, e, to, MS_CLOSE_WAIT, MON_HOOK_RECV);
		else if (st == MS_FIN_WAIT_1)
			mon_set_state(c, e, to, MS_CLOSING, MON_HOOK_RECV);
		else if (st == MS_FIN_WAIT_2)
			mon_set_state(c, e, to, MS_TIME_WAIT, MON_HOOK_RECV);
	}
	if (mon_done(MON_FRESH(c->side[0].state)) && mon_done(MON_FRESH(c->side[1].state)))
		mon_end(c, e, MON_END_FIN, from);
}

/* monitor.newConn: roles and initial states from the first packet. */
static __always_inline void mon_init(struct mon_conn *c, const struct mon_pkt *p, __u64 id, __u64 now)
{
	__builtin_memset(&c->side, 0, sizeof(c->side));
	c->id = id;
	c->start = now;
	c->last = now;
	c->end = 0;
	c->end_reason = 0;
	c->midstream = 0;
	__u8 sar = p->flags & (TH_SYN | TH_ACK | TH_RST);
	if (sar == TH_SYN) {
		c->client_is_b = p->from_b;
		c->side[0].state = MS_CLOSED;
		c->side[1].state = MS_LISTEN;
	} else if (sar == (TH_SYN | TH_ACK)) {
		c->client_is_b = !p->from_b;
		c->side[0].state = MS_SYN_SENT;
		c->side[1].state = MS_LISTEN;
	} else {
		c->client_is_b = p->from_b;
		c->side[0].state = MS_ESTABLISHED;
		c->side[1].state = MS_ESTABLISHED;
		c->midstream = 1;
	}
}

/* Per-CPU scratch for one packet: on the stack these would exceed the
 * 512 bytes a call chain from mbx_xdp may use, and the verifier would
 * track the event count as a constant on every path (no state pruning). */
struct mon_scratch {
	struct mon_pkt p;
	struct mon_evs e;
	struct mon_rec snap;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mon_scratch);
} mon_scratch SEC(".maps");

static __always_inline struct mon_stats *mon_stats_get(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&mon_stat, &zero);
}

/* mon_emit sends a record for the packet's events. */
static __always_inline void mon_emit(struct xdp_md *ctx, struct mon_iface *mi, struct mon_stats *st,
				     struct mon_rec *snap, const struct mon_pkt *p, const struct mon_evs *e)
{
	if (snap->conn_id) {
		__u64 id = snap->conn_id;
		if (bpf_map_lookup_elem(&mon_quiet, &id))
			return;
	}
	void *data = (void *)(long)ctx->data, *data_end = (void *)(long)ctx->data_end;
	__u64 len = data_end - data;
	struct mon_rec *r;
	if (mi->flags & MON_F_COPY) {
		struct mon_rec_data *rd = bpf_ringbuf_reserve(&mon_events, sizeof(*rd), 0);
		if (!rd)
			goto lost;
		/* The mask is what the verifier needs to bound the length. */
		__u32 cap = len < MON_SNAP - 1 ? len : MON_SNAP - 1;
		asm volatile("" : "+r"(cap));
		cap &= MON_SNAP - 1;
		if (cap == 0 || bpf_xdp_load_bytes(ctx, 0, rd->frame, cap) < 0)
			cap = 0;
		r = &rd->h;
		__builtin_memcpy(r, snap, sizeof(*r));
		r->cap_len = cap;
	} else {
		r = bpf_ringbuf_reserve(&mon_events, sizeof(*r), 0);
		if (!r)
			goto lost;
		__builtin_memcpy(r, snap, sizeof(*r));
		r->cap_len = 0;
	}
	r->ts = bpf_ktime_get_ns();
	r->ifindex = ctx->ingress_ifindex;
	r->pkt_len = len;
	r->key = p->key;
	r->seq = p->seq;
	r->ack = p->ack;
	r->data_seq = p->seq + ((p->flags & TH_SYN) ? 1 : 0);
	r->payload_off = p->payload_off;
	r->payload_len = p->payload_len;
	r->tcp_flags = p->flags;
	r->from_b = p->from_b;
	r->nev = e->n;
	__builtin_memcpy(r->ev, e->ev, sizeof(r->ev));
	bpf_ringbuf_submit(r, 0);
	if (st)
		st->records++;
	return;
lost:
	if (st)
		st->lost++;
}

/* mon_emit_fragment sends an IP fragment to Go whole (MON_REC_FRAGMENT):
 * Go reassembles the datagram and reinjects it (mbx_monitor_reinject). */
static __always_inline void mon_emit_fragment(struct xdp_md *ctx, struct mon_stats *st)
{
	void *data = (void *)(long)ctx->data, *data_end = (void *)(long)ctx->data_end;
	__u64 len = data_end - data;
	if (len >= MON_SNAP) {
		st->frag_big++;
		return;
	}
	struct mon_rec_data *rd = bpf_ringbuf_reserve(&mon_events, sizeof(*rd), 0);
	if (!rd) {
		st->lost++;
		return;
	}
	__builtin_memset(&rd->h, 0, sizeof(rd->h));
	__u32 cap = len;
	asm volatile("" : "+r"(cap));
	cap &= MON_SNAP - 1;
	if (cap == 0 || bpf_xdp_load_bytes(ctx, 0, rd->frame, cap) < 0) {
		bpf_ringbuf_discard(rd, 0);
		return;
	}
	rd->h.kind = MON_REC_FRAGMENT;
	rd->h.cap_len = cap;
	rd->h.pkt_len = len;
	rd->h.ts = bpf_ktime_get_ns();
	rd->h.ifindex = ctx->ingress_ifindex;
	bpf_ringbuf_submit(rd, 0);
	st->records++;
}

/* mbx_monitor tracks one packet on an interface with a monitor: passive,
 * it never changes the packet's fate. A global function, so the verifier
 * checks it once, apart from mbx_xdp. reinjected: the packet is a datagram
 * Go reassembled from fragments (mbx_monitor_reinject). */
__attribute__((noinline)) int mbx_monitor(struct xdp_md *ctx, __u32 reinjected)
{
	if (!ctx)
		return 0;
	struct mon_iface *mi = monitor_on(ctx->ingress_ifindex);
	if (!mi)
		return 0;
	struct mon_stats *st = mon_stats_get();
	if (!st)
		return 0;
	st->packets++;
	void *data = (void *)(long)ctx->data, *data_end = (void *)(long)ctx->data_end;
	__u64 len = data_end - data;
	__u32 zero = 0;
	struct mon_scratch *sc = bpf_map_lookup_elem(&mon_scratch, &zero);
	if (!sc)
		return 0;
	struct mon_pkt *p = &sc->p;
	__builtin_memset(p, 0, sizeof(*p));
	/* The record's snapshot is zeroed only when a record is sent. */
	sc->e.n = 0;
	sc->e.mask = 0;
	mon_parse(data, data_end, p);
	struct mon_evs *e = &sc->e;
	struct mon_rec *snap = &sc->snap;
	if (p->frag) {
		st->fragments++;
		if (!reinjected)
			mon_emit_fragment(ctx, st);
		return 0;
	}
	__u8 kind = reinjected ? MON_REC_REINJECTED : MON_REC_PACKET;
	if (!p->tcp) {
		if (p->bad)
			st->malformed++;
		if (!mbx_monitor_filter(ctx)) {
			st->filtered++;
			return 0;
		}
		st->orphans++;
		if (mi->want & (1u << MON_EV_ORPHAN)) {
			mon_raise(e, MON_EV_ORPHAN, MON_HOOK_RECV, 0, 0);
			__builtin_memset(snap, 0, sizeof(*snap));
			snap->kind = kind;
			mon_emit(ctx, mi, st, snap, p, e);
		}
		return 0;
	}
	st->tcp++;
	/* Sampled monitoring: the other connections cost a parse and a hash,
	 * no table lookup. */
	if (mi->sample && mon_sample_hash(&p->key) >= mi->sample) {
		st->filtered++;
		return 0;
	}
	__u64 now = mbx_now();
	struct mon_conn *c = bpf_map_lookup_elem(&mon_conns, &p->key);
	int syn = (p->flags & (TH_SYN | TH_ACK)) == TH_SYN;
	__u64 id = 0;
	if (!c || (c->end_reason && syn)) {
		/* A new connection, or a port reused after one ended (unless
		 * this is that one's SYN again; racy read, rechecked below). */
		if (c) {
			int from = p->from_b != c->client_is_b;
			struct mon_side *s = &c->side[from & 1];
			if (s->syn_seen && s->isn == p->seq)
				goto track;
		}
		if (!mbx_monitor_filter(ctx)) {
			st->filtered++;
			return 0;
		}
		__u64 *ids = bpf_map_lookup_elem(&mon_ids, &zero);
		if (!ids)
			return 0;
		id = __sync_fetch_and_add(ids, 1) + 1;
		if (!c) {
			struct mon_conn_bytes *z = bpf_map_lookup_elem(&mon_zero, &zero);
			if (!z)
				return 0;
			bpf_map_update_elem(&mon_conns, &p->key, z, BPF_NOEXIST);
			c = bpf_map_lookup_elem(&mon_conns, &p->key);
			if (!c) {
				st->full++;
				return 0;
			}
		}
	}
track:;
	__u32 bufsize = mi->bufsize;
	int orphan = 0;
	bpf_spin_lock(&c->lock);
	if (id && (c->id == 0 || c->end_reason)) {
		mon_init(c, p, id, now);
		mon_raise_both(e, MON_EV_CONN_START, p->from_b != c->client_is_b);
		st->conns++;
	}
	int from = p->from_b != c->client_is_b;
	if (c->id == 0) {
		orphan = 1; /* created by a CPU that has not initialised it yet */
	} else if (c->end_reason) {
		/* Late packets of an ended connection count with it; for
		 * handlers they are out of flow. */
		struct mon_side *s = &c->side[from & 1];
		s->packets++;
		s->bytes += len;
		c->last = now;
		mon_raise(e, MON_EV_ORPHAN, MON_HOOK_RECV, 0, 0);
	} else {
		mon_segment(c, p, e, len, now, bufsize, from);
	}
	__u32 want = mi->want;
	if (e->mask & want) {
		__builtin_memset(snap, 0, sizeof(*snap));
		snap->kind = kind;
		snap->conn_id = c->id;
		snap->start = c->start;
		snap->client_is_b = c->client_is_b;
		snap->end_reason = c->end_reason;
		snap->midstream = c->midstream;
		snap->states[0] = c->side[0].state;
		snap->states[1] = c->side[1].state;
#pragma unroll
		for (int s = 0; s < 2; s++) {
			snap->sides[s].packets = c->side[s].packets;
			snap->sides[s].bytes = c->side[s].bytes;
			snap->sides[s].delivered = c->side[s].delivered;
			snap->sides[s].rexmits = c->side[s].rexmits;
		}
	}
	bpf_spin_unlock(&c->lock);
	if (orphan)
		return 0;
	if (e->mask & want)
		mon_emit(ctx, mi, st, snap, p, e);
	return 0;
}

#endif
