package lb

import (
	"slices"
	"sort"
)

// Pick is how a datapath indexes a service's table for a new flow.
type Pick uint8

const (
	PickRoundRobin    Pick = iota // table[position++ % len] (rr, wrr)
	PickSource                    // table[hash(source address) % len] (sh)
	PickDest                      // table[hash(destination address) % len] (dh)
	PickFlow                      // table[hash(flow) % len] (mh: Maglev)
	PickLeast                     // least connections over the table (lc)
	PickLeastWeighted             // least connections per weight (wlc)
)

// LeastMax bounds the real servers of an lc/wlc service (the datapath
// scans them for every new connection).
const LeastMax = 256

// A Scheduler turns a service's real servers into a lookup table: indices
// into reals, which datapaths index as Pick says. Real servers with weight 0
// never appear (drained). Tables are computed here, once, for every backend.
type Scheduler interface {
	Table(reals []Real, p MaglevParams) []int
	Pick() Pick
}

type scheduler struct {
	table func(reals []Real, p MaglevParams) []int
	pick  Pick
}

func (s scheduler) Table(reals []Real, p MaglevParams) []int { return s.table(reals, p) }
func (s scheduler) Pick() Pick                               { return s.pick }

func sequence(f func([]Real) []int) func([]Real, MaglevParams) []int {
	return func(r []Real, _ MaglevParams) []int { return f(r) }
}

var schedulers = map[string]Scheduler{}

// RegisterScheduler makes a scheduler available by name (ipvsadm -s NAME).
func RegisterScheduler(name string, s Scheduler) { schedulers[name] = s }

// LookupScheduler returns the scheduler registered as name.
func LookupScheduler(name string) (Scheduler, bool) {
	s, ok := schedulers[name]
	return s, ok
}

// Schedulers lists the registered names, sorted.
func Schedulers() []string {
	var n []string
	for k := range schedulers {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

// MaxTable bounds a table's length; wrr weights are scaled down to fit.
const MaxTable = 1 << 16

func init() {
	RegisterScheduler("rr", scheduler{sequence(roundRobin), PickRoundRobin})
	RegisterScheduler("wrr", scheduler{sequence(weightedRoundRobin), PickRoundRobin})
	// Consistent hashing for all three hash schedulers: IPVS's sh/dh use a
	// 256-entry table that reshuffles on every change; Maglev moves ~1/N.
	RegisterScheduler("sh", scheduler{Maglev, PickSource})
	RegisterScheduler("dh", scheduler{Maglev, PickDest})
	RegisterScheduler("mh", scheduler{Maglev, PickFlow})
	// Least connections: the table lists each live real once; the datapath
	// scans it with the live connection counts.
	RegisterScheduler("lc", scheduler{sequence(roundRobin), PickLeast})
	RegisterScheduler("wlc", scheduler{sequence(roundRobin), PickLeastWeighted})
}

func roundRobin(reals []Real) []int {
	var t []int
	for i, r := range reals {
		if r.Weight > 0 {
			t = append(t, i)
		}
	}
	return t
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// weightedRoundRobin is IPVS's interleaved wrr: one cycle of its selection
// loop, so each real appears weight/gcd times, spread across the cycle.
func weightedRoundRobin(reals []Real) []int {
	w := make([]int, len(reals))
	sum, g, maxw := 0, 0, 0
	for i, r := range reals {
		w[i] = r.Weight
		sum += w[i]
		g = gcd(g, w[i])
		maxw = max(maxw, w[i])
	}
	if sum == 0 {
		return nil
	}
	if sum/g > MaxTable {
		// Scale proportionally; keep every live real at least once.
		for i := range w {
			if w[i] > 0 {
				w[i] = max(1, w[i]*MaxTable/sum)
			}
		}
		return weightedRoundRobin(realsWithWeights(reals, w))
	}
	n := sum / g
	t := make([]int, 0, n)
	i, cw := -1, 0
	for len(t) < n {
		i = (i + 1) % len(w)
		if i == 0 {
			cw -= g
			if cw <= 0 {
				cw = maxw
			}
		}
		if w[i] >= cw {
			t = append(t, i)
		}
	}
	return t
}

func realsWithWeights(reals []Real, w []int) []Real {
	r := slices.Clone(reals)
	for i := range r {
		r[i].Weight = w[i]
	}
	return r
}
