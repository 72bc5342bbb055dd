package xdp

import (
	"maps"
	"net"
	"net/netip"
	"time"

	"github.com/mbx-net/mbx/backend"
	"github.com/mbx-net/mbx/flow"
	"github.com/mbx-net/mbx/lb"
)

const sweepInterval = time.Second

// sweepResult is what the last sweep of the connection table counted.
type sweepResult struct {
	active, inactive map[uint32]uint64     // by real id
	lipConns         map[netip.Addr]uint64 // by LIP
	entries          int
}

// entryView is one connection-table entry of either table (conns, conns6),
// as Go reads it: the packet's tuple and its rewrite.
type entryView struct {
	proto          uint8
	src, dst       netip.AddrPort // the tuple the entry is keyed by
	newSrc, newDst netip.AddrPort // what the datapath rewrites it to
	realID         uint32
	state, flags   uint8
	lastSeen       uint64
}

// walk calls fn for each entry of both tables with whether its connection
// is alive (either direction fresh, as the datapath decides), and returns
// the keys of dead ones.
func (b *Backend) walk(fn func(e *entryView, alive bool, now uint64)) (dead []mbxFlowKey, dead6 []mbxFlowKey6) {
	b.mu.Lock()
	to := b.opts.Timeouts
	lids := local6Table{addr: maps.Clone(b.local6.addr)}
	b.mu.Unlock()
	now := monoNow()
	stale := func(state uint8, lastSeen uint64) bool {
		return int64(now-lastSeen) > int64(to[state%flow.NumStates])
	}
	var k mbxFlowKey
	var c mbxConn
	it := b.objs.Conns.Iterate()
	for it.Next(&k, &c) {
		alive := !stale(c.State, c.LastSeen)
		if !alive {
			var t mbxConn
			tk := twinKey(&k, &c)
			if err := b.objs.Conns.Lookup(&tk, &t); err == nil && !stale(t.State, t.LastSeen) {
				alive = true
			}
		}
		if !alive {
			dead = append(dead, k)
		}
		fn(&entryView{proto: k.Proto,
			src: netip.AddrPortFrom(addr4(k.Saddr), htons(k.Sport)), dst: netip.AddrPortFrom(addr4(k.Daddr), htons(k.Dport)),
			newSrc: netip.AddrPortFrom(addr4(c.Saddr), htons(c.Sport)), newDst: netip.AddrPortFrom(addr4(c.Daddr), htons(c.Dport)),
			realID: c.RealId, state: c.State, flags: c.Flags, lastSeen: c.LastSeen}, alive, now)
	}
	var k6 mbxFlowKey6
	var c6 mbxConn6
	it6 := b.objs.Conns6.Iterate()
	for it6.Next(&k6, &c6) {
		alive := !stale(c6.State, c6.LastSeen)
		if !alive {
			var t mbxConn6
			tk := twinKey6(&k6, &c6)
			if err := b.objs.Conns6.Lookup(&tk, &t); err == nil && !stale(t.State, t.LastSeen) {
				alive = true
			}
		}
		if !alive {
			dead6 = append(dead6, k6)
		}
		fn(&entryView{proto: k6.Proto,
			src: netip.AddrPortFrom(wordsAddr(k6.Saddr, k6.Family), htons(k6.Sport)), dst: netip.AddrPortFrom(lids.lidAddr(k6.Lid), htons(k6.Dport)),
			newSrc: netip.AddrPortFrom(wordsAddr(c6.Saddr, c6.OutFamily), htons(c6.Sport)), newDst: netip.AddrPortFrom(wordsAddr(c6.Daddr, c6.OutFamily), htons(c6.Dport)),
			realID: c6.RealId, state: c6.State, flags: c6.Flags, lastSeen: c6.LastSeen}, alive, now)
	}
	return dead, dead6
}

func twinKey(k *mbxFlowKey, c *mbxConn) mbxFlowKey {
	return mbxFlowKey{Saddr: c.Daddr, Daddr: c.Saddr, Sport: c.Dport, Dport: c.Sport, Proto: k.Proto}
}

func twinKey6(k *mbxFlowKey6, c *mbxConn6) mbxFlowKey6 {
	return mbxFlowKey6{Saddr: c.Daddr, Sport: c.Dport, Dport: c.Sport, Lid: c.TwinLid, Proto: k.Proto, Family: c.OutFamily}
}

// addr4 turns an address word of the datapath back into an address.
func addr4(w uint32) netip.Addr { return wordsAddr([4]uint32{w}, 2) }

// evictEstimate tells LRU evictions (which the kernel does not count) from
// deletions: every entry inserted since the first sweep is still in the
// table, was deleted (by the datapath, counted; or by a sweep or flush,
// counted here), or was evicted.
type evictEstimate struct {
	started             bool
	newConns0, deleted0 uint64 // datapath counters at the first sweep
	entries0            int
	swept               uint64 // entries deleted from Go
	evicted             uint64
}

func (e *evictEstimate) update(newConns, deleted uint64, entries int) {
	if !e.started {
		*e = evictEstimate{started: true, newConns0: newConns, deleted0: deleted, entries0: entries}
		return
	}
	gone := int64(2*(newConns-e.newConns0)) - int64(deleted-e.deleted0) - int64(e.swept) - int64(entries-e.entries0)
	if gone > int64(e.evicted) { // inserts racing the walk can make it dip
		e.evicted = uint64(gone)
	}
}

// counter sums datapath counter i (enum counter in consts.h) over CPUs.
func (b *Backend) counter(i int) (uint64, error) {
	var per []uint64
	if err := b.objs.Counters.Lookup(uint32(i), &per); err != nil {
		return 0, err
	}
	var v uint64
	for _, x := range per {
		v += x
	}
	return v, nil
}

// sweepOnce deletes dead connections (both entries) and recounts.
func (b *Backend) sweepOnce() {
	newConns, _ := b.counter(cntConnNew)
	deleted, _ := b.counter(cntEntryDeleted)
	r := sweepResult{active: map[uint32]uint64{}, inactive: map[uint32]uint64{}, lipConns: map[netip.Addr]uint64{}}
	dead, dead6 := b.walk(func(e *entryView, alive bool, _ uint64) {
		if !alive {
			return
		}
		r.entries++
		if e.flags&1 != 0 { // reply entry: keyed RS -> LIP (RS -> client for NAT)
			if e.flags&8 == 0 {
				r.lipConns[e.dst.Addr()]++
			}
			return
		}
		if flow.State(e.state) == flow.StateEstablished {
			r.active[e.realID]++
		} else {
			r.inactive[e.realID]++
		}
	})
	swept := 0
	for i := range dead {
		if b.objs.Conns.Delete(&dead[i]) == nil {
			swept++
		}
	}
	for i := range dead6 {
		if b.objs.Conns6.Delete(&dead6[i]) == nil {
			swept++
		}
	}
	swept += b.sweepRetired6()
	b.mu.Lock()
	b.sweep = r
	b.evict.swept += uint64(swept)
	b.evict.update(newConns, deleted, r.entries)
	// lc/wlc's counts: what the sweep saw replaces what the datapath
	// scheduled since the last one.
	for _, ps := range b.services {
		for _, id := range ps.reals {
			_ = b.objs.Loads.Put(id, mbxRealLoad{Active: uint32(r.active[id]), Inactive: uint32(r.inactive[id])})
		}
	}
	b.mu.Unlock()
}

func (b *Backend) startSweeper() {
	b.stop, b.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(b.done)
		t := time.NewTicker(sweepInterval)
		defer t.Stop()
		for {
			select {
			case <-b.stop:
				return
			case <-t.C:
				b.sweepOnce()
				// DR and tunnel packets are dropped while their next hop is
				// unresolved: keep those neighbours resolved, not only at Apply.
				b.resolveDirect()
			}
		}
	}()
}

// Snapshot reads counters; connection counts come from the last sweep.
func (b *Backend) Snapshot() (*backend.Snapshot, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := &backend.Snapshot{
		Services:   map[lb.ServiceKey]backend.Counters{},
		Reals:      map[backend.RealRef]backend.RealStatus{},
		Laddrs:     map[backend.LaddrRef]backend.LaddrStatus{},
		Datapath:   map[string]uint64{},
		Ifaces:     map[string]backend.Verdicts{},
		ConnsMax:   int(b.objs.Conns.MaxEntries() / 2),
		Entries:    b.sweep.entries,
		Evicted:    b.evict.evicted,
		LocalPorts: int(b.opts.PortHi) - int(b.opts.PortLo) + 1,
	}
	for k, ps := range b.services {
		total := b.retired[k]
		for ap, id := range ps.reals {
			c, err := b.realCounters(id)
			if err != nil {
				return nil, err
			}
			total.Add(c)
			s.Reals[backend.RealRef{Service: k, Real: ap}] = backend.RealStatus{
				Counters: c, Active: b.sweep.active[id], Inactive: b.sweep.inactive[id],
			}
		}
		s.Services[k] = total
		for i, a := range ps.laddrs {
			var per []uint64
			var conflicts uint64
			if err := b.objs.LaddrConflicts.Lookup(ps.entry.LaddrBase+uint32(i), &per); err == nil {
				for _, v := range per {
					conflicts += v
				}
			}
			s.Laddrs[backend.LaddrRef{Service: k, Addr: a}] = backend.LaddrStatus{Conns: b.sweep.lipConns[a], Conflicts: conflicts}
		}
	}
	for i, name := range counterNames {
		v, err := b.counter(i)
		if err != nil {
			return nil, err
		}
		s.Datapath[name] = v
	}
	var rx uint64
	for _, name := range b.opts.Ifaces {
		v := b.ifVerdicts(name)
		s.Ifaces[name] = v
		rx += v.Total()
	}
	s.Datapath["rx"] = rx
	return s, nil
}

// ifVerdicts sums an interface's slot of if_stats over CPUs.
func (b *Backend) ifVerdicts(name string) backend.Verdicts {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return backend.Verdicts{}
	}
	var per []mbxIfVerdicts
	if b.objs.IfStats.Lookup(uint32(ifi.Index%ifSlots), &per) != nil {
		return backend.Verdicts{}
	}
	var v backend.Verdicts
	for _, c := range per {
		if c.Ifindex != uint32(ifi.Index) && c.Ifindex != 0 {
			continue // another interface sharing the slot (warned at attach)
		}
		v.Aborted += c.Pkts[0]
		v.Drop += c.Pkts[1]
		v.Pass += c.Pkts[2]
		v.Tx += c.Pkts[3]
		v.Redirect += c.Pkts[4]
	}
	return v
}

// Conns lists live connections from their client-side entries.
func (b *Backend) Conns(limit int) ([]backend.Conn, error) {
	b.mu.Lock()
	svcByID := map[uint32]lb.ServiceKey{}
	for k, ps := range b.services {
		svcByID[ps.id] = k
	}
	b.mu.Unlock()
	var out []backend.Conn
	b.mu.Lock()
	to := b.opts.Timeouts
	b.mu.Unlock()
	b.walk(func(e *entryView, alive bool, now uint64) {
		if !alive || e.flags&1 != 0 || (limit > 0 && len(out) >= limit) {
			return
		}
		idle := time.Duration(now - e.lastSeen)
		out = append(out, backend.Conn{
			Proto:   lb.Proto(e.proto),
			Client:  e.src,
			Virtual: e.dst,
			Local:   e.newSrc,
			Real:    e.newDst,
			State:   flow.State(e.state),
			Expire:  max(0, to[e.state%flow.NumStates]-idle),
		})
	})
	return out, nil
}

// FlushConns deletes every connection-table entry (ipvsadm has no verb for
// this; it is for tests and benchmarks that need an empty table) and
// returns how many were removed.
func (b *Backend) FlushConns() (int, error) {
	var keys []mbxFlowKey
	var k mbxFlowKey
	var v mbxConn
	it := b.objs.Conns.Iterate()
	for it.Next(&k, &v) {
		keys = append(keys, k)
	}
	if err := it.Err(); err != nil {
		return 0, err
	}
	var keys6 []mbxFlowKey6
	var k6 mbxFlowKey6
	var v6 mbxConn6
	it6 := b.objs.Conns6.Iterate()
	for it6.Next(&k6, &v6) {
		keys6 = append(keys6, k6)
	}
	if err := it6.Err(); err != nil {
		return 0, err
	}
	n := 0
	if len(keys) > 0 {
		d, err := b.objs.Conns.BatchDelete(keys, nil)
		if err != nil {
			return d, err
		}
		n += d
	}
	if len(keys6) > 0 {
		d, err := b.objs.Conns6.BatchDelete(keys6, nil)
		n += d
		if err != nil {
			return n, err
		}
	}
	b.mu.Lock()
	b.evict.swept += uint64(n)
	b.mu.Unlock()
	return n, nil
}
