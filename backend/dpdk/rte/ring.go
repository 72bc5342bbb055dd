//go:build dpdk

package rte

/*
#cgo pkg-config: libdpdk
#include <rte_mbuf.h>
*/
import "C"

import (
	"sync/atomic"
	"unsafe"
)

// Ring hands packets from one polling goroutine to another: one producer,
// one consumer, no lock and no cgo call. DPDK's rte_ring would cost a cgo
// call per burst on each side; this one is a Go array of mbuf pointers
// (C memory, so the garbage collector ignores them) with two counters.
type Ring struct {
	slots []ringSlot
	mask  uint64
	_     [64]byte // head and tail on cache lines of their own
	head  atomic.Uint64
	_     [56]byte
	tail  atomic.Uint64
	_     [56]byte
}

type ringSlot struct {
	m   unsafe.Pointer // *C.struct_rte_mbuf
	p   packet
	tag int
}

// NewRing makes a ring of size slots (a power of two).
func NewRing(size int) *Ring {
	if size&(size-1) != 0 || size <= 0 {
		panic("rte.NewRing: size must be a power of two")
	}
	return &Ring{slots: make([]ringSlot, size), mask: uint64(size - 1)}
}

// Len is how many packets wait in the ring.
func (r *Ring) Len() int { return int(r.tail.Load() - r.head.Load()) }

// Hand moves packet i of b into r with tag (the consumer gets it back,
// e.g. the port it came in on); false when r is full, the packet then
// stays in b. Only the ring's one producer calls it.
func (b *Burst) Hand(i int, r *Ring, tag int) bool {
	t := r.tail.Load()
	if t-r.head.Load() > r.mask {
		return false
	}
	bufs := unsafe.Slice(b.bufs, len(b.pkts))
	r.slots[t&r.mask] = ringSlot{unsafe.Pointer(bufs[i]), b.pkts[i], tag}
	r.tail.Store(t + 1) // publishes the slot
	b.keep[i] = 2
	return true
}

// Take fills the empty burst b with up to its Cap packets from r and
// their tags (tags must hold Cap). Only the ring's one consumer calls it.
func (b *Burst) Take(r *Ring, tags []int) int {
	h := r.head.Load()
	n := min(int(r.tail.Load()-h), len(b.pkts))
	bufs := unsafe.Slice(b.bufs, len(b.pkts))
	for i := range n {
		s := &r.slots[(h+uint64(i))&r.mask]
		bufs[i] = (*C.struct_rte_mbuf)(s.m)
		b.pkts[i] = s.p
		tags[i] = s.tag
		s.m = nil
	}
	r.head.Store(h + uint64(n)) // frees the slots
	b.reset(n)
	return n
}
