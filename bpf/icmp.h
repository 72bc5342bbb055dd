/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* icmp.h: ICMP errors (destination unreachable, fragmentation needed, time
 * exceeded) about a tracked connection's packets are translated like the
 * connection and sent to the side that sent the original packet; and mbx
 * answers "fragmentation needed" itself for a packet that will not fit its
 * egress after translation or encapsulation (PMTU discovery through mbx). */
#ifndef MBX_ICMP_H
#define MBX_ICMP_H

#include "maps.h"
#include "parse.h"
#include "csum.h"
#include "conn.h"
#include "nat.h"

static __always_inline int is_icmp_error(__u8 type)
{
	return type == ICMP_DEST_UNREACH || type == ICMP_TIME_EXCEEDED;
}

/* icmp_error translates an ICMP error about a tracked connection and sends
 * it on; anything else (echo, errors about other traffic) goes to the
 * kernel. The quoted packet is the one mbx sent (after translation); the
 * connection entry keyed by its reverse describes the other direction, and
 * its rewrite tells what the quoted packet looked like before translation
 * and where its sender is. */
static __attribute__((noinline)) int icmp_error(struct xdp_md *ctx, struct pkt *p,
						 const struct config *cfg, __u64 now)
{
	void *data_end = (void *)(long)ctx->data_end;
	struct iphdr *ip = p->ip4;
	if (!ip)
		return XDP_PASS;
	struct icmphdr *ic = (void *)ip + ip->ihl * 4;
	if ((void *)(ic + 1) > data_end || !is_icmp_error(ic->type))
		return XDP_PASS;
	struct iphdr *qip = (void *)(ic + 1);
	if ((void *)(qip + 1) > data_end || qip->version != 4 || qip->ihl != 5)
		return XDP_PASS;
	if (qip->protocol != IPPROTO_TCP && qip->protocol != IPPROTO_UDP)
		return XDP_PASS;
	__u16 *ports = (void *)(qip + 1);
	if ((void *)(ports + 4) > data_end)
		return XDP_PASS;

	struct flow_key k = {};
	k.saddr = qip->daddr;
	k.daddr = qip->saddr;
	k.sport = ports[1];
	k.dport = ports[0];
	k.proto = qip->protocol;
	struct conn *c = bpf_map_lookup_elem(&conns, &k);
	if (!c)
		return XDP_PASS;
	count(CNT_ICMP_ERROR);

	if (c->flags & (CONN_F_DR | CONN_F_TUN)) {
		/* The real server sent the quoted packet from the VIP itself:
		 * it gets the error as it is (DR) or tunnelled. */
		return send(ctx, c, &p->key, 0);
	}

	/* The quoted packet before translation: c's rewrite reversed. */
	__u32 qs = c->daddr, qd = c->saddr;
	__u16 qsp = c->dport, qdp = c->sport;
	/* The error goes to the quoted packet's sender, from c's source (the
	 * LIP for Full-NAT, the VIP when the NAT real server itself complains);
	 * a router's error about NAT traffic keeps the router as its source. */
	__u32 os = c->saddr, od = c->daddr;
	if ((c->flags & CONN_F_MASQ) && ip->saddr != qip->daddr)
		os = ip->saddr;

	__u32 dicmp = 0;
	/* Quoted IP header: addresses and its checksum. */
	__u32 dq = 0;
	dq = csum_add_diff32(dq, qip->saddr, qs);
	dq = csum_add_diff32(dq, qip->daddr, qd);
	__u16 oldqcheck = qip->check;
	dicmp = csum_add_diff32(dicmp, qip->saddr, qs);
	dicmp = csum_add_diff32(dicmp, qip->daddr, qd);
	qip->saddr = qs;
	qip->daddr = qd;
	csum_apply(&qip->check, dq);
	dicmp = csum_add_diff16(dicmp, oldqcheck, qip->check);
	/* Quoted ports, and the UDP checksum when there is one. */
	__u32 dl4 = dq;
	dl4 = csum_add_diff16(dl4, ports[0], qsp);
	dl4 = csum_add_diff16(dl4, ports[1], qdp);
	dicmp = csum_add_diff16(dicmp, ports[0], qsp);
	dicmp = csum_add_diff16(dicmp, ports[1], qdp);
	ports[0] = qsp;
	ports[1] = qdp;
	if (qip->protocol == IPPROTO_UDP && ports[3]) {
		__u16 old = ports[3];
		csum_apply_udp(&ports[3], dl4);
		dicmp = csum_add_diff16(dicmp, old, ports[3]);
	} else if (qip->protocol == IPPROTO_TCP) {
		/* TCP's checksum is quoted when the sender quoted 18+ bytes
		 * (Linux quotes up to 576). */
		__u16 *tcsum = (void *)ports + 16;
		if ((void *)(tcsum + 1) <= data_end) {
			__u16 old = *tcsum;
			csum_apply(tcsum, dl4);
			dicmp = csum_add_diff16(dicmp, old, *tcsum);
		}
	}
	csum_apply(&ic->checksum, dicmp);
	/* Outer header. */
	__u32 dout = 0;
	dout = csum_add_diff32(dout, ip->saddr, os);
	dout = csum_add_diff32(dout, ip->daddr, od);
	ip->saddr = os;
	ip->daddr = od;
	csum_apply(&ip->check, dout);
	/* c's next hop leads to od (c sends its own packets there). */
	return send(ctx, c, &p->key, XMIT_REWRITTEN);
}

#endif
