package lb

import (
	"math"
	"net/netip"
	"testing"
)

func manyReals(n int, weight func(i int) int) []Real {
	r := make([]Real, n)
	for i := range r {
		r[i] = Real{Addr: netip.AddrFrom4([4]byte{198, 18, byte(2 + i/250), byte(i % 250)}), Port: 80, Weight: weight(i), Forward: FullNAT}
	}
	return r
}

// Each real's share of the table follows its weight: within one slot of the
// exact share (quotas by largest remainder). Relative to the share that is
// within 1% where a real has 100+ slots; with weights 1-4 over 1000 reals
// the worst is 1.09%, which no integer table of 65537 slots can beat (537
// fractional slots must land on someone).
func TestMaglevShares(t *testing.T) {
	for _, tc := range []struct {
		name   string
		n      int
		weight func(int) int
	}{
		{"1000 equal", 1000, func(int) int { return 1 }},
		{"1000 weights 1-4", 1000, func(i int) int { return 1 + i%4 }},
		{"10 weights 1-10", 10, func(i int) int { return i + 1 }},
		{"3 with one drained", 3, func(i int) int { return []int{5, 0, 5}[i] }},
	} {
		rs := manyReals(tc.n, tc.weight)
		table := Maglev(rs, MaglevParams{})
		if len(table) != MaglevDefaultSize {
			t.Fatalf("%s: table of %d", tc.name, len(table))
		}
		c := counts(table, tc.n)
		total := 0
		for _, r := range rs {
			total += r.Weight
		}
		worst := 0.0
		for i, r := range rs {
			want := float64(MaglevDefaultSize) * float64(r.Weight) / float64(total)
			diff := math.Abs(float64(c[i]) - want)
			if r.Weight == 0 && c[i] != 0 {
				t.Fatalf("%s: drained real %d has %d slots", tc.name, i, c[i])
			}
			if diff >= 1 {
				t.Errorf("%s: real %d has %d slots, want %.1f", tc.name, i, c[i], want)
			}
			if want > 0 {
				worst = max(worst, diff/want)
			}
		}
		t.Logf("%s: worst relative share error %.2f%%", tc.name, 100*worst)
	}
}

// movedAfterRemoval builds a table with build for n equal reals and for the
// same reals less one, and returns the fraction of slots that changed real.
func movedAfterRemoval(n int, build func([]Real) []int) float64 {
	rs := manyReals(n, func(int) int { return 1 })
	before := build(rs)
	gone := n / 2
	after := build(append(append([]Real(nil), rs[:gone]...), rs[gone+1:]...))
	moved := 0
	for i := range before {
		a := after[i]
		if a >= gone {
			a++ // indices after the removed real shifted by one
		}
		if before[i] != a {
			moved++
		}
	}
	return float64(moved) / float64(len(before))
}

// classicMaglev is the paper's unweighted population (Eisenbud et al.,
// NSDI 2016, pseudocode 1) over the same permutations as Maglev: the
// reference for how few flows a stateless Maglev table can move.
func classicMaglev(reals []Real, p MaglevParams) []int {
	p = p.withDefaults()
	m := uint32(p.Size)
	pos := make([]uint32, len(reals))
	skip := make([]uint32, len(reals))
	for i, r := range reals {
		pos[i] = realHash(r.Addr, r.Port, p.Seed) % m
		skip[i] = realHash(r.Addr, r.Port, p.Seed^0x9e3779b9)%(m-1) + 1
	}
	entry := make([]int, m)
	for i := range entry {
		entry[i] = -1
	}
	for filled := uint32(0); ; {
		for i := range reals {
			for entry[pos[i]] >= 0 {
				pos[i] = (pos[i] + skip[i]) % m
			}
			entry[pos[i]] = i
			pos[i] = (pos[i] + skip[i]) % m
			if filled++; filled == m {
				return entry
			}
		}
	}
}

// Removing one of N real servers moves the removed real's own 1/N of the
// table plus Maglev's cascade (preference lists shift when a real's claims
// disappear), which grows as M/N shrinks: measured 1.02/N at N=10, 1.56/N at
// N=100, 6.8/N at N=1000 (0.68%; 0.49% with M=524287). The weighted build
// must move no more than the paper's own algorithm does on the same reals
// (0.68% there too at N=1000): that is "as few as Maglev allows".
func TestMaglevDisruption(t *testing.T) {
	for _, n := range []int{10, 100, 1000} {
		frac := movedAfterRemoval(n, func(rs []Real) []int { return Maglev(rs, MaglevParams{}) })
		ref := movedAfterRemoval(n, func(rs []Real) []int { return classicMaglev(rs, MaglevParams{}) })
		t.Logf("N=%d: removing one real moved %.4f of flows (paper's Maglev %.4f, 1/N = %.4f)", n, frac, ref, 1/float64(n))
		if frac > ref*1.05+0.0005 {
			t.Errorf("N=%d: %.4f of flows moved, the paper's Maglev moves %.4f", n, frac, ref)
		}
		if limit := 2.5 / float64(n); n < 1000 && frac > limit {
			t.Errorf("N=%d: %.4f of flows moved, want at most %.4f", n, frac, limit)
		}
	}
}

func TestMaglevDeterministicAndSeeded(t *testing.T) {
	rs := manyReals(50, func(i int) int { return 1 + i%3 })
	a := Maglev(rs, MaglevParams{Seed: 7})
	b := Maglev(rs, MaglevParams{Seed: 7})
	c := Maglev(rs, MaglevParams{Seed: 8})
	same, diff := true, 0
	for i := range a {
		same = same && a[i] == b[i]
		if a[i] != c[i] {
			diff++
		}
	}
	if !same {
		t.Fatal("same input and seed gave different tables")
	}
	if diff == 0 {
		t.Fatal("the seed does not change the table")
	}
	if len(Maglev(rs, MaglevParams{Size: 251})) != 251 {
		t.Fatal("size not honoured")
	}
}

func TestMaglevParamsValidation(t *testing.T) {
	for _, size := range []int{65536, 4, 1 << 21} {
		if (MaglevParams{Size: size}).validate() == nil {
			t.Errorf("size %d accepted", size)
		}
	}
	if err := (MaglevParams{Size: 131071}).validate(); err != nil {
		t.Error(err)
	}
}

// BenchmarkMaglevBuild: 1000 weighted real servers, M = 65537 (issue 4
// target: at most 5 ms).
func BenchmarkMaglevBuild(b *testing.B) {
	rs := manyReals(1000, func(i int) int { return 1 + i%4 })
	for b.Loop() {
		Maglev(rs, MaglevParams{})
	}
}
