/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* clock.h: the datapath's clock, off the packet path's helper calls. */
#ifndef MBX_CLOCK_H
#define MBX_CLOCK_H

#include "maps.h"

struct clock_tick {
	__u64 jiffies;
	__u64 ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct clock_tick);
} clock_ticks SEC(".maps");

/* mbx_now is bpf_ktime_get_coarse_ns() (CLOCK_MONOTONIC_COARSE, the clock
 * Go's sweep reads) as this CPU saw it at its first packet of the current
 * jiffy. That clock moves only on the tick, so asking it once per tick is
 * enough, and keeps a helper call off every packet: the verifier inlines
 * bpf_jiffies64 (one load) and the per-CPU lookup, while a helper call is
 * dear where every return goes through a mitigation thunk (SRSO "Safe
 * RET" on this project's AMD machines: 3-7% of the forwarding cost,
 * docs/benchmarks.md). The tick updates jiffies before the clock, so a
 * CPU may run one tick behind another: comparisons of these times are
 * signed (a time a little in the future is fresh, not ancient). */
static __always_inline __u64 mbx_now(void)
{
	__u32 zero = 0;
	__u64 j = bpf_jiffies64();
	struct clock_tick *t = bpf_map_lookup_elem(&clock_ticks, &zero);
	if (!t)
		return bpf_ktime_get_coarse_ns();
	if (t->jiffies != j) {
		t->jiffies = j;
		t->ns = bpf_ktime_get_coarse_ns();
	}
	return t->ns;
}

#endif
