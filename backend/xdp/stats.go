package xdp

import (
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

// pair walks the table calling fn for each entry with whether its
// connection is alive (either direction fresh, as the datapath decides).
func (b *Backend) walk(fn func(k *mbxFlowKey, c *mbxConn, alive bool, now uint64)) {
	b.mu.Lock()
	to := b.opts.Timeouts
	b.mu.Unlock()
	now := monoNow()
	stale := func(c *mbxConn) bool {
		return int64(now-c.LastSeen) > int64(to[c.State%flow.NumStates])
	}
	var k mbxFlowKey
	var c mbxConn
	it := b.objs.Conns.Iterate()
	for it.Next(&k, &c) {
		alive := !stale(&c)
		if !alive {
			var t mbxConn
			tk := twinKey(&k, &c)
			if err := b.objs.Conns.Lookup(&tk, &t); err == nil && !stale(&t) {
				alive = true
			}
		}
		fn(&k, &c, alive, now)
	}
}

func twinKey(k *mbxFlowKey, c *mbxConn) mbxFlowKey {
	return mbxFlowKey{Saddr: c.Daddr, Daddr: c.Saddr, Sport: c.Dport, Dport: c.Sport, Proto: k.Proto}
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
	var dead []mbxFlowKey
	b.walk(func(k *mbxFlowKey, c *mbxConn, alive bool, _ uint64) {
		if !alive {
			dead = append(dead, *k)
			return
		}
		r.entries++
		if c.Flags&1 != 0 { // reply entry: keyed RS -> LIP (RS -> client for NAT)
			if c.Flags&8 == 0 {
				r.lipConns[addr4(k.Daddr)]++
			}
			return
		}
		if flow.State(c.State) == flow.StateEstablished {
			r.active[c.RealId]++
		} else {
			r.inactive[c.RealId]++
		}
	})
	swept := 0
	for i := range dead {
		if b.objs.Conns.Delete(&dead[i]) == nil {
			swept++
		}
	}
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
	b.walk(func(k *mbxFlowKey, c *mbxConn, alive bool, now uint64) {
		if !alive || c.Flags&1 != 0 || (limit > 0 && len(out) >= limit) {
			return
		}
		idle := time.Duration(now - c.LastSeen)
		out = append(out, backend.Conn{
			Proto:   lb.Proto(k.Proto),
			Client:  netip.AddrPortFrom(addr4(k.Saddr), htons(k.Sport)),
			Virtual: netip.AddrPortFrom(addr4(k.Daddr), htons(k.Dport)),
			Local:   netip.AddrPortFrom(addr4(c.Saddr), htons(c.Sport)),
			Real:    netip.AddrPortFrom(addr4(c.Daddr), htons(c.Dport)),
			State:   flow.State(c.State),
			Expire:  max(0, to[c.State%flow.NumStates]-idle),
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
	if len(keys) == 0 {
		return 0, nil
	}
	n, err := b.objs.Conns.BatchDelete(keys, nil)
	b.mu.Lock()
	b.evict.swept += uint64(n)
	b.mu.Unlock()
	return n, err
}
