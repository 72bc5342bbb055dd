package monitor

import (
	"encoding/binary"
	"errors"
)

// FixChecksums recomputes the IPv4 header checksum and the TCP or UDP
// checksum of an Ethernet frame a handler modified (inline mode). Written
// here because it is twenty lines over the decoder's offsets; gopacket
// would decode and re-serialise the whole packet.
func FixChecksums(frame []byte) error {
	var p Packet
	if err := Decode(LinkEthernet, frame, &p); err != nil {
		return err
	}
	if p.Proto != 6 && p.Proto != 17 {
		return errors.New("not a TCP or UDP packet")
	}
	if p.Frag {
		return errors.New("a fragment: the checksum covers the whole datagram")
	}
	var sum uint32
	if p.IPv6 {
		for _, a := range [][16]byte{p.Src.As16(), p.Dst.As16()} {
			sum = sumBytes(sum, a[:])
		}
	} else {
		ip := frame[p.L3 : p.L3+int(frame[p.L3]&0x0f)*4]
		ip[10], ip[11] = 0, 0
		binary.BigEndian.PutUint16(ip[10:], ^fold(sumBytes(0, ip)))
		s, d := p.Src.As4(), p.Dst.As4()
		sum = sumBytes(sumBytes(0, s[:]), d[:])
	}
	seg := p.L4
	sum += uint32(p.Proto) + uint32(len(seg))
	off := 16 // TCP
	if p.Proto == 17 {
		off = 6
	}
	if len(seg) < off+2 {
		return errors.New("truncated transport header")
	}
	seg[off], seg[off+1] = 0, 0
	c := ^fold(sumBytes(sum, seg))
	if c == 0 && p.Proto == 17 {
		c = 0xffff // UDP: 0 means no checksum
	}
	binary.BigEndian.PutUint16(seg[off:], c)
	return nil
}

func sumBytes(sum uint32, b []byte) uint32 {
	for len(b) >= 2 {
		sum += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	return sum
}

func fold(sum uint32) uint16 {
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum)
}
