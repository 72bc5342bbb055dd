package datapath

import (
	"encoding/binary"
	"math/bits"
	"net/netip"

	"github.com/mbx-net/mbx/flow"
	"github.com/mbx-net/mbx/lb"
)

// IPv6 services, bpf/lb6.h's twin: Full-NAT to IPv6 real servers from
// IPv6 LIPs, DR and the ip6ip6 tunnel, in a table of their own (conns6,
// 40-byte keys, as XDP's), fragments following their flow; neighbour
// discovery is nd.go's, NAT64 nat64.go's, ICMPv6 icmp6.go's.

type key6 struct {
	src, dst     [16]byte
	sport, dport uint16
	proto        uint8
}

// entry6 is struct conn6: one direction's rewrite, as entry is for IPv4.
type entry6 struct {
	src, dst     [16]byte
	sport, dport uint16
	csumL4       uint32
	svc          *service
	real         int
	state        flow.State
	reply        bool
	mode         uint8 // modeFNAT, modeDR, modeTUN
	single       bool
	lastSeen     int64
	twin         key6
	nhGen        uint64
	nhPort       int
	nhMAC        [6]byte
}

const (
	etherTypeIPv6 = 0x86dd
	ip6Len        = 40
)

// pkt6 is what parse6 found.
type pkt6 struct {
	k        key6
	tcpFlags uint8
	ipLen    int // header and payload
	l4Off    int // 0: a later fragment (no transport header)
	frag     bool
	fragID   uint32
}

// parse6 is bpf/lb6.h's parse6 for IPv6 frames, with its verdicts.
func parse6(frame []byte) (p pkt6, r flow.ParseResult) {
	if len(frame) < 14+ip6Len || frame[14]>>4 != 6 {
		return p, flow.ParseBadL3
	}
	ip := frame[14:]
	plen := int(binary.BigEndian.Uint16(ip[4:]))
	if ip6Len+plen > len(ip) {
		return p, flow.ParseBadL3
	}
	copy(p.k.src[:], ip[8:24])
	copy(p.k.dst[:], ip[24:40])
	next := ip[6]
	hlen := ip6Len
	if next == 44 {
		if plen < 8 {
			return p, flow.ParseBadL3 // the fragment header cut short
		}
		next, hlen = ip[40], ip6Len+8
		p.frag, p.fragID = true, binary.BigEndian.Uint32(ip[44:48])
		if binary.BigEndian.Uint16(ip[42:44])&0xfff8 != 0 {
			p.k.proto, p.ipLen = next, ip6Len+plen
			return p, flow.ParseFragment // a later fragment: fragment6 finds its ports
		}
	}
	if next != 6 && next != 17 {
		return p, flow.ParseOtherL4
	}
	p.k.proto = next
	p.ipLen = ip6Len + plen
	p.l4Off = 14 + hlen
	l4 := ip[hlen : ip6Len+plen]
	if next == 6 {
		if len(l4) < 20 {
			return p, flow.ParseBadL4
		}
		if doff := int(l4[12]>>4) * 4; doff < 20 || doff > len(l4) {
			return p, flow.ParseBadL4
		}
		p.tcpFlags = l4[13]
	} else {
		if len(l4) < 8 {
			return p, flow.ParseBadL4
		}
		// A first fragment's UDP length is the whole datagram's.
		if ulen := int(binary.BigEndian.Uint16(l4[4:])); ulen < 8 || (ulen > len(l4) && !p.frag) {
			return p, flow.ParseBadL4
		}
		if l4[6] == 0 && l4[7] == 0 {
			return p, flow.ParseBadL4 // IPv6 UDP must carry a checksum
		}
	}
	p.k.sport = binary.BigEndian.Uint16(l4[0:])
	p.k.dport = binary.BigEndian.Uint16(l4[2:])
	return p, flow.ParseOK
}

// words6 is an address's four 32-bit words as the datapath hashes them.
func words6(a [16]byte) [4]uint32 {
	return [4]uint32{binary.LittleEndian.Uint32(a[0:]), binary.LittleEndian.Uint32(a[4:]),
		binary.LittleEndian.Uint32(a[8:]), binary.LittleEndian.Uint32(a[12:])}
}

// hash6 is bpf/lb6.h's flow_hash6, bit for bit.
func (k key6) hash(seed uint32) uint32 {
	h := seed
	for _, w := range words6(k.src) {
		h = flow.HashMix(h, w)
	}
	for _, w := range words6(k.dst) {
		h = flow.HashMix(h, w)
	}
	h = flow.HashMix(h, flow.PortWord(k.sport)|flow.PortWord(k.dport)<<16)
	h = flow.HashMix(h, uint32(k.proto)|10<<8)
	return flow.HashFinal(h ^ 40)
}

// fold6 is bpf/lb6.h's fold6: an address as one word (sh, dh, persistence).
func fold6(a [16]byte) uint32 {
	w := words6(a)
	return w[0] ^ w[1] ^ w[2] ^ w[3]
}

func (e *entry6) setCsum(k key6) {
	var d uint32
	for i := 0; i < 16; i += 4 {
		d = csumAdd32(d, [4]byte(k.src[i:i+4]), [4]byte(e.src[i:i+4]))
		d = csumAdd32(d, [4]byte(k.dst[i:i+4]), [4]byte(e.dst[i:i+4]))
	}
	d = csumAdd16(d, k.sport, e.sport)
	d = csumAdd16(d, k.dport, e.dport)
	e.csumL4 = d
}

// process6 is bpf/mbx.c's process6 for IPv6 frames.
func (d *Datapath) process6(in int, frame []byte) (Verdict, int) {
	if d.opts.ARP {
		if v, ok := d.handleND(in, frame); ok {
			return v, in
		}
	}
	p, r := parse6(frame)
	dst := netip.AddrFrom16(p.k.dst)
	switch r {
	case flow.ParseOK:
	case flow.ParseFragment:
		if p.frag {
			return d.fragment6(in, frame, &p)
		}
		d.counters[cntPassNotOurs]++
		return Pass, 0
	case flow.ParseOtherL4:
		if v, out, ok := d.icmp6Error(in, frame); ok {
			return v, out
		}
		d.counters[cntPassNotOurs]++
		return Pass, 0
	case flow.ParseBadL3:
		d.counters[cntPassMalformed]++
		return Pass, 0
	default: // flow.ParseBadL4
		if d.local[dst] {
			d.counters[cntDropMalformed]++
			return Drop, 0
		}
		d.counters[cntPassMalformed]++
		return Pass, 0
	}
	now := d.now
	newSYN := p.k.proto != 6 || p.tcpFlags&(thSYN|thACK|thRST) == thSYN
	e := d.conns6.get(p.k)
	if e != nil {
		switch {
		case !d.alive6(e, p.k, now):
			e = nil
		case !e.reply && newSYN && p.k.proto == 6 && (e.state == flow.StateTimeWait || e.state == flow.StateClose):
			d.delete6(e, p.k)
			d.counters[cntConnReuse]++
			e = nil
		}
	}
	if e != nil {
		if now-e.lastSeen > 1<<20 {
			e.lastSeen = now
		}
		d.track6(e, p)
	} else {
		s := d.services[svcKey{dst, p.k.dport, p.k.proto}]
		if s == nil {
			d.counters[cntPassNotOurs]++
			return Pass, 0
		}
		if !newSYN {
			d.counters[cntDropNoConn]++
			return Drop, 0
		}
		var v Verdict
		if e, v = d.newConn6(p.k, s, now); e == nil {
			return v, 0
		}
	}
	d.account6(e, p.ipLen)
	if p.frag {
		d.rememberFrag6(p)
	}
	return d.xmit6(in, frame, &p, e)
}

func (d *Datapath) account6(e *entry6, ipLen int) {
	st := e.svc.reals[e.real].stats
	if e.reply {
		st.OutPkts++
		st.OutBytes += uint64(ipLen)
	} else {
		st.InPkts++
		st.InBytes += uint64(ipLen)
	}
}

// IPv6 fragments follow their flow as IPv4's do (frag.go): the first
// fragment's ports, remembered by (addresses, identification, protocol).
type frag6Key struct {
	src, dst [16]byte
	id       uint32
	proto    uint8
}

func (d *Datapath) rememberFrag6(p pkt6) {
	if len(d.frags6) >= maxFrags {
		for old := range d.frags6 {
			delete(d.frags6, old)
			break
		}
	}
	d.frags6[frag6Key{p.k.src, p.k.dst, p.fragID, p.k.proto}] = fragPorts{p.k.sport, p.k.dport}
}

// fragment6 sends a later fragment with its datagram's connection; one
// that cannot be placed is dropped when it is for a VIP/LIP (the kernel's
// otherwise).
func (d *Datapath) fragment6(in int, frame []byte, p *pkt6) (Verdict, int) {
	var e *entry6
	if fp, ok := d.frags6[frag6Key{p.k.src, p.k.dst, p.fragID, p.k.proto}]; ok {
		p.k.sport, p.k.dport = fp.sport, fp.dport
		if e = d.conns6.get(p.k); e != nil && !d.alive6(e, p.k, d.now) {
			e = nil
		}
	}
	if e == nil {
		if d.local[netip.AddrFrom16(p.k.dst)] {
			d.counters[cntDropFragment]++
			return Drop, 0
		}
		d.counters[cntPassNotOurs]++
		return Pass, 0
	}
	d.counters[cntFragment]++
	d.account6(e, p.ipLen)
	return d.xmit6(in, frame, p, e)
}

func (d *Datapath) alive6(e *entry6, k key6, now int64) bool {
	if !d.stale6(e, now) {
		return true
	}
	if t := d.conns6.get(e.twin); !e.single && t != nil && !d.stale6(t, now) {
		e.lastSeen = t.lastSeen
		return true
	}
	d.delete6(e, k)
	return false
}

func (d *Datapath) stale6(e *entry6, now int64) bool {
	return now-e.lastSeen > int64(d.opts.Timeouts[e.state%flow.NumStates])
}

func (d *Datapath) delete6(e *entry6, k key6) {
	countState(e.svc.reals[e.real].stats, e.state, flow.StateNone)
	if !e.single && d.conns6.del(e.twin) {
		d.counters[cntEntryDeleted]++
	}
	if d.conns6.del(k) {
		d.counters[cntEntryDeleted]++
	}
}

func (d *Datapath) track6(e *entry6, p pkt6) {
	if p.k.proto != 6 {
		return
	}
	dir := flow.DirInput
	if e.reply {
		dir = flow.DirOutput
	}
	next := d.fsm.Next(dir, p.tcpFlags, e.state)
	if next == e.state {
		return
	}
	countState(e.svc.reals[e.real].stats, e.state, next)
	e.state = next
	if t := d.conns6.get(e.twin); !e.single && t != nil {
		t.state = next
	}
}

// pick6 is bpf/mbx.c's pick_real for an IPv6 flow with hash h.
func (d *Datapath) pick6(k key6, s *service, h uint32, now int64) int {
	pk := persistKey{s.id, k.src}
	if s.persist > 0 {
		if pr, ok := d.shared.persisted(pk, now); ok {
			for i, r := range s.reals {
				if netip.AddrPortFrom(r.addr, r.port) == pr {
					d.shared.persist(pk, persistEntry{pr, now, s.persist})
					return i
				}
			}
		}
	}
	var n uint32
	seed := d.opts.HashSeed
	switch s.pick {
	case lb.PickRoundRobin:
		n = s.rrPos
		s.rrPos++
	case lb.PickLeast, lb.PickLeastWeighted:
		n = d.pickLeast(s)
	case lb.PickSource:
		n = flow.HashFinal(flow.HashMix(seed^0x5bd1e995, fold6(k.src)))
	case lb.PickDest:
		n = flow.HashFinal(flow.HashMix(seed^0x5bd1e995, fold6(k.dst)))
	default:
		n = flow.HashFinal(h ^ 0x5bd1e995)
	}
	ri := s.table[n%uint32(len(s.table))]
	if s.persist > 0 {
		d.shared.persist(pk, persistEntry{netip.AddrPortFrom(s.reals[ri].addr, s.reals[ri].port), now, s.persist})
	}
	return ri
}

// newConn6 is mbx_new_conn6: DR and the tunnel keep one entry; Full-NAT
// probes LIP/port candidates until the reply entry fits.
func (d *Datapath) newConn6(k key6, s *service, now int64) (*entry6, Verdict) {
	if len(s.table) == 0 {
		d.counters[cntDropNoReal]++
		return nil, Drop
	}
	h := k.hash(d.opts.HashSeed)
	ri := d.pick6(k, s, h, now)
	rs := s.reals[ri]
	state := flow.StateUDP
	if k.proto == 6 {
		state = d.fsm.Next(flow.DirInput, thSYN, flow.StateNone)
	}
	if rs.mode == lb.DirectRoute || rs.mode == lb.Tunnel {
		fe := d.conns6.add(k)
		if fe == nil {
			d.conns6.del(k)
			if fe = d.conns6.add(k); fe == nil {
				d.counters[cntDropNoPort]++
				return nil, Drop
			}
		}
		mode := uint8(modeDR)
		if rs.mode == lb.Tunnel {
			mode = modeTUN
		}
		*fe = entry6{src: k.src, dst: rs.addr.As16(), sport: k.sport, dport: k.dport, svc: s, real: ri,
			state: state, mode: mode, single: true, lastSeen: now, twin: k}
		d.connCounted(rs, state)
		return fe, 0
	}
	if len(s.laddrs) == 0 {
		d.counters[cntDropNoLaddr]++
		return nil, Drop
	}
	for i := range portTries {
		li, lport := flow.LocalCandidate(h, i, len(s.laddrs), d.opts.PortLo, d.opts.PortHi)
		lport = d.ownPort(lport)
		rk := key6{rs.addr.As16(), s.laddrs[li].As16(), rs.port, lport, k.proto}
		re := d.conns6.add(rk)
		if re == nil {
			if old := d.conns6.get(rk); old == nil || d.alive6(old, rk, now) {
				continue
			}
			if re = d.conns6.add(rk); re == nil {
				continue
			}
		}
		fe := d.conns6.add(k)
		if fe == nil {
			d.conns6.del(k)
			if fe = d.conns6.add(k); fe == nil {
				d.conns6.del(rk)
				break
			}
		}
		*re = entry6{src: k.dst, dst: k.src, sport: k.dport, dport: k.sport, svc: s, real: ri,
			state: state, reply: true, lastSeen: now, twin: k}
		re.setCsum(rk)
		*fe = entry6{src: rk.dst, dst: rk.src, sport: rk.dport, dport: rk.sport, svc: s, real: ri,
			state: state, lastSeen: now, twin: rk}
		fe.setCsum(k)
		d.connCounted(rs, state)
		return fe, 0
	}
	d.counters[cntDropNoPort]++
	return nil, Drop
}

// connCounted counts a new connection for its real server.
func (d *Datapath) connCounted(rs real, state flow.State) {
	rs.stats.Conns++
	countState(rs.stats, flow.StateNone, state)
	d.counters[cntConnNew]++
}

// hop6 memoizes an entry's next hop toward its destination. Without one,
// Full-NAT's packet goes to the kernel translated and a direct one is
// dropped (it carries the VIP), as for IPv4.
func (d *Datapath) hop6(e *entry6, direct bool) (Verdict, bool) {
	if e.nhGen == d.gen {
		return 0, true
	}
	dst := netip.AddrFrom16(e.dst).Unmap() // NAT64's real servers are IPv4
	out, mac, r := d.route(dst)
	if r == noNeighbor && d.opts.ARP {
		d.wantNeighbor(out, d.nextHop(dst))
	}
	switch {
	case r == noRoute && direct:
		d.counters[cntDropFIB]++
		return Drop, false
	case r == noRoute:
		d.counters[cntPassFIB]++
		return Pass, false
	case r == noNeighbor && direct:
		d.counters[cntDropNoNeigh]++
		return Drop, false
	case r == noNeighbor:
		d.counters[cntPassNoNeigh]++
		return Pass, false
	}
	e.nhGen, e.nhPort, e.nhMAC = d.gen, out, mac
	return 0, true
}

// xmit6 is nat6.h's transmit for an IPv6 entry.
func (d *Datapath) xmit6(in int, frame []byte, p *pkt6, e *entry6) (Verdict, int) {
	direct := e.mode != modeFNAT
	overhead := 0
	if e.mode == modeTUN {
		overhead = ip6Len
	}
	if is4(e.dst) {
		overhead = -20 // NAT64: the IPv4 header is shorter
	}
	v, ok := d.hop6(e, direct)
	if mtu := d.portMTU(e.nhPort); ok && p.ipLen+overhead > mtu {
		// IPv6 is never fragmented on the way: the sender learns the MTU
		// its packets may have (bpf/nat6.h).
		return d.icmp6TooBig(in, frame, mtu-overhead)
	}
	switch e.mode {
	case modeDR:
		if !ok {
			return v, 0
		}
	case modeTUN:
		if !ok {
			return v, 0
		}
		return d.tunnel6(in, frame, p, e)
	default:
		if is4(e.dst) && p.frag {
			d.counters[cntDropMalformed]++ // NAT64 does not translate fragments
			return Drop, 0
		}
		if is4(e.dst) { // NAT64: out as IPv4 (nat64.go)
			d.to4(frame, p, e)
			if !ok {
				return v, 0
			}
			return d.emit6(in, d.buf[d.off:d.off+d.n], e)
		}
		ip := frame[14:]
		copy(ip[8:24], e.src[:])
		copy(ip[24:40], e.dst[:])
		if p.l4Off != 0 { // a later fragment has no ports
			d.rewriteL4(frame[p.l4Off:], p.k.proto, e.sport, e.dport, e.csumL4)
		}
		if !ok {
			return v, 0
		}
	}
	return d.emit6(in, frame, e)
}

// tunnel6 pushes an outer IPv6 header (ip6ip6, RFC 2473) from the egress
// port's address, the flow hash in its flow label.
func (d *Datapath) tunnel6(in int, frame []byte, p *pkt6, e *entry6) (Verdict, int) {
	if d.off < ip6Len {
		d.counters[cntDropFIB]++
		return Drop, 0
	}
	src := d.source6(e.nhPort, netip.AddrFrom16(e.dst)).As16()
	tc := frame[14]<<4 | frame[15]>>4
	label := p.k.hash(d.opts.HashSeed) & 0xfffff
	inner := p.ipLen
	d.off -= ip6Len
	d.n = 14 + ip6Len + inner
	f := d.buf[d.off : d.off+d.n]
	binary.BigEndian.PutUint16(f[12:], etherTypeIPv6)
	o := f[14 : 14+ip6Len]
	binary.BigEndian.PutUint32(o[0:], 6<<28|uint32(tc)<<20|label)
	binary.BigEndian.PutUint16(o[4:], uint16(inner))
	o[6], o[7] = 41, 64
	copy(o[8:24], src[:])
	copy(o[24:40], e.dst[:])
	return d.emit6(in, f, e)
}

// source6 picks the egress port's source address toward dst as Linux's
// source address selection would (RFC 6724 rule 8, the kernel's way): the
// longest prefix shared with dst, counted at most to the address's own
// prefix length, among the port's addresses and the local (VIP, LIP)
// addresses on its networks. The XDP datapath gets the kernel's choice
// from its fib lookup; this keeps the tunnel's outer source the same.
func (d *Datapath) source6(port int, dst netip.Addr) netip.Addr {
	var best netip.Addr
	bestLen := -1
	try := func(a netip.Addr, bits int) {
		if !a.Is6() {
			return
		}
		n := commonPrefix(a, dst)
		if n > bits {
			n = bits
		}
		if n > bestLen || (n == bestLen && a.Less(best)) { // ties: the lower address, not the map's order
			best, bestLen = a, n
		}
	}
	p := d.ports[port]
	for i, a := range p.Addrs {
		if i < len(p.Prefixes) {
			try(a, p.Prefixes[i].Bits())
		}
	}
	for a := range d.local {
		for _, pf := range p.Prefixes {
			if pf.Contains(a) {
				try(a, 128)
			}
		}
	}
	return best
}

func commonPrefix(a, b netip.Addr) int {
	x, y := a.As16(), b.As16()
	for i := range x {
		if d := x[i] ^ y[i]; d != 0 {
			return i*8 + bits.LeadingZeros8(d)
		}
	}
	return 128
}

func (d *Datapath) emit6(in int, frame []byte, e *entry6) (Verdict, int) {
	return d.emitTo(in, frame, e.nhPort, e.nhMAC)
}
