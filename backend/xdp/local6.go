package xdp

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/mbx-net/mbx/lb"
)

// local6 (lb6.h) holds the addresses mbx_lb6 owns (IPv6 VIPs and LIPs, a
// NAT64 service's IPv4 LIPs), each in a slot of its hash's bucket. The
// slot is the address's id (lid) in every IPv6 connection key, so an
// address keeps its slot for as long as it is local: Go places new ones in
// a free slot and never moves one.
const (
	local6Slots = 65536
	local6Ways  = 4
	lidNone     = 0xffff // never placed
)

// local6Bucket is lb6.h's local6_bucket: the first slot of a's bucket.
func local6Bucket(a [4]uint32, family uint8) uint32 {
	h := a[0]*0x9e3779b1 + a[1]*0x85ebca77 + a[2]*0xc2b2ae3d + a[3]*0x27d4eb2f + uint32(family)*0x165667b1
	h ^= h >> 16
	h *= 0x7feb352d
	h ^= h >> 15
	return (h >> 18) * local6Ways
}

// local6Table is Go's copy of local6.
type local6Table struct {
	lid  map[mbxLocalKey]uint16
	addr map[uint16]mbxLocalKey
	// Slots of removed addresses, cleared in the datapath but not free
	// yet: connection entries may still name them, and another address
	// placed there would inherit those entries. The sweep deletes the
	// entries (no packet can reach them now) and frees the slot on the
	// pass after the last one that found any (an entry made by a packet
	// in flight at the removal is caught by it). Value: passes so far.
	retired map[uint16]int
}

func newLocal6Table() local6Table {
	return local6Table{lid: map[mbxLocalKey]uint16{}, addr: map[uint16]mbxLocalKey{}, retired: map[uint16]int{}}
}

// local6Plan is what one Apply changes in local6.
type local6Plan struct {
	add    map[mbxLocalKey]uint16
	remove []mbxLocalKey
}

// plan places the addresses of want that are not placed yet and lists the
// placed ones want drops. It changes nothing: a full bucket is an error
// before anything is written.
func (t *local6Table) plan(want map[mbxLocalKey]bool) (local6Plan, error) {
	p := local6Plan{add: map[mbxLocalKey]uint16{}}
	taken := map[uint16]bool{}
	for lid := range t.addr {
		taken[lid] = true
	}
	for lid := range t.retired {
		taken[lid] = true
	}
	// Sorted, so the same configuration places alike on every run.
	keys := slices.SortedFunc(maps.Keys(want), func(a, b mbxLocalKey) int {
		if c := cmp.Compare(a.Family, b.Family); c != 0 {
			return c
		}
		return slices.Compare(a.Addr[:], b.Addr[:])
	})
	for _, k := range keys {
		if _, ok := t.lid[k]; ok {
			continue
		}
		base := local6Bucket(k.Addr, k.Family)
		placed := false
		for i := uint32(0); i < local6Ways; i++ {
			lid := uint16(base + i)
			if base+i == lidNone || taken[lid] {
				continue
			}
			taken[lid] = true
			p.add[k] = lid
			placed = true
			break
		}
		if !placed {
			return local6Plan{}, fmt.Errorf("local address %s: %d others already hash alike (the datapath's local6 bucket is full); use another address",
				wordsAddr(k.Addr, k.Family), local6Ways)
		}
	}
	for k := range t.lid {
		if !want[k] {
			p.remove = append(p.remove, k)
		}
	}
	return p, nil
}

// writeAdds places a plan's new addresses (before the services that use
// them, so a new VIP's first packet finds its slot).
func (b *Backend) writeLocal6Adds(p local6Plan) error {
	for k, lid := range p.add {
		if err := b.objs.Local6.Put(uint32(lid), mbxLocal6Slot{Addr: k.Addr, Family: k.Family}); err != nil {
			return fmt.Errorf("local6: %w", err)
		}
		b.local6.lid[k] = lid
		b.local6.addr[lid] = k
	}
	return nil
}

// writeLocal6Removes frees the slots of addresses no service uses any more.
func (b *Backend) writeLocal6Removes(p local6Plan) error {
	for _, k := range p.remove {
		lid := b.local6.lid[k]
		if err := b.objs.Local6.Put(uint32(lid), mbxLocal6Slot{}); err != nil {
			return fmt.Errorf("local6: %w", err)
		}
		delete(b.local6.lid, k)
		delete(b.local6.addr, lid)
		b.local6.retired[lid] = 0
	}
	return nil
}

// sweepRetired6 deletes the IPv6 connection entries that name retired
// slots and frees the slots that have had two clean passes.
func (b *Backend) sweepRetired6() int {
	b.mu.Lock()
	retired := maps.Clone(b.local6.retired)
	b.mu.Unlock()
	if len(retired) == 0 {
		return 0
	}
	var stale []mbxFlowKey6
	var k mbxFlowKey6
	var c mbxConn6
	it := b.objs.Conns6.Iterate()
	for it.Next(&k, &c) {
		if _, ok := retired[k.Lid]; ok {
			stale = append(stale, k)
		}
	}
	if it.Err() != nil {
		return 0 // the table changed under the walk: next pass
	}
	found := map[uint16]bool{}
	deleted := 0
	for i := range stale {
		found[stale[i].Lid] = true
		if b.objs.Conns6.Delete(&stale[i]) == nil {
			deleted++
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for lid := range retired {
		n, ok := b.local6.retired[lid]
		switch {
		case !ok:
		case found[lid]:
			b.local6.retired[lid] = 1 // deleted: one more pass to be sure
		case n+1 >= 2:
			delete(b.local6.retired, lid)
		default:
			b.local6.retired[lid] = n + 1
		}
	}
	return deleted
}

// wantLocal6 lists the addresses mbx_lb6 must know: every IPv6 service's
// VIP and LIPs (IPv4 ones for NAT64).
func wantLocal6(cfg *lb.Config) map[mbxLocalKey]bool {
	want := map[mbxLocalKey]bool{}
	for _, s := range cfg.Services {
		laddrs := make([]netip.Addr, len(s.LocalAddrs))
		for i, la := range s.LocalAddrs {
			laddrs[i] = la.Addr
		}
		addLocal6(want, s.Key, laddrs)
	}
	return want
}

// addLocal6 adds what local6 needs of one service (none for IPv4 ones).
func addLocal6(want map[mbxLocalKey]bool, k lb.ServiceKey, laddrs []netip.Addr) {
	if k.IsMatch() || !k.Addr.Is6() {
		return
	}
	want[localKey(k.Addr)] = true
	for _, la := range laddrs {
		want[localKey(la)] = true
	}
}

// readLocal6 fills Go's copy from a pinned local6 (adopted state).
func (b *Backend) readLocal6() error {
	var lid uint32
	var s mbxLocal6Slot
	it := b.objs.Local6.Iterate()
	for it.Next(&lid, &s) {
		if s.Family == 0 {
			continue
		}
		k := mbxLocalKey{Addr: s.Addr, Family: s.Family}
		b.local6.lid[k] = uint16(lid)
		b.local6.addr[uint16(lid)] = k
	}
	if err := it.Err(); err != nil {
		return err
	}
	// Entries that name no placed slot were left by a removal the previous
	// run had not swept yet: their slots stay retired until it is done.
	var k mbxFlowKey6
	var c mbxConn6
	cit := b.objs.Conns6.Iterate()
	for cit.Next(&k, &c) {
		if _, ok := b.local6.addr[k.Lid]; !ok && k.Lid != lidNone {
			b.local6.retired[k.Lid] = 0
		}
	}
	return nil // an iteration cut short by a busy table only retires fewer
}

// lidAddr is the address a connection key's lid names (the invalid
// address for one not placed).
func (t *local6Table) lidAddr(lid uint16) netip.Addr {
	k, ok := t.addr[lid]
	if !ok {
		return netip.Addr{}
	}
	return wordsAddr(k.Addr, k.Family)
}
