/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* capture.h: `mbx capture` records packets at XDP entry and exit (before and
 * after translation) into a perf buffer. Off, it costs one array lookup and
 * a branch per packet. The filter is the function mbx_capture_filter:
 * `mbx capture` loads another instance of this program with that function's
 * instructions replaced by its compiled tcpdump expression (same maps) and
 * swaps it into the interface's link; the built-in one matches nothing. */
#ifndef MBX_CAPTURE_H
#define MBX_CAPTURE_H

#include "maps.h"

#define CAPTURE_ENTRY 0x1
#define CAPTURE_EXIT 0x2
#define CAPTURE_MAX_SNAP 4096 /* bytes per record; perf copies at most this */

struct capture_cfg {
	__u32 points;     /* CAPTURE_*; 0 = off */
	__u32 ifindex;    /* receiving interface; 0 = any */
	__u32 snaplen;
	__u32 rate;       /* records per second and CPU at most */
	__u64 remaining;  /* records left (count bound), shared by all CPUs */
};

/* A record's header; the packet bytes follow it. */
struct capture_meta {
	__u64 ts_ns;
	__u32 ifindex;
	__u32 pkt_len;
	__u32 cap_len;
	__u8 point;   /* CAPTURE_ENTRY or CAPTURE_EXIT */
	__u8 verdict; /* exit only */
	__u16 pad;
};

struct capture_window {
	__u64 start_ns;
	__u64 count;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct capture_cfg);
} capture_ctl SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct capture_window);
} capture_rate SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} capture_events SEC(".maps");

/* Replaced by `mbx capture`; must stay a separate (global, not inlined)
 * function. The volatile read keeps clang from folding the call away. */
__attribute__((noinline)) int mbx_capture_filter(struct xdp_md *ctx)
{
	volatile int match = 0;
	return ctx ? match : 0;
}

static __always_inline struct capture_cfg *capture_on(__u32 ifindex)
{
	__u32 zero = 0;
	struct capture_cfg *c = bpf_map_lookup_elem(&capture_ctl, &zero);
	if (!c || !c->points || (c->ifindex && c->ifindex != ifindex))
		return 0;
	return c;
}

static __always_inline void capture_emit(struct xdp_md *ctx, struct capture_cfg *c,
					 __u8 point, int verdict)
{
	__u32 zero = 0;
	__u64 now = bpf_ktime_get_ns();
	struct capture_window *w = bpf_map_lookup_elem(&capture_rate, &zero);
	if (!w)
		return;
	if (now - w->start_ns > 1000000000ULL) {
		w->start_ns = now;
		w->count = 0;
	}
	if (w->count >= c->rate)
		return;
	if (__sync_fetch_and_add(&c->remaining, -1) == 0) {
		/* The count is spent: undo, and stay spent. */
		__sync_fetch_and_add(&c->remaining, 1);
		return;
	}
	w->count++;
	struct capture_meta m = {
		.ts_ns = now,
		.ifindex = ctx->ingress_ifindex,
		.point = point,
		.verdict = (__u8)verdict,
	};
	__u64 len = (__u64)((long)ctx->data_end - (long)ctx->data);
	__u64 cap = len < c->snaplen ? len : c->snaplen;
	if (cap > CAPTURE_MAX_SNAP)
		cap = CAPTURE_MAX_SNAP;
	m.pkt_len = len;
	m.cap_len = cap;
	bpf_perf_event_output(ctx, &capture_events, BPF_F_CURRENT_CPU | (cap << 32), &m, sizeof(m));
}

#endif
