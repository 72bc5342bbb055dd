package bricks

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

// frame4 is an Ethernet/IPv4/TCP frame between two endpoints.
func frame4(src, dst string, sport, dport uint16) []byte {
	b := make([]byte, 14+20+20)
	binary.BigEndian.PutUint16(b[12:], 0x0800)
	b[14], b[23] = 0x45, protoTCP
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(b[26:], s[:])
	copy(b[30:], d[:])
	binary.BigEndian.PutUint16(b[34:], sport)
	binary.BigEndian.PutUint16(b[36:], dport)
	return b
}

// frame6 is an Ethernet/IPv6/UDP frame between two endpoints.
func frame6(src, dst string, sport, dport uint16) []byte {
	b := make([]byte, 14+40+8)
	binary.BigEndian.PutUint16(b[12:], 0x86dd)
	b[14], b[20] = 0x60, protoUDP
	s, d := netip.MustParseAddr(src).As16(), netip.MustParseAddr(dst).As16()
	copy(b[22:], s[:])
	copy(b[38:], d[:])
	binary.BigEndian.PutUint16(b[54:], sport)
	binary.BigEndian.PutUint16(b[56:], dport)
	return b
}

// TestFlowHashSpread: the flows a tap sees differ in a few low-entropy
// bits (sequential client ports, neighbouring addresses); each case's
// flows must split evenly, both directions alike.
func TestFlowHashSpread(t *testing.T) {
	const n, outs = 4096, 4
	for _, c := range []struct {
		name string
		hash Hash
		fwd  func(i int) []byte
		rev  func(i int) []byte
	}{
		{"v4-sport", Hash4Tuple,
			func(i int) []byte { return frame4("198.18.0.1", "198.18.1.2", uint16(32768+i), 80) },
			func(i int) []byte { return frame4("198.18.1.2", "198.18.0.1", 80, uint16(32768+i)) }},
		{"v4-client", Hash2Tuple,
			func(i int) []byte {
				return frame4(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}).String(), "198.19.0.1", 1, 2)
			},
			func(i int) []byte {
				return frame4("198.19.0.1", netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}).String(), 2, 1)
			}},
		{"v6-sport", Hash4Tuple,
			func(i int) []byte { return frame6("fd00:198::1", "fd00:198::2", uint16(1024+i), 53) },
			func(i int) []byte { return frame6("fd00:198::2", "fd00:198::1", 53, uint16(1024+i)) }},
		{"v6-client", Hash2Tuple,
			func(i int) []byte {
				a := netip.MustParseAddr("fd00:198::").As16()
				a[14], a[15] = byte(i>>8), byte(i)
				return frame6(netip.AddrFrom16(a).String(), "fd00:198::ffff", 9, 9)
			},
			func(i int) []byte {
				a := netip.MustParseAddr("fd00:198::").As16()
				a[14], a[15] = byte(i>>8), byte(i)
				return frame6("fd00:198::ffff", netip.AddrFrom16(a).String(), 9, 9)
			}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var count [outs]int
			for i := range n {
				o := Pick(c.fwd(i), c.hash, outs, 7)
				if r := Pick(c.rev(i), c.hash, outs, 7); r != o {
					t.Fatalf("flow %d: %d one way, %d the other", i, o, r)
				}
				count[o]++
			}
			for o, k := range count {
				if k < n/outs*9/10 || k > n/outs*11/10 {
					t.Errorf("output %d got %d of %d flows (%v)", o, k, n, count)
				}
			}
		})
	}
}

// TestFlowHashSeed: another seed gives another split.
func TestFlowHashSeed(t *testing.T) {
	same := 0
	for i := range 1000 {
		f := frame4("198.18.0.1", "198.18.1.2", uint16(40000+i), 80)
		if Pick(f, Hash4Tuple, 4, 1) == Pick(f, Hash4Tuple, 4, 2) {
			same++
		}
	}
	if same > 350 { // 250 expected by chance
		t.Errorf("seeds 1 and 2 agree on %d of 1000 flows", same)
	}
}
