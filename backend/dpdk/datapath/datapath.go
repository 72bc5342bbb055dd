// Package datapath is the DPDK backend's packet path, in Go: the same
// verdicts, rewrites and counters as the XDP program (bpf/), over packets
// Go owns (DPDK mbufs). It parses with flow.Parse (bpf/parse.h's twin),
// hashes and chooses local ports with flow's twins of bpf/hash.h, and
// schedules from the tables lb computes for every backend, so a flow gets
// the same real server, LIP and port on either backend.
//
// Built so far: Full-NAT, DR, IP-in-IP tunnel, NAT and SNAT (with pings)
// for TCP and UDP over IPv4 with ICMP errors, fragments and the MTU check;
// IPv6 Full-NAT, DR and ip6ip6 (v6.go), NAT64 (nat64.go), ICMPv6 and
// IPv6 fragments; every scheduler (lc/wlc on exact per-worker connection
// counts), persistence, the IPVS TCP state machine and timeouts, connected
// and static routes, ARP and neighbour discovery. Apply refuses, whole, a
// configuration it cannot run.
//
// One Datapath serves one polling core; it is not safe for concurrent use.
// Several cores run one each and hand each other packets (owner.go).
package datapath

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/mbx-net/mbx/backend"
	"github.com/mbx-net/mbx/flow"
	"github.com/mbx-net/mbx/lb"
)

// Verdict is what happens to a packet after Process.
type Verdict uint8

const (
	Pass     Verdict = iota // to the kernel (the TAP exception path), untouched
	Drop                    // freed
	Tx                      // back out of the port it came in on
	Redirect                // out of another port
)

var verdictNames = [...]string{"pass", "drop", "tx", "redirect"}

func (v Verdict) String() string { return verdictNames[v] }

// Port is one of the datapath's interfaces.
type Port struct {
	Name     string
	MAC      net.HardwareAddr
	Prefixes []netip.Prefix // connected networks (routes out of this port)
	Addrs    []netip.Addr   // the port's own addresses (ARP answers, requests' source)
	MTU      int            // 0: 1500
}

// Options configure a Datapath (backend.Options' fields that apply).
type Options struct {
	Timeouts flow.Timeouts
	PortLo   uint16
	PortHi   uint16
	HashSeed uint32
	ConnMax  int // connections (two entries each)
	// ARP makes the datapath answer ARP for local addresses and resolve
	// next hops itself (arp.go): on for DPDK, which owns its ports. Off,
	// ARP goes to the kernel as with XDP (the vector files' semantics).
	ARP bool
	// TunnelSrc, when set, gives tunnel outer sources: one address of it
	// per flow (receivers' RSS spreads flows); unset: the egress port's.
	TunnelSrc netip.Prefix
	// Workers is how many datapaths share the ports, Worker this one's
	// index (owner.go): it allocates only its share of the local ports.
	// Shared is what they share; 0 or 1 worker needs none.
	Workers, Worker int
	Shared          *Shared
}

type neighbor struct {
	port int
	mac  [6]byte
}

type service struct {
	key     lb.ServiceKey
	id      svcKey
	pick    lb.Pick
	table   []int // indices into reals
	reals   []real
	laddrs  []netip.Addr
	rrPos   uint32
	persist int64 // ns a client keeps its real server (ipvsadm -p); 0: none
}

// persistKey is a client of a service, for persistence (ipvsadm -p): in
// Shared, since a client's connections may belong to several workers.
type persistKey struct {
	svc    svcKey
	client [16]byte // IPv4 as its mapped IPv6 form
}

type persistEntry struct {
	real     netip.AddrPort
	lastSeen int64
	ttl      int64
}

type real struct {
	addr   netip.Addr
	port   uint16
	mode   lb.Forward
	weight int
	stats  *realState // kept across Apply
}

// realState is a real server's IPVS counters and its connections by
// kind (active: ESTABLISHED; inactive: the rest), which lc/wlc schedule on.
type realState struct {
	backend.Counters
	active, inactive int64
}

type realRef struct {
	svc  lb.ServiceKey
	real netip.AddrPort
}

type svcKey struct {
	addr  netip.Addr
	port  uint16
	proto uint8
}

// Datapath is the Go packet path of one polling core.
type Datapath struct {
	opts       Options
	fsm        flow.FSM
	ports      []Port
	macs       [][6]byte
	neigh      map[netip.Addr]neighbor
	services   map[svcKey]*service
	local      map[netip.Addr]bool // VIPs and LIPs
	lips       addrSet             // LIPs and SNAT's WAN addresses: replies' destinations
	natRealSet addrSet             // natReals, for Owner
	vipSet     addrSet             // services' addresses, for Owner
	shared     *Shared
	learnt     []Neighbor          // neighbours learnt for the other workers (Learnt)
	natReals   map[netip.Addr]bool // NAT real servers: their replies are addressed to clients
	snat       []snatRule          // match services, in lb's order (snat.go)
	conns      *conns
	conns6     *table[key6, entry6] // IPv6 flows (v6.go); NAT64's IPv4 side keyed by v4-mapped addresses
	nat64      bool                 // a NAT64 service exists: unmatched IPv4 may be its reply
	counters   []uint64
	now        int64  // Unix ns, set per burst (Tick)
	gen        uint64 // neighbour generation: memoized next hops older than it are looked up again
	// Next hops to resolve (arp.go): a bounded queue and when each was
	// last asked for.
	resolve    []resolveKey
	resolveBuf []resolveKey
	asked      map[resolveKey]int64
	realStats  map[realRef]*realState
	// TunnelSrc as numbers: outer source = tunBase | (flow hash &^ tunMask).
	tunBase, tunMask uint32
	frags            map[fragKey]fragPorts // first fragments' ports (frag.go)
	frags6           map[frag6Key]fragPorts
	routes           []staticRoute
	// The frame being processed and its room (ProcessAt): the tunnel grows
	// it at the front.
	buf    []byte
	off, n int
}

type staticRoute struct {
	dst netip.Prefix
	via netip.Addr
}

// AddRoute adds a static route: dst through the gateway via, which must be
// on a port's network.
func (d *Datapath) AddRoute(dst netip.Prefix, via netip.Addr) error {
	if _, ok := d.connected(via); !ok || dst.Addr().Is4() != via.Is4() {
		return fmt.Errorf("route %s via %s: the gateway is on no port's network", dst, via)
	}
	d.routes = append(d.routes, staticRoute{dst.Masked(), via})
	d.gen++
	return nil
}

// Tick sets the datapath's clock: the polling loop calls it once per
// burst, not once per packet (a clock read costs ~40 ns).
func (d *Datapath) Tick(now time.Time) { d.now = now.UnixNano() }

// Counter indices (backend.DatapathCounters).
const (
	cntRx = iota
	cntPassNotOurs
	cntPassMalformed
	cntDropMalformed
	cntDropFragment
	cntDropNoConn
	cntDropNoReal
	cntDropNoLaddr
	cntDropNoPort
	cntConnNew
	cntConnReuse
	cntTx
	cntRedirect
	cntPassNoNeigh
	cntPassFIB
	cntDropFIB
	cntEntryDeleted
	cntDropTooBig
	cntDropNoNeigh
	cntICMPError
	cntICMPTooBig
	cntFragment
)

// New makes a datapath for ports (indexed as Process's in and out).
func New(ports []Port, opts Options) (*Datapath, error) {
	if opts.Timeouts == (flow.Timeouts{}) {
		opts.Timeouts = flow.IPVSTimeouts()
	}
	if opts.PortLo == 0 && opts.PortHi == 0 {
		opts.PortLo, opts.PortHi = 1024, 65535
	}
	if opts.PortHi < opts.PortLo {
		return nil, fmt.Errorf("local port range %d-%d is empty", opts.PortLo, opts.PortHi)
	}
	if opts.ConnMax <= 0 {
		opts.ConnMax = 1 << 17
	}
	if opts.Workers < 1 {
		opts.Workers, opts.Worker = 1, 0
	}
	if opts.Worker < 0 || opts.Worker >= opts.Workers || int(opts.PortHi)-int(opts.PortLo)+1 < 2*opts.Workers {
		return nil, fmt.Errorf("worker %d of %d: the local port range %d-%d cannot be shared", opts.Worker, opts.Workers, opts.PortLo, opts.PortHi)
	}
	d := &Datapath{gen: 1, now: time.Now().UnixNano(), opts: opts, fsm: flow.IPVSFSM(), ports: ports, neigh: map[netip.Addr]neighbor{},
		services: map[svcKey]*service{}, local: map[netip.Addr]bool{},
		conns: newConns(2 * opts.ConnMax), conns6: newTable[key6, entry6](max(2*opts.ConnMax/4, 1024)), counters: make([]uint64, len(backend.DatapathCounters)),
		asked: map[resolveKey]int64{}, frags: map[fragKey]fragPorts{},
		frags6: map[frag6Key]fragPorts{}, shared: opts.Shared,
		learnt: make([]Neighbor, 0, 64)}
	if d.shared == nil {
		d.shared = NewShared()
	}
	if pf := opts.TunnelSrc; pf.IsValid() {
		d.tunBase = addrU32(pf.Masked().Addr(), 0)
		d.tunMask = ^uint32(0) << (32 - pf.Bits())
	}
	d.resolveBuf = make([]resolveKey, 0, 64)
	d.resolve = d.resolveBuf
	for _, p := range ports {
		if len(p.MAC) != 6 {
			return nil, fmt.Errorf("port %s: MAC %q is not Ethernet", p.Name, p.MAC)
		}
		d.macs = append(d.macs, [6]byte(p.MAC))
	}
	return d, nil
}

// SetNeighbor records the Ethernet address of ip, reached through port.
func (d *Datapath) SetNeighbor(port int, ip netip.Addr, mac net.HardwareAddr) error {
	if port < 0 || port >= len(d.ports) || len(mac) != 6 {
		return fmt.Errorf("neighbour %s: bad port %d or MAC %q", ip, port, mac)
	}
	d.neigh[ip] = neighbor{port, [6]byte(mac)}
	d.gen++
	return nil
}

// Apply installs cfg's services. Established connections keep their
// rewrite. A configuration this datapath cannot run is refused whole.
func (d *Datapath) Apply(cfg *lb.Config) error {
	services := map[svcKey]*service{}
	nat64 := false
	stats := map[realRef]*realState{}
	natReals := map[netip.Addr]bool{}
	local := map[netip.Addr]bool{}
	vips, lips := map[netip.Addr]bool{}, map[netip.Addr]bool{}
	var snat []snatRule
	for _, s := range cfg.MatchServices() {
		sch, ok := lb.LookupScheduler(s.Scheduler)
		if !ok {
			return fmt.Errorf("service %s: unknown scheduler %q", s.Key, s.Scheduler)
		}
		m := s.Key.ParsedMatch()
		for _, name := range []string{m.IIF, m.OIF} {
			if name != "" && !slices.ContainsFunc(d.ports, func(p Port) bool { return p.Name == name }) {
				return fmt.Errorf("service %s: %s is not a port of this mbx", s.Key, name)
			}
		}
		ns := &service{key: s.Key, pick: sch.Pick(), table: sch.Table(s.Reals, cfg.Maglev)}
		for _, r := range s.Reals {
			ref := realRef{s.Key, netip.AddrPortFrom(r.Addr, r.Port)}
			st := d.realStats[ref]
			if st == nil {
				st = &realState{}
			}
			stats[ref] = st
			ns.reals = append(ns.reals, real{addr: r.Addr, port: r.Port, mode: lb.SNAT, weight: r.Weight, stats: st})
			local[r.Addr] = true // replies come back to the WAN addresses
			lips[r.Addr] = true
		}
		snat = append(snat, newSNATRule(m, ns))
	}
	for _, s := range cfg.Services {
		if s.Key.IsMatch() {
			continue
		}
		nat64 = nat64 || s.IsNAT64()
		sch, ok := lb.LookupScheduler(s.Scheduler)
		if !ok {
			return fmt.Errorf("service %s: unknown scheduler %q", s.Key, s.Scheduler)
		}
		ns := &service{key: s.Key, id: svcKey{s.Key.Addr, s.Key.Port, uint8(s.Key.Proto)}, pick: sch.Pick(),
			table: sch.Table(s.Reals, cfg.Maglev), persist: int64(s.Persistence) * 1e9}
		for _, r := range s.Reals {
			switch r.Forward {
			case lb.FullNAT, lb.Masquerade:
			case lb.DirectRoute:
				if _, ok := d.connected(r.Addr); !ok {
					return fmt.Errorf("service %s: real server %s: DR needs it on a port's network", s.Key, r.AddrPort())
				}
			case lb.Tunnel:
				if _, _, res := d.route(r.Addr); res == noRoute {
					return fmt.Errorf("service %s: real server %s: no route for the tunnel", s.Key, r.AddrPort())
				}
			default:
				return fmt.Errorf("service %s: real server %s: %s is not in the DPDK datapath yet (Full-NAT, DR and NAT are)",
					s.Key, r.AddrPort(), r.Forward.ForwardName())
			}
			if r.Forward == lb.Masquerade {
				natReals[r.Addr] = true
			}
			ref := realRef{s.Key, netip.AddrPortFrom(r.Addr, s.RealPort(r))}
			st := d.realStats[ref]
			if st == nil {
				st = &realState{}
			}
			stats[ref] = st
			ns.reals = append(ns.reals, real{addr: r.Addr, port: s.RealPort(r), mode: r.Forward, weight: r.Weight, stats: st})
		}
		for _, la := range s.LocalAddrs {
			ns.laddrs = append(ns.laddrs, la.Addr)
			local[la.Addr] = true
			lips[la.Addr] = true
		}
		// Each worker's round robin starts elsewhere: the first clients
		// of several workers do not all get the first real server.
		ns.rrPos = uint32(d.opts.Worker)
		if old := d.services[svcKey{s.Key.Addr, s.Key.Port, uint8(s.Key.Proto)}]; old != nil {
			ns.rrPos = old.rrPos
		}
		services[svcKey{s.Key.Addr, s.Key.Port, uint8(s.Key.Proto)}] = ns
		local[s.Key.Addr] = true
		vips[s.Key.Addr] = true
	}
	if to := cfg.Timeouts.Effective(d.opts.Timeouts); to != d.opts.Timeouts {
		d.opts.Timeouts = to
	}
	d.services, d.local, d.realStats, d.natReals, d.snat, d.nat64 = services, local, stats, natReals, snat, nat64
	d.lips, d.natRealSet, d.vipSet = newAddrSet(lips), newAddrSet(natReals), newAddrSet(vips)
	return nil
}

// Counters are the datapath's counters by name (backend.DatapathCounters).
func (d *Datapath) Counters() map[string]uint64 {
	m := make(map[string]uint64, len(d.counters))
	for i, n := range backend.DatapathCounters {
		m[n] = d.counters[i]
	}
	return m
}

// Conns is how many connection entries the table holds (two per
// Full-NAT connection).
func (d *Datapath) Conns() int { return d.conns.len() + d.conns6.len() }

// RealCounters calls fn with each real server's counters and connections.
func (d *Datapath) RealCounters(fn func(svc lb.ServiceKey, real netip.AddrPort, st backend.RealStatus)) {
	for _, s := range d.services {
		for _, r := range s.reals {
			fn(s.key, netip.AddrPortFrom(r.addr, r.port), backend.RealStatus{Counters: r.stats.Counters,
				Active: uint64(max(r.stats.active, 0)), Inactive: uint64(max(r.stats.inactive, 0))})
		}
	}
}

// ConnList calls fn for each live connection (its client-side entry),
// up to limit (0: all).
func (d *Datapath) ConnList(limit int, fn func(c backend.Conn)) {
	n := 0
	// more lists one client-side entry; false once limit is reached.
	more := func(proto uint8, client, virtual, local, real netip.AddrPort, state flow.State, lastSeen int64) bool {
		if limit > 0 && n >= limit {
			return false
		}
		n++
		fn(backend.Conn{Proto: lb.Proto(proto), Client: client, Virtual: virtual, Local: local, Real: real, State: state,
			Expire: max(0, time.Duration(int64(d.opts.Timeouts[state%flow.NumStates])-(d.now-lastSeen)))})
		return true
	}
	for k, i := range d.conns.index {
		e := &d.conns.slab[i]
		if e.reply || d.stale(e, d.now) {
			continue
		}
		if !more(k.proto, netip.AddrPortFrom(netip.AddrFrom4(k.src), k.sport), netip.AddrPortFrom(netip.AddrFrom4(k.dst), k.dport),
			netip.AddrPortFrom(netip.AddrFrom4(e.src), e.sport), netip.AddrPortFrom(netip.AddrFrom4(e.dst), e.dport), e.state, e.lastSeen) {
			return
		}
	}
	for k, i := range d.conns6.index {
		e := &d.conns6.slab[i]
		if e.reply || d.stale6(e, d.now) {
			continue
		}
		if !more(k.proto, netip.AddrPortFrom(netip.AddrFrom16(k.src), k.sport), netip.AddrPortFrom(netip.AddrFrom16(k.dst), k.dport),
			netip.AddrPortFrom(netip.AddrFrom16(e.src), e.sport), netip.AddrPortFrom(netip.AddrFrom16(e.dst), e.dport), e.state, e.lastSeen) {
			return
		}
	}
}
