package lb

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"sort"

	"github.com/mbx-net/mbx/flow"
)

// MaglevDefaultSize is the default lookup table size (a prime, as Maglev
// needs; Katran and IPVS use the same).
const MaglevDefaultSize = 65537

// MaglevMaxSize bounds a table so a change always fits the datapath.
const MaglevMaxSize = 1<<19 + 1 // not prime itself: only a bound

// MaglevParams set the Maglev tables of the whole node. Every node of a
// cluster must use the same values to build identical tables.
type MaglevParams struct {
	Size int    `json:"size" yaml:"size"`
	Seed uint32 `json:"seed" yaml:"seed"`
}

func (p MaglevParams) withDefaults() MaglevParams {
	if p.Size == 0 {
		p.Size = MaglevDefaultSize
	}
	return p
}

func (p MaglevParams) validate() error {
	if p.Size == 0 {
		return nil
	}
	if p.Size < 7 || p.Size > MaglevMaxSize || !isPrime(p.Size) {
		return fmt.Errorf("maglev table size %d must be a prime between 7 and %d", p.Size, MaglevMaxSize)
	}
	return nil
}

func isPrime(n int) bool {
	if n < 2 {
		return false
	}
	for d := 2; d*d <= n; d++ {
		if n%d == 0 {
			return false
		}
	}
	return true
}

// realHash hashes a real server's identity (address and port) with a seed;
// murmur3-style mixing as in flow/, so any node computes the same values.
func realHash(a netip.Addr, port uint16, seed uint32) uint32 {
	b := a.As16()
	h := seed
	for i := 0; i < 16; i += 4 {
		h = flow.HashMix(h, binary.LittleEndian.Uint32(b[i:]))
	}
	return flow.HashFinal(h ^ uint32(port))
}

// Maglev builds the weighted Maglev lookup table (Eisenbud et al., NSDI
// 2016) with Katran's weighting: in each round every real gains its weight
// in credit and claims its next preferred free slot per max-weight credit.
// Each real stops at its quota, its exact share of the table rounded by the
// largest-remainder method, so no real is more than one slot off its weight
// (an uncapped last round would give early reals an extra slot).
// Reals with weight 0 get no slot. The result lists indices into reals,
// len(result) == size.
func Maglev(reals []Real, p MaglevParams) []int {
	p = p.withDefaults()
	m := uint32(p.Size)
	type cand struct {
		idx          int
		pos, skip    uint32 // current preference: offset + next*skip (mod m)
		weight, cred int
		quota, got   int
	}
	var cs []cand
	maxW := 0
	for i, r := range reals {
		if r.Weight <= 0 {
			continue
		}
		h1 := realHash(r.Addr, r.Port, p.Seed)
		h2 := realHash(r.Addr, r.Port, p.Seed^0x9e3779b9)
		cs = append(cs, cand{idx: i, pos: h1 % m, skip: h2%(m-1) + 1, weight: r.Weight})
		maxW = max(maxW, r.Weight)
	}
	if len(cs) == 0 {
		return nil
	}
	// Quotas by largest remainder; ties by position, deterministically.
	total := 0
	for _, c := range cs {
		total += c.weight
	}
	type rem struct{ i, r int }
	var rems []rem
	assigned := 0
	for i := range cs {
		q := int(uint64(m) * uint64(cs[i].weight) / uint64(total))
		cs[i].quota = q
		assigned += q
		rems = append(rems, rem{i, int(uint64(m) * uint64(cs[i].weight) % uint64(total))})
	}
	sort.SliceStable(rems, func(a, b int) bool { return rems[a].r > rems[b].r })
	for k := 0; assigned < int(m); k++ {
		cs[rems[k].i].quota++
		assigned++
	}
	entry := make([]int32, m)
	for i := range entry {
		entry[i] = -1
	}
	filled := uint32(0)
	for {
		for i := range cs {
			c := &cs[i]
			if c.got >= c.quota {
				continue
			}
			c.cred += c.weight
			for c.cred >= maxW && c.got < c.quota {
				c.cred -= maxW
				// Next preferred slot of this real that is still free;
				// stepping by skip (mod m) walks its permutation.
				for entry[c.pos] >= 0 {
					if c.pos += c.skip; c.pos >= m {
						c.pos -= m
					}
				}
				entry[c.pos] = int32(c.idx)
				if c.pos += c.skip; c.pos >= m {
					c.pos -= m
				}
				c.got++
				filled++
				if filled == m {
					out := make([]int, m)
					for j, e := range entry {
						out[j] = int(e)
					}
					return out
				}
			}
		}
	}
}
