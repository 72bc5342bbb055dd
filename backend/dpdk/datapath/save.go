package datapath

import (
	"net/netip"

	"github.com/mbx-net/mbx/backend"
	"github.com/mbx-net/mbx/flow"
	"github.com/mbx-net/mbx/lb"
)

// Restart without loss on DPDK: the connection tables live in the process,
// so a stop that hands over (mbx stop --keep-datapath, SIGUSR2) saves them
// (Save), and the next process puts them back once its configuration is
// applied (Restore), each entry on the worker that owns its packets now.
// Between the two nothing forwards; TCP retransmits across the gap, and
// the connections continue with their real server, LIP and port. Memoized
// next hops are not kept (looked up again).

// SavedKey is a table key, either family (IPv4 in the first 4 bytes).
type SavedKey struct {
	Src, Dst     [16]byte
	Sport, Dport uint16
	Proto        uint8
}

// SavedService names a service across processes.
type SavedService struct {
	Addr  netip.Addr
	Port  uint16
	Proto uint8
}

// SavedConn is one direction's entry (struct conn) with its service and
// real server by name, not by pointer.
type SavedConn struct {
	V6             bool
	Key, Twin      SavedKey
	Src, Dst       [16]byte
	Sport, Dport   uint16
	CsumL3, CsumL4 uint32
	Service        SavedService
	Real           netip.AddrPort
	State          uint8
	Reply, Single  bool
	Mode           uint8
	LastSeen       int64
}

// SavedPersist is one client's persistence (Shared's table).
type SavedPersist struct {
	Service  SavedService
	Client   [16]byte
	Real     netip.AddrPort
	LastSeen int64
	TTL      int64
}

func savedKey4(k key) SavedKey {
	var s SavedKey
	copy(s.Src[:], k.src[:])
	copy(s.Dst[:], k.dst[:])
	s.Sport, s.Dport, s.Proto = k.sport, k.dport, k.proto
	return s
}

func (s SavedKey) key4() key {
	return key{[4]byte(s.Src[:4]), [4]byte(s.Dst[:4]), s.Sport, s.Dport, s.Proto}
}

func savedKey6(k key6) SavedKey { return SavedKey{k.src, k.dst, k.sport, k.dport, k.proto} }

func (s SavedKey) key6() key6 { return key6{s.Src, s.Dst, s.Sport, s.Dport, s.Proto} }

func savedService(s *service) SavedService { return SavedService{s.id.addr, s.id.port, s.id.proto} }

// Save returns every live entry of both tables.
func (d *Datapath) Save() []SavedConn {
	var out []SavedConn
	for k, i := range d.conns.index {
		e := &d.conns.slab[i]
		if d.stale(e, d.now) {
			continue
		}
		r := e.svc.reals[e.real]
		c := SavedConn{Key: savedKey4(k), Twin: savedKey4(e.twin), Sport: e.sport, Dport: e.dport,
			CsumL3: e.csumL3, CsumL4: e.csumL4, Service: savedService(e.svc), Real: netip.AddrPortFrom(r.addr, r.port),
			State: uint8(e.state), Reply: e.reply, Single: e.single, Mode: e.mode, LastSeen: e.lastSeen}
		copy(c.Src[:], e.src[:])
		copy(c.Dst[:], e.dst[:])
		out = append(out, c)
	}
	for k, i := range d.conns6.index {
		e := &d.conns6.slab[i]
		if d.stale6(e, d.now) {
			continue
		}
		r := e.svc.reals[e.real]
		out = append(out, SavedConn{V6: true, Key: savedKey6(k), Twin: savedKey6(e.twin), Src: e.src, Dst: e.dst,
			Sport: e.sport, Dport: e.dport, CsumL4: e.csumL4, Service: savedService(e.svc),
			Real: netip.AddrPortFrom(r.addr, r.port), State: uint8(e.state), Reply: e.reply, Single: e.single,
			Mode: e.mode, LastSeen: e.lastSeen})
	}
	return out
}

// SavePersist returns the shared persistence table.
func (d *Datapath) SavePersist() []SavedPersist {
	d.shared.pmu.Lock()
	defer d.shared.pmu.Unlock()
	var out []SavedPersist
	for k, e := range d.shared.pers {
		out = append(out, SavedPersist{SavedService{k.svc.addr, k.svc.port, k.svc.proto}, k.client, e.real, e.lastSeen, e.ttl})
	}
	return out
}

// SavedCounters is one real server's IPVS counters on one worker.
type SavedCounters struct {
	Service  lb.ServiceKey
	Real     netip.AddrPort
	Counters backend.Counters
}

// SaveCounters returns this worker's per-real counters, so that
// `ipvsadm -ln --stats` continues across a restart as it does on XDP
// (whose counters live in pinned maps).
func (d *Datapath) SaveCounters() []SavedCounters {
	var out []SavedCounters
	for ref, st := range d.realStats {
		if st.Counters != (backend.Counters{}) {
			out = append(out, SavedCounters{ref.svc, ref.real, st.Counters})
		}
	}
	return out
}

// RestoreCounters adds saved counters to the real servers configured now
// (call it on one worker: Snapshot sums the workers); those of real servers
// that are gone are dropped.
func (d *Datapath) RestoreCounters(cs []SavedCounters) {
	for _, c := range cs {
		if st := d.realStats[realRef{c.Service, c.Real}]; st != nil {
			st.Counters.Add(c.Counters)
		}
	}
}

// RestorePersist puts a saved persistence table back (once per backend).
func (d *Datapath) RestorePersist(ps []SavedPersist) {
	for _, p := range ps {
		d.shared.persist(persistKey{svcKey{p.Service.Addr, p.Service.Port, p.Service.Proto}, p.Client},
			persistEntry{p.Real, p.LastSeen, p.TTL})
	}
}

// Neighbors returns the neighbours this datapath knows.
func (d *Datapath) Neighbors() []Neighbor {
	var out []Neighbor
	for ip, n := range d.neigh {
		out = append(out, Neighbor{n.port, ip, n.mac})
	}
	return out
}

// Restore installs the saved entries this worker owns (after Apply: the
// services and real servers are looked up by name; an entry whose service
// or real server is gone is not restored). It returns how many entries it
// installed and how many of those it owns it dropped.
func (d *Datapath) Restore(saved []SavedConn) (restored, dropped int) {
	for _, c := range saved {
		if d.owner(c.Key.tuple(c.V6)) != d.opts.Worker {
			continue
		}
		s := d.services[svcKey{c.Service.Addr, c.Service.Port, c.Service.Proto}]
		ri := -1
		if s != nil {
			ri = s.realIndex(c.Real)
		}
		if ri < 0 || (c.V6 && d.conns6.get(c.Key.key6()) != nil) || (!c.V6 && d.conns.get(c.Key.key4()) != nil) {
			dropped++
			continue
		}
		// One count per connection, where its client-side entry lives
		// (or both halves' workers, if the worker count changed).
		if !c.Reply || c.Single || d.owner(c.Twin.tuple(c.V6)) != d.opts.Worker {
			countState(s.reals[ri].stats, flow.StateNone, flow.State(c.State))
		}
		if c.V6 {
			e := d.conns6.add(c.Key.key6())
			if e == nil {
				dropped++
				continue
			}
			*e = entry6{src: c.Src, dst: c.Dst, sport: c.Sport, dport: c.Dport, csumL4: c.CsumL4, svc: s, real: ri,
				state: flow.State(c.State), reply: c.Reply, mode: c.Mode, single: c.Single, lastSeen: c.LastSeen, twin: c.Twin.key6()}
		} else {
			e := d.conns.add(c.Key.key4())
			if e == nil {
				dropped++
				continue
			}
			*e = entry{src: [4]byte(c.Src[:4]), dst: [4]byte(c.Dst[:4]), sport: c.Sport, dport: c.Dport, csumL3: c.CsumL3,
				csumL4: c.CsumL4, svc: s, real: ri, state: flow.State(c.State), reply: c.Reply, mode: c.Mode,
				single: c.Single, lastSeen: c.LastSeen, twin: c.Twin.key4()}
		}
		restored++
	}
	return restored, dropped
}

// tuple is the packet an entry's key matches, for ownership.
func (s SavedKey) tuple(v6 bool) tuple {
	t := tuple{sport: s.Sport, dport: s.Dport, proto: s.Proto, ports: true}
	if v6 {
		// NAT64's IPv4 side is keyed by v4-mapped addresses: its packets
		// are IPv4.
		t.src, t.dst = netip.AddrFrom16(s.Src).Unmap(), netip.AddrFrom16(s.Dst).Unmap()
	} else {
		t.src, t.dst = netip.AddrFrom4([4]byte(s.Src[:4])), netip.AddrFrom4([4]byte(s.Dst[:4]))
	}
	return t
}

// realIndex is the index of real server r in s, or -1.
func (s *service) realIndex(r netip.AddrPort) int {
	for i, x := range s.reals {
		if netip.AddrPortFrom(x.addr, x.port) == r {
			return i
		}
	}
	return -1
}
