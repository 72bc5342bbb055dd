package datapath

import (
	"encoding/binary"
	"net/netip"
	"sync"

	"github.com/mbx-net/mbx/flow"
)

// Several workers (one per polling lcore) each run a Datapath of their own:
// share-nothing, no lock on the per-packet path. What a NIC's RSS cannot do
// is keep both directions of a connection on one core: a Full-NAT reply
// (real server -> LIP) or a NAT reply (real server -> client) hashes to
// any queue. So every packet has an owner, computed from its headers
// alone, that is the same for both directions of its connection, and the
// worker that receives a packet it does not own hands it to the owner
// through a ring (DPVS's redirect ring, without its shared table):
//
//   - client side (to a VIP, SNAT's outbound, anything else): a hash of the
//     client's address and port, so one client's connections spread over
//     the workers as RSS spreads them;
//   - to a LIP (Full-NAT, SNAT and NAT64 replies): the local port modulo
//     the workers, since each worker allocates only local ports it owns
//     (ownPort);
//   - from a NAT real server: the hash of the client it replies to;
//   - ICMP errors: the owner of the reply to the packet they quote;
//   - a later fragment (no ports): its first fragment's owner, from a
//     small directory the workers share (Shared), off the common path.
//
// Packets that are nobody's connection (ARP, neighbour discovery, echo)
// stay where they arrive; what a worker learns of its neighbours it tells
// the others (Learnt). Persistence (-p) is per client, whose connections
// have several owners: its table is in Shared too, touched only by new
// connections of persistent services.

// Owner is the worker that processes frame: Options.Worker when it is
// this datapath's own, or with one worker.
func (d *Datapath) Owner(frame []byte) int {
	if d.opts.Workers <= 1 || len(frame) < 14 {
		return d.opts.Worker
	}
	var t tuple
	var l4 []byte
	var f fragment
	switch binary.BigEndian.Uint16(frame[12:]) {
	case 0x0800:
		ip := frame[14:]
		if len(ip) < 20 || ip[0]>>4 != 4 || ip[0]&0xf < 5 || len(ip) < int(ip[0]&0xf)*4 {
			return d.opts.Worker
		}
		fo := binary.BigEndian.Uint16(ip[6:])
		f = fragment{later: fo&0x1fff != 0, first: fo&0x3fff == 0x2000, id: uint32(binary.BigEndian.Uint16(ip[4:]))}
		t = tuple{src: netip.AddrFrom4([4]byte(ip[12:16])), dst: netip.AddrFrom4([4]byte(ip[16:20])), proto: ip[9]}
		l4 = ip[int(ip[0]&0xf)*4:]
	case etherTypeIPv6:
		ip := frame[14:]
		if len(ip) < ip6Len || ip[0]>>4 != 6 {
			return d.opts.Worker
		}
		t = tuple{src: netip.AddrFrom16([16]byte(ip[8:24])), dst: netip.AddrFrom16([16]byte(ip[24:40])), proto: ip[6]}
		l4 = ip[ip6Len:]
		if t.proto == 44 && len(l4) >= 8 {
			off := binary.BigEndian.Uint16(l4[2:])
			f = fragment{later: off&0xfff8 != 0, first: off == 1, id: binary.BigEndian.Uint32(l4[4:])}
			t.proto, l4 = l4[0], l4[8:]
		}
	default:
		return d.opts.Worker
	}
	if f.later {
		if w, ok := d.shared.fragOwner(fragOwnerKey{t.src, t.dst, f.id, t.proto}); ok {
			return w
		}
		return d.opts.Worker
	}
	outer := t // a first fragment's key, before t may become a quoted packet's answer
	if q, ok := quoted(t.proto, l4); ok {
		// An ICMP error belongs to the connection of the packet it quotes:
		// the owner of that packet's answer.
		t = tuple{src: q.dst, dst: q.src, sport: q.dport, dport: q.sport, proto: q.proto, ports: true}
	} else {
		t.sport, t.dport, t.ports = transportPorts(t.proto, l4)
	}
	if !f.first {
		return d.owner(t)
	}
	w := d.owner(t)
	d.shared.setFragOwner(fragOwnerKey{outer.src, outer.dst, f.id, outer.proto}, w, d.now)
	return w
}

// tuple is what ownership looks at: addresses, protocol and ports (an
// echo's identifier on both sides).
type tuple struct {
	src, dst     netip.Addr
	sport, dport uint16
	proto        uint8
	ports        bool
}

type fragment struct {
	first, later bool
	id           uint32
}

// owner decides for a packet with its ports.
func (d *Datapath) owner(t tuple) int {
	if !t.ports {
		return d.opts.Worker
	}
	if d.lips.has(t.dst) && !(d.vipSet.has(t.dst) && d.services[svcKey{t.dst, t.dport, t.proto}] != nil) {
		return int(t.dport) % d.opts.Workers
	}
	if d.natRealSet.has(t.src) && !d.vipSet.has(t.dst) {
		return d.clientOwner(t.dst, t.dport)
	}
	return d.clientOwner(t.src, t.sport)
}

// addrSet is a set of addresses for a per-packet question: IPv4 ones as
// numbers (a netip.Addr map key costs ~20 ns to hash), empty at no cost.
type addrSet struct {
	v4 map[uint32]struct{}
	v6 map[netip.Addr]struct{}
}

func newAddrSet(addrs map[netip.Addr]bool) addrSet {
	s := addrSet{v4: map[uint32]struct{}{}, v6: map[netip.Addr]struct{}{}}
	for a := range addrs {
		if a.Is4() {
			s.v4[addrU32(a, 0)] = struct{}{}
		} else {
			s.v6[a] = struct{}{}
		}
	}
	return s
}

func (s addrSet) has(a netip.Addr) bool {
	if a.Is4() {
		if len(s.v4) == 0 {
			return false
		}
		_, ok := s.v4[addrU32(a, 0)]
		return ok
	}
	if len(s.v6) == 0 {
		return false
	}
	_, ok := s.v6[a]
	return ok
}

// transportPorts are a TCP or UDP packet's ports, or an ICMP echo's
// identifier as both (SNAT allocates it as a local port).
func transportPorts(proto uint8, l4 []byte) (sport, dport uint16, ok bool) {
	switch {
	case (proto == 6 || proto == 17) && len(l4) >= 4:
		return binary.BigEndian.Uint16(l4[0:]), binary.BigEndian.Uint16(l4[2:]), true
	case (proto == 1 && (l4Type(l4) == 8 || l4Type(l4) == 0)) || (proto == 58 && (l4Type(l4) == 128 || l4Type(l4) == 129)):
		if len(l4) < 8 {
			return 0, 0, false
		}
		id := binary.BigEndian.Uint16(l4[4:])
		return id, id, true
	}
	return 0, 0, false
}

func l4Type(l4 []byte) int {
	if len(l4) == 0 {
		return -1
	}
	return int(l4[0])
}

// quoted is the packet an ICMP or ICMPv6 error quotes: its addresses,
// protocol and ports (an echo's identifier as both).
func quoted(proto uint8, l4 []byte) (q tuple, ok bool) {
	if len(l4) < 8 {
		return q, false
	}
	var ip []byte
	switch {
	case proto == 1 && (l4[0] == 3 || l4[0] == 11 || l4[0] == 12):
		ip = l4[8:]
		if len(ip) < 20 || ip[0]>>4 != 4 || len(ip) < int(ip[0]&0xf)*4 {
			return q, false
		}
		q.src, q.dst, q.proto = netip.AddrFrom4([4]byte(ip[12:16])), netip.AddrFrom4([4]byte(ip[16:20])), ip[9]
		ip = ip[int(ip[0]&0xf)*4:]
	case proto == 58 && l4[0] >= 1 && l4[0] <= 4:
		ip = l4[8:]
		if len(ip) < ip6Len || ip[0]>>4 != 6 {
			return q, false
		}
		q.src, q.dst, q.proto = netip.AddrFrom16([16]byte(ip[8:24])), netip.AddrFrom16([16]byte(ip[24:40])), ip[6]
		ip = ip[ip6Len:]
	default:
		return q, false
	}
	q.sport, q.dport, ok = transportPorts(q.proto, ip)
	return q, ok
}

// clientOwner is the worker of a client's address and port.
func (d *Datapath) clientOwner(a netip.Addr, port uint16) int {
	b := a.As16()
	h := binary.LittleEndian.Uint32(b[0:]) ^ binary.LittleEndian.Uint32(b[4:]) ^
		binary.LittleEndian.Uint32(b[8:]) ^ binary.LittleEndian.Uint32(b[12:])
	h = flow.HashFinal(flow.HashMix(flow.HashMix(d.opts.HashSeed, h), uint32(port)))
	return int(uint64(h) * uint64(d.opts.Workers) >> 32)
}

// ownPort moves a local port candidate into this worker's share of the
// range (port mod workers == worker), so that replies find their owner.
func (d *Datapath) ownPort(p uint16) uint16 {
	n := uint32(d.opts.Workers)
	if n <= 1 {
		return p
	}
	q := uint32(p) - uint32(p)%n + uint32(d.opts.Worker)
	if q > uint32(d.opts.PortHi) {
		q -= n
	}
	if q < uint32(d.opts.PortLo) {
		q += n
	}
	return uint16(q)
}

// Shared is what a backend's datapaths share, each under its lock and
// never on an established packet's path: the owners of fragmented
// datagrams (later fragments carry no port) and persistence.
type Shared struct {
	mu    sync.Mutex
	frags map[fragOwnerKey]fragOwnerEntry
	pmu   sync.Mutex
	pers  map[persistKey]persistEntry
}

// NewShared makes the state several workers' datapaths share.
func NewShared() *Shared {
	return &Shared{frags: map[fragOwnerKey]fragOwnerEntry{}, pers: map[persistKey]persistEntry{}}
}

// persisted is the real server a client keeps, if its entry is alive.
func (s *Shared) persisted(k persistKey, now int64) (netip.AddrPort, bool) {
	s.pmu.Lock()
	defer s.pmu.Unlock()
	e, ok := s.pers[k]
	return e.real, ok && now-e.lastSeen < e.ttl
}

func (s *Shared) persist(k persistKey, e persistEntry) {
	s.pmu.Lock()
	s.pers[k] = e
	s.pmu.Unlock()
}

func (s *Shared) sweepPersist(now int64) {
	s.pmu.Lock()
	defer s.pmu.Unlock()
	for k, e := range s.pers {
		if now-e.lastSeen >= e.ttl {
			delete(s.pers, k)
		}
	}
}

type fragOwnerKey struct {
	src, dst netip.Addr
	id       uint32
	proto    uint8
}

type fragOwnerEntry struct {
	worker int
	seen   int64
}

// maxFragOwners bounds the directory; fragOwnerTTL is a datagram's life
// in it (as the kernel's ipfrag_time).
const (
	maxFragOwners = 4096
	fragOwnerTTL  = int64(30e9)
)

func (s *Shared) setFragOwner(k fragOwnerKey, w int, now int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.frags) >= maxFragOwners {
		for k, e := range s.frags {
			if now-e.seen > fragOwnerTTL || len(s.frags) >= maxFragOwners {
				delete(s.frags, k)
			}
		}
	}
	s.frags[k] = fragOwnerEntry{w, now}
}

func (s *Shared) fragOwner(k fragOwnerKey) (int, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.frags[k]
	return e.worker, ok
}

// Neighbor is a neighbour a worker learnt (ARP, neighbour discovery),
// for the other workers' datapaths (SetNeighbor).
type Neighbor struct {
	Port int
	Addr netip.Addr
	MAC  [6]byte
}

// Learnt returns the neighbours learnt since the last call, for the other
// workers (valid until the next Process).
func (d *Datapath) Learnt() []Neighbor {
	l := d.learnt
	d.learnt = d.learnt[:0]
	return l
}

// learn records a neighbour seen on port in.
func (d *Datapath) learn(in int, ip netip.Addr, mac [6]byte) {
	if n, ok := d.neigh[ip]; ok && n.port == in && n.mac == mac {
		return
	}
	d.neigh[ip] = neighbor{in, mac}
	d.gen++
	if d.opts.Workers > 1 && len(d.learnt) < cap(d.learnt) {
		d.learnt = append(d.learnt, Neighbor{in, ip, mac})
	}
}
