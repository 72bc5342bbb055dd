/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* lb6.h: the load balancer for IPv6 virtual services, in a program of its
 * own (mbx_lb6, reached by tail call from mbx_xdp) so the IPv4 fast path and
 * its verifier budget are untouched. Full-NAT (v6 LIPs), NAT64 Full-NAT (a
 * v6 VIP with IPv4 real servers and LIPs), DR and ip6ip6 tunnel. Flows get
 * their own table (conns6), as Katran splits v4 and v6. Its key is 24
 * bytes, not 40: every entry's destination is one of mbx's own addresses
 * (a VIP or a LIP), so the key names it by its slot in local6 (lid) and
 * the kernel hashes and compares 6 words, not 10, on every packet.
 * NAT64's replies are IPv4 packets: their entries sit in conns6 under an
 * IPv4 tuple (family AF_INET_, addresses in word 0), and mbx_xdp sends an
 * IPv4 packet here only when it is not one of its own flows or services. */
#ifndef MBX_LB6_H
#define MBX_LB6_H

#include <linux/ipv6.h>

#include "maps.h"
#include "parse.h"
#include "csum.h"
#include "hash.h"
#include "conn.h"
#include "nat.h"

#ifndef ETH_P_IPV6
#define ETH_P_IPV6 0x86DD
#endif
#define IPPROTO_IPV6_ 41 /* ip6ip6 */
#define IPPROTO_FRAGMENT_ 44

/* One direction of a flow of an IPv6 service: the source, the ports, and
 * the destination as its local6 slot (lossless: only local addresses are
 * destinations of entries). */
struct flow_key6 {
	__u32 saddr[4];
	__u16 sport;
	__u16 dport;
	__u16 lid;   /* the destination's slot in local6 */
	__u8 proto;
	__u8 family; /* AF_INET6_; AF_INET_: a NAT64 connection's IPv4 side */
};

/* local6: mbx's own addresses (VIPs, LIPs of both families), each in a
 * slot of its hash's bucket of LOCAL6_WAYS. A slot keeps its address for
 * the address's lifetime: connection keys name it (Go places, apply.go).
 * An array and not a hash map: the lookup is inlined, no kernel call. */
#define LOCAL6_SLOTS 65536
#define LOCAL6_WAYS 4
#define LID_NONE 0xffff /* never a slot: Go leaves the last one empty */
struct local6_slot {
	__u32 addr[4]; /* IPv4: word 0, the rest 0 */
	__u8 family;   /* 0: empty */
	__u8 pad[3];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LOCAL6_SLOTS);
	__type(key, __u32);
	__type(value, struct local6_slot);
} local6 SEC(".maps");

/* The bucket of an address (backend/xdp local6.go is the Go twin): four
 * independent multiplies and a short finalizer, no long dependent chain. */
static __always_inline __u32 local6_bucket(const __u32 *a, __u8 family)
{
	__u32 h = a[0] * 0x9e3779b1u + a[1] * 0x85ebca77u + a[2] * 0xc2b2ae3du + a[3] * 0x27d4eb2fu +
		  (__u32)family * 0x165667b1u;
	h ^= h >> 16;
	h *= 0x7feb352du;
	h ^= h >> 15;
	return (h >> 18) * LOCAL6_WAYS;
}

/* local6_find: the slot of local address a, or LID_NONE (not mbx's). */
static __always_inline __u32 local6_find(const __u32 *a, __u8 family)
{
	__u32 base = local6_bucket(a, family);
#pragma unroll
	for (int i = 0; i < LOCAL6_WAYS; i++) {
		__u32 slot = base + i;
		struct local6_slot *l = bpf_map_lookup_elem(&local6, &slot);
		if (l && ((l->addr[0] ^ a[0]) | (l->addr[1] ^ a[1]) | (l->addr[2] ^ a[2]) | (l->addr[3] ^ a[3]) |
			  (l->family ^ family)) == 0)
			return slot;
	}
	return LID_NONE;
}

/* What to do with a packet of one direction (struct conn's IPv6 twin). */
struct conn6 {
	__u32 saddr[4]; /* new source (IPv4 in word 0 when out_family is AF_INET_) */
	__u32 daddr[4]; /* new destination; DR/tunnel: the real server */
	__u16 sport;
	__u16 dport;
	__u32 csum_l4; /* L4 checksum delta: addresses (pseudo header) and ports */
	__u32 real_id;
	__u16 svc_id;
	__u8 state;
	__u8 flags;      /* CONN_F_* */
	__u8 out_family; /* family of the packet after the rewrite */
	__u8 pad;
	__u16 twin_lid;  /* the other entry's key lid (its destination, this saddr); LID_NONE: no twin */
	__u32 flow_hash; /* the client flow's hash, set once: the tunnel's outer flow label */
	__u64 last_seen;
	/* Next hop memoized as in struct conn (nat.h next_hop). */
	__u32 nh_in;
	__u32 nh_out;
	__u32 nh_stamp;
	__u32 nh_gen;
	__u8 nh_dmac[6];
	__u8 nh_smac[6];
	__u32 tun_saddr[4]; /* tunnel: the egress address */
	__u16 nh_mtu;
	__u16 pad2;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1 << 18); /* resized from Go */
	__type(key, struct flow_key6);
	__type(value, struct conn6);
} conns6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct conn6);
} conn6_scratch SEC(".maps");

/* A key with the destination it names. */
struct flow6 {
	struct flow_key6 key;
	__u32 daddr[4];
};

/* mbx_new_conn6's reply key, off its stack frame (the stack is 512 bytes
 * for mbx_lb6, mbx_new_conn6 and the lc/wlc scan together). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct flow6);
} key6_scratch SEC(".maps");

/* mbx_xdp's handoff to mbx_lb6. */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} lb6_prog SEC(".maps");

/* process() asks mbx_xdp for the tail call with this pseudo-verdict. */
#define VERDICT_LB6 0x60

struct pkt6 {
	struct ethhdr *eth;
	struct ipv6hdr *ip6; /* one of ip6 and ip4 */
	struct iphdr *ip4;
	void *l4;
	__u16 *l4_csum; /* NULL: IPv4 UDP without checksum */
	__u8 tcp_flags;
	__u8 frag;    /* 0, FRAG_FIRST (has the ports) or FRAG_LATER (IPv6 only) */
	__u16 ip_len; /* whole IP packet, header included */
	__u16 l3_len; /* IP header length (IPv6: with a fragment header) */
	__u32 frag_id;
	union {
		struct flow6 f; /* what mbx_new_conn6 takes */
		struct {
			struct flow_key6 key; /* written 8 bytes at a time (parse.h) */
			__u32 daddr[4];       /* the destination the key's lid names */
		};
	} __attribute__((aligned(8)));
};

/* parse.h's key_set4 and key_set_ports4 for this table: whole words. */
static __always_inline void key6_set_saddr(struct flow_key6 *k, const void *saddr)
{
	__u64 *w = (__u64 *)k;
	const __u64 *a = saddr;
	w[0] = a[0];
	w[1] = a[1];
}

static __always_inline void key6_set_tail(struct flow_key6 *k, __u32 ports, __u32 lid, __u8 proto, __u8 family)
{
	((__u64 *)k)[2] = (__u64)ports | (__u64)lid << 32 | (__u64)proto << 48 | (__u64)family << 56;
}

/* key6_make fills k for the flow saddr -> daddr (4 words each, IPv4 in
 * word 0): 0, or -1 when daddr is none of mbx's (no entry can match). */
static __always_inline int key6_make(struct flow_key6 *k, const __u32 *saddr, const __u32 *daddr, __u16 sport,
				     __u16 dport, __u8 proto, __u8 family)
{
	__u32 lid = local6_find(daddr, family);
	__builtin_memcpy(k->saddr, saddr, 16);
	k->sport = sport;
	k->dport = dport;
	k->lid = lid;
	k->proto = proto;
	k->family = family;
	return lid == LID_NONE ? -1 : 0;
}

/* IPv6's fragment header (RFC 8200 4.5). */
struct frag6hdr {
	__u8 nexthdr;
	__u8 reserved;
	__u16 frag_off; /* offset << 3 | M */
	__u32 id;
};

/* IPv6 fragments follow their flow as IPv4's do (frag.h): the first
 * fragment's ports, remembered by (addresses, identification, protocol). */
struct frag6_key {
	__u32 saddr[4];
	__u32 daddr[4];
	__u32 id;
	__u8 proto;
	__u8 pad[3];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct frag6_key);
	__type(value, __u32); /* sport | dport << 16, as in the packet */
} frags6 SEC(".maps");

/* The key's last word is written here, with the ports (the caller wrote
 * it without them, for the paths that end before). */
static __always_inline int l4_parse6(struct pkt6 *p, void *l4, __u32 l4len, void *data_end,
				     __u32 lid, __u8 proto, __u8 family)
{
	/* A first fragment's UDP length is the whole datagram's; a TCP header
	 * is whole in it (RFC 8200: the first fragment holds the upper-layer
	 * header). */
	p->l4 = l4;
	if (proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;
		if ((void *)(th + 1) > data_end || th->doff < 5 || th->doff * 4 > l4len)
			return PARSE_BAD_L4;
		key6_set_tail(&p->key, *(__u32 *)th, lid, proto, family);
		p->l4_csum = &th->check;
		p->tcp_flags = ((__u8 *)th)[13];
		return PARSE_OK;
	}
	struct udphdr *uh = l4;
	if ((void *)(uh + 1) > data_end)
		return PARSE_BAD_L4;
	__u16 ulen = bpf_ntohs(uh->len);
	if (ulen < sizeof(*uh) || (ulen > l4len && !p->frag))
		return PARSE_BAD_L4;
	key6_set_tail(&p->key, *(__u32 *)uh, lid, proto, family);
	p->l4_csum = uh->check ? &uh->check : 0;
	return PARSE_OK;
}

/* parse6 reads an IPv6 packet whose next header is TCP or UDP (other
 * extension headers are the kernel's; a fragment is PARSE_FRAGMENT with
 * its destination), or an IPv4 TCP/UDP packet (a NAT64 reply candidate). */
static __always_inline int parse6(void *data, void *data_end, struct pkt6 *p)
{
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return PARSE_NOT_IP;
	p->eth = eth;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > data_end || ip->version != 4 || ip->ihl < 5)
			return PARSE_BAD_L3;
		__u32 hlen = ip->ihl * 4;
		__u16 tot = bpf_ntohs(ip->tot_len);
		if (tot < hlen || (void *)ip + tot > data_end)
			return PARSE_BAD_L3;
		if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
			return PARSE_OTHER_L4;
		if (ip->frag_off & bpf_htons(0x3fff))
			return PARSE_FRAGMENT;
		p->ip4 = ip;
		p->ip_len = tot;
		p->l3_len = hlen;
		__u64 *w = (__u64 *)&p->key;
		w[0] = ip->saddr; /* word 0 of each address, the rest 0 */
		w[1] = 0;
		__u64 *d = (__u64 *)p->daddr;
		d[0] = ip->daddr;
		d[1] = 0;
		__u32 lid = local6_find(p->daddr, AF_INET_);
		key6_set_tail(&p->key, 0, lid, ip->protocol, AF_INET_);
		return l4_parse6(p, (void *)ip + hlen, tot - hlen, data_end, lid, ip->protocol, AF_INET_);
	}
	if (eth->h_proto != bpf_htons(ETH_P_IPV6))
		return PARSE_NOT_IP;
	struct ipv6hdr *ip6 = (void *)(eth + 1);
	if ((void *)(ip6 + 1) > data_end || ip6->version != 6)
		return PARSE_BAD_L3;
	__u16 plen = bpf_ntohs(ip6->payload_len);
	if ((void *)(ip6 + 1) + plen > data_end)
		return PARSE_BAD_L3;
	__u8 next = ip6->nexthdr;
	__u32 hlen = sizeof(*ip6);
	if (next == IPPROTO_FRAGMENT_) {
		struct frag6hdr *fh = (void *)(ip6 + 1);
		if ((void *)(fh + 1) > data_end || plen < sizeof(*fh))
			return PARSE_BAD_L3;
		next = fh->nexthdr;
		hlen += sizeof(*fh);
		p->frag_id = fh->id;
		p->frag = (fh->frag_off & bpf_htons(0xfff8)) ? FRAG_LATER : FRAG_FIRST;
	}
	if (next != IPPROTO_TCP && next != IPPROTO_UDP)
		return PARSE_OTHER_L4;
	p->ip6 = ip6;
	p->ip_len = sizeof(*ip6) + plen;
	p->l3_len = hlen;
	key6_set_saddr(&p->key, &ip6->saddr);
	__u64 *d = (__u64 *)p->daddr;
	const __u64 *pd = (const __u64 *)&ip6->daddr;
	d[0] = pd[0];
	d[1] = pd[1];
	__u32 lid = local6_find(p->daddr, AF_INET6_);
	key6_set_tail(&p->key, 0, lid, next, AF_INET6_);
	if (p->frag == FRAG_LATER)
		return PARSE_FRAGMENT; /* no transport header: frag6_ports finds the ports */
	int r = l4_parse6(p, (void *)ip6 + hlen, sizeof(*ip6) + plen - hlen, data_end, lid, next, AF_INET6_);
	if (r == PARSE_OK && p->key.proto == IPPROTO_UDP && !p->l4_csum)
		return PARSE_BAD_L4; /* IPv6 UDP must carry a checksum */
	return r;
}

static __always_inline void frag6_key_of(struct frag6_key *fk, const struct pkt6 *p)
{
	__builtin_memcpy(fk->saddr, p->key.saddr, 16);
	__builtin_memcpy(fk->daddr, p->daddr, 16);
	fk->id = p->frag_id;
	fk->proto = p->key.proto;
}

/* Not inlined: its 40-byte key stays off process6's frame (the stack is
 * 512 bytes for a whole call chain: mbx_lb6, mbx_new_conn6, least_step). */
static __attribute__((noinline)) void frag6_remember(const struct pkt6 *p)
{
	struct frag6_key fk = {};
	frag6_key_of(&fk, p);
	__u32 ports = (__u32)p->key.sport | ((__u32)p->key.dport << 16);
	bpf_map_update_elem(&frags6, &fk, &ports, BPF_ANY);
}

/* frag6_ports fills a later fragment's ports from its first one: 0, or -1
 * when the first one was not seen. */
static __always_inline int frag6_ports(struct pkt6 *p)
{
	struct frag6_key fk = {};
	frag6_key_of(&fk, p);
	__u32 *ports = bpf_map_lookup_elem(&frags6, &fk);
	if (!ports)
		return -1;
	p->key.sport = (__u16)*ports;
	p->key.dport = (__u16)(*ports >> 16);
	return 0;
}

static __always_inline int is_new_syn6(const struct pkt6 *p)
{
	return p->key.proto != IPPROTO_TCP || (p->tcp_flags & (TH_SYN | TH_ACK | TH_RST)) == TH_SYN;
}

static __always_inline void twin_key6(struct flow_key6 *tk, const struct conn6 *c, const struct flow_key6 *k)
{
	__builtin_memcpy(tk->saddr, c->daddr, 16);
	tk->sport = c->dport;
	tk->dport = c->sport;
	tk->lid = c->twin_lid; /* LID_NONE (DR, tunnel): no entry has it */
	tk->proto = k->proto;
	tk->family = c->out_family;
}

static __always_inline void entry_delete6(const struct flow_key6 *k)
{
	if (bpf_map_delete_elem(&conns6, k) == 0)
		count(CNT_ENTRY_DELETED);
}

static __always_inline int conn6_stale(const struct config *cfg, const struct conn6 *c, __u64 now)
{
	return (__s64)(now - c->last_seen) > (__s64)cfg->timeout_ns[c->state & (TCP_STATES - 1)];
}

static __always_inline int conn6_alive(const struct config *cfg, struct conn6 *c,
				       const struct flow_key6 *k, __u64 now)
{
	if (!conn6_stale(cfg, c, now))
		return 1;
	struct flow_key6 tk;
	twin_key6(&tk, c, k);
	struct conn6 *t = bpf_map_lookup_elem(&conns6, &tk);
	if (t && !conn6_stale(cfg, t, now)) {
		c->last_seen = t->last_seen;
		return 1;
	}
	entry_delete6(&tk);
	entry_delete6(k);
	return 0;
}

static __always_inline void conn6_delete(struct conn6 *c, const struct flow_key6 *k)
{
	struct flow_key6 tk;
	twin_key6(&tk, c, k);
	entry_delete6(&tk);
	entry_delete6(k);
}

static __always_inline void conn6_track(const struct config *cfg, struct conn6 *c, const struct pkt6 *p)
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
	struct flow_key6 tk;
	twin_key6(&tk, c, &p->key);
	struct conn6 *t = bpf_map_lookup_elem(&conns6, &tk);
	if (t)
		t->state = next;
}

/* The L4 checksum delta of rewriting k's tuple (daddr: its destination)
 * into c's. The pseudo headers of both families sum the same length and
 * protocol, so a family change (NAT64) is only the address words (unused
 * words are zero). */
static __always_inline void conn6_set_csum(struct conn6 *c, const struct flow_key6 *k, const __u32 *daddr)
{
	__u32 d = 0;
#pragma unroll
	for (int i = 0; i < 4; i++) {
		d = csum_add_diff32(d, k->saddr[i], c->saddr[i]);
		d = csum_add_diff32(d, daddr[i], c->daddr[i]);
	}
	d = csum_add_diff16(d, k->sport, c->sport);
	d = csum_add_diff16(d, k->dport, c->dport);
	c->csum_l4 = d;
}

/* The flow hash of the whole tuple (the DPDK datapath's twin hashes the
 * same words): k and its destination daddr. */
static __always_inline __u32 flow_hash6(const struct flow_key6 *k, const __u32 *daddr, __u32 seed)
{
	__u32 h = seed;
#pragma unroll
	for (int i = 0; i < 4; i++)
		h = hash_mix(h, k->saddr[i]);
#pragma unroll
	for (int i = 0; i < 4; i++)
		h = hash_mix(h, daddr[i]);
	h = hash_mix(h, (__u32)k->sport | ((__u32)k->dport << 16));
	h = hash_mix(h, (__u32)k->proto | ((__u32)k->family << 8));
	return hash_final(h ^ 40);
}

/* An address folded to one word: sh/dh's input and the persistence key. */
static __always_inline __u32 fold6(const __u32 *a)
{
	return a[0] ^ a[1] ^ a[2] ^ a[3];
}

static __always_inline void account6(const struct conn6 *c, const struct pkt6 *p)
{
	count_real(c->real_id, c->flags & CONN_F_REPLY, p->ip_len);
}

#endif
