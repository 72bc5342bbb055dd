/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* hash.h: the flow hash. flow/hash.go computes the same value bit for bit,
 * so any node (or backend) derives the same LIP and local port for a flow.
 * Murmur3's mixing over the key's 32-bit words as they lie in memory. */
#ifndef MBX_HASH_H
#define MBX_HASH_H

#include "maps.h"

static __always_inline __u32 rotl32(__u32 x, int r)
{
	return (x << r) | (x >> (32 - r));
}

static __always_inline __u32 hash_mix(__u32 h, __u32 k)
{
	k *= 0xcc9e2d51;
	k = rotl32(k, 15);
	k *= 0x1b873593;
	h ^= k;
	h = rotl32(h, 13);
	return h * 5 + 0xe6546b64;
}

static __always_inline __u32 hash_final(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

static __always_inline __u32 flow_hash(const struct flow_key *k, __u32 seed)
{
	__u32 h = seed;
	h = hash_mix(h, k->saddr);
	h = hash_mix(h, k->daddr);
	h = hash_mix(h, (__u32)k->sport | ((__u32)k->dport << 16));
	h = hash_mix(h, (__u32)k->proto | ((__u32)AF_INET_ << 8));
	return hash_final(h ^ 16);
}

/* Scheduling hashes (flow/hash.go SchedIndex): mh re-mixes the flow hash so
 * the real-server pick and the LIP/port pick are independent; sh/dh hash one
 * address. */
#define SCHED_SALT 0x5bd1e995

static __always_inline __u32 sched_hash(__u32 addr, __u32 seed)
{
	return hash_final(hash_mix(seed ^ SCHED_SALT, addr));
}

/* Candidate i for a new Full-NAT connection's LIP and local port. */
#define PORT_CAND_STEP 0x9e3779b1

#endif
