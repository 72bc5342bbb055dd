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

// conns is the connection table: entries in a slab (no allocation per
// connection), found through a map from flow key to slab index.
type conns struct {
	index map[key]int32
	slab  []entry
	free  []int32
}

func newConns(max int) *conns {
	c := &conns{index: make(map[key]int32, max), slab: make([]entry, max), free: make([]int32, max)}
	for i := range c.free {
		c.free[i] = int32(max - 1 - i)
	}
	return c
}

func (c *conns) len() int { return len(c.index) }

func (c *conns) get(k key) *entry {
	if i, ok := c.index[k]; ok {
		return &c.slab[i]
	}
	return nil
}

// add inserts k unless it exists; nil when it exists or the table is full.
func (c *conns) add(k key) *entry {
	if _, ok := c.index[k]; ok || len(c.free) == 0 {
		return nil
	}
	i := c.free[len(c.free)-1]
	c.free = c.free[:len(c.free)-1]
	c.index[k] = i
	c.slab[i] = entry{}
	return &c.slab[i]
}

func (c *conns) del(k key) bool {
	i, ok := c.index[k]
	if !ok {
		return false
	}
	delete(c.index, k)
	c.free = append(c.free, i)
	return true
}
