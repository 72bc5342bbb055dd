package datapath

import (
	"encoding/binary"
	"net/netip"

	"github.com/mbx-net/mbx/flow"
	"github.com/mbx-net/mbx/lb"
)

// SNAT (ipvsadm -J with -H MATCH; bpf/snat.h): LAN hosts reach the WAN
// through mbx's WAN address. A match service is a rule over traffic not
// addressed to mbx; a new flow that matches gets a WAN address (the
// service's "real servers", scheduled as usual) and a port from the local
// range, as Full-NAT picks a LIP and port, with the flow's destination as
// the "real server". Replies come to the WAN address (local) and are
// translated back like Full-NAT replies.

type snatRule struct {
	proto                      uint8
	srcLo, srcHi, dstLo, dstHi uint32 // host order
	iif, oif                   string // port names; "": any
	svc                        *service
}

func addrU32(a netip.Addr, def uint32) uint32 {
	if !a.IsValid() {
		return def
	}
	v4 := a.As4()
	return binary.BigEndian.Uint32(v4[:])
}

func newSNATRule(m lb.Match, s *service) snatRule {
	return snatRule{proto: uint8(m.Proto), srcLo: addrU32(m.SrcLo, 0), srcHi: addrU32(m.SrcHi, ^uint32(0)),
		dstLo: addrU32(m.DstLo, 0), dstHi: addrU32(m.DstHi, ^uint32(0)), iif: m.IIF, oif: m.OIF, svc: s}
}

// parseEcho makes an ICMP echo a flow: the identifier stands in for the
// ports (request: source "port", reply: destination), as conntrack does.
func parseEcho(frame []byte, p *flow.Packet) bool {
	ip := frame[14:]
	hlen := int(ip[0]&0xf) * 4
	if p.Key.Proto != 1 || binary.BigEndian.Uint16(ip[6:])&0x3fff != 0 || 14+hlen+8 > len(frame) {
		return false
	}
	ic := frame[14+hlen:]
	id := binary.BigEndian.Uint16(ic[4:6])
	switch {
	case ic[0] == 8 && ic[1] == 0:
		p.Key.SrcPort, p.Key.DstPort = id, 0
	case ic[0] == 0 && ic[1] == 0:
		p.Key.SrcPort, p.Key.DstPort = 0, id
	default:
		return false
	}
	p.L4Off = 14 + hlen
	return true
}

// snatOut is SNAT's outbound direction: a packet not addressed to mbx.
func (d *Datapath) snatOut(in int, frame []byte, p *flow.Packet) (Verdict, int) {
	r := d.snatMatch(in, p)
	if r == nil {
		d.counters[cntPassNotOurs]++
		return Pass, 0
	}
	k := keyOf(p.Key)
	if e := d.conns.get(k); e != nil && d.alive(e, k, d.now) {
		if d.now-e.lastSeen > 1<<20 {
			e.lastSeen = d.now
		}
		d.track(e, *p)
		d.account(e, p.IPLen)
		return d.xmit(in, frame, p, e)
	}
	if r.oif != "" {
		// The rule's egress: where the flow would be routed (a missing
		// neighbour is fine: mbx resolves it).
		port, _, res := d.route(p.Key.Dst)
		if res == noRoute || d.ports[port].Name != r.oif {
			d.counters[cntPassNotOurs]++
			return Pass, 0
		}
	}
	if p.Key.Proto == 6 && p.TCPFlags&(thSYN|thACK|thRST) != thSYN {
		// Mid-flow without state: the kernel's, routed as it is.
		d.counters[cntPassNotOurs]++
		return Pass, 0
	}
	e, v := d.newConn(p.Key, r.svc, d.now)
	if e == nil {
		return v, 0
	}
	d.account(e, p.IPLen)
	return d.xmit(in, frame, p, e)
}

// snatMatch is the first rule whose protocol, ranges and iif match.
func (d *Datapath) snatMatch(in int, p *flow.Packet) *snatRule {
	s, t := addrU32(p.Key.Src, 0), addrU32(p.Key.Dst, 0)
	for i := range d.snat {
		r := &d.snat[i]
		if r.proto == p.Key.Proto && s >= r.srcLo && s <= r.srcHi && t >= r.dstLo && t <= r.dstHi &&
			(r.iif == "" || r.iif == d.ports[in].Name) {
			return r
		}
	}
	return nil
}
