package lb

import (
	"net/netip"
	"slices"
	"testing"
)

func reals(weights ...int) []Real {
	var r []Real
	for i, w := range weights {
		r = append(r, Real{Addr: netip.AddrFrom4([4]byte{198, 18, 1, byte(i + 2)}), Weight: w, Forward: FullNAT})
	}
	return r
}

func counts(t []int, n int) []int {
	c := make([]int, n)
	for _, i := range t {
		c[i]++
	}
	return c
}

func TestSchedulerTables(t *testing.T) {
	for _, tc := range []struct {
		sched   string
		weights []int
		want    []int // occurrences per real
		seq     []int // exact table, when it matters
	}{
		{"rr", []int{1, 1}, []int{1, 1}, []int{0, 1}},
		{"rr", []int{5, 1, 0}, []int{1, 1, 0}, []int{0, 1}},
		{"rr", []int{0, 0}, []int{0, 0}, nil},
		{"wrr", []int{3, 1}, []int{3, 1}, []int{0, 0, 0, 1}},
		{"wrr", []int{4, 3, 2}, []int{4, 3, 2}, []int{0, 0, 1, 0, 1, 2, 0, 1, 2}},
		{"wrr", []int{100, 100}, []int{1, 1}, []int{0, 1}},
		{"wrr", []int{0, 7}, []int{0, 1}, []int{1}},
		{"wrr", []int{0, 0}, []int{0, 0}, nil},
	} {
		s, ok := LookupScheduler(tc.sched)
		if !ok {
			t.Fatalf("%s not registered", tc.sched)
		}
		table := s.Table(reals(tc.weights...), MaglevParams{})
		if got := counts(table, len(tc.weights)); !slices.Equal(got, tc.want) {
			t.Errorf("%s %v: counts %v, want %v", tc.sched, tc.weights, got, tc.want)
		}
		if tc.seq != nil && !slices.Equal(table, tc.seq) {
			t.Errorf("%s %v: table %v, want %v", tc.sched, tc.weights, table, tc.seq)
		}
	}
}

func TestWRRLargeWeightsAreScaled(t *testing.T) {
	s, _ := LookupScheduler("wrr")
	table := s.Table(reals(65535, 65534, 1, 40000), MaglevParams{})
	if len(table) > MaxTable {
		t.Fatalf("table of %d slots exceeds %d", len(table), MaxTable)
	}
	c := counts(table, 4)
	if c[2] < 1 {
		t.Fatal("a live real server vanished when scaling")
	}
	if r := float64(c[0]) / float64(c[3]); r < 1.6 || r > 1.7 {
		t.Fatalf("scaled ratio %v, want about 65535/40000", r)
	}
}

// Deterministic: the same input gives the same table (ECMP peers agree).
func TestTablesAreDeterministic(t *testing.T) {
	for _, name := range Schedulers() {
		s, _ := LookupScheduler(name)
		a := s.Table(reals(3, 5, 7, 0, 2), MaglevParams{})
		for i := 0; i < 10; i++ {
			if b := s.Table(reals(3, 5, 7, 0, 2), MaglevParams{}); !slices.Equal(a, b) {
				t.Fatalf("%s: tables differ between runs", name)
			}
		}
	}
}
