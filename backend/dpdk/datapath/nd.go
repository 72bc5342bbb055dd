package datapath

import (
	"encoding/binary"
	"net/netip"
)

// Neighbour discovery (RFC 4861), arp.go's IPv6 twin for ports DPDK owns:
// a neighbour solicitation for a local address (a port's own, a VIP, a
// LIP) is answered in place; solicitations and advertisements from on-link
// senders teach their link-layer addresses; a next hop with no entry is
// solicited (Resolve); echo requests to them are answered (echoReply6).
// The rest of ICMPv6 (router discovery, echo to others) is the kernel's,
// through the TAP when there is one.

const (
	icmp6NS  = 135
	icmp6NA  = 136
	ndOptSLL = 1 // source link-layer address
	ndOptTLL = 2 // target link-layer address
	ndLen    = 14 + ip6Len + 24 + 8
)

// handleND processes an ICMPv6 frame received on port in; ok is false
// when it is no neighbour discovery mbx takes part in.
func (d *Datapath) handleND(in int, frame []byte) (v Verdict, ok bool) {
	if len(frame) < 14+ip6Len+8 || frame[14+6] != 58 {
		return 0, false
	}
	ip := frame[14:]
	icmp := ip[ip6Len:]
	typ := icmp[0]
	if typ == 128 {
		return d.echoReply6(in, frame)
	}
	if (typ != icmp6NS && typ != icmp6NA) || len(icmp) < 24 {
		return 0, false
	}
	src := netip.AddrFrom16([16]byte(ip[8:24]))
	target := netip.AddrFrom16([16]byte(icmp[8:24]))
	// The link-layer address option, when present and whole.
	var lladdr [6]byte
	hasLL := false
	if opt := icmp[24:]; len(opt) >= 8 && opt[1] == 1 && (opt[0] == ndOptSLL || opt[0] == ndOptTLL) {
		lladdr, hasLL = [6]byte(opt[2:8]), true
	}
	learn := src
	if typ == icmp6NA {
		learn = target
	}
	if hasLL && !learn.IsUnspecified() && d.onLink(in, learn) {
		d.learn(in, learn, lladdr)
	}
	if typ != icmp6NS || !hasLL || len(frame) < ndLen || !(d.local[target] || d.ownAddr(in, target)) {
		d.counters[cntPassNotOurs]++
		return Pass, true
	}
	// The advertisement, in place: to the solicitor, from the target.
	frame = frame[:ndLen]
	copy(frame[0:6], frame[6:12])
	copy(frame[6:12], d.macs[in][:])
	copy(ip[24:40], ip[8:24])
	t16 := target.As16()
	copy(ip[8:24], t16[:])
	binary.BigEndian.PutUint16(ip[4:], 32)
	ip[7] = 255
	icmp[0], icmp[1] = icmp6NA, 0
	binary.BigEndian.PutUint32(icmp[4:], 0x60000000) // solicited, override
	icmp[24], icmp[25] = ndOptTLL, 1
	copy(icmp[26:32], d.macs[in][:])
	icmp6Checksum(ip[:ip6Len+32])
	d.counters[cntTx]++
	return Tx, true
}

// icmp6Checksum sets the ICMPv6 checksum of the IPv6 packet pkt.
func icmp6Checksum(pkt []byte) {
	msg := pkt[ip6Len:]
	msg[2], msg[3] = 0, 0
	sum := sumWords(pkt[8:40]) + uint32(len(msg)) + 58 + sumWords(msg)
	binary.BigEndian.PutUint16(msg[2:], ^fold(sum))
}

// solicit writes a neighbour solicitation for ip from port into buf (at
// least ndLen bytes), to ip's solicited-node multicast address.
func (d *Datapath) solicit(buf []byte, port int, ip netip.Addr) int {
	var from netip.Addr
	for _, a := range d.ports[port].Addrs {
		if a.Is6() {
			from = a
			break
		}
	}
	if !from.IsValid() {
		return 0
	}
	t := ip.As16()
	buf[0], buf[1], buf[2] = 0x33, 0x33, 0xff
	copy(buf[3:6], t[13:16])
	copy(buf[6:12], d.macs[port][:])
	binary.BigEndian.PutUint16(buf[12:], etherTypeIPv6)
	p := buf[14:ndLen]
	clear(p)
	p[0] = 6 << 4
	binary.BigEndian.PutUint16(p[4:], 32)
	p[6], p[7] = 58, 255
	f := from.As16()
	copy(p[8:24], f[:])
	// ff02::1:ffXX:XXXX
	p[24], p[25] = 0xff, 0x02
	p[35], p[36] = 0x01, 0xff
	copy(p[37:40], t[13:16])
	m := p[ip6Len:]
	m[0] = icmp6NS
	copy(m[8:24], t[:])
	m[24], m[25] = ndOptSLL, 1
	copy(m[26:32], d.macs[port][:])
	icmp6Checksum(p)
	return ndLen
}

// echoReply6 answers an ICMPv6 echo request to a local address (a port's,
// a VIP, a LIP) in place, as echoReply does for IPv4, so operators can
// ping6 a VIP on a DPDK port.
func (d *Datapath) echoReply6(in int, frame []byte) (Verdict, bool) {
	ip := frame[14:]
	plen := int(binary.BigEndian.Uint16(ip[4:]))
	dst := netip.AddrFrom16([16]byte(ip[24:40]))
	if plen < 8 || ip6Len+plen > len(ip) || !(d.local[dst] || d.ownAddr(in, dst)) {
		return 0, false
	}
	var a [16]byte
	copy(a[:], ip[8:24])
	copy(ip[8:24], ip[24:40])
	copy(ip[24:40], a[:])
	ip[7] = 64
	ip[ip6Len] = 129 // echo reply
	icmp6Checksum(ip[:ip6Len+plen])
	copy(frame[0:6], frame[6:12])
	copy(frame[6:12], d.macs[in][:])
	d.counters[cntTx]++
	return Tx, true
}
