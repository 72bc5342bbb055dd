package flow

import (
	"encoding/binary"
	"net/netip"
)

// ParseResult classifies a frame exactly as bpf/parse.h does, so every
// datapath gives malformed input the same documented verdict
// (docs/datapath.md).
type ParseResult int

const (
	ParseOK       ParseResult = iota
	ParseNotIP                // not IPv4: the kernel's business
	ParseBadL3                // truncated or inconsistent IPv4 header
	ParseOtherL4              // IPv4, not TCP/UDP
	ParseFragment             // a later IPv4 fragment (offset > 0)
	ParseBadL4                // TCP/UDP header truncated or inconsistent
)

func (r ParseResult) String() string {
	return [...]string{"ok", "not-ip", "bad-l3", "other-l4", "fragment", "bad-l4"}[r]
}

// Packet is what parsing found.
type Packet struct {
	Key      Key
	TCPFlags uint8
	IPLen    int // IPv4 total length
	// FirstFragment: a datagram's first fragment (MF set, offset 0); it
	// has the ports, its later fragments do not.
	FirstFragment bool
	L4Off         int // offset of the TCP/UDP header in the frame
	UDPCsum       bool
}

const (
	ethLen  = 14
	protoTC = 6
	protoUD = 17
)

// Parse parses an Ethernet/IPv4/TCP|UDP frame without allocating. Key.Dst
// is set from ParseOtherL4 on (the verdicts for fragments and bad L4 depend
// on whether it is one of ours).
func Parse(frame []byte) (p Packet, r ParseResult) {
	if len(frame) < ethLen || binary.BigEndian.Uint16(frame[12:]) != 0x0800 {
		return p, ParseNotIP
	}
	ip := frame[ethLen:]
	if len(ip) < 20 || ip[0]>>4 != 4 || ip[0]&0xf < 5 {
		return p, ParseBadL3
	}
	hlen := int(ip[0]&0xf) * 4
	tot := int(binary.BigEndian.Uint16(ip[2:]))
	if tot < hlen || tot > len(ip) {
		return p, ParseBadL3
	}
	p.IPLen = tot
	p.Key.Src = netip.AddrFrom4([4]byte(ip[12:16]))
	p.Key.Dst = netip.AddrFrom4([4]byte(ip[16:20]))
	p.Key.Proto = ip[9]
	if p.Key.Proto != protoTC && p.Key.Proto != protoUD {
		return p, ParseOtherL4
	}
	// A fragment offset: no transport header (the datapath finds the
	// ports from the first fragment). A first fragment (MF, offset 0) has
	// it and is parsed on.
	if fo := binary.BigEndian.Uint16(ip[6:]); fo&0x1fff != 0 {
		return p, ParseFragment
	} else if fo&0x2000 != 0 {
		p.FirstFragment = true
	}
	l4 := ip[hlen:tot]
	p.L4Off = ethLen + hlen
	if p.Key.Proto == protoTC {
		if len(l4) < 20 {
			return p, ParseBadL4
		}
		if doff := int(l4[12]>>4) * 4; doff < 20 || doff > len(l4) {
			return p, ParseBadL4
		}
		p.TCPFlags = l4[13]
	} else {
		if len(l4) < 8 {
			return p, ParseBadL4
		}
		if ulen := int(binary.BigEndian.Uint16(l4[4:])); ulen < 8 || ulen > len(l4) {
			return p, ParseBadL4
		}
		p.UDPCsum = binary.BigEndian.Uint16(l4[6:]) != 0
	}
	p.Key.SrcPort = binary.BigEndian.Uint16(l4[0:])
	p.Key.DstPort = binary.BigEndian.Uint16(l4[2:])
	return p, ParseOK
}
