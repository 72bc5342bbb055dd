package vectors

import (
	"encoding/binary"
	"fmt"
)

func onesSum(b []byte, sum uint32) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	return sum
}

func fold(sum uint32) uint16 {
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum)
}

// VerifyChecksums recomputes an Ethernet/IPv4 frame's IP and TCP/UDP
// checksums from scratch; independent of gopacket.
func VerifyChecksums(frame []byte) error {
	if len(frame) >= 54 && binary.BigEndian.Uint16(frame[12:]) == 0x86dd {
		return verifyIPv6(frame[14:])
	}
	if len(frame) < 34 || binary.BigEndian.Uint16(frame[12:]) != 0x0800 {
		return nil
	}
	ip := frame[14:]
	hl := int(ip[0]&0xf) * 4
	tot := int(binary.BigEndian.Uint16(ip[2:]))
	if hl < 20 || tot < hl || tot > len(ip) {
		return nil
	}
	if fold(onesSum(ip[:hl], 0)) != 0xffff {
		return fmt.Errorf("bad IPv4 header checksum")
	}
	if binary.BigEndian.Uint16(ip[6:])&0x3fff != 0 {
		return nil // fragment: no whole L4 to check
	}
	proto := ip[9]
	l4 := ip[hl:tot]
	if proto != 6 && proto != 17 {
		return nil
	}
	if proto == 17 && len(l4) >= 8 && binary.BigEndian.Uint16(l4[6:]) == 0 {
		return nil
	}
	sum := onesSum(ip[12:20], 0)
	sum += uint32(proto) + uint32(len(l4))
	if fold(onesSum(l4, sum)) != 0xffff {
		return fmt.Errorf("bad %s checksum", map[byte]string{6: "TCP", 17: "UDP"}[proto])
	}
	return nil
}

// verifyIPv6 checks a TCP or UDP checksum right after an IPv6 header (an
// ip6ip6 packet's inner one too).
func verifyIPv6(ip []byte) error {
	plen := int(binary.BigEndian.Uint16(ip[4:]))
	next := ip[6]
	if 40+plen > len(ip) {
		return nil
	}
	l4 := ip[40 : 40+plen]
	switch next {
	case 41:
		if len(l4) >= 40 {
			return verifyIPv6(l4)
		}
		return nil
	case 6, 17, 58:
	default:
		return nil
	}
	sum := onesSum(ip[8:40], 0)
	sum += uint32(next) + uint32(len(l4))
	if fold(onesSum(l4, sum)) != 0xffff {
		return fmt.Errorf("bad %s checksum (IPv6)", map[byte]string{6: "TCP", 17: "UDP", 58: "ICMPv6"}[next])
	}
	return nil
}
