package monitor

import (
	"encoding/binary"
	"errors"
	"net/netip"
)

// LinkType is a capture's link-layer header type (the pcap LINKTYPE_
// values).
type LinkType uint16

// The link types the monitor reads: what the corpus and Linux interfaces
// produce.
const (
	LinkEthernet LinkType = 1
	LinkRaw      LinkType = 101 // raw IPv4 or IPv6, by version nibble
	LinkLinuxSLL LinkType = 113
	LinkIPv4     LinkType = 228
	LinkIPv6     LinkType = 229
	LinkLoop     LinkType = 0 // BSD loopback (null): 4-byte family
	LinkRawAlt   LinkType = 12
	LinkSLL2     LinkType = 276
)

// TCP flags.
const (
	FlagFIN uint8 = 0x01
	FlagSYN uint8 = 0x02
	FlagRST uint8 = 0x04
	FlagPSH uint8 = 0x08
	FlagACK uint8 = 0x10
	FlagURG uint8 = 0x20
)

// Packet is one decoded frame: what the tracker needs, pointing into the
// frame (no copies).
type Packet struct {
	Time     int64 // Unix nanoseconds
	Link     LinkType
	Frame    []byte
	VLAN     [2]uint16 // tags, outer first
	NVLAN    int
	Src, Dst netip.Addr
	Proto    uint8 // IP protocol; 0 when not IP
	IPv6     bool
	L3       int // offset of the IP header in Frame

	// Fragment state (IPv4 and IPv6): a fragment is reassembled by the
	// Defragmenter before the tracker sees TCP in it.
	Frag       bool
	FragID     uint32
	FragOffset int // bytes
	FragMore   bool
	L4         []byte // the IP payload (a fragment's part of it)

	// TCP (Proto == 6, not a fragment, header complete).
	TCP              bool
	SrcPort, DstPort uint16
	Seq, Ack         uint32
	Flags            uint8
	Window           uint16
	Payload          []byte
}

// Errors decoding a frame. A frame that is not IP is not an error (it is an
// orphan); these are frames that claim to be IP or TCP and are broken.
var (
	ErrTruncated = errors.New("truncated packet")
	ErrBadHeader = errors.New("malformed header")
	ErrLinkType  = errors.New("unsupported link type")
)

const maxIPv6Ext = 8

// Decode parses frame (of link type lt) into p. It never panics on any
// input; the frame is referenced, not copied. It is written by hand rather
// than with gopacket's layers because it runs once per packet without
// allocating, and mirrors the BPF parser field for field.
func Decode(lt LinkType, frame []byte, p *Packet) error {
	t := p.Time
	*p = Packet{Time: t, Link: lt, Frame: frame}
	var ethType uint16
	off := 0
	switch lt {
	case LinkEthernet:
		if len(frame) < 14 {
			return ErrTruncated
		}
		ethType, off = binary.BigEndian.Uint16(frame[12:]), 14
	case LinkLinuxSLL:
		if len(frame) < 16 {
			return ErrTruncated
		}
		ethType, off = binary.BigEndian.Uint16(frame[14:]), 16
	case LinkSLL2:
		if len(frame) < 20 {
			return ErrTruncated
		}
		ethType, off = binary.BigEndian.Uint16(frame[0:]), 20
	case LinkRaw, LinkRawAlt, LinkIPv4, LinkIPv6:
		if len(frame) < 1 {
			return ErrTruncated
		}
		switch frame[0] >> 4 {
		case 4:
			ethType = 0x0800
		case 6:
			ethType = 0x86dd
		default:
			return ErrBadHeader
		}
	case LinkLoop:
		if len(frame) < 4 {
			return ErrTruncated
		}
		off = 4
		switch fam := binary.LittleEndian.Uint32(frame); fam {
		case 2:
			ethType = 0x0800
		case 24, 28, 30:
			ethType = 0x86dd
		default:
			return nil
		}
	default:
		return ErrLinkType
	}
	for ethType == 0x8100 || ethType == 0x88a8 || ethType == 0x9100 {
		if off+4 > len(frame) {
			return ErrTruncated
		}
		if p.NVLAN < len(p.VLAN) {
			p.VLAN[p.NVLAN] = binary.BigEndian.Uint16(frame[off:]) & 0x0fff
		}
		p.NVLAN++
		ethType = binary.BigEndian.Uint16(frame[off+2:])
		off += 4
	}
	if p.NVLAN > len(p.VLAN) {
		p.NVLAN = len(p.VLAN)
	}
	if ethType == 0x8864 { // PPPoE session: 6-byte header, then PPP's protocol
		if off+8 > len(frame) {
			return ErrTruncated
		}
		switch binary.BigEndian.Uint16(frame[off+6:]) {
		case 0x0021:
			ethType = 0x0800
		case 0x0057:
			ethType = 0x86dd
		default:
			return nil
		}
		off += 8
	}
	if ethType == 0x8847 || ethType == 0x8848 { // MPLS: labels up to bottom of stack
		for {
			if off+4 > len(frame) {
				return ErrTruncated
			}
			bos := frame[off+2]&1 != 0
			off += 4
			if bos {
				break
			}
		}
		if off >= len(frame) {
			return ErrTruncated
		}
		switch frame[off] >> 4 {
		case 4:
			ethType = 0x0800
		case 6:
			ethType = 0x86dd
		default:
			return nil
		}
	}
	p.L3 = off
	switch ethType {
	case 0x0800:
		return decodeIPv4(frame[off:], p)
	case 0x86dd:
		return decodeIPv6(frame[off:], p)
	}
	return nil
}

func decodeIPv4(b []byte, p *Packet) error {
	if len(b) < 20 {
		return ErrTruncated
	}
	ihl := int(b[0]&0xf) * 4
	if b[0]>>4 != 4 || ihl < 20 {
		return ErrBadHeader
	}
	total := int(binary.BigEndian.Uint16(b[2:]))
	if total < ihl {
		return ErrBadHeader
	}
	if len(b) < ihl {
		return ErrTruncated
	}
	if total < len(b) {
		b = b[:total] // Ethernet padding
	}
	p.Src = netip.AddrFrom4([4]byte(b[12:16]))
	p.Dst = netip.AddrFrom4([4]byte(b[16:20]))
	p.Proto = b[9]
	frag := binary.BigEndian.Uint16(b[6:])
	p.L4 = b[ihl:]
	if frag&0x3fff != 0 {
		p.Frag = true
		p.FragID = uint32(binary.BigEndian.Uint16(b[4:]))
		p.FragOffset = int(frag&0x1fff) * 8
		p.FragMore = frag&0x2000 != 0
		return nil
	}
	return decodeL4(p)
}

func decodeIPv6(b []byte, p *Packet) error {
	if len(b) < 40 {
		return ErrTruncated
	}
	if b[0]>>4 != 6 {
		return ErrBadHeader
	}
	p.IPv6 = true
	p.Src = netip.AddrFrom16([16]byte(b[8:24]))
	p.Dst = netip.AddrFrom16([16]byte(b[24:40]))
	if plen := int(binary.BigEndian.Uint16(b[4:])); plen != 0 && 40+plen < len(b) {
		b = b[:40+plen]
	}
	next, off := b[6], 40
	for range maxIPv6Ext {
		switch next {
		case 0, 43, 60: // hop-by-hop, routing, destination options
			if off+2 > len(b) {
				return ErrTruncated
			}
			next, off = b[off], off+(int(b[off+1])+1)*8
			continue
		case 44: // fragment
			if off+8 > len(b) {
				return ErrTruncated
			}
			fo := binary.BigEndian.Uint16(b[off+2:])
			p.Frag = true
			p.FragID = binary.BigEndian.Uint32(b[off+4:])
			p.FragOffset = int(fo &^ 7)
			p.FragMore = fo&1 != 0
			p.Proto = b[off]
			p.L4 = b[off+8:]
			if p.FragOffset == 0 && !p.FragMore { // an atomic fragment
				p.Frag = false
				return decodeL4(p)
			}
			return nil
		}
		break
	}
	if off > len(b) {
		return ErrTruncated
	}
	p.Proto, p.L4 = next, b[off:]
	return decodeL4(p)
}

func decodeL4(p *Packet) error {
	if p.Proto != 6 {
		return nil
	}
	b := p.L4
	if len(b) < 20 {
		return ErrTruncated
	}
	doff := int(b[12]>>4) * 4
	if doff < 20 {
		return ErrBadHeader
	}
	if len(b) < doff {
		return ErrTruncated
	}
	p.TCP = true
	p.SrcPort = binary.BigEndian.Uint16(b[0:])
	p.DstPort = binary.BigEndian.Uint16(b[2:])
	p.Seq = binary.BigEndian.Uint32(b[4:])
	p.Ack = binary.BigEndian.Uint32(b[8:])
	p.Flags = b[13]
	p.Window = binary.BigEndian.Uint16(b[14:])
	p.Payload = b[doff:]
	return nil
}
