package datapath

import "encoding/binary"

// One's-complement checksum deltas, as bpf/csum.h computes them (RFC 1624),
// so a rewrite here gives the same bytes as the XDP program's. Words are
// taken big-endian; one's-complement sums are byte-order independent.

func csumAdd32(sum uint32, from, to [4]byte) uint32 {
	f := binary.BigEndian.Uint32(from[:])
	t := binary.BigEndian.Uint32(to[:])
	sum += (^f & 0xffff) + (^f >> 16)
	sum += (t & 0xffff) + (t >> 16)
	return sum
}

func csumAdd16(sum uint32, from, to uint16) uint32 {
	return sum + uint32(^from) + uint32(to)
}

func fold(sum uint32) uint16 {
	sum = sum&0xffff + sum>>16
	sum = sum&0xffff + sum>>16
	return uint16(sum)
}

// csumApply applies delta to the checksum field at b[0:2].
func csumApply(b []byte, delta uint32) {
	sum := uint32(^binary.BigEndian.Uint16(b))
	sum += uint32(fold(delta))
	binary.BigEndian.PutUint16(b, ^fold(sum))
}
