package flow

import (
	"encoding/binary"
	"math/bits"
	"net/netip"
)

// Key is one direction of a flow (struct flow_key in bpf/maps.h holds the
// IPv4 addresses and ports as they appear on the wire).
type Key struct {
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16 // host byte order
	Proto            uint8
}

// Family returns 2 (AF_INET) or 10 (AF_INET6).
func (k Key) Family() uint8 {
	if k.Dst.Is4() {
		return 2
	}
	return 10
}

// AddrWords returns an address as the four 32-bit words the datapath hashes
// (memory order read little-endian, as the BPF program sees them on x86/arm64).
func AddrWords(a netip.Addr) [4]uint32 {
	var b [16]byte
	if a.Is4() {
		v4 := a.As4()
		copy(b[:4], v4[:])
	} else {
		b = a.As16()
	}
	return [4]uint32{
		binary.LittleEndian.Uint32(b[0:]), binary.LittleEndian.Uint32(b[4:]),
		binary.LittleEndian.Uint32(b[8:]), binary.LittleEndian.Uint32(b[12:]),
	}
}

// PortWord returns a host-order port as the datapath holds it (network order in memory).
func PortWord(p uint16) uint32 { return uint32(bits.ReverseBytes16(p)) }

// HashMix and HashFinal are the murmur3 steps of bpf/hash.h, also used by
// hashes that must agree across nodes (lb's Maglev permutations).
func HashMix(h, k uint32) uint32 {
	k *= 0xcc9e2d51
	k = bits.RotateLeft32(k, 15)
	k *= 0x1b873593
	h ^= k
	h = bits.RotateLeft32(h, 13)
	return h*5 + 0xe6546b64
}

// HashFinal is murmur3's finaliser.
func HashFinal(h uint32) uint32 {
	h ^= h >> 16
	h *= 0x85ebca6b
	h ^= h >> 13
	h *= 0xc2b2ae35
	h ^= h >> 16
	return h
}

// Hash is the flow hash of bpf/hash.h, bit for bit (IPv4 flows).
func (k Key) Hash(seed uint32) uint32 {
	h := seed
	h = HashMix(h, AddrWords(k.Src)[0])
	h = HashMix(h, AddrWords(k.Dst)[0])
	h = HashMix(h, PortWord(k.SrcPort)|PortWord(k.DstPort)<<16)
	h = HashMix(h, uint32(k.Proto)|uint32(k.Family())<<8)
	return HashFinal(h ^ 16)
}

// PortCandStep spaces the LIP/port candidates a new Full-NAT flow probes.
const PortCandStep = 0x9e3779b1

// LocalCandidate returns the i-th (LIP index, local port) candidate of a flow
// with hash h, for nLIPs local addresses and the port range [lo, hi]. Every
// node computes the same sequence, so a flow can be re-translated identically.
func LocalCandidate(h uint32, i int, nLIPs int, lo, hi uint16) (lip int, port uint16) {
	c := h + uint32(i)*PortCandStep
	rng := uint32(hi) - uint32(lo) + 1
	return int(c % uint32(nLIPs)), uint16(uint32(lo) + (c>>8)%rng)
}

// schedSalt separates the scheduling hash from the LIP/port hash.
const schedSalt = 0x5bd1e995

// Pick modes (lb.Pick), repeated here to keep flow free of lb.
const (
	PickRoundRobin = 0
	PickSource     = 1
	PickDest       = 2
	PickFlow       = 3
)

// SchedHash is the number a datapath reduces modulo the table length to pick
// a real server for a new flow under a hash scheduler (bpf/mbx.c new_conn):
// every node and backend picks the same real server for the same flow.
func (k Key) SchedHash(pick int, seed uint32) uint32 {
	switch pick {
	case PickSource:
		return HashFinal(HashMix(seed^schedSalt, AddrWords(k.Src)[0]))
	case PickDest:
		return HashFinal(HashMix(seed^schedSalt, AddrWords(k.Dst)[0]))
	default:
		return HashFinal(k.Hash(seed) ^ schedSalt)
	}
}
