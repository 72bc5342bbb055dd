package datapath

import (
	"encoding/binary"
	"net/netip"
)

// ICMPv6 for IPv6 services (bpf/icmp6.h and nat6.h's error paths): "packet
// too big" answers, the translation of ICMPv6 errors about a Full-NAT
// connection, and NAT64's errors across families (RFC 7915 4.2 and 5.2).
// Checksums are computed whole here (Go has no verifier to please); the
// bytes are the XDP program's.

const (
	icmp6Quote = ip6Len + 8 // what mbx quotes: the IPv6 header and 8 bytes
	icmp6Total = 14 + ip6Len + 8 + icmp6Quote
	icmp4Total = 14 + 20 + 8 + 20 + 8
)

// icmp6TooBig turns the IPv6 packet in frame (received on in) into
// "packet too big" (mtu) from its destination to its sender, sent back.
func (d *Datapath) icmp6TooBig(in int, frame []byte, mtu int) (Verdict, int) {
	if len(frame) < 14+icmp6Quote || d.off+icmp6Total > len(d.buf) {
		d.counters[cntDropTooBig]++
		return Drop, 0
	}
	f := d.buf[d.off : d.off+icmp6Total]
	copy(f[14+ip6Len+8:], f[14:14+icmp6Quote]) // the quote, where it will stay
	q := f[14+ip6Len+8:]
	copy(f[0:6], f[6:12])
	copy(f[6:12], d.macs[in][:])
	ip := f[14 : 14+ip6Len]
	clear(ip)
	ip[0] = 6 << 4
	binary.BigEndian.PutUint16(ip[4:], 8+icmp6Quote)
	ip[6], ip[7] = 58, 64
	copy(ip[8:24], q[24:40])
	copy(ip[24:40], q[8:24])
	ic := f[14+ip6Len:]
	ic[0], ic[1] = 2, 0
	binary.BigEndian.PutUint32(ic[4:], uint32(mtu))
	icmp6Checksum(f[14:])
	d.n = icmp6Total
	d.counters[cntICMPTooBig]++
	return Tx, in
}

// icmp6Error translates an ICMPv6 error about a tracked IPv6 connection
// (the quoted packet is one mbx sent): for Full-NAT like the connection,
// to the quoted packet's original sender; for NAT64 into the IPv4 real
// server's ICMPv4 error (icmp64). Anything else: false.
func (d *Datapath) icmp6Error(in int, frame []byte) (Verdict, int, bool) {
	if len(frame) < 14+ip6Len+8+ip6Len+8 || frame[14+6] != 58 {
		return 0, 0, false
	}
	ip := frame[14:]
	plen := int(binary.BigEndian.Uint16(ip[4:]))
	ic := ip[ip6Len:]
	if ic[0] < 1 || ic[0] > 4 || ip6Len+plen > len(ip) {
		return 0, 0, false
	}
	q := ic[8:]
	if q[6] != 6 && q[6] != 17 {
		return 0, 0, false
	}
	ports := q[ip6Len:]
	k := key6{[16]byte(q[24:40]), [16]byte(q[8:24]), binary.BigEndian.Uint16(ports[2:]), binary.BigEndian.Uint16(ports[0:]), q[6]}
	e := d.conns6.get(k)
	if e == nil || e.mode != modeFNAT {
		return 0, 0, false
	}
	if is4(e.dst) {
		if e.reply {
			return 0, 0, false
		}
		v, out := d.icmp64(in, frame, e)
		return v, out, true
	}
	d.counters[cntICMPError]++
	// The quoted packet before translation: e's rewrite reversed, with its
	// transport checksum (when quoted) following; the error goes from e's
	// source to e's destination.
	var dl4 uint32
	for i := 0; i < 16; i += 4 {
		dl4 = csumAdd32(dl4, [4]byte(q[8+i:12+i]), [4]byte(e.dst[i:i+4]))
		dl4 = csumAdd32(dl4, [4]byte(q[24+i:28+i]), [4]byte(e.src[i:i+4]))
	}
	dl4 = csumAdd16(dl4, binary.BigEndian.Uint16(ports[0:]), e.dport)
	dl4 = csumAdd16(dl4, binary.BigEndian.Uint16(ports[2:]), e.sport)
	copy(q[8:24], e.dst[:])
	copy(q[24:40], e.src[:])
	binary.BigEndian.PutUint16(ports[0:], e.dport)
	binary.BigEndian.PutUint16(ports[2:], e.sport)
	if q[6] == 6 && len(ports) >= 18 {
		csumApply(ports[16:18], dl4)
	} else if q[6] == 17 && len(ports) >= 8 {
		csumApply(ports[6:8], dl4)
	}
	copy(ip[8:24], e.src[:])
	copy(ip[24:40], e.dst[:])
	icmp6Checksum(ip[:ip6Len+plen])
	v, ok := d.hop6(e, false)
	if !ok {
		return v, 0, true
	}
	v, out := d.emit6(in, frame, e)
	return v, out, true
}

// icmp4to6 and icmp6to4 are RFC 7915's type mappings (bpf/nat6.h's).
func icmp4to6(typ, code uint8) (uint8, uint8, bool) {
	switch {
	case typ == 11:
		return 3, code, true
	case typ != 3:
		return 0, 0, false
	case code == 4:
		return 2, 0, true
	case code == 3:
		return 1, 4, true
	case code == 9 || code == 10 || code == 13:
		return 1, 1, true
	}
	return 1, 0, true
}

func icmp6to4(typ, code uint8) (uint8, uint8, bool) {
	switch typ {
	case 3:
		return 11, code, true
	case 2:
		return 3, 4, true
	case 1:
		switch code {
		case 4:
			return 3, 3, true
		case 1:
			return 3, 10, true
		}
		return 3, 1, true
	}
	return 0, 0, false
}

// icmp46 turns an ICMPv4 error about a NAT64 connection's IPv4 packet into
// the ICMPv6 error its client gets about its own packet (frag-needed:
// packet too big, MTU + 20), grown into the headroom; false when it is no
// NAT64 connection's.
func (d *Datapath) icmp46(in int, frame []byte) (Verdict, int, bool) {
	if len(frame) < 14+20+8+20+8 || frame[14] != 0x45 || frame[14+9] != 1 {
		return 0, 0, false
	}
	ip := frame[14:]
	ic, q := ip[20:], ip[28:]
	if q[0] != 0x45 || (q[9] != 6 && q[9] != 17) {
		return 0, 0, false
	}
	t6, c6, ok := icmp4to6(ic[0], ic[1])
	if !ok {
		return 0, 0, false
	}
	ql4 := q[20:28]
	k := key6{netip.AddrFrom4([4]byte(q[16:20])).As16(), netip.AddrFrom4([4]byte(q[12:16])).As16(),
		binary.BigEndian.Uint16(ql4[2:]), binary.BigEndian.Uint16(ql4[0:]), q[9]}
	e := d.conns6.get(k)
	if e == nil || !e.reply || is4(e.dst) || d.off < icmp6Total-icmp4Total { // it grows into the headroom
		return 0, 0, false
	}
	d.counters[cntICMPError]++
	mtu := int(binary.BigEndian.Uint16(ic[6:]))
	if mtu == 0 {
		mtu = 1280
	} else {
		mtu += 20
	}
	qtos, qttl, qproto := q[1], q[8], q[9]
	qplen := int(binary.BigEndian.Uint16(q[2:])) - 20
	var l4 [8]byte
	copy(l4[:], ql4)
	binary.BigEndian.PutUint16(l4[0:], e.dport)
	binary.BigEndian.PutUint16(l4[2:], e.sport)
	var macs [12]byte
	copy(macs[:], frame[0:12])
	d.off -= icmp6Total - icmp4Total
	d.n = icmp6Total
	f := d.buf[d.off : d.off+d.n]
	copy(f[0:12], macs[:])
	binary.BigEndian.PutUint16(f[12:], etherTypeIPv6)
	o := f[14 : 14+ip6Len]
	clear(o)
	o[0] = 6 << 4
	binary.BigEndian.PutUint16(o[4:], 8+icmp6Quote)
	o[6], o[7] = 58, 64
	copy(o[8:24], e.src[:])
	copy(o[24:40], e.dst[:])
	n := f[14+ip6Len:]
	clear(n[:8])
	n[0], n[1] = t6, c6
	if t6 == 2 {
		binary.BigEndian.PutUint32(n[4:], uint32(mtu))
	}
	nq := n[8 : 8+ip6Len]
	binary.BigEndian.PutUint32(nq[0:], 6<<28|uint32(qtos)<<20)
	binary.BigEndian.PutUint16(nq[4:], uint16(qplen))
	nq[6], nq[7] = qproto, qttl
	copy(nq[8:24], e.dst[:])
	copy(nq[24:40], e.src[:])
	copy(n[8+ip6Len:], l4[:])
	icmp6Checksum(f[14:])
	v, ok := d.hop6(e, false)
	if !ok {
		return v, 0, true
	}
	v, out := d.emit6(in, f, e)
	return v, out, true
}

// icmp64 turns an ICMPv6 error about a NAT64 reply (as mbx translated it)
// into the ICMPv4 error the real server gets about its own packet (packet
// too big: fragmentation needed, MTU - 20); e is the client's entry.
func (d *Datapath) icmp64(in int, frame []byte, e *entry6) (Verdict, int) {
	ip := frame[14:]
	ic := ip[ip6Len:]
	q := ic[8:]
	t4, c4, ok := icmp6to4(ic[0], ic[1])
	if !ok {
		return Pass, 0
	}
	d.counters[cntICMPError]++
	mtu := int(binary.BigEndian.Uint32(ic[4:]))
	mtu = max(mtu-20, 68)
	qtos := q[0]<<4 | q[1]>>4
	qtot := int(binary.BigEndian.Uint16(q[4:])) + 20
	qproto, qttl := q[6], q[7]
	var l4 [8]byte
	copy(l4[:], q[ip6Len:ip6Len+8])
	binary.BigEndian.PutUint16(l4[0:], e.dport)
	binary.BigEndian.PutUint16(l4[2:], e.sport)
	var macs [12]byte
	copy(macs[:], frame[0:12])
	d.off += icmp6Total - icmp4Total
	d.n = icmp4Total
	f := d.buf[d.off : d.off+d.n]
	copy(f[0:12], macs[:])
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	o := f[14:34]
	o[0], o[1] = 0x45, 0
	binary.BigEndian.PutUint16(o[2:], icmp4Total-14)
	clear(o[4:8])
	o[8], o[9] = 64, 1
	clear(o[10:12])
	copy(o[12:16], e.src[12:16])
	copy(o[16:20], e.dst[12:16])
	binary.BigEndian.PutUint16(o[10:], ^fold(sumWords(o)))
	n := f[34:]
	clear(n[:8])
	n[0], n[1] = t4, c4
	if t4 == 3 && c4 == 4 {
		binary.BigEndian.PutUint16(n[6:], uint16(mtu))
	}
	nq := n[8:28]
	nq[0], nq[1] = 0x45, qtos
	binary.BigEndian.PutUint16(nq[2:], uint16(qtot))
	binary.BigEndian.PutUint32(nq[4:], 0x4000)
	nq[8], nq[9] = qttl, qproto
	clear(nq[10:12])
	copy(nq[12:16], e.dst[12:16])
	copy(nq[16:20], e.src[12:16])
	binary.BigEndian.PutUint16(nq[10:], ^fold(sumWords(nq)))
	copy(n[28:36], l4[:])
	binary.BigEndian.PutUint16(n[2:], ^fold(sumWords(n[:36])))
	v, ok := d.hop6(e, false)
	if !ok {
		return v, 0
	}
	return d.emit6(in, f, e)
}
