package xdp

import (
	"fmt"
	"sort"
)

// rangeAlloc hands out contiguous ranges of a fixed-size BPF array (the
// scheduler slots, the LIP list). First fit; adjacent free ranges merge.
type rangeAlloc struct {
	size int
	free []span // sorted by start
}

type span struct{ start, n int }

func newRangeAlloc(size int) *rangeAlloc {
	return &rangeAlloc{size: size, free: []span{{0, size}}}
}

func (a *rangeAlloc) alloc(n int) (int, error) {
	if n == 0 {
		return 0, nil
	}
	for i, f := range a.free {
		if f.n >= n {
			a.free[i] = span{f.start + n, f.n - n}
			if a.free[i].n == 0 {
				a.free = append(a.free[:i], a.free[i+1:]...)
			}
			return f.start, nil
		}
	}
	return 0, fmt.Errorf("out of table space: need %d contiguous entries of %d", n, a.size)
}

func (a *rangeAlloc) release(start, n int) {
	if n == 0 {
		return
	}
	a.free = append(a.free, span{start, n})
	sort.Slice(a.free, func(i, j int) bool { return a.free[i].start < a.free[j].start })
	merged := a.free[:1]
	for _, f := range a.free[1:] {
		last := &merged[len(merged)-1]
		if last.start+last.n == f.start {
			last.n += f.n
		} else {
			merged = append(merged, f)
		}
	}
	a.free = merged
}

// idAlloc hands out small integer ids; freed ids are reused oldest first so
// counters of a just-removed object are not immediately reused.
type idAlloc struct {
	next, max int
	free      []uint32
}

func (a *idAlloc) alloc() (uint32, error) {
	if a.next < a.max {
		a.next++
		return uint32(a.next - 1), nil
	}
	if len(a.free) == 0 {
		return 0, fmt.Errorf("out of ids (%d in use)", a.max)
	}
	id := a.free[0]
	a.free = a.free[1:]
	return id, nil
}

func (a *idAlloc) release(id uint32) { a.free = append(a.free, id) }
