/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* bricks.h: packet-bricks on XDP. An engine on an interface walks a tree of
 * bricks (bricks/ in Go flattens it into brick_nodes) and sends the packet to
 * one output (XDP_REDIRECT through a devmap) or, for a Duplicator, to every
 * output (devmap broadcast). The walk runs in its own program, mbx_bricks,
 * reached by a tail call from mbx_xdp for packets the load balancer passes:
 * the load balancer's services come first, bricks get the rest, and what
 * they do not take (a Filter that does not match) goes on to the kernel.
 *
 * Filters are the function mbx_brick_filter(ctx, id): Go loads a variant of
 * mbx_bricks with that function replaced by the compiled tcpdump
 * expressions of every Filter brick and puts it in brick_prog. Node, filter
 * and duplicator ids are stable for a brick's life, so a new variant never
 * misreads the tree an engine is already walking. */
#ifndef MBX_BRICKS_H
#define MBX_BRICKS_H

#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <bpf/bpf_endian.h>

#include "consts.h"
#include "maps.h"
#include "hash.h"
#include "parse.h"

#define BRICK_NODES 1024
#define BRICK_CHILDREN 64
#define BRICK_DEPTH 8
#define BRICK_DUPS 64
#define BRICK_PORTS 256
#define BRICK_XSKS 64 /* AF_XDP outputs */
#define XSK_QUEUES 8  /* receive queues per AF_XDP output */

/* brick_node.kind */
#define BRICK_OUTPUT 1
#define BRICK_FILTER 2
#define BRICK_LB 3
#define BRICK_DUP 4
#define BRICK_MERGE 5
#define BRICK_XSK 6 /* an AF_XDP socket per receive queue (bricks/xsk) */

/* brick_node.hash */
#define BRICK_HASH_2TUPLE 0
#define BRICK_HASH_4TUPLE 1

/* brick_engine.flags */
#define ENGINE_F_NO_LB 1 /* an interface of the engine only: no load balancing */

struct brick_node {
	__u8 kind;
	__u8 hash;
	__u16 nchild;
	__u32 arg; /* OUTPUT: ifindex; FILTER: filter id; DUP: brick_dups index; XSK: slot */
	__u16 child[BRICK_CHILDREN];
};

/* Indexed by ifindex % IF_SLOTS (Go refuses two engines in one slot). */
struct brick_engine {
	__u32 ifindex;
	__u32 root; /* 0: engine stopped */
	__u32 flags;
	__u32 seed;
};

struct brick_counters {
	__u64 pkts;    /* packets the node sent on */
	__u64 bytes;
	__u64 drops;   /* redirects that failed (output gone) */
	__u64 skipped; /* Filter: packets that did not match */
};

/* Carries mbx_xdp's capture decision across the tail call. */
struct brick_scratch {
	__u32 capture_matched;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BRICK_NODES);
	__type(key, __u32);
	__type(value, struct brick_node);
} brick_nodes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, IF_SLOTS);
	__type(key, __u32);
	__type(value, struct brick_engine);
} brick_engines SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BRICK_NODES);
	__type(key, __u32);
	__type(value, struct brick_counters);
} brick_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct brick_scratch);
} brick_handoff SEC(".maps");

/* Every brick output, keyed by ifindex. */
struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, BRICK_PORTS);
	__type(key, __u32);
	__type(value, __u32);
} brick_ports SEC(".maps");

/* One devmap per Duplicator: broadcast sends a copy to each entry. */
struct brick_dup_ports {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, BRICK_CHILDREN);
	__type(key, __u32);
	__type(value, __u32);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, BRICK_DUPS);
	__type(key, __u32);
	__array(values, struct brick_dup_ports);
} brick_dups SEC(".maps");

/* AF_XDP sockets of xsk outputs, at slot * XSK_QUEUES + receive queue. */
struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, BRICK_XSKS * XSK_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} brick_xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} brick_prog SEC(".maps");

static __always_inline struct brick_engine *brick_engine_on(__u32 ifindex)
{
	__u32 slot = ifindex % IF_SLOTS;
	struct brick_engine *e = bpf_map_lookup_elem(&brick_engines, &slot);
	if (!e || e->ifindex != ifindex || !e->root)
		return 0;
	return e;
}

/* The two endpoints of a packet, for the LoadBalancer's symmetric hash
 * (bricks/hash.go is the Go twin). */
struct brick_flow {
	__u32 a[4], b[4];
	__u16 aport, bport;
	__u8 proto;
	__u8 ports; /* 1: aport/bport are meaningful (TCP/UDP/SCTP, not a fragment) */
	__u8 v4;    /* 1: only a[0] and b[0] hold an address */
};

#define IPV6_EXT_MAX 4

static __always_inline int l4_has_ports(__u8 proto)
{
	return proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP;
}

/* brick_parse fills f from the frame: up to two VLAN tags, IPv4 or IPv6
 * (skipping up to IPV6_EXT_MAX extension headers); other frames hash on
 * their MAC addresses. Fragments carry no usable ports. */
static __always_inline void brick_parse(void *data, void *data_end, struct brick_flow *f)
{
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return;
	__u16 proto;
	void *l3 = vlan_walk(eth, data_end, &proto, 0, 0);
	if (!l3)
		return;
	void *l4;
	__u8 l4proto;
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = l3;
		if ((void *)(ip + 1) > data_end || ip->ihl < 5)
			goto mac;
		f->a[0] = ip->saddr;
		f->b[0] = ip->daddr;
		f->proto = ip->protocol;
		f->v4 = 1;
		if (ip->frag_off & bpf_htons(0x3fff))
			return;
		l4 = (void *)ip + ip->ihl * 4;
		l4proto = ip->protocol;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = l3;
		if ((void *)(ip6 + 1) > data_end)
			goto mac;
		__builtin_memcpy(f->a, &ip6->saddr, 16);
		__builtin_memcpy(f->b, &ip6->daddr, 16);
		l4proto = ip6->nexthdr;
		l4 = ip6 + 1;
#pragma unroll
		for (int i = 0; i < IPV6_EXT_MAX; i++) {
			if (l4proto == IPPROTO_FRAGMENT) {
				f->proto = IPPROTO_FRAGMENT;
				return;
			}
			if (l4proto != IPPROTO_HOPOPTS && l4proto != IPPROTO_ROUTING &&
			    l4proto != IPPROTO_DSTOPTS)
				break;
			__u8 *ext = l4;
			if ((void *)(ext + 2) > data_end)
				return;
			l4proto = ext[0];
			l4 += (ext[1] + 1) * 8;
		}
		f->proto = l4proto;
	} else {
		goto mac;
	}
	if (!l4_has_ports(l4proto))
		return;
	__u16 *ports = l4;
	if ((void *)(ports + 2) > data_end)
		return;
	f->aport = ports[0];
	f->bport = ports[1];
	f->ports = 1;
	return;
mac:
	__builtin_memcpy(f->a, eth->h_source, 6);
	__builtin_memcpy(f->b, eth->h_dest, 6);
}

/* Symmetric: both directions of a connection get the same value, because
 * the endpoints are put in order (address words, then port) first. Each
 * 32-bit word is multiplied by its own 64-bit constant and the products
 * summed: the multiplies are independent, so they overlap in the CPU, where
 * a Murmur3 chain over the same words costs its multiply latency per word
 * (18 ns against 5, measured with bench's BenchmarkBricks). One final
 * multiply folds every input bit into the upper half, which the pick uses.
 * IPv4 hashes one address word per side. The 4-tuple mode falls back to
 * the 2-tuple for packets without ports (fragments, ICMP), so all fragments
 * of a datagram stay together. bricks/hash.go is the Go twin. */
#define BRICK_K0 0xa0761d6478bd642fULL
#define BRICK_K1 0xe7037ed1a0b428dbULL
#define BRICK_K2 0x8ebc6af09c88c6e3ULL
#define BRICK_K3 0x589965cc75374cc3ULL
#define BRICK_K4 0x1d8e4e27c47d124fULL
#define BRICK_K5 0x9e3779b97f4a7c15ULL
#define BRICK_K6 0xbf58476d1ce4e5b9ULL
#define BRICK_K7 0x94d049bb133111ebULL
#define BRICK_K8 0xff51afd7ed558ccdULL
#define BRICK_K9 0xc4ceb9fe1a85ec53ULL
#define BRICK_K10 0x2545f4914f6cdd1dULL

static __always_inline __u32 brick_hash(const struct brick_flow *f, int four, __u32 seed)
{
	int usePorts = four && f->ports;
	__u16 ap = usePorts ? f->aport : 0, bp = usePorts ? f->bport : 0;
	int swap = ap > bp;
	if (f->v4) {
		if (f->a[0] != f->b[0])
			swap = f->a[0] > f->b[0];
	} else {
#pragma unroll
		for (int i = 3; i >= 0; i--) {
			if (f->a[i] != f->b[i])
				swap = f->a[i] > f->b[i];
		}
	}
	const __u32 *lo = swap ? f->b : f->a;
	const __u32 *hi = swap ? f->a : f->b;
	__u32 ports = swap ? (__u32)bp | (__u32)ap << 16 : (__u32)ap | (__u32)bp << 16;
	__u64 h = (__u64)(lo[0] ^ seed) * BRICK_K0 + (__u64)hi[0] * BRICK_K1 +
		  (__u64)ports * BRICK_K2 + (__u64)(usePorts ? f->proto : 0) * BRICK_K3;
	if (!f->v4)
		h += (__u64)lo[1] * BRICK_K5 + (__u64)lo[2] * BRICK_K6 + (__u64)lo[3] * BRICK_K7 +
		     (__u64)hi[1] * BRICK_K8 + (__u64)hi[2] * BRICK_K9 + (__u64)hi[3] * BRICK_K10;
	h ^= h >> 32;
	h *= BRICK_K4;
	return h >> 32;
}

/* Replaced by Go with the Filter bricks' compiled expressions; must stay a
 * separate (global, not inlined) function. */
__attribute__((noinline)) int mbx_brick_filter(struct xdp_md *ctx, __u32 id)
{
	/* Never taken: a node refers to a filter only in a variant that has it. */
	return ctx->ingress_ifindex == 0 && id == 0xffffffff;
}

static __always_inline void brick_count(__u32 node, __u64 bytes, int field)
{
	struct brick_counters *c = bpf_map_lookup_elem(&brick_stats, &node);
	if (!c)
		return;
	switch (field) {
	case 0:
		c->pkts++;
		c->bytes += bytes;
		break;
	case 1:
		c->drops++;
		break;
	default:
		c->skipped++;
	}
}

/* brick_walk returns the packet's verdict: XDP_REDIRECT to its output(s),
 * XDP_PASS when a Filter let it go, XDP_DROP when an output is gone. */
static __always_inline int brick_walk(struct xdp_md *ctx, struct brick_engine *e)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 len = data_end - data;
	/* Only the hash is carried across the walk, not the parsed flow: a
	 * loop-carried brick_flow is spilled field by field (~10 ns). A nested
	 * LoadBalancer with the other hash mode parses again. */
	__u32 hash = 0;
	int hash_mode = -1;
	__u32 id = e->root;

	for (int depth = 0; depth < BRICK_DEPTH; depth++) {
		struct brick_node *n = bpf_map_lookup_elem(&brick_nodes, &id);
		if (!n)
			return XDP_PASS;
		__u32 next;
		switch (n->kind) {
		case BRICK_OUTPUT: {
			int v = bpf_redirect_map(&brick_ports, n->arg, XDP_DROP);
			brick_count(id, len, v == XDP_REDIRECT ? 0 : 1);
			return v;
		}
		case BRICK_XSK: {
			__u32 key = n->arg * XSK_QUEUES + (ctx->rx_queue_index & (XSK_QUEUES - 1));
			int v = bpf_redirect_map(&brick_xsks, key, XDP_DROP);
			brick_count(id, len, v == XDP_REDIRECT ? 0 : 1);
			return v;
		}
		case BRICK_FILTER:
			if (!mbx_brick_filter(ctx, n->arg)) {
				brick_count(id, len, 2);
				return XDP_PASS;
			}
			next = n->child[0];
			break;
		case BRICK_LB: {
			__u32 nc = n->nchild;
			if (nc == 0 || nc > BRICK_CHILDREN)
				return XDP_PASS;
			int four = n->hash == BRICK_HASH_4TUPLE;
			if (hash_mode != four) {
				struct brick_flow f = {};
				brick_parse((void *)(long)ctx->data, (void *)(long)ctx->data_end, &f);
				hash = brick_hash(&f, four, e->seed);
				hash_mode = four;
			}
			__u32 i = ((__u64)hash * nc) >> 32;
			next = n->child[i & (BRICK_CHILDREN - 1)];
			break;
		}
		case BRICK_MERGE:
			next = n->child[0];
			break;
		case BRICK_DUP: {
			void *ports = bpf_map_lookup_elem(&brick_dups, &n->arg);
			if (!ports)
				return XDP_DROP;
			int v = bpf_redirect_map(ports, 0, BPF_F_BROADCAST | BPF_F_EXCLUDE_INGRESS);
			brick_count(id, len, v == XDP_REDIRECT ? 0 : 1);
			if (v == XDP_REDIRECT) {
				for (__u32 i = 0; i < BRICK_CHILDREN; i++) {
					if (i >= n->nchild)
						break;
					brick_count(n->child[i], len, 0);
				}
			}
			return v;
		}
		default:
			return XDP_PASS;
		}
		brick_count(id, len, 0);
		id = next;
	}
	return XDP_PASS;
}

#endif
