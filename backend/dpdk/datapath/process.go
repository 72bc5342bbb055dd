package datapath

import (
	"encoding/binary"
	"net/netip"

	"github.com/mbx-net/mbx/flow"
	"github.com/mbx-net/mbx/lb"
)

const (
	thSYN = 0x02
	thRST = 0x04
	thACK = 0x10
)

// Process runs one frame received on port in through the datapath,
// rewriting it in place, and says where it goes (out: the port, for Tx and
// Redirect). With no room before the frame, a tunnel packet cannot get its
// outer header and is dropped (drop_fib), as XDP's when adjust_head fails.
func (d *Datapath) Process(in int, frame []byte) (v Verdict, out int) {
	v, out, _, _ = d.ProcessAt(in, frame, 0, len(frame))
	return v, out
}

// ProcessAt runs the frame buf[off:off+n]; a tunnel packet grows at the
// front into buf[:off] (an outer IPv4 header) and loses Ethernet padding:
// the result is buf[newOff:newOff+newN].
func (d *Datapath) ProcessAt(in int, buf []byte, off, n int) (v Verdict, out, newOff, newN int) {
	d.buf, d.off, d.n = buf, off, n
	v, out = d.process(in, buf[off:off+n])
	newOff, newN = d.off, d.n
	d.buf = nil
	return v, out, newOff, newN
}

// process is bpf/mbx.c's process(), in its order of decisions.
func (d *Datapath) process(in int, frame []byte) (v Verdict, out int) {
	d.counters[cntRx]++
	if len(frame) >= 14 && binary.BigEndian.Uint16(frame[12:]) == etherTypeIPv6 {
		return d.process6(in, frame)
	}
	if d.opts.ARP && len(frame) >= 14 && binary.BigEndian.Uint16(frame[12:]) == etherTypeARP {
		return d.handleARP(in, frame)
	}
	p, r := flow.Parse(frame)
	switch r {
	case flow.ParseOK:
	case flow.ParseNotIP, flow.ParseOtherL4:
		if d.opts.ARP && r == flow.ParseOtherL4 && d.echoReply(in, frame) {
			d.counters[cntTx]++
			return Tx, in
		}
		if r == flow.ParseOtherL4 && parseEcho(frame, &p) {
			break // a flow like any other (SNAT of pings)
		}
		if r == flow.ParseOtherL4 && p.Key.Proto == 1 && (d.local[p.Key.Dst] || d.natReals[p.Key.Src]) {
			if v, out := d.icmpError(in, frame, &p); v != Pass {
				return v, out
			}
			if d.nat64 { // perhaps about a NAT64 connection (icmp6.go)
				if v, out, ok := d.icmp46(in, frame); ok {
					return v, out
				}
			}
		}
		d.counters[cntPassNotOurs]++
		return Pass, 0
	case flow.ParseBadL3:
		d.counters[cntPassMalformed]++
		return Pass, 0
	case flow.ParseFragment:
		if d.local[p.Key.Dst] || d.natReals[p.Key.Src] {
			return d.laterFragment(in, frame, &p)
		}
		d.counters[cntPassNotOurs]++
		return Pass, 0
	default: // flow.ParseBadL4
		if d.local[p.Key.Dst] {
			d.counters[cntDropMalformed]++
			return Drop, 0
		}
		d.counters[cntPassMalformed]++
		return Pass, 0
	}
	if !d.local[p.Key.Dst] && !d.natReals[p.Key.Src] {
		if len(d.snat) > 0 {
			return d.snatOut(in, frame, &p)
		}
		d.counters[cntPassNotOurs]++
		return Pass, 0
	}
	now := d.now
	newSYN := p.Key.Proto != 6 || p.TCPFlags&(thSYN|thACK|thRST) == thSYN
	k := keyOf(p.Key)
	e := d.conns.get(k)
	if e != nil {
		switch {
		case !d.alive(e, k, now):
			e = nil
		case !e.reply && newSYN && p.Key.Proto == 6 && (e.state == flow.StateTimeWait || e.state == flow.StateClose):
			// The client reuses its port: schedule afresh (IPVS's conn_reuse_mode).
			d.delete(e, k)
			d.counters[cntConnReuse]++
			e = nil
		}
	}
	if e != nil {
		if now-e.lastSeen > 1<<20 {
			e.lastSeen = now
		}
		d.track(e, p)
		d.account(e, p.IPLen)
	} else {
		s := d.services[svcKey{p.Key.Dst, p.Key.DstPort, p.Key.Proto}]
		if s == nil {
			if d.nat64 {
				return d.reply64(in, frame, &p) // perhaps a NAT64 reply (v6.go)
			}
			d.counters[cntPassNotOurs]++
			return Pass, 0
		}
		if !newSYN {
			d.counters[cntDropNoConn]++
			return Drop, 0
		}
		var verdict Verdict
		if e, verdict = d.newConn(p.Key, s, now); e == nil {
			return verdict, 0
		}
		d.account(e, p.IPLen)
	}
	if p.FirstFragment {
		d.rememberFrag(frame, p.Key)
	}
	return d.xmit(in, frame, &p, e)
}

// alive is bpf/conn.h's conn_alive: an entry lives while either direction
// was seen within its state's timeout; a stale pair is deleted.
func (d *Datapath) alive(e *entry, k key, now int64) bool {
	if !d.stale(e, now) {
		return true
	}
	if t := d.conns.get(e.twin); !e.single && t != nil && !d.stale(t, now) {
		e.lastSeen = t.lastSeen
		return true
	}
	d.delete(e, k)
	return false
}

func (d *Datapath) stale(e *entry, now int64) bool {
	return now-e.lastSeen > int64(d.opts.Timeouts[e.state%flow.NumStates])
}

func (d *Datapath) delete(e *entry, k key) {
	countState(e.svc.reals[e.real].stats, e.state, flow.StateNone)
	if !e.single && d.conns.del(e.twin) {
		d.counters[cntEntryDeleted]++
	}
	if d.conns.del(k) {
		d.counters[cntEntryDeleted]++
	}
}

// track advances the TCP state in both entries.
func (d *Datapath) track(e *entry, p flow.Packet) {
	if p.Key.Proto != 6 {
		return
	}
	dir := flow.DirInput
	if e.reply {
		dir = flow.DirOutput
	}
	next := d.fsm.Next(dir, p.TCPFlags, e.state)
	if next == e.state {
		return
	}
	countState(e.svc.reals[e.real].stats, e.state, next)
	e.state = next
	if t := d.conns.get(e.twin); !e.single && t != nil {
		t.state = next
	}
}

// newConn is bpf/mbx.c's mbx_new_conn for Full-NAT: the real server from
// the service's table, then a LIP and port from the flow hash, probing
// until the reply entry can be inserted. A nil entry comes with the verdict.
func (d *Datapath) newConn(k flow.Key, s *service, now int64) (*entry, Verdict) {
	if len(s.table) == 0 {
		d.counters[cntDropNoReal]++
		return nil, Drop
	}
	ri := -1
	pk := persistKey{s.id, k.Src.As16()}
	if s.persist > 0 {
		// A client seen within the persistence timeout keeps its real
		// server while that real server is still in the service.
		if pr, ok := d.shared.persisted(pk, now); ok {
			for i, r := range s.reals {
				if netip.AddrPortFrom(r.addr, r.port) == pr {
					ri = i
				}
			}
		}
	}
	if ri < 0 {
		var n uint32
		switch s.pick {
		case lb.PickRoundRobin:
			n = s.rrPos
			s.rrPos++
		case lb.PickLeast, lb.PickLeastWeighted:
			n = d.pickLeast(s)
		default:
			n = k.SchedHash(int(s.pick), d.opts.HashSeed)
		}
		ri = s.table[n%uint32(len(s.table))]
	}
	rs := s.reals[ri]
	if s.persist > 0 {
		d.shared.persist(pk, persistEntry{netip.AddrPortFrom(rs.addr, rs.port), now, s.persist})
	}
	state := flow.StateUDP
	if k.Proto == 6 {
		state = d.fsm.Next(flow.DirInput, thSYN, flow.StateNone)
	}
	ck := keyOf(k)
	switch rs.mode {
	case lb.DirectRoute, lb.Tunnel:
		return d.newDirect(ck, s, ri, state, now), 0
	case lb.Masquerade:
		return d.newMasquerade(ck, s, ri, state, now)
	}
	snat := rs.mode == lb.SNAT
	if len(s.laddrs) == 0 && !snat {
		d.counters[cntDropNoLaddr]++
		return nil, Drop
	}
	h := k.Hash(d.opts.HashSeed)
	for i := range portTries {
		li, lport := flow.LocalCandidate(h, i, max(len(s.laddrs), 1), d.opts.PortLo, d.opts.PortHi)
		lport = d.ownPort(lport)
		// The reply comes from the real server to a LIP and port; for SNAT
		// from the flow's own destination to the WAN address (the "real
		// server" scheduled) and port.
		var rk key
		if snat {
			rk = key{ck.dst, rs.addr.As4(), ck.dport, lport, k.Proto}
		} else {
			rk = key{rs.addr.As4(), s.laddrs[li].As4(), rs.port, lport, k.Proto}
		}
		re := d.conns.add(rk)
		if re == nil {
			if old := d.conns.get(rk); old == nil || d.alive(old, rk, now) {
				continue
			}
			if re = d.conns.add(rk); re == nil {
				continue
			}
		}
		fe := d.conns.add(ck)
		if fe == nil {
			// A racing entry for the client side (port reuse cleared it
			// above): replace it, as BPF_ANY does.
			d.conns.del(ck)
			if fe = d.conns.add(ck); fe == nil {
				d.conns.del(rk)
				break
			}
		}
		// The reply entry turns RS -> LIP back into VIP -> client.
		*re = entry{src: ck.dst, dst: ck.src, sport: ck.dport, dport: ck.sport, svc: s, real: ri,
			state: state, reply: true, lastSeen: now, twin: ck}
		re.setCsum(rk)
		*fe = entry{src: rk.dst, dst: rk.src, sport: rk.dport, dport: rk.sport, svc: s, real: ri,
			state: state, lastSeen: now, twin: rk}
		fe.setCsum(ck)
		s.reals[ri].stats.Conns++
		countState(s.reals[ri].stats, flow.StateNone, state)
		d.counters[cntConnNew]++
		return fe, 0
	}
	d.counters[cntDropNoPort]++
	return nil, Drop
}

// addOrReplace inserts k, replacing an entry already there (BPF_ANY).
func (d *Datapath) addOrReplace(k key) *entry {
	if e := d.conns.add(k); e != nil {
		return e
	}
	d.conns.del(k)
	return d.conns.add(k)
}

// newDirect is DR's and the tunnel's one entry: the packet keeps its
// addresses, dst names the real server (the next hop, or the outer
// destination).
func (d *Datapath) newDirect(ck key, s *service, ri int, state flow.State, now int64) *entry {
	fe := d.addOrReplace(ck)
	mode := uint8(modeDR)
	if s.reals[ri].mode == lb.Tunnel {
		mode = modeTUN
	}
	*fe = entry{src: ck.src, dst: s.reals[ri].addr.As4(), sport: ck.sport, dport: ck.dport, svc: s, real: ri,
		state: state, mode: mode, single: true, lastSeen: now, twin: ck}
	s.reals[ri].stats.Conns++
	countState(s.reals[ri].stats, flow.StateNone, state)
	d.counters[cntConnNew]++
	return fe
}

// newMasquerade is NAT's pair: the client's packets get the real server
// as destination; the reply entry (RS -> client) restores the VIP.
func (d *Datapath) newMasquerade(ck key, s *service, ri int, state flow.State, now int64) (*entry, Verdict) {
	rs := s.reals[ri]
	nk := key{rs.addr.As4(), ck.src, rs.port, ck.sport, ck.proto}
	re := d.conns.add(nk)
	if re == nil {
		if old := d.conns.get(nk); old == nil || d.alive(old, nk, now) {
			// Another service's connection from this client port to this
			// real server: replies could not be told apart.
			d.counters[cntDropNoPort]++
			return nil, Drop
		}
		re = d.conns.add(nk)
	}
	*re = entry{src: ck.dst, dst: ck.src, sport: ck.dport, dport: ck.sport, svc: s, real: ri, state: state,
		reply: true, mode: modeNAT, lastSeen: now, twin: ck}
	re.setCsum(nk)
	fe := d.addOrReplace(ck)
	*fe = entry{src: ck.src, dst: nk.src, sport: ck.sport, dport: nk.sport, svc: s, real: ri, state: state,
		mode: modeNAT, lastSeen: now, twin: nk}
	fe.setCsum(ck)
	rs.stats.Conns++
	countState(rs.stats, flow.StateNone, state)
	d.counters[cntConnNew]++
	return fe, 0
}

// portTries bounds the LIP/port probes of a new connection (bpf/consts.h
// PORT_TRIES).
const portTries = 16

// setCsum fills the checksum deltas for packets whose tuple is k
// (bpf/nat.h conn_set_csum).
func (e *entry) setCsum(k key) {
	d := csumAdd32(0, k.src, e.src)
	d = csumAdd32(d, k.dst, e.dst)
	e.csumL3 = d
	d = csumAdd16(d, k.sport, e.sport)
	d = csumAdd16(d, k.dport, e.dport)
	e.csumL4 = d
}

// xmit rewrites the packet for its entry and finds the next hop
// (bpf/nat.h xmit_nat). A packet without a known next hop goes to the
// kernel translated, as XDP's does.
func (d *Datapath) xmit(in int, frame []byte, p *flow.Packet, e *entry) (Verdict, int) {
	switch e.mode {
	case modeDR:
		return d.xmitDirect(in, frame, e)
	case modeTUN:
		return d.xmitTunnel(in, frame, p, e)
	}
	// The next hop and the egress MTU first, on the packet as received
	// (bpf/nat.h xmit_nat_): a packet that does not fit is answered with
	// "fragmentation needed" quoting it as its sender sent it, or (no DF,
	// or a later fragment) goes to the kernel translated, to be fragmented.
	hopOK := d.refreshHop(e)
	tooBig := false
	if hopOK {
		if mtu := d.portMTU(e.nhPort); p.IPLen > mtu {
			ip := frame[14:]
			if p.L4Off != 0 && ip[6]&0x40 != 0 {
				from := [4]byte(ip[16:20])
				if e.mode == modeNAT && e.reply {
					from = d.ownAddrTo(in)
				}
				return d.icmpTooBig(in, frame, mtu, from)
			}
			d.counters[cntPassFIB]++
			tooBig = true
		}
	}
	d.rewrite(frame, p, e)
	if !hopOK || tooBig {
		return Pass, 0
	}
	return d.emit(in, frame, e)
}

// rewrite translates a packet for its entry: addresses and IP checksum,
// then ports (or an echo's identifier) and the transport checksum.
func (d *Datapath) rewrite(frame []byte, p *flow.Packet, e *entry) {
	ip := frame[14:]
	copy(ip[12:16], e.src[:])
	copy(ip[16:20], e.dst[:])
	csumApply(ip[10:12], e.csumL3)
	if p.L4Off == 0 {
		return // a later fragment: no transport header, addresses only
	}
	if p.Key.Proto == 1 {
		// An echo (SNAT of a ping): the identifier is the port.
		ic := frame[p.L4Off:]
		nid := e.sport
		if e.reply {
			nid = e.dport
		}
		csumApply(ic[2:4], csumAdd16(0, binary.BigEndian.Uint16(ic[4:6]), nid))
		binary.BigEndian.PutUint16(ic[4:6], nid)
		return
	}
	l4 := frame[p.L4Off:]
	binary.BigEndian.PutUint16(l4[0:], e.sport)
	binary.BigEndian.PutUint16(l4[2:], e.dport)
	switch {
	case p.Key.Proto == 6:
		csumApply(l4[16:18], e.csumL4)
	case p.UDPCsum:
		csumApply(l4[6:8], e.csumL4)
		if l4[6] == 0 && l4[7] == 0 {
			l4[6], l4[7] = 0xff, 0xff
		}
	}
}

// refreshHop memoizes a NAT entry's next hop; false (counted) when there
// is none and the packet goes to the kernel.
func (d *Datapath) refreshHop(e *entry) bool {
	if e.nhGen == d.gen {
		return true
	}
	out, mac, r := d.route(netip.AddrFrom4(e.dst))
	switch r {
	case noRoute:
		d.counters[cntPassFIB]++
		return false
	case noNeighbor:
		if d.opts.ARP {
			d.wantNeighbor(out, d.nextHop(netip.AddrFrom4(e.dst)))
		}
		d.counters[cntPassNoNeigh]++
		return false
	}
	e.nhGen, e.nhPort, e.nhMAC = d.gen, out, mac
	return true
}

// natHop sends a translated packet to its memoized next hop; without one
// it goes to the kernel translated (pass_fib, pass_no_neigh).
func (d *Datapath) natHop(in int, frame []byte, e *entry) (Verdict, int) {
	if !d.refreshHop(e) {
		return Pass, 0
	}
	return d.emit(in, frame, e)
}

// xmitDirect is DR: the MAC addresses only, toward the real server. With
// no next hop the packet is dropped: it still carries the VIP, and the
// kernel would deliver it locally (bpf/nat.h next_hop, direct).
func (d *Datapath) xmitDirect(in int, frame []byte, e *entry) (Verdict, int) {
	if v, ok := d.directHop(e); !ok {
		return v, 0
	}
	if v, ok := d.directFits(in, frame, e, 0); !ok {
		return v, 0
	}
	return d.emit(in, frame, e)
}

// directFits applies the egress MTU to a direct packet that grows by
// overhead: one that does not fit is answered with "fragmentation needed"
// when its sender forbade fragments (the MTU it can use: minus the
// overhead), else dropped (drop_too_big): it carries the VIP.
func (d *Datapath) directFits(in int, frame []byte, e *entry, overhead int) (Verdict, bool) {
	ip := frame[14:]
	ipLen := int(binary.BigEndian.Uint16(ip[2:]))
	mtu := d.portMTU(e.nhPort)
	if ipLen+overhead <= mtu {
		return 0, true
	}
	if ip[6]&0x40 != 0 && binary.BigEndian.Uint16(ip[6:])&0x1fff == 0 {
		v, _ := d.icmpTooBig(in, frame, mtu-overhead, [4]byte(ip[16:20]))
		return v, false
	}
	d.counters[cntDropTooBig]++
	return Drop, false
}

// directHop memoizes the next hop toward a direct entry's real server;
// without one the packet is dropped.
func (d *Datapath) directHop(e *entry) (Verdict, bool) {
	if e.nhGen != d.gen {
		out, mac, r := d.route(netip.AddrFrom4(e.dst))
		switch r {
		case noRoute:
			d.counters[cntDropFIB]++
			return Drop, false
		case noNeighbor:
			if d.opts.ARP {
				d.wantNeighbor(out, d.nextHop(netip.AddrFrom4(e.dst)))
			}
			d.counters[cntDropNoNeigh]++
			return Drop, false
		}
		e.nhGen, e.nhPort, e.nhMAC = d.gen, out, mac
	}
	return 0, true
}

// xmitTunnel is IP-in-IP (bpf/nat.h xmit_tunnel): the client's packet,
// unchanged, inside an outer header from the egress port's address (or one
// of TunnelSrc's, by flow hash) to the real server. The Ethernet header
// moves 20 bytes to the front; padding after the inner packet is cut.
func (d *Datapath) xmitTunnel(in int, frame []byte, p *flow.Packet, e *entry) (Verdict, int) {
	if v, ok := d.directHop(e); !ok {
		return v, 0
	}
	if v, ok := d.directFits(in, frame, e, 20); !ok {
		return v, 0
	}
	if d.off < 20 {
		d.counters[cntDropFIB]++
		return Drop, 0
	}
	inner := p.IPLen
	var src [4]byte
	if d.opts.TunnelSrc.IsValid() {
		binary.BigEndian.PutUint32(src[:], d.tunBase|(p.Key.Hash(d.opts.HashSeed)&^d.tunMask))
	} else if a := d.ports[e.nhPort].Addrs; len(a) > 0 {
		src = a[0].As4()
	}
	tos := frame[15]
	d.off -= 20
	d.n = 14 + 20 + inner
	f := d.buf[d.off : d.off+d.n]
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	o := f[14:34]
	o[0], o[1] = 0x45, tos
	binary.BigEndian.PutUint16(o[2:], uint16(inner+20))
	clear(o[4:8]) // id, no fragment flags
	o[8], o[9] = 64, 4
	clear(o[10:12])
	copy(o[12:16], src[:])
	copy(o[16:20], e.dst[:])
	binary.BigEndian.PutUint16(o[10:], ^fold(sumWords(o)))
	return d.emit(in, f, e)
}

func sumWords(b []byte) uint32 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	return s
}

// emit sets the memoized next hop's MAC addresses and sends.
func (d *Datapath) emit(in int, frame []byte, e *entry) (Verdict, int) {
	return d.emitTo(in, frame, e.nhPort, e.nhMAC)
}

// emitTo sends frame out of port out to the Ethernet address mac.
func (d *Datapath) emitTo(in int, frame []byte, out int, mac [6]byte) (Verdict, int) {
	copy(frame[0:6], mac[:])
	copy(frame[6:12], d.macs[out][:])
	if out == in {
		d.counters[cntTx]++
		return Tx, out
	}
	d.counters[cntRedirect]++
	return Redirect, out
}

type routeResult uint8

const (
	routed routeResult = iota
	noRoute
	noNeighbor
)

// route finds the port toward dst and the next hop's Ethernet address:
// the longest connected prefix holding dst, else the longest static route
// (its gateway on a connected network).
func (d *Datapath) route(dst netip.Addr) (port int, mac [6]byte, r routeResult) {
	port, ok := d.connected(dst)
	hop := dst
	if !ok {
		hop = d.nextHop(dst)
		if hop == dst {
			return 0, mac, noRoute
		}
		if port, ok = d.connected(hop); !ok {
			return 0, mac, noRoute
		}
	}
	if n, found := d.neigh[hop]; found && n.port == port {
		return port, n.mac, routed
	}
	return port, mac, noNeighbor
}

func (d *Datapath) connected(dst netip.Addr) (port int, ok bool) {
	best := -1
	for i, p := range d.ports {
		for _, pf := range p.Prefixes {
			if pf.Contains(dst) && pf.Bits() > best {
				best, port = pf.Bits(), i
			}
		}
	}
	return port, best >= 0
}

// nextHop is dst's gateway under the longest static route, or dst.
func (d *Datapath) nextHop(dst netip.Addr) netip.Addr {
	if _, ok := d.connected(dst); ok {
		return dst
	}
	best, hop := -1, dst
	for _, r := range d.routes {
		if r.dst.Contains(dst) && r.dst.Bits() > best {
			best, hop = r.dst.Bits(), r.via
		}
	}
	return hop
}

// Sweep deletes connections idle past their state's timeout (both
// entries): the polling loop calls it about once a second, so a full
// table frees itself (XDP's table is an LRU instead). It returns how many
// entries it deleted.
func (d *Datapath) Sweep() int {
	n := d.Conns()
	for k, i := range d.conns.index {
		e := &d.conns.slab[i]
		if d.stale(e, d.now) {
			d.alive(e, k, d.now)
		}
	}
	for k, i := range d.conns6.index {
		e := &d.conns6.slab[i]
		if d.stale6(e, d.now) {
			d.alive6(e, k, d.now)
		}
	}
	if d.opts.Worker == 0 { // the workers share it: one sweeps
		d.shared.sweepPersist(d.now)
	}
	return n - d.Conns()
}

// account counts a forwarded packet for its real server, as IPVS does:
// in = client to real server, out = the replies.
func (d *Datapath) account(e *entry, ipLen int) {
	st := e.svc.reals[e.real].stats
	if e.reply {
		st.OutPkts++
		st.OutBytes += uint64(ipLen)
	} else {
		st.InPkts++
		st.InBytes += uint64(ipLen)
	}
}

// pickLeast is lc/wlc (bpf/mbx.c pick_least): the table position of the
// real server with the least IPVS overhead (active * 256 + inactive), per
// weight for wlc; ties go to the first.
func (d *Datapath) pickLeast(s *service) uint32 {
	best, bestOv, bestW := 0, int64(-1), int64(1)
	for i, ri := range s.table {
		r := s.reals[ri]
		ov := r.stats.active<<8 + r.stats.inactive
		w := int64(1)
		if s.pick == lb.PickLeastWeighted {
			if w = int64(r.weight); w == 0 {
				continue
			}
		}
		if bestOv < 0 || ov*bestW < bestOv*w {
			best, bestOv, bestW = i, ov, w
		}
	}
	return uint32(best)
}

// countState moves a connection between its real server's active and
// inactive counts as its state goes from old to next (flow.StateNone:
// none, for a new or deleted connection).
func countState(st *realState, old, next flow.State) {
	if old != flow.StateNone {
		if old == flow.StateEstablished {
			st.active--
		} else {
			st.inactive--
		}
	}
	if next != flow.StateNone {
		if next == flow.StateEstablished {
			st.active++
		} else {
			st.inactive++
		}
	}
}
