package datapath

import (
	"encoding/binary"

	"github.com/mbx-net/mbx/flow"
)

// icmpError is bpf/icmp.h's icmp_error: an ICMP error (destination
// unreachable, time exceeded) about a tracked connection's packet is
// translated like the connection and sent to the side that sent the
// quoted packet; anything else (errors about other traffic) goes to the
// kernel. The quoted packet is one mbx sent (after translation): the entry
// keyed by its reverse describes the other direction, and its rewrite
// tells what the quoted packet looked like before translation and where
// its sender is.
func (d *Datapath) icmpError(in int, frame []byte, p *flow.Packet) (Verdict, int) {
	ip := frame[14:]
	hl := int(ip[0]&0xf) * 4
	if len(ip) < hl+8+20+8 {
		return Pass, 0
	}
	ic := ip[hl:]
	if ic[0] != 3 && ic[0] != 11 {
		return Pass, 0
	}
	q := ic[8:]
	if q[0] != 0x45 || (q[9] != 6 && q[9] != 17) {
		return Pass, 0
	}
	ports := q[20:]
	var k key
	copy(k.src[:], q[16:20])
	copy(k.dst[:], q[12:16])
	k.sport = binary.BigEndian.Uint16(ports[2:])
	k.dport = binary.BigEndian.Uint16(ports[0:])
	k.proto = q[9]
	e := d.conns.get(k)
	if e == nil {
		return Pass, 0
	}
	d.counters[cntICMPError]++
	switch e.mode {
	case modeDR:
		// The real server sent the quoted packet from the VIP itself: it
		// gets the error as it is (DR) or tunnelled.
		return d.xmitDirect(in, frame, e)
	case modeTUN:
		return d.xmitTunnel(in, frame, p, e)
	}
	// The quoted packet before translation: e's rewrite reversed.
	qs, qd, qsp, qdp := e.dst, e.src, e.dport, e.sport
	// The error goes to the quoted packet's sender, from e's source (the
	// LIP for Full-NAT, the VIP when the NAT real server itself
	// complains); a router's error about NAT traffic keeps the router.
	os, od := e.src, e.dst
	if e.mode == modeNAT && [4]byte(ip[12:16]) != [4]byte(q[16:20]) {
		os = [4]byte(ip[12:16])
	}
	var dicmp uint32
	// Quoted IP header: addresses and its checksum.
	dq := csumAdd32(0, [4]byte(q[12:16]), qs)
	dq = csumAdd32(dq, [4]byte(q[16:20]), qd)
	dicmp = csumAdd32(dicmp, [4]byte(q[12:16]), qs)
	dicmp = csumAdd32(dicmp, [4]byte(q[16:20]), qd)
	oldq := binary.BigEndian.Uint16(q[10:12])
	copy(q[12:16], qs[:])
	copy(q[16:20], qd[:])
	csumApply(q[10:12], dq)
	dicmp = csumAdd16(dicmp, oldq, binary.BigEndian.Uint16(q[10:12]))
	// Quoted ports, and the transport checksum when quoted.
	dl4 := csumAdd16(dq, binary.BigEndian.Uint16(ports[0:]), qsp)
	dl4 = csumAdd16(dl4, binary.BigEndian.Uint16(ports[2:]), qdp)
	dicmp = csumAdd16(dicmp, binary.BigEndian.Uint16(ports[0:]), qsp)
	dicmp = csumAdd16(dicmp, binary.BigEndian.Uint16(ports[2:]), qdp)
	binary.BigEndian.PutUint16(ports[0:], qsp)
	binary.BigEndian.PutUint16(ports[2:], qdp)
	switch {
	case q[9] == 17 && (ports[6] != 0 || ports[7] != 0):
		old := binary.BigEndian.Uint16(ports[6:])
		csumApply(ports[6:8], dl4)
		if ports[6] == 0 && ports[7] == 0 {
			ports[6], ports[7] = 0xff, 0xff
		}
		dicmp = csumAdd16(dicmp, old, binary.BigEndian.Uint16(ports[6:]))
	case q[9] == 6 && len(ports) >= 18:
		// TCP's checksum is quoted when the sender quoted 18+ bytes.
		old := binary.BigEndian.Uint16(ports[16:])
		csumApply(ports[16:18], dl4)
		dicmp = csumAdd16(dicmp, old, binary.BigEndian.Uint16(ports[16:]))
	}
	csumApply(ic[2:4], dicmp)
	// The outer header.
	dout := csumAdd32(0, [4]byte(ip[12:16]), os)
	dout = csumAdd32(dout, [4]byte(ip[16:20]), od)
	copy(ip[12:16], os[:])
	copy(ip[16:20], od[:])
	csumApply(ip[10:12], dout)
	// e's next hop leads to od (e sends its own packets there).
	return d.natHop(in, frame, e)
}
