/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* parse.h: header parsing with the verdicts documented in docs/datapath.md.
 * A packet we cannot parse far enough to know it is ours goes to the kernel
 * untouched (PARSE_NOT_OURS); one that is ours but broken is PARSE_BAD. */
#ifndef MBX_PARSE_H
#define MBX_PARSE_H

#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/in.h>
#include <bpf/bpf_endian.h>

#include "maps.h"

enum parse_result {
	PARSE_OK = 0,
	PARSE_NOT_IP,     /* not IPv4 (ARP, IPv6, VLAN, ...): kernel's business */
	PARSE_BAD_L3,     /* truncated or inconsistent IPv4 header: let the kernel count it */
	PARSE_OTHER_L4,   /* IPv4 but not TCP/UDP (ICMP, ...) */
	PARSE_FRAGMENT,   /* IPv4 fragment */
	PARSE_BAD_L4,     /* TCP/UDP header truncated or inconsistent */
};

struct pkt {
	struct ethhdr *eth;
	struct iphdr *ip4;
	void *l4;
	__u16 *l4_csum; /* NULL: UDP without checksum */
	__u8 tcp_flags; /* TCP flags byte (FIN=1 SYN=2 RST=4 ACK=16) */
	__u16 ip_len;   /* IPv4 total length */
	__u8 frag;      /* 0: whole datagram, FRAG_FIRST (has the ports), FRAG_LATER */
	struct flow_key key __attribute__((aligned(8))); /* written 8 bytes at a time: key_set4 */
};

/* The parsers write a connection key in whole 8-byte words, never field by
 * field: the table's hash reads the key back as 32-bit words and its
 * compare as 64-bit ones, and a load that spans several narrower stores
 * cannot be forwarded from the store buffer. It waits until they reach the
 * cache, which on a frame just written by another core is after the
 * frame's cache miss (docs/benchmarks.md: 10 ns a packet for the minimal
 * stateful forwarder, 0-2% for mbx).
 * Little-endian layout (bpfel): sport is the low half of the ports word
 * as loaded from the packet, dport the high half, proto the next byte. */
static __always_inline __u64 key_tail(__u32 ports, __u8 proto, __u8 family)
{
	return (__u64)ports | (__u64)proto << 32 | (__u64)family << 40;
}

/* The addresses as the IPv4 header holds them (saddr then daddr), and
 * the protocol without ports. */
static __always_inline void key_set4(struct flow_key *k, const struct iphdr *ip)
{
	__u64 *w = (__u64 *)k;
	w[0] = *(const __u64 *)&ip->saddr;
	w[1] = key_tail(0, ip->protocol, 0);
}

/* The last word again, with the ports (the first 4 bytes of TCP and UDP). */
static __always_inline void key_set_ports4(struct flow_key *k, const void *l4, __u8 proto)
{
	((__u64 *)k)[1] = key_tail(*(const __u32 *)l4, proto, 0);
}

/* ICMP echo: the identifier stands in for the ports (request: source
 * "port", reply: destination), as conntrack does, so SNAT can translate
 * pings like any flow. Returns 1 for an unfragmented echo request/reply. */
static __always_inline int parse_icmp_echo(void *data_end, struct pkt *p)
{
	struct iphdr *ip = p->ip4;
	if (!ip || p->key.proto != IPPROTO_ICMP || (ip->frag_off & bpf_htons(0x3fff)))
		return 0;
	__u8 *ic = (void *)ip + ip->ihl * 4;
	if ((void *)(ic + 8) > data_end)
		return 0;
	__u16 id = *(__u16 *)(ic + 4);
	if (ic[0] == 8 && ic[1] == 0) {
		p->key.sport = id;
		p->key.dport = 0;
	} else if (ic[0] == 0 && ic[1] == 0) {
		p->key.sport = 0;
		p->key.dport = id;
	} else {
		return 0;
	}
	p->l4 = ic;
	p->l4_csum = (__u16 *)(ic + 2);
	return 1;
}

#define FRAG_FIRST 1
#define FRAG_LATER 2

#define TH_FIN 0x01
#define TH_SYN 0x02
#define TH_RST 0x04
#define TH_ACK 0x10

/* vlan_walk steps over up to two 802.1Q/802.1ad tags after eth: *proto
 * becomes the inner EtherType and the result is where L3 starts; NULL when
 * a tag is cut short. With ids, the VLAN IDs (outer first) and their count
 * *n are recorded. */
static __always_inline void *vlan_walk(struct ethhdr *eth, void *data_end, __u16 *proto, __u16 *ids, __u8 *n)
{
	void *l3 = eth + 1;
	*proto = eth->h_proto;
#pragma unroll
	for (int i = 0; i < 2; i++) {
		if (*proto != bpf_htons(ETH_P_8021Q) && *proto != bpf_htons(ETH_P_8021AD))
			break;
		__u16 *tag = l3;
		if ((void *)(tag + 2) > data_end)
			return 0;
		if (ids) {
			ids[i] = bpf_ntohs(tag[0]) & 0x0fff;
			*n = i + 1;
		}
		*proto = tag[1];
		l3 = tag + 2;
	}
	return l3;
}

static __always_inline int parse_ipv4(void *data, void *data_end, struct pkt *p)
{
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return PARSE_NOT_IP;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return PARSE_NOT_IP;
	p->eth = eth;

	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return PARSE_BAD_L3;
	if (ip->version != 4 || ip->ihl < 5)
		return PARSE_BAD_L3;
	__u32 hlen = ip->ihl * 4;
	__u16 tot = bpf_ntohs(ip->tot_len);
	if (tot < hlen || (void *)ip + tot > data_end)
		return PARSE_BAD_L3;
	p->ip4 = ip;
	p->ip_len = tot;

	/* Every verdict below looks at the addresses (mbx.c). */
	key_set4(&p->key, ip);
	__u8 proto = ip->protocol;
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return PARSE_OTHER_L4;
	/* A fragment offset: no transport header (frag.h finds the ports). A
	 * first fragment (MF, offset 0) has it and is parsed on. */
	if (ip->frag_off & bpf_htons(0x1fff)) {
		p->frag = FRAG_LATER;
		return PARSE_FRAGMENT;
	}
	if (ip->frag_off & bpf_htons(0x2000))
		p->frag = FRAG_FIRST;

	void *l4 = (void *)ip + hlen;
	p->l4 = l4;
	__u32 l4len = tot - hlen;
	if (proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;
		if ((void *)(th + 1) > data_end)
			return PARSE_BAD_L4;
		if (th->doff < 5 || th->doff * 4 > l4len)
			return PARSE_BAD_L4;
		key_set_ports4(&p->key, th, proto);
		p->l4_csum = &th->check;
		p->tcp_flags = ((__u8 *)th)[13];
	} else {
		struct udphdr *uh = l4;
		if ((void *)(uh + 1) > data_end)
			return PARSE_BAD_L4;
		__u16 ulen = bpf_ntohs(uh->len);
		/* A first fragment's UDP length is the whole datagram's. */
		if (ulen < sizeof(*uh) || (ulen > l4len && !p->frag))
			return PARSE_BAD_L4;
		key_set_ports4(&p->key, uh, proto);
		p->l4_csum = uh->check ? &uh->check : 0;
	}
	return PARSE_OK;
}

#endif
