package bricks

import (
	"encoding/binary"
)

// flowEnds is a frame's two endpoints as bricks.h's brick_flow holds them.
type flowEnds struct {
	a, b         [4]uint32
	aport, bport uint16
	proto        uint8
	ports        bool
	v4           bool // only a[0] and b[0] hold an address
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
		f.v4 = true
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

// The LoadBalancer hash's multipliers (bricks.h BRICK_K*).
var hashK = [...]uint64{
	0xa0761d6478bd642f, 0xe7037ed1a0b428db, 0x8ebc6af09c88c6e3, 0x589965cc75374cc3,
	0x1d8e4e27c47d124f, 0x9e3779b97f4a7c15, 0xbf58476d1ce4e5b9, 0x94d049bb133111eb,
	0xff51afd7ed558ccd, 0xc4ceb9fe1a85ec53, 0x2545f4914f6cdd1d,
}

// FlowHash is the LoadBalancer's symmetric flow hash of a frame, bit for
// bit the datapath's (bricks.h brick_hash): the two endpoints in order
// (address words, then port), each word times its own constant, summed,
// then folded by one multiply.
func FlowHash(frame []byte, hash Hash, seed uint32) uint32 {
	f := parseEnds(frame)
	usePorts := hash == Hash4Tuple && f.ports
	var ap, bp uint16
	var proto uint64
	if usePorts {
		ap, bp, proto = f.aport, f.bport, uint64(f.proto)
	}
	swap := ap > bp
	for i := range 4 {
		if f.a[i] != f.b[i] {
			swap = f.a[i] > f.b[i]
			break
		}
	}
	lo, hi, lp, hp := f.a, f.b, ap, bp
	if swap {
		lo, hi, lp, hp = f.b, f.a, bp, ap
	}
	k := hashK
	h := uint64(lo[0]^seed)*k[0] + uint64(hi[0])*k[1] + uint64(uint32(lp)|uint32(hp)<<16)*k[2] + proto*k[3]
	if !f.v4 {
		h += uint64(lo[1])*k[5] + uint64(lo[2])*k[6] + uint64(lo[3])*k[7] +
			uint64(hi[1])*k[8] + uint64(hi[2])*k[9] + uint64(hi[3])*k[10]
	}
	h ^= h >> 32
	h *= k[4]
	return uint32(h >> 32)
}

// Pick is the output a LoadBalancer with n outputs sends the frame to.
func Pick(frame []byte, hash Hash, n int, seed uint32) int {
	return int((uint64(FlowHash(frame, hash, seed)) * uint64(n)) >> 32)
}
