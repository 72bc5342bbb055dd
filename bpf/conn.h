/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* conn.h: the connection table: expiry, TCP state tracking, twin entries. */
#ifndef MBX_CONN_H
#define MBX_CONN_H

#include "maps.h"
#include "parse.h"

static __always_inline struct config *get_config(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&config_map, &zero);
}

/* IPVS's event order: rst > syn > fin > ack. */
static __always_inline int tcp_event(__u8 flags)
{
	if (flags & TH_RST)
		return 3;
	if (flags & TH_SYN)
		return 0;
	if (flags & TH_FIN)
		return 1;
	if (flags & TH_ACK)
		return 2;
	return -1;
}

static __always_inline int is_new_syn(const struct pkt *p)
{
	return p->key.proto != IPPROTO_TCP ||
	       (p->tcp_flags & (TH_SYN | TH_ACK | TH_RST)) == TH_SYN;
}

/* The key of the other direction's entry: the reverse of this entry's rewrite. */
static __always_inline void twin_key(struct flow_key *tk, const struct conn *c,
				     const struct flow_key *k)
{
	tk->saddr = c->daddr;
	tk->daddr = c->saddr;
	tk->sport = c->dport;
	tk->dport = c->sport;
	tk->proto = k->proto;
	tk->pad[0] = tk->pad[1] = tk->pad[2] = 0;
}

/* Deletes one entry, counted so Go can tell evictions from deletions. */
static __always_inline void entry_delete(const struct flow_key *k)
{
	if (bpf_map_delete_elem(&conns, k) == 0)
		count(CNT_ENTRY_DELETED);
}

static __always_inline int conn_stale(const struct config *cfg, const struct conn *c, __u64 now)
{
	return (__s64)(now - c->last_seen) > (__s64)cfg->timeout_ns[c->state & (TCP_STATES - 1)];
}

/* A connection lives while either direction was seen within its timeout
 * (a one-way UDP stream keeps its reply entry). Stale: delete both. */
static __always_inline int conn_alive(const struct config *cfg, struct conn *c,
				      const struct flow_key *k, __u64 now)
{
	if (!conn_stale(cfg, c, now))
		return 1;
	struct flow_key tk;
	twin_key(&tk, c, k);
	struct conn *t = bpf_map_lookup_elem(&conns, &tk);
	if (t && !conn_stale(cfg, t, now)) {
		c->last_seen = t->last_seen;
		return 1;
	}
	entry_delete(&tk);
	entry_delete(k);
	return 0;
}

static __always_inline void conn_delete(struct conn *c, const struct flow_key *k)
{
	struct flow_key tk;
	twin_key(&tk, c, k);
	entry_delete(&tk);
	entry_delete(k);
}

/* Advances the TCP state with the table flow/ computed; both entries agree. */
static __always_inline void conn_track(const struct config *cfg, struct conn *c,
				       const struct pkt *p)
{
	if (p->key.proto != IPPROTO_TCP)
		return;
	int ev = tcp_event(p->tcp_flags);
	if (ev < 0)
		return;
	__u32 dir = c->flags & CONN_F_REPLY;
	__u8 next = cfg->fsm[dir & 1][ev & 3][c->state & (TCP_STATES - 1)];
	if (next == c->state)
		return;
	c->state = next;
	struct flow_key tk;
	twin_key(&tk, c, &p->key);
	struct conn *t = bpf_map_lookup_elem(&conns, &tk);
	if (t)
		t->state = next;
}

#endif
