//go:build dpdk

package rte

import (
	"encoding/binary"
	"fmt"
	"testing"
)

// A full ring refuses a packet, which stays in its burst (freed with it);
// what it took comes out in order with its bytes, view and tag.
func TestRingHandTake(t *testing.T) {
	mp, err := NewMempool(fmt.Sprintf("p%d", poolSeq.Add(1)), 1023)
	if err != nil {
		t.Fatal(err)
	}
	avail := mp.Available()
	r := NewRing(4)
	in, out := NewBurst(8), NewBurst(8)
	defer in.Close()
	defer out.Close()
	if err := in.Alloc(mp, 8); err != nil {
		t.Fatal(err)
	}
	handed := 0
	for i := range 8 {
		if err := in.SetLen(i, 60+i); err != nil {
			t.Fatal(err)
		}
		in.Data(i)[0] = byte(i)
		if in.Hand(i, r, 100+i) {
			handed++
		}
	}
	if handed != 4 || r.Len() != 4 {
		t.Fatalf("a ring of 4 took %d packets (holds %d)", handed, r.Len())
	}
	in.Free() // the four it refused
	tags := make([]int, 8)
	if n := out.Take(r, tags); n != 4 || r.Len() != 0 {
		t.Fatalf("took %d, %d left", n, r.Len())
	}
	for i := range 4 {
		if d := out.Data(i); d[0] != byte(i) || len(d) != 60+i || tags[i] != 100+i {
			t.Errorf("packet %d: first byte %d, %d bytes, tag %d", i, d[0], len(d), tags[i])
		}
	}
	out.Free()
	if mp.Available() != avail {
		t.Errorf("%d buffers in the pool, %d before", mp.Available(), avail)
	}
}

// One producer and one consumer goroutine, as two workers: every packet
// arrives once, in order.
func TestRingConcurrent(t *testing.T) {
	mp, err := NewMempool(fmt.Sprintf("p%d", poolSeq.Add(1)), 1023)
	if err != nil {
		t.Fatal(err)
	}
	const total = 200000
	r := NewRing(256)
	done := make(chan error)
	go func() {
		b := NewBurst(32)
		defer b.Close()
		tags := make([]int, 32)
		next := 0
		for next < total {
			n := b.Take(r, tags)
			for i := range n {
				if got := int(binary.BigEndian.Uint32(b.Data(i))); got != next || tags[i] != next {
					done <- fmt.Errorf("packet %d arrived as %d (tag %d)", next, got, tags[i])
					b.Free()
					return
				}
				next++
			}
			b.Free()
		}
		done <- nil
	}()
	b := NewBurst(32)
	defer b.Close()
	for seq := 0; seq < total; {
		n := min(32, total-seq)
		for b.Alloc(mp, n) != nil {
			// the consumer frees them
		}
		for i := range n {
			if err := b.SetLen(i, 60); err != nil {
				t.Fatal(err)
			}
			binary.BigEndian.PutUint32(b.Data(i), uint32(seq+i))
			for !b.Hand(i, r, seq+i) {
			}
		}
		b.Free()
		seq += n
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// A handoff's own cost per packet, both ends on one goroutine (between
// cores, add a cache line's transfer).
func BenchmarkRingHandoff(b *testing.B) {
	mp, err := NewMempool(fmt.Sprintf("p%d", poolSeq.Add(1)), 1023)
	if err != nil {
		b.Fatal(err)
	}
	r := NewRing(1024)
	in, out := NewBurst(32), NewBurst(32)
	defer in.Close()
	defer out.Close()
	tags := make([]int, 32)
	if err := in.Alloc(mp, 32); err != nil {
		b.Fatal(err)
	}
	pkts := 0
	for b.Loop() {
		for i := range 32 {
			in.Hand(i, r, i)
		}
		out.Take(r, tags)
		for i := range 32 { // back, for the next round
			out.Hand(i, r, i)
		}
		in.Take(r, tags)
		pkts += 64
	}
	in.Free()
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(pkts), "ns/pkt")
}
