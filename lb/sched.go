package lb

import (
	"slices"
	"sort"
)

// A Scheduler turns a service's real servers into a lookup table: a sequence
// of indices into reals. Datapaths pick table[position % len] for a new flow
// (rr, wrr). Real servers with weight 0 never appear (drained).
type Scheduler interface {
	Table(reals []Real) []int
}

// SchedulerFunc adapts a function to Scheduler.
type SchedulerFunc func(reals []Real) []int

func (f SchedulerFunc) Table(reals []Real) []int { return f(reals) }

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
	RegisterScheduler("rr", SchedulerFunc(roundRobin))
	RegisterScheduler("wrr", SchedulerFunc(weightedRoundRobin))
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
