// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* decap.c: the real-server side of mbx's tunnel mode (ipvsadm -i). This
 * kernel has no ipip/ip6tnl device, so, as Katran's decap does, an XDP
 * program strips the outer header of IP-in-IP (IPv4) and ip6ip6 packets
 * and hands the inner packet to the stack, which delivers it to the VIP on
 * the loopback. With a VIP list only packets for those VIPs are taken; the
 * rest pass untouched. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct decap_cfg {
	__u32 any_vip; /* 1: every IP-in-IP packet; 0: only for decap_vips */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct decap_cfg);
} decap_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32); /* IPv4 VIP, network order */
	__type(value, __u32);
} decap_vips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct in6_addr); /* IPv6 VIP */
	__type(value, __u32);
} decap_vips6 SEC(".maps");

/* 0: decapsulated, 1: passed (not IP-in-IP or not for a VIP), 2: malformed. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u64);
} decap_stats SEC(".maps");

static __always_inline int done(__u32 what, int verdict)
{
	__u64 *n = bpf_map_lookup_elem(&decap_stats, &what);
	if (n)
		*n += 1;
	return verdict;
}

/* strip moves the Ethernet header onto the outer IP header, then drops
 * the bytes in front of it. */
static __always_inline int strip(struct xdp_md *ctx, struct ethhdr *eth, int outer_len)
{
	struct ethhdr copy = *eth;
	if (outer_len == (int)sizeof(struct ipv6hdr)) {
		struct ethhdr *neth = (void *)eth + sizeof(struct ipv6hdr);
		__builtin_memcpy(neth, &copy, sizeof(copy));
	} else {
		struct ethhdr *neth = (void *)eth + sizeof(struct iphdr);
		__builtin_memcpy(neth, &copy, sizeof(copy));
	}
	if (bpf_xdp_adjust_head(ctx, outer_len))
		return done(2, XDP_DROP);
	return done(0, XDP_PASS);
}

/* ip6ip6: an outer IPv6 header whose next header is IPv6 (41). */
static __always_inline int decap6(struct xdp_md *ctx, struct ethhdr *eth, void *data_end)
{
	struct ipv6hdr *outer = (void *)(eth + 1);
	if ((void *)(outer + 1) > data_end || outer->nexthdr != 41)
		return done(1, XDP_PASS);
	struct ipv6hdr *inner = outer + 1;
	if ((void *)(inner + 1) > data_end || inner->version != 6)
		return done(2, XDP_DROP);
	__u32 zero = 0;
	struct decap_cfg *cfg = bpf_map_lookup_elem(&decap_config, &zero);
	if (!cfg)
		return XDP_PASS;
	if (!cfg->any_vip && !bpf_map_lookup_elem(&decap_vips6, &inner->daddr))
		return done(1, XDP_PASS);
	/* The inner header sits where the outer one ends: the Ethernet
	 * header moves 40 bytes up and keeps its EtherType (IPv6). */
	return strip(ctx, eth, sizeof(struct ipv6hdr));
}

SEC("xdp")
int mbx_decap(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return XDP_PASS;
	if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		return decap6(ctx, eth, data_end);
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	struct iphdr *outer = (void *)(eth + 1);
	if ((void *)(outer + 1) > data_end || outer->protocol != IPPROTO_IPIP)
		return done(1, XDP_PASS);
	if (outer->ihl != 5 || outer->version != 4 || (outer->frag_off & bpf_htons(0x3fff)))
		return done(2, XDP_PASS); /* options or a fragment: the kernel's to judge */
	struct iphdr *inner = outer + 1;
	if ((void *)(inner + 1) > data_end || inner->version != 4)
		return done(2, XDP_DROP);
	__u32 zero = 0;
	struct decap_cfg *cfg = bpf_map_lookup_elem(&decap_config, &zero);
	if (!cfg)
		return XDP_PASS;
	if (!cfg->any_vip && !bpf_map_lookup_elem(&decap_vips, &inner->daddr))
		return done(1, XDP_PASS);
	return strip(ctx, eth, sizeof(struct iphdr));
}
