package bricks

import (
	"encoding/binary"

	"github.com/mbx-net/mbx/flow"
)

// flowEnds is a frame's two endpoints as bricks.h's brick_flow holds them.
type flowEnds struct {
	a, b         [4]uint32
	aport, bport uint16
	proto        uint8
	ports        bool
}

const (
	ipv6ExtMax = 4
	protoTCP   = 6
	protoUDP   = 17
	protoSCTP  = 132
	protoFrag6 = 44
)

func le32(b []byte) uint32 {
	var w [4]byte
	copy(w[:], b)
	return binary.LittleEndian.Uint32(w[:])
}

// parseEnds is brick_parse in Go (bricks.h): up to two VLAN tags, IPv4 or
// IPv6 with up to four extension headers, else the MAC addresses.
func parseEnds(frame []byte) flowEnds {
	var f flowEnds
	if len(frame) < 14 {
		return f
	}
	mac := func() flowEnds {
		var g flowEnds
		g.a[0], g.a[1] = le32(frame[6:10]), le32(frame[10:12])
		g.b[0], g.b[1] = le32(frame[0:4]), le32(frame[4:6])
		return g
	}
	et := binary.BigEndian.Uint16(frame[12:])
	off := 14
	for range 2 {
		if et != 0x8100 && et != 0x88a8 {
			break
		}
		if off+4 > len(frame) {
			return f
		}
		et = binary.BigEndian.Uint16(frame[off+2:])
		off += 4
	}
	var l4 int
	var proto uint8
	switch et {
	case 0x0800:
		if off+20 > len(frame) || frame[off]&0xf < 5 {
			return mac()
		}
		ip := frame[off:]
		f.a[0], f.b[0] = le32(ip[12:16]), le32(ip[16:20])
		f.proto = ip[9]
		if binary.BigEndian.Uint16(ip[6:])&0x3fff != 0 {
			return f
		}
		l4 = off + int(ip[0]&0xf)*4
		proto = ip[9]
	case 0x86dd:
		if off+40 > len(frame) {
			return mac()
		}
		ip := frame[off:]
		for i := range 4 {
			f.a[i] = le32(ip[8+4*i:])
			f.b[i] = le32(ip[24+4*i:])
		}
		proto = ip[6]
		l4 = off + 40
		for range ipv6ExtMax {
			if proto == protoFrag6 {
				f.proto = protoFrag6
				return f
			}
			if proto != 0 && proto != 43 && proto != 60 {
				break
			}
			if l4+2 > len(frame) {
				return f
			}
			proto, l4 = frame[l4], l4+(int(frame[l4+1])+1)*8
		}
		f.proto = proto
	default:
		return mac()
	}
	if proto != protoTCP && proto != protoUDP && proto != protoSCTP {
		return f
	}
	if l4+4 > len(frame) {
		return f
	}
	f.aport = binary.LittleEndian.Uint16(frame[l4:])
	f.bport = binary.LittleEndian.Uint16(frame[l4+2:])
	f.ports = true
	return f
}

func endpointHash(addr [4]uint32, port uint16, seed uint32) uint32 {
	h := seed
	for _, w := range addr {
		h = flow.HashMix(h, w)
	}
	return flow.HashFinal(flow.HashMix(h, uint32(port)))
}

// FlowHash is the LoadBalancer's symmetric flow hash of a frame, bit for
// bit the datapath's (bricks.h brick_hash).
func FlowHash(frame []byte, hash Hash, seed uint32) uint32 {
	f := parseEnds(frame)
	usePorts := hash == Hash4Tuple && f.ports
	var ap, bp uint16
	if usePorts {
		ap, bp = f.aport, f.bport
	}
	ea, eb := endpointHash(f.a, ap, seed), endpointHash(f.b, bp, seed)
	lo, hi := min(ea, eb), max(ea, eb)
	h := flow.HashMix(flow.HashMix(seed, lo), hi)
	if usePorts {
		h = flow.HashMix(h, uint32(f.proto))
	}
	return flow.HashFinal(h)
}

// Pick is the output a LoadBalancer with n outputs sends the frame to.
func Pick(frame []byte, hash Hash, n int, seed uint32) int {
	return int((uint64(FlowHash(frame, hash, seed)) * uint64(n)) >> 32)
}
