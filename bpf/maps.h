/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* maps.h: every BPF map and the structs stored in them.
 * Struct names differ from map names (bpf2go -type needs that). */
#ifndef MBX_MAPS_H
#define MBX_MAPS_H

#include "consts.h"

/* One direction of an IPv4 flow. 16 bytes: the connection table is hashed
 * on every packet and a 40-byte IPv6-sized key cost ~10 ns more; IPv6 gets
 * tables of its own (as Katran splits them). */
struct flow_key {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 pad[3];
};

/* What to do with a packet of one direction of a connection. Two entries
 * exist per connection (client->VIP and RS->LIP); each carries the rewrite
 * for its own direction, precomputed checksum deltas, and the TCP state
 * (kept equal in both entries on every transition). */
struct conn {
	__u32 saddr; /* new source */
	__u32 daddr; /* new destination */
	__u16 sport;
	__u16 dport;
	__u32 csum_l3; /* one's-complement delta for the IP header checksum */
	__u32 csum_l4; /* ... and for the TCP/UDP checksum (pseudo header + ports) */
	__u32 real_id;
	__u16 svc_id;
	__u8 state;
	__u8 flags;
	__u32 flow_hash; /* the client flow's hash, set once: --tunnel-src's outer source */
	__u64 last_seen; /* mbx_now() (clock.h) */
	/* Next hop memoized from bpf_fib_lookup (nat.h): valid while fib_gen
	 * is the config's, the packet came in on nh_in, and nh_stamp is recent. */
	__u32 nh_in;
	__u32 nh_out;
	__u32 nh_stamp; /* mbx_now() >> 20 (~1 ms units) */
	__u32 nh_gen;
	__u8 nh_dmac[6];
	__u8 nh_smac[6];
	__u32 tun_saddr; /* tunnel: the egress address, from the fib lookup */
	__u16 nh_mtu;    /* the memoized egress's MTU */
	__u16 pad2;
};

struct svc_key {
	__u32 addr[4];
	__u16 port;
	__u8 proto;
	__u8 family;
};

struct svc {
	__u32 id;
	__u32 sched_base; /* first slot in sched_slots */
	__u32 sched_len;  /* 0: no usable real server */
	__u32 laddr_base; /* first entry in laddrs */
	__u32 laddr_len;
	__u32 flags;     /* PICK_* */
	__u32 persist_s; /* client affinity (ipvsadm -p), seconds; 0 = none */
	__u32 byte_base; /* SVC_F_BYTES: first group in sched_bytes */
};

/* Persistence templates (IPVS's): a client's real server per service. */
struct persist_key {
	__u32 svc_id;
	__u32 client;
};

struct persist_val {
	__u32 real_id;
	__u32 pad;
	__u64 last_seen;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1 << 18);
	__type(key, struct persist_key);
	__type(value, struct persist_val);
} persist SEC(".maps");

struct real {
	__u32 addr[4];
	__u16 port;
	__u8 family;
	__u8 mode;    /* enum fwd_mode */
	__u32 weight; /* for wlc */
};

/* Connections per real server for lc/wlc: active/inactive written by Go's
 * sweep every second, recent counts what the datapath scheduled since. */
struct real_load {
	__u32 active;
	__u32 inactive;
	__u32 recent;
	__u32 pad;
};

struct laddr {
	__u32 addr[4];
	__u8 family;
	__u8 pad[3];
};

struct real_stats {
	__u64 conns;
	__u64 inpkts;
	__u64 outpkts;
	__u64 inbytes;
	__u64 outbytes;
};

struct config {
	__u32 timeout_ns_shift; /* unused, keeps layout 8-aligned */
	__u16 port_lo;          /* Full-NAT local port range */
	__u16 port_hi;
	__u32 hash_seed;
	__u32 fib_gen;      /* bumped by Go on route/neighbour/link changes */
	__u32 fib_max_age;  /* memoized next hops expire after this (~ms units) */
	__u32 tun_src_base; /* tunnel outer source: base | (flow hash & ~mask), */
	__u64 timeout_ns[TCP_STATES];
	/* fsm[dir][event][state] -> new state */
	__u8 fsm[2][TCP_EVENTS][TCP_STATES];
	__u32 tun_src_mask; /* network order; 0: the egress interface's address */
	__u32 snat_rules;   /* rules in use in snat_rules (snat.h) */
	__u32 lb6;          /* LB6_* (lb6.h): which packets mbx_xdp hands to mbx_lb6 */
	__u32 pad3;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1 << 21); /* resized from Go */
	__type(key, struct flow_key);
	__type(value, struct conn);
} conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SERVICES);
	__type(key, struct svc_key);
	__type(value, struct svc);
} services SEC(".maps");

struct sched_group {
	__u16 real[SLOTS_PER_GROUP]; /* real ids: MAX_REALS fits 16 bits */
};

_Static_assert(MAX_REALS <= 65536, "real ids must fit sched_group");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SCHED_SLOTS / SLOTS_PER_GROUP);
	__type(key, __u32);
	__type(value, struct sched_group);
} sched_slots SEC(".maps");

/* slot_real reads the real id in a scheduler-table slot; 0 on success. */
static __always_inline int slot_real(__u32 slot, __u32 *id)
{
	__u32 group = slot / SLOTS_PER_GROUP;
	struct sched_group *g = bpf_map_lookup_elem(&sched_slots, &group);
	if (!g)
		return -1;
	*id = g->real[slot % SLOTS_PER_GROUP];
	return 0;
}

/* The scheduler tables of services with at most 255 real servers, a byte
 * per slot (SVC_F_BYTES; half a byte with at most 15, SVC_F_NIBBLES): a
 * service's range holds its real ids first, four 16-bit ids per group,
 * then the table, eight (sixteen) indices into that list per group. A hash
 * scheduler reads one random slot per new connection: at M = 65537 the
 * table is 64 (32) KiB where sched_slots' is 128 KiB, which is what decides
 * that read's cost (docs/benchmarks.md, Maglev). */
struct sched_byte_group {
	__u8 b[BYTES_PER_GROUP];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SCHED_SLOTS / BYTES_PER_GROUP);
	__type(key, __u32);
	__type(value, struct sched_byte_group);
} sched_bytes SEC(".maps");

/* table_real reads slot i of service s's table (its byte table when it has
 * one); 0 on success. */
static __always_inline int table_real(const struct svc *s, __u32 i, __u32 *id)
{
	if (!(s->flags & SVC_F_BYTES))
		return slot_real(s->sched_base + i, id);
	__u32 nreals = (s->flags >> SVC_NREALS_SHIFT) & 0xff;
	__u32 idx, g = s->byte_base + (nreals + 3) / 4;
	struct sched_byte_group *t;
	if (s->flags & SVC_F_NIBBLES) {
		g += i / (2 * BYTES_PER_GROUP);
		t = bpf_map_lookup_elem(&sched_bytes, &g);
		if (!t)
			return -1;
		idx = (t->b[(i / 2) % BYTES_PER_GROUP] >> ((i & 1) * 4)) & 0xf;
	} else {
		g += i / BYTES_PER_GROUP;
		t = bpf_map_lookup_elem(&sched_bytes, &g);
		if (!t)
			return -1;
		idx = t->b[i % BYTES_PER_GROUP];
	}
	__u32 lg = s->byte_base + idx / 4;
	struct sched_byte_group *l = bpf_map_lookup_elem(&sched_bytes, &lg);
	if (!l)
		return -1;
	__u32 k = (idx & 3) * 2;
	*id = l->b[k] | (__u32)l->b[k + 1] << 8;
	return 0;
}

/* Round-robin position per service, shared by all CPUs (atomic add; only
 * new connections touch it), so rr rotates strictly as IPVS does. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_SERVICES);
	__type(key, __u32);
	__type(value, __u32);
} sched_pos SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_REALS);
	__type(key, __u32);
	__type(value, struct real);
} reals SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_REALS);
	__type(key, __u32);
	__type(value, struct real_stats);
} stats SEC(".maps");

/* count_real adds a forwarded packet of len bytes to its real server's
 * IPVS counters: in = client to real server, out = the replies. */
static __always_inline void count_real(__u32 id, int reply, __u32 len)
{
	struct real_stats *st = bpf_map_lookup_elem(&stats, &id);
	if (!st)
		return;
	if (reply) {
		st->outpkts++;
		st->outbytes += len;
	} else {
		st->inpkts++;
		st->inbytes += len;
	}
}


struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_REALS);
	__type(key, __u32);
	__type(value, struct real_load);
} loads SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_LADDRS);
	__type(key, __u32);
	__type(value, struct laddr);
} laddrs SEC(".maps");

/* Per LIP (index as laddrs) and CPU: ports that collided while probing. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_LADDRS);
	__type(key, __u32);
	__type(value, __u64);
} laddr_conflicts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} config_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* The node's own service addresses (VIPs and LIPs), to give fragments and
 * broken TCP/UDP headers sent to them a verdict without a port. */
struct local_key {
	__u32 addr[4];
	__u8 family;
	__u8 pad[3];
};

#define LOCAL_VIP 0x1
#define LOCAL_LIP 0x2

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SERVICES + MAX_LADDRS);
	__type(key, struct local_key);
	__type(value, __u32); /* LOCAL_* flags */
} local_addrs SEC(".maps");

/* Prefilter: a bit per value of the low 16 bits of every VIP and LIP (IPv4
 * destination, host order). A clear bit means "not ours" without hashing. */
#define LOCAL_BITS_WORDS 1024
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LOCAL_BITS_WORDS);
	__type(key, __u32);
	__type(value, __u64);
} local_bits SEC(".maps");

/* The same over the sources of NAT (masquerading) replies: the addresses of
 * NAT real servers. Their replies are addressed to clients, not to us. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LOCAL_BITS_WORDS);
	__type(key, __u32);
	__type(value, __u64);
} nat_src_bits SEC(".maps");

/* Verdicts per receiving interface and CPU, for metrics. Indexed by
 * ifindex modulo IF_SLOTS (an array lookup is inlined; a hash lookup per
 * packet would cost ~20 ns); the slot records the ifindex that last wrote
 * it so Go can tell attached interfaces that share a slot. */
#define IF_SLOTS 256
#define XDP_VERDICTS 5
struct if_verdicts {
	__u32 ifindex;
	__u32 pad;
	__u64 pkts[XDP_VERDICTS]; /* XDP_ABORTED .. XDP_REDIRECT */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, IF_SLOTS);
	__type(key, __u32);
	__type(value, struct if_verdicts);
} if_stats SEC(".maps");

static __always_inline void count_verdict(__u32 ifindex, int verdict)
{
	__u32 slot = ifindex % IF_SLOTS;
	struct if_verdicts *v = bpf_map_lookup_elem(&if_stats, &slot);
	if (!v)
		return;
	v->ifindex = ifindex;
	if ((__u32)verdict < XDP_VERDICTS)
		v->pkts[verdict]++;
}

/* Egress interfaces for XDP_REDIRECT, keyed by ifindex. */
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, MAX_IFACES);
	__type(key, __u32);
	__type(value, __u32);
} tx_ports SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);
	if (v)
		*v += 1;
}

#endif
