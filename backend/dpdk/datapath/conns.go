package datapath

import "github.com/mbx-net/mbx/flow"

// key is a flow.Key as the table holds it: IPv4 only, 16 bytes without
// pointers, so the map hashes it in one memhash (a flow.Key with
// netip.Addrs costs twice as much per lookup).
type key struct {
	src, dst     [4]byte
	sport, dport uint16
	proto        uint8
}

func keyOf(k flow.Key) key {
	return key{k.Src.As4(), k.Dst.As4(), k.SrcPort, k.DstPort, k.Proto}
}

// entry is one direction of a connection (struct conn in bpf/maps.h): the
// rewrite for its packets, its checksum deltas, the TCP state (kept equal
// in both entries) and the twin's key.
type entry struct {
	src, dst     [4]byte
	sport, dport uint16
	csumL3       uint32
	csumL4       uint32
	svc          *service
	real         int
	state        flow.State
	reply        bool
	mode         uint8 // modeFNAT, modeDR, modeNAT, modeTUN
	single       bool  // no twin (DR: replies do not come back)
	lastSeen     int64 // unix ns
	twin         key
	// The next hop, memoized while nhGen is the datapath's neighbour
	// generation (bpf/nat.h next_hop keeps the same in struct conn).
	nhGen  uint64
	nhPort int
	nhMAC  [6]byte
}

const (
	modeFNAT = iota
	modeDR
	modeNAT
	modeTUN
)

// table is a connection table: entries in a slab (no allocation per
// connection), found through a map from flow key to slab index. conns
// holds IPv4 flows, conns6 IPv6 ones (v6.go).
type table[K comparable, E any] struct {
	index map[K]int32
	slab  []E
	free  []int32
}

type conns = table[key, entry]

func newConns(max int) *conns { return newTable[key, entry](max) }

func newTable[K comparable, E any](max int) *table[K, E] {
	c := &table[K, E]{index: make(map[K]int32, max), slab: make([]E, max), free: make([]int32, max)}
	for i := range c.free {
		c.free[i] = int32(max - 1 - i)
	}
	return c
}

func (c *table[K, E]) len() int { return len(c.index) }

func (c *table[K, E]) get(k K) *E {
	if i, ok := c.index[k]; ok {
		return &c.slab[i]
	}
	return nil
}

// add inserts k unless it exists; nil when it exists or the table is full.
func (c *table[K, E]) add(k K) *E {
	if _, ok := c.index[k]; ok || len(c.free) == 0 {
		return nil
	}
	i := c.free[len(c.free)-1]
	c.free = c.free[:len(c.free)-1]
	c.index[k] = i
	var zero E
	c.slab[i] = zero
	return &c.slab[i]
}

func (c *table[K, E]) del(k K) bool {
	i, ok := c.index[k]
	if !ok {
		return false
	}
	delete(c.index, k)
	c.free = append(c.free, i)
	return true
}
