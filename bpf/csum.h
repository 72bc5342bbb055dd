/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* csum.h: incremental Internet checksum updates (RFC 1624).
 * XDP has no bpf_l3_csum_replace, and a rewrite's delta depends only on the
 * old and new tuple, so it is computed once per connection and stored. */
#ifndef MBX_CSUM_H
#define MBX_CSUM_H

/* Adds the difference between two 32-bit words (network order) to a
 * running one's-complement sum. */
static __always_inline __u32 csum_add_diff32(__u32 sum, __u32 from, __u32 to)
{
	sum += (~from & 0xffff) + (~from >> 16);
	sum += (to & 0xffff) + (to >> 16);
	return sum;
}

static __always_inline __u32 csum_add_diff16(__u32 sum, __u16 from, __u16 to)
{
	sum += (__u16)~from;
	sum += to;
	return sum;
}

static __always_inline __u16 csum_fold32(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

/* Applies a stored delta to a checksum field: HC' = ~(~HC + delta). */
static __always_inline void csum_apply(__u16 *field, __u32 delta)
{
	__u32 sum = (__u16)~*field;
	sum += csum_fold32(delta);
	*field = ~csum_fold32(sum);
}

/* Same for UDP, where 0 means "no checksum" and must never be produced. */
static __always_inline void csum_apply_udp(__u16 *field, __u32 delta)
{
	csum_apply(field, delta);
	if (*field == 0)
		*field = 0xffff;
}

#endif
