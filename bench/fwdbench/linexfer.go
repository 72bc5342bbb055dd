package main

import (
	"runtime"
	"sort"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// lineTransferNs measures how long one cache line takes to move from CPU
// a to CPU b and back, halved: two threads pinned to the CPUs bounce a
// counter. It is the machine's state, printed beside every round: the
// generator writes each frame on CPU1 and the forwarder's first load of
// it on CPU0 waits for this transfer, so every ratio against
// xdp-redirect (whose loads do not depend on the frame) moves with it
// (docs/benchmarks.md, "The VM's state").
func lineTransferNs(a, b int) float64 {
	const trips = 20000
	var line struct {
		_ [64]byte
		v atomic.Uint64
		_ [56]byte
	}
	bounce := func(cpu int, first uint64, done chan<- time.Duration) {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		var set unix.CPUSet
		set.Set(cpu)
		if unix.SchedSetaffinity(0, &set) != nil {
			done <- 0
			return
		}
		t0 := time.Now()
		deadline := t0.Add(time.Second) // a descheduled peer must not hang the run
		for i := first; i < 2*trips; i += 2 {
			for spins := 0; line.v.Load() != i; spins++ {
				if spins&0xffff == 0 && time.Now().After(deadline) {
					done <- 0
					return
				}
			}
			line.v.Store(i + 1)
		}
		done <- time.Since(t0)
	}
	var samples []float64
	for r := 0; r < 3; r++ {
		line.v.Store(0)
		done := make(chan time.Duration, 2)
		go bounce(b, 1, done)
		go bounce(a, 0, done)
		d1, d2 := <-done, <-done
		if d1 == 0 || d2 == 0 {
			continue
		}
		samples = append(samples, float64(max(d1, d2).Nanoseconds())/trips/2)
	}
	if len(samples) == 0 {
		return 0
	}
	sort.Float64s(samples)
	return samples[len(samples)/2]
}
